"""Helpers for the build-data tests: generated images, catalogs and a loopback HTTP server."""

import gzip
import http.server
import io
import json
import socketserver
import struct
import threading
import time
import zlib
from collections import Counter

from PIL import Image

PWNED_LINE = "__import__('os').system('touch PWNED')"


def image_bytes(kind, size=(40, 30)):
    """Bytes of a small generated image of ``kind``."""
    w, h = size
    buf = io.BytesIO()
    if kind == "jpeg":
        Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    elif kind == "png":
        Image.new("RGB", size, (30, 200, 30)).save(buf, "PNG")
    elif kind == "cmyk":
        Image.new("CMYK", size, (0, 255, 255, 0)).save(buf, "JPEG")
    elif kind == "palette":
        Image.new("RGB", size, (10, 10, 250)).convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "PNG")
    elif kind == "rgba":
        im = Image.new("RGBA", size, (255, 0, 0, 0))  # fully transparent red -> white
        im.putpixel((0, 0), (0, 0, 0, 255))
        im.save(buf, "PNG")
    elif kind == "la":
        Image.new("LA", size, (0, 0)).save(buf, "PNG")
    elif kind == "16bit":
        Image.new("I;16", size, 40000).save(buf, "PNG")
    elif kind == "gray":
        Image.new("L", size, 128).save(buf, "PNG")
    elif kind == "gif":
        Image.new("RGB", size, (250, 250, 0)).convert("P").save(buf, "GIF")
    elif kind == "webp":
        Image.new("RGB", size, (0, 250, 250)).save(buf, "WEBP")
    elif kind == "big":
        Image.new("RGB", (300, 150), (90, 90, 90)).save(buf, "JPEG")
    elif kind == "truncated":
        Image.new("RGB", (200, 200), (1, 2, 3)).save(buf, "JPEG")
        return buf.getvalue()[:300]
    elif kind == "html":
        return b"<!DOCTYPE html><html><body>Robot check</body></html>"
    elif kind == "empty":
        return b""
    elif kind == "bomb":
        return bomb_png(100_000, 100_000)
    else:
        raise ValueError(kind)
    return buf.getvalue()


def bomb_png(width, height):
    """A tiny PNG whose header declares ``width`` x ``height`` pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1), 0).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    # signature (8) + length (4) + b"IHDR" (4) + width (4) + height (4)
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def large_jpeg(width, height, mode="L", quality=5):
    """A real, fully decodable JPEG of ``width`` x ``height`` (a flat tone: ~0.15 s for 90 MP in L)."""
    buf = io.BytesIO()
    Image.new(mode, (width, height), 90 if mode == "L" else (120, 60, 30)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bomb(width, height):
    """A real, valid grayscale PNG of ``width`` x ``height`` zeros: a file ~1/1000 of its pixel count."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(6)
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def forged_jpeg(width, height):
    """A small JPEG whose SOF header claims ``width`` x ``height`` (its data is for 16 x 16)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline SOF0: marker, length (2), precision (1), height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def forged_gif(width, height):
    """A small GIF whose logical screen claims ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("P", (4, 4), 0).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


# -------------------------------------------------------------------------------- catalogs
def product(asin, path, title=None, url=None):
    return {"asin": asin, "path": list(path), "title": title or f"Product {asin} &amp; co", "url": url}


def line_2014(p):
    rec = {"asin": p["asin"], "title": p["title"], "categories": [["Everything"], p["path"]], "price": 1.5}
    if p["url"]:
        rec["imUrl"] = p["url"]
    return repr(rec)


def line_2018(p):
    return json.dumps(
        {
            "asin": p["asin"],
            "title": p["title"],
            "category": p["path"],
            "main_cat": p["path"][0],
            "imageURL": [p["url"]] if p["url"] else [],
            "imageURLHighRes": [p["url"]] if p["url"] else [],
        }
    )


def line_2023(p):
    images = [{"thumb": None, "large": p["url"], "hi_res": None, "variant": "MAIN"}] if p["url"] else []
    return json.dumps(
        {
            "parent_asin": p["asin"],
            "title": p["title"],
            "main_category": "AMAZON STORE",
            "categories": p["path"],
            "images": images,
            "average_rating": 4.1,
        }
    )


LINE = {"2014": line_2014, "2018": line_2018, "2023": line_2023}


def write_catalog(path, fmt, products, extra_lines=(), gz=None):
    """Write ``products`` in ``fmt``; ``extra_lines`` (raw text) are appended. Returns the path."""
    path = str(path)
    lines = [LINE[fmt](p) for p in products] + list(extra_lines)
    text = "\n".join(lines) + "\n"
    gz = path.endswith(".gz") if gz is None else gz
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path


# -------------------------------------------------------------------------------- HTTP server
class ImageServer:
    """Loopback HTTP server. Routes:

    ``/img/<kind>/<anything>``  the generated image of that kind (Content-Type image/*)
    ``/html``                   an HTML page (text/html)
    ``/404``, ``/403``          errors
    ``/flaky/<n>/<kind>/<id>``  500 for the first n requests of that path, then the image
    ``/slow/<seconds>/<kind>/<id>`` waits, then the image
    ``/hits`` counts requests per path in ``self.hits``.
    """

    def __init__(self):
        self.hits = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", ctype="image/jpeg"):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] += 1
                    n = server.hits[self.path]
                parts = self.path.strip("/").split("/")
                head = parts[0]
                if head == "img":
                    return self._send(200, image_bytes(parts[1]), _ctype(parts[1]))
                if head == "html":
                    return self._send(200, image_bytes("html"), "text/html; charset=utf-8")
                if head == "octet-html":  # an HTML page that claims to be binary
                    return self._send(200, image_bytes("html"), "application/octet-stream")
                if head in ("404", "403"):
                    return self._send(int(head), b"no", "text/plain")
                if head == "flaky":
                    if n <= int(parts[1]):
                        return self._send(500, b"oops", "text/plain")
                    return self._send(200, image_bytes(parts[2]), _ctype(parts[2]))
                if head == "slow":
                    time.sleep(float(parts[1]))
                    return self._send(200, image_bytes(parts[2]), _ctype(parts[2]))
                return self._send(404, b"", "text/plain")

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _ctype(kind):
    return {
        "png": "image/png",
        "palette": "image/png",
        "rgba": "image/png",
        "la": "image/png",
        "16bit": "image/png",
        "gray": "image/png",
        "gif": "image/gif",
        "webp": "image/webp",
        "bomb": "image/png",
        "empty": "image/jpeg",
    }.get(kind, "image/jpeg")


def files_under(root):
    """Set of all file paths under ``root`` (relative)."""
    import os

    out = set()
    for d, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(d, f), root))
    return out
