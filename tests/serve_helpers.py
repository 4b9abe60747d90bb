"""Helpers of the service tests: a client or a real server for an INDEX_DIR, test images, a loopback image server."""

import contextlib
import http.server
import io
import os
import socket
import threading
import time

from PIL import Image


def client_for(index_dir, **settings):
    """A started TestClient (lifespan run) for a fresh app over ``index_dir``; use it as a context manager."""
    from fastapi.testclient import TestClient

    from amazon_visual.web.app import Settings, create_app

    settings.setdefault("warm_up", False)
    return TestClient(create_app(Settings(index_dir=index_dir, **settings)), raise_server_exceptions=False)


def bomb_png(side=10000):
    """A small PNG file that decodes to side x side pixels (a decompression bomb by default)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


@contextlib.contextmanager
def uvicorn_server(index_dir, **settings):
    """A real uvicorn server for ``index_dir`` in a thread on 127.0.0.1; yields its base URL."""
    import uvicorn

    from amazon_visual.web.app import Settings, create_app

    settings.setdefault("warm_up", False)
    srv = uvicorn.Server(
        uvicorn.Config(
            create_app(Settings(index_dir=index_dir, **settings)),
            host="127.0.0.1",
            port=free_port(),
            log_level="warning",
        )
    )
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    end = time.monotonic() + 30
    while not srv.started and time.monotonic() < end:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{srv.config.port}"
    finally:
        srv.should_exit = True
        t.join(10)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ImageServer:
    """A loopback HTTP server for URL queries: /img.jpg, redirects, slow and huge bodies."""

    def __init__(self, image):
        self.image = image
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.route(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, h):
        p = h.path
        if p == "/img.jpg":
            return self._send(h, 200, self.image, "image/jpeg")
        if p.startswith("/redirect?to="):
            h.send_response(302)
            h.send_header("Location", p.split("=", 1)[1])
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if p == "/text":
            return self._send(h, 200, b"<html>not an image</html>", "text/html")
        if p == "/huge-declared":
            h.send_response(200)
            h.send_header("Content-Length", str(50 << 20))
            h.end_headers()
            h.wfile.write(b"\0" * 1024)
            return
        if p == "/huge-streamed":
            h.send_response(200)
            h.end_headers()
            try:
                for _ in range(64):
                    h.wfile.write(b"\0" * (64 << 10))
            except OSError:
                pass
            return
        if p == "/slow":
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            try:
                for _ in range(40):
                    h.wfile.write(b"\xff")
                    h.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        return self._send(h, 404, b"missing", "text/plain")

    @staticmethod
    def _send(h, status, body, ctype):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def image_of(world, asin):
    with open(os.path.join(world["images"], f"{asin}.jpg"), "rb") as f:
        return f.read()
