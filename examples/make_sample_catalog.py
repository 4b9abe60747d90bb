"""Make the package's embedded sample catalog from the clothing-small photos.

    python examples/make_sample_catalog.py [--source ../shared/datasets/clothing-small] \
        [--out amazon_visual/sample] [--per-class 100] [--max-side 160]

Takes ``--per-class`` photos of each of the 10 classes, chosen deterministically
(sorted file names, spread over the original train / validation / test splits),
resizes them so the longer side is at most ``--max-side`` pixels, and writes them
as ``images/<ASIN>.jpg`` next to ``meta_sample.jsonl.gz``: product metadata in the
2023 Amazon format (``parent_asin``, ``title``, ``main_category``, ``categories``,
``images``). The ASINs are Amazon-like 10-character ids made from a hash of the
photo's file name, so rerunning the script gives the same files byte for byte.

The photos are by Alexey Grigorev and contributors
(github.com/alexeygrigorev/clothing-dataset-small), dedicated to the public domain
under CC0-1.0.
"""

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import shutil
from collections import defaultdict

from PIL import Image

# clothing-small label -> display name, in the class order the sample uses
CLASS_NAMES = {
    "t-shirt": "T-Shirt",
    "longsleeve": "Longsleeve",
    "pants": "Pants",
    "shirt": "Shirt",
    "shoes": "Shoes",
    "dress": "Dress",
    "shorts": "Shorts",
    "outwear": "Outwear",
    "hat": "Hat",
    "skirt": "Skirt",
}
# share of each class's photos taken from each original split
SPLIT_SHARES = (("train", 0.7), ("validation", 0.15), ("test", 0.15))


def asin_for(file_name):
    """An Amazon-like 10-character id: 'B0' + 8 upper-case hex digits of a hash."""
    return "B0" + hashlib.sha1(file_name.encode("utf-8")).hexdigest()[:8].upper()


def choose(rows, per_class):
    """Pick ``per_class`` photos of each class: sorted names, spread over the splits."""
    by_class = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_class[r["label"]][r["split"]].append(r["image"])
    chosen = {}
    for label in CLASS_NAMES:
        splits = by_class[label]
        for names in splits.values():
            names.sort()
        wanted = {s: int(round(per_class * share)) for s, share in SPLIT_SHARES}
        wanted["train"] += per_class - sum(wanted.values())
        picked = []
        for split, n in wanted.items():
            picked += splits.get(split, [])[:n]
        # a split with too few photos: top up from the others, in the same order
        spare = [n for s, _ in SPLIT_SHARES for n in splits.get(s, []) if n not in picked]
        picked += spare[: per_class - len(picked)]
        chosen[label] = sorted(picked)
    return chosen


def resized_jpeg(path, max_side):
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = min(1.0, max_side / max(w, h))
        if scale < 1.0:
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85, optimize=True)
        return buf.getvalue()


def make(source, out, per_class=100, max_side=160):
    with open(os.path.join(source, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = choose(rows, per_class)

    images_out = os.path.join(out, "images")
    if os.path.isdir(images_out):
        shutil.rmtree(images_out)
    os.makedirs(images_out)

    records = []
    for label, display in CLASS_NAMES.items():
        for i, name in enumerate(chosen[label], start=1):
            asin = asin_for(name)
            with open(os.path.join(images_out, asin + ".jpg"), "wb") as f:
                f.write(resized_jpeg(os.path.join(source, "images", name), max_side))
            records.append(
                {
                    "parent_asin": asin,
                    "title": f"{display} \u2014 sample product {i}",
                    "main_category": "AMAZON FASHION",
                    "categories": ["Clothing, Shoes & Jewelry", "Clothing", display],
                    "images": [{"large": asin + ".jpg", "hi_res": None, "thumb": None, "variant": "MAIN"}],
                    "details": {"source_photo": name},
                }
            )
    records.sort(key=lambda r: r["parent_asin"])

    meta = os.path.join(out, "meta_sample.jsonl.gz")
    tmp = f"{meta}.tmp-{os.getpid()}"
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp, meta)
    return records


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=os.path.join(repo, "..", "shared", "datasets", "clothing-small"))
    parser.add_argument("--out", default=os.path.join(repo, "amazon_visual", "sample"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--max-side", type=int, default=160)
    args = parser.parse_args()
    records = make(args.source, args.out, args.per_class, args.max_side)
    print(f"wrote {len(records)} products to {args.out}")


if __name__ == "__main__":
    main()
