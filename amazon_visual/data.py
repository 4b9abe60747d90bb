"""Read a DATA_DIR written by ``amazon-visual build-data`` as ``tf.data``.

A DATA_DIR is a plain tensorflow-datasets directory (``dataset_info.json``,
``features.json`` and TFRecord shards), so ``tfds.builder_from_directory(DATA_DIR)``
reads it too; the functions here add the checks and the image resizing every
stage needs::

    from amazon_visual import data
    ds = data.load("data/clothing", split="train", image_size=224, batch_size=32,
                   shuffle=True, as_supervised=True)
    data.class_names("data/clothing")      # ['dress', 'hat', ...]
    data.num_examples("data/clothing", "test")
"""

import functools
import json
import os

from amazon_visual.errors import UserError

SPLITS = ("train", "validation", "test")
BUILDER_NAME = "amazon_products"


def _not_a_dataset(data_dir, why=""):
    extra = f" ({why})" if why else ""
    return UserError(f"{data_dir} is not an amazon-visual dataset: run amazon-visual build-data first{extra}")


def _check_dir(data_dir):
    data_dir = os.fspath(data_dir)
    info = os.path.join(data_dir, "dataset_info.json")
    if not os.path.isfile(info):
        raise _not_a_dataset(data_dir, "no dataset_info.json")
    try:
        with open(info, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise _not_a_dataset(data_dir, f"unreadable dataset_info.json: {e}") from None
    if meta.get("name") != BUILDER_NAME:
        raise _not_a_dataset(data_dir, f"dataset name is {meta.get('name')!r}, not {BUILDER_NAME!r}")
    return data_dir, meta


@functools.lru_cache(maxsize=16)
def _builder_cached(data_dir, mtime):
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(data_dir)


def builder(data_dir):
    """The ``tfds`` builder of DATA_DIR (raises UserError when it is not a dataset)."""
    data_dir, _ = _check_dir(data_dir)
    mtime = os.path.getmtime(os.path.join(data_dir, "dataset_info.json"))
    try:
        return _builder_cached(os.path.abspath(data_dir), mtime)
    except Exception as e:  # corrupt / foreign directory
        raise _not_a_dataset(data_dir, f"{type(e).__name__}: {e}") from None


def info(data_dir):
    """``tfds.core.DatasetInfo`` of DATA_DIR."""
    return builder(data_dir).info


def class_names(data_dir):
    """Class names in label order."""
    return list(info(data_dir).features["label"].names)


def splits(data_dir):
    """Names of the splits DATA_DIR holds (a split with no example is not written)."""
    return list(info(data_dir).splits.keys())


def num_examples(data_dir, split="train"):
    """Number of examples of ``split`` (0 for a split the dataset does not hold)."""
    sp = info(data_dir).splits
    base = split.split("[")[0]
    if base not in sp:
        if base in SPLITS:
            return 0
        raise UserError(f"{data_dir} has no split {split!r}: use one of {', '.join(sp.keys())}")
    return int(sp[split].num_examples)


def build_report(data_dir):
    """The ``build_report.json`` build-data wrote into DATA_DIR ({} when absent)."""
    data_dir, _ = _check_dir(data_dir)
    path = os.path.join(data_dir, "build_report.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resize_image(image, image_size, method="pad"):
    """Resize one uint8 HxWx3 image to float32 ``image_size`` x ``image_size`` x 3 in [0, 255].

    ``method="pad"`` keeps the aspect ratio and pads with white (product photos sit
    on white); ``"stretch"`` resizes without keeping it.
    """
    import tensorflow as tf

    image = tf.cast(image, tf.float32)
    if method == "stretch":
        out = tf.image.resize(image, (image_size, image_size))
    elif method == "pad":
        # resize_with_pad pads with 0: shift so that the padding becomes 255 (white)
        out = tf.image.resize_with_pad(image - 255.0, image_size, image_size) + 255.0
    else:
        raise UserError(f"unknown resize method {method!r}: use 'pad' or 'stretch'")
    out = tf.clip_by_value(out, 0.0, 255.0)
    out.set_shape((image_size, image_size, 3))
    return out


def load(
    data_dir,
    split="train",
    image_size=None,
    batch_size=None,
    shuffle=False,
    as_supervised=False,
    resize="pad",
    shuffle_buffer=2048,
    seed=None,
    repeat=False,
    prefetch=True,
    drop_remainder=False,
    cache=False,
):
    """A ``tf.data.Dataset`` of one split of DATA_DIR.

    Args:
      data_dir: folder written by ``amazon-visual build-data``.
      split: ``"train"``, ``"validation"``, ``"test"`` or any tfds split expression
        (``"train[:10%]"``, ``"train+validation"``).
      image_size: when set, images become float32 ``(image_size, image_size, 3)`` in
        [0, 255] (see :func:`resize_image`); when None they stay uint8 of their stored size.
      batch_size: batch the examples (needs ``image_size``, images differ in size).
      shuffle: shuffle the files and the examples (``shuffle_buffer``, ``seed``).
      as_supervised: yield ``(image, label)`` pairs instead of feature dicts.
      resize: ``"pad"`` (keep aspect ratio, pad white) or ``"stretch"``.
    """
    import tensorflow as tf

    b = builder(data_dir)
    available = list(b.info.splits.keys())
    for part in split.split("+"):
        base = part.split("[")[0].strip()
        if base not in available:
            raise UserError(f"{data_dir} has no split {base!r}: use one of {', '.join(available)}")
    if batch_size and not image_size:
        raise UserError("batch_size needs image_size: the stored images differ in size")
    import tensorflow_datasets as tfds

    # no tfds auto-cache: it keeps small datasets in memory behind the caller's back (``cache=True`` asks)
    read_config = tfds.ReadConfig(try_autocache=False, shuffle_seed=seed if shuffle else None)
    ds = b.as_dataset(split=split, shuffle_files=bool(shuffle), read_config=read_config)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def convert(ex):
        ex = dict(ex)
        if image_size:
            ex["image"] = resize_image(ex["image"], int(image_size), resize)
        if as_supervised:
            return ex["image"], ex["label"]
        return ex

    if image_size or as_supervised:
        ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size:
        ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds
