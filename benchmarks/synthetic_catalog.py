"""A synthetic product catalog of any size: Amazon 2023-format metadata and small generated photos.

Each product ``S000000042`` belongs to one of ``classes`` categories (a hash of its index);
its photo is generated from its index alone: a colour cast and a stripe pattern that depend on
the class (the learnable signal) under per-product noise, stripe phase and brightness. The
signal is easy on purpose (the benchmarks measure cost, not accuracy): a small CNN learns it in
one epoch (growth.py's 100,000-product run: precision@10 1.0 against a class prior of 0.10).
Everything is streamed: the metadata
is written line by line and the photos one by one (nothing holds the catalog in memory).

Photos come from a folder (``images="folder"``: ``<out>/images/<ASIN>.jpg``) or from a
loopback HTTP server that generates them on request (``serve()``; the metadata's URLs then
point at it). Usage::

    python benchmarks/synthetic_catalog.py --n 10000 --out /tmp/catalog-10k            # folder of photos
    python benchmarks/synthetic_catalog.py --n 10000 --out /tmp/catalog-10k --images http --port 8765
    # then: amazon-visual build-data --metadata /tmp/catalog-10k/meta.jsonl.gz \
    #           --images-dir /tmp/catalog-10k/images --categories-file /tmp/catalog-10k/classes.txt --out DATA_DIR

From Python (tests, benchmarks): ``write_catalog(out, n, ...)``, ``serve(px, classes, seed)``.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

STORE = "Synthetic Store"
TOP = "Synthetic Goods"


def asin_of(i):
    return f"S{int(i):09d}"


def class_of(i, classes, seed=0):
    h = hashlib.blake2b(f"{seed}:{int(i)}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") % int(classes)


def class_names(classes):
    return [f"Class {c:02d}" for c in range(int(classes))]


def image(i, classes, px=32, seed=0):
    """uint8 (px, px, 3) photo of product ``i``: the class's colour cast and stripes under noise."""
    c = class_of(i, classes, seed)
    rng = np.random.default_rng([seed, int(i)])
    hue = np.array([(c * 97) % 256, (c * 57 + 80) % 256, (c * 151 + 160) % 256], np.float32)
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    angle = np.pi * (c % 5) / 5
    freq = 2 + (c // 5) * 2
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    base = 255 - 0.6 * stripes[..., None] * (255 - hue)  # white product-photo background, tinted stripes
    img = base * rng.uniform(0.85, 1.1) + rng.normal(0, 28, (px, px, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(i, classes, px=32, seed=0, quality=90):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image(i, classes, px, seed)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def record(i, classes, base_url, seed=0):
    """One 2023-format metadata line (dict) of product ``i``."""
    name = class_names(classes)[class_of(i, classes, seed)]
    asin = asin_of(i)
    url = f"{base_url.rstrip('/')}/{asin}.jpg"
    return {
        "main_category": STORE,
        "title": f"Synthetic product {i} ({name})",
        "average_rating": 4.0,
        "rating_number": 1,
        "features": [],
        "description": [],
        "price": None,
        "images": [{"thumb": url, "large": url, "variant": "MAIN", "hi_res": None}],
        "videos": [],
        "store": STORE,
        "categories": [TOP, name],
        "details": {},
        "parent_asin": asin,
        "bought_together": None,
    }


def write_catalog(out, n, classes=10, px=32, seed=0, images="folder", base_url=None, progress=False):
    """Write ``out/meta.jsonl.gz``, ``out/classes.txt`` and (``images="folder"``) ``out/images/``.

    ``base_url``: where the metadata's image URLs point (default: the folder's file names, or
    ``http://127.0.0.1:8765`` for ``images="http"``). Returns the paths.
    """
    os.makedirs(out, exist_ok=True)
    img_dir = os.path.join(out, "images")
    if images == "folder":
        os.makedirs(img_dir, exist_ok=True)
    base_url = base_url or ("http://127.0.0.1:8765" if images == "http" else "https://synthetic.invalid/img")
    meta = os.path.join(out, "meta.jsonl.gz")
    with gzip.open(meta + ".tmp", "wt", encoding="utf-8") as f:
        for i in range(int(n)):
            f.write(json.dumps(record(i, classes, base_url, seed)) + "\n")
            if images == "folder":
                with open(os.path.join(img_dir, asin_of(i) + ".jpg"), "wb") as g:
                    g.write(jpeg(i, classes, px, seed))
            if progress and i and i % 10000 == 0:
                print(f"  {i} products", file=sys.stderr, flush=True)
    os.replace(meta + ".tmp", meta)
    with open(os.path.join(out, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(class_names(classes)) + "\n")
    return {
        "metadata": meta,
        "classes": os.path.join(out, "classes.txt"),
        "images_dir": img_dir if images == "folder" else None,
    }


def serve(classes=10, px=32, seed=0, host="127.0.0.1", port=0):
    """Start a loopback HTTP server generating ``/<ASIN>.jpg`` on request; returns ``(server, base_url)``.

    Call ``server.shutdown()`` to stop it. Unknown paths answer 404.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            if not (name.startswith("S") and name.endswith(".jpg") and name[1:-4].isdigit()):
                self.send_error(404)
                return
            body = jpeg(int(name[1:-4]), classes, px, seed)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, required=True, help="products")
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--px", type=int, default=32, help="photo size (square)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", choices=["folder", "http"], default="folder")
    ap.add_argument("--port", type=int, default=8765, help="with --images http: serve on 127.0.0.1:PORT until Ctrl-C")
    args = ap.parse_args(argv)
    base = f"http://127.0.0.1:{args.port}" if args.images == "http" else None
    paths = write_catalog(args.out, args.n, args.classes, args.px, args.seed, args.images, base, progress=True)
    print(json.dumps(paths))
    if args.images == "http":
        server, url = serve(args.classes, args.px, args.seed, port=args.port)
        print(f"serving photos at {url} (Ctrl-C to stop)", file=sys.stderr)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
