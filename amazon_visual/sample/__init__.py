"""The embedded sample catalog: 1,000 real product photos in 10 clothing classes (100 each).

Installed with the package so ``amazon-visual demo`` needs no other file.
``meta_sample.jsonl.gz`` holds the products' metadata in the 2023 Amazon format
(``parent_asin``, ``title``, ``main_category``, ``categories``, ``images``) and
``images/<ASIN>.jpg`` their photos (longer side at most 160 px).

The photos come from the "clothing dataset (subset)" by Alexey Grigorev and
contributors (github.com/alexeygrigorev/clothing-dataset-small), dedicated to the
public domain under CC0-1.0. ``examples/make_sample_catalog.py`` remakes them.
"""

import os

from amazon_visual.errors import UserError

#: the sample's classes, in label order (the last element of each product's category path)
CLASS_NAMES = ["T-Shirt", "Longsleeve", "Pants", "Shirt", "Shoes", "Dress", "Shorts", "Outwear", "Hat", "Skirt"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def path():
    """The folder that holds the sample catalog."""
    return _HERE


def metadata_path():
    """Path of the sample's metadata file (2023 Amazon JSONL format, gzipped)."""
    p = os.path.join(_HERE, "meta_sample.jsonl.gz")
    if not os.path.isfile(p):
        raise UserError(f"the embedded sample catalog is missing ({p}): reinstall amazon-visual")
    return p


def images_dir():
    """Folder of the sample's photos, one ``<ASIN>.jpg`` per product."""
    p = os.path.join(_HERE, "images")
    if not os.path.isdir(p):
        raise UserError(f"the embedded sample images are missing ({p}): reinstall amazon-visual")
    return p


def class_names():
    """The sample's class names in label order."""
    return list(CLASS_NAMES)


def products():
    """The sample's metadata records, as a list of dicts."""
    import gzip
    import json

    with gzip.open(metadata_path(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
