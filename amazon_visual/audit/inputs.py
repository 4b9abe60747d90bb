"""What the audit reads: INDEX_DIR (with its embeddings), DATA_DIR's photos, RUN_DIR; each checked.

- :func:`open_index`: the loaded index; an index without embeddings (or with ones that do not
  match its manifest) is one line.
- :func:`check_data`: DATA_DIR must be the dataset the index was embedded from (the manifest's
  ``dataset_fingerprint``, a SHA-256 of its ``dataset_info.json``), else one line.
- :func:`photos`: the photos of some items, as PIL images: from DATA_DIR (the stored photo, the
  largest the package keeps; each checked against the index's ``image_sha256``) or, without
  ``--data``, the index's thumbnails.
- :func:`check_run`: RUN_DIR must be a classifier trained on the index's dataset, else one line.
"""

import io
import os

from amazon_visual.errors import UserError


def open_index(index_dir):
    """The :class:`~amazon_visual.retrieval.index.Index` of INDEX_DIR; UserError without usable embeddings."""
    from amazon_visual.retrieval.index import load_index, read_manifest
    from amazon_visual.retrieval.layout import EMBEDDINGS

    manifest = read_manifest(index_dir)
    path = os.path.join(os.fspath(index_dir), manifest.get("embeddings_file") or EMBEDDINGS)
    if not os.path.isfile(path):
        raise UserError(
            f"{index_dir} has no embeddings ({os.path.basename(path)} is missing): the audit needs them; "
            "rebuild the index with amazon-visual index --overwrite"
        )
    return load_index(index_dir)


def check_data(index, data_dir):
    """UserError unless DATA_DIR is the dataset ``index`` was built from."""
    from amazon_visual.retrieval.embeddings import dataset_fingerprint

    data_dir = os.fspath(data_dir)
    if not os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        raise UserError(
            f"--data {data_dir} is not a dataset (no dataset_info.json): pass the DATA_DIR the index was built from"
        )
    want = index.manifest.get("dataset_fingerprint")
    got = dataset_fingerprint(data_dir)
    if want and got != want:
        raise UserError(
            f"--data {data_dir} is not the dataset {index.index_dir} was built from (fingerprint {got}, "
            f"the index's {want}; built from {index.manifest.get('data_dir')}): pass that dataset, "
            "or rebuild the index from this one"
        )


def _image_bytes(record):
    import tensorflow as tf

    return tf.train.Example.FromString(record).features.feature["image"].bytes_list.value[0]


def photos(index, ids, data_dir=None):
    """``{item id: PIL image}`` for ``ids``: DATA_DIR's stored photos, or the index's thumbnails."""
    from PIL import Image

    ids = sorted(set(int(i) for i in ids))
    if not ids:
        return {}
    if data_dir is None:
        out = {}
        for i in ids:
            path = index.thumb_path(i)
            if path is not None:
                with Image.open(path) as img:
                    out[i] = img.convert("RGB")
        return out
    return _dataset_photos(index, set(ids), data_dir)


def _dataset_photos(index, wanted, data_dir):
    import hashlib

    from PIL import Image

    from amazon_visual.retrieval import records

    splits = index.manifest.get("splits") or ["train", "validation", "test"]
    ranges, _ = records.plan(data_dir, splits, 4096)
    sha = index.items["image_sha256"].tolist()
    out = {}
    for rng in ranges:
        if not any(rng.offset <= i < rng.offset + len(rng) for i in wanted):
            continue
        for j, record in enumerate(records.read_range(rng)):
            i = rng.offset + j
            if i not in wanted:
                continue
            data = _image_bytes(record)
            if sha[i] and hashlib.sha256(data).hexdigest() != sha[i]:
                raise UserError(
                    f"--data {data_dir}: item {i} ({index.items['asin'].iloc[i]}) has another photo than "
                    f"the index: pass the dataset the index was built from, or rebuild the index"
                )
            out[i] = Image.open(io.BytesIO(data)).convert("RGB")
    return out


def check_run(run_dir, index, data_dir):
    """``(model, config, labels)`` of RUN_DIR; UserError unless it classifies the index's dataset."""
    from amazon_visual.training.runs import dataset_fingerprint, load_run

    model, config, labels = load_run(run_dir)
    if config.get("objective") == "retrieval":
        raise UserError(
            f"--run {run_dir} was trained with --objective retrieval and has no classifier: "
            "pass a classifier run of this dataset"
        )
    names = index.manifest.get("class_names")
    fp = (config.get("dataset_fingerprint") or {}).get("sha1")
    if (names and list(labels) != list(names)) or (fp and fp != dataset_fingerprint(data_dir)["sha1"]):
        raise UserError(
            f"--run {run_dir} was trained on another dataset than {data_dir} (other classes or split "
            "sizes): pass a run trained on the dataset the index was built from"
        )
    return model, config, labels
