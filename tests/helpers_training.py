"""Datasets for the training/evaluation tests and benchmarks, built with build_data.

- ``tiny_dataset(root, ...)``: generated images whose class is a colour/stripe pattern,
  so a model can learn it in a few steps.
- ``clothing_small(root, image_size)``: ../shared/datasets/clothing-small (or
  $AMAZON_VISUAL_CLOTHING_SMALL) turned into a DATA_DIR through a 2018-format metadata file.
"""

import csv
import json
import os

import numpy as np

CLOTHING_SMALL = os.environ.get(
    "AMAZON_VISUAL_CLOTHING_SMALL",
    os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets", "clothing-small")
    ),
)
TOP = "Clothing, Shoes & Jewelry"


def _write_meta(path, items):
    with open(path, "w", encoding="utf-8") as f:
        for asin, label, file_name in items:
            f.write(
                json.dumps(
                    {
                        "asin": asin,
                        "title": f"{label} {asin}",
                        "category": [TOP, "Clothing", label],
                        "imageURL": [file_name],
                    }
                )
                + "\n"
            )


def tiny_dataset(root, classes=("red", "green", "blue"), per_class=12, size=40, seed=0, name="data"):
    """Builds a DATA_DIR of ``per_class`` generated images per class under ``root``."""
    from PIL import Image

    from tfrecords_builder.build import build_data

    root = os.fspath(root)
    images = os.path.join(root, f"{name}-images")
    os.makedirs(images, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for c, label in enumerate(classes):
        for i in range(per_class):
            img = rng.integers(0, 60, size=(size, size, 3)).astype(np.int32)
            img[..., c % 3] += 150
            if c >= 3:  # more classes than channels: add stripes
                img[:: (c - 1), :, :] = 255
            asin = f"A{c:02d}{i:04d}"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(images, f"{asin}.jpg"), quality=95)
            items.append((asin, label, f"{asin}.jpg"))
    meta = os.path.join(root, f"{name}-meta.jsonl")
    _write_meta(meta, items)
    out = os.path.join(root, name)
    build_data(
        meta,
        out,
        images_dir=images,
        categories=list(classes),
        image_size=size,
        splits=(0.6, 0.2, 0.2),
        seed=seed,
        workers=1,
        progress=False,
    )
    return out


def clothing_small(root, image_size=64, source=CLOTHING_SMALL, name=None, per_class=None):
    """DATA_DIR of clothing-small at ``image_size`` (longer side) under ``root``; reused when present.
    ``per_class``: only the first N photos of each class (in labels.csv order)."""
    from tfrecords_builder.build import build_data

    root = os.fspath(root)
    out = os.path.join(root, name or f"clothing-small-{image_size}")
    if os.path.isfile(os.path.join(out, "dataset_info.json")):
        return out
    os.makedirs(root, exist_ok=True)
    items, labels = [], []
    with open(os.path.join(source, "labels.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if per_class is not None and sum(lab == row["label"] for _, lab, _ in items) >= per_class:
                continue
            stem = os.path.splitext(row["image"])[0]
            items.append((stem, row["label"], row["image"]))
            if row["label"] not in labels:
                labels.append(row["label"])
    meta = os.path.join(root, f"{os.path.basename(out)}-meta.jsonl")
    _write_meta(meta, items)
    build_data(
        meta,
        out,
        images_dir=os.path.join(source, "images"),
        categories=sorted(labels),
        image_size=image_size,
        seed=0,
        progress=False,
    )
    return out
