"""The ``tf.data`` training and evaluation pipelines over a DATA_DIR.

Built on :func:`amazon_visual.data.load` (TFDS shards, parallel decode and resize to
float32 [0, 255]). Training: cache (small datasets) -> shuffle -> batch -> augmentation
(Keras random layers, parallel, on CPU) and one-hot labels -> repeat -> prefetch;
one epoch is ``ceil(n / batch_size)`` steps. Under multi-worker training the dataset
is sharded per worker by data (``AutoShardPolicy.DATA``).
"""

import math

from amazon_visual import data

# Cache decoded, resized images in memory when the split needs less than this.
CACHE_LIMIT_BYTES = 1 << 30


# Augmentation strength -> the augmenter's arguments (``augment=`` of the recipes).
AUGMENT_LEVELS = {
    "light": dict(zoom=0.05, rotation=0.0, contrast=0.0, translation=0.05),
    "medium": dict(zoom=0.1, rotation=0.04, contrast=0.2, translation=0.05),
    "strong": dict(zoom=0.2, rotation=0.08, contrast=0.3, translation=0.1),
}
# Levels built on Keras 3's mixed augmentations: RandAugment (two random operations of
# strength 0.5 per image, after a flip), MixUp and CutMix (blend two photos of the batch and
# their one-hot labels, on top of "light"). Where labels cannot mix (the feature cache's
# augmented views, the P x K batches of metric learning), mixup and cutmix are "light".
MIXED_LEVELS = ("randaugment", "mixup", "cutmix")
LABEL_MIXING = {"mixup": dict(alpha=0.2), "cutmix": dict(factor=1.0)}


def augmenter(seed=None, flip=True, zoom=0.1, rotation=0.04, contrast=0.2, translation=0.05, level=None):
    """Keras augmentation layers (random flip, zoom/crop, small rotation, translation,
    contrast) for float images in [0, 255]; ``level`` (light | medium | strong) sets
    them all from :data:`AUGMENT_LEVELS`; ``randaugment`` is a flip then Keras's RandAugment;
    ``mixup`` and ``cutmix`` give the images' part, ``light`` (:func:`label_mixer` mixes labels)."""
    import keras

    if level == "randaugment":
        layers = [keras.layers.RandomFlip("horizontal", seed=seed)] if flip else []
        layers.append(keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed))
        return keras.Sequential(layers, name="augment")
    if level in LABEL_MIXING:
        level = "light"
    if level is not None:
        return augmenter(seed=seed, flip=flip, **AUGMENT_LEVELS[level])

    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if translation:
        layers.append(keras.layers.RandomTranslation(translation, translation, fill_mode="nearest", seed=seed))
    if zoom:
        layers.append(keras.layers.RandomZoom((-zoom, zoom), fill_mode="nearest", seed=seed))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, fill_mode="nearest", seed=seed))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=seed))
    return keras.Sequential(layers, name="augment")


def label_mixer(level, seed=None):
    """A function (images, one-hot labels) -> (mixed images, mixed labels) for ``mixup`` /
    ``cutmix`` (Keras's MixUp / CutMix over the batch); ``None`` for the other levels."""
    import keras

    if level not in LABEL_MIXING:
        return None
    layer = {"mixup": keras.layers.MixUp, "cutmix": keras.layers.CutMix}[level](seed=seed, **LABEL_MIXING[level])

    def mix(x, y):
        out = layer({"images": x, "labels": y}, training=True)
        return out["images"], out["labels"]

    return mix


def steps(n, batch_size):
    return max(1, math.ceil(int(n) / int(batch_size)))


def _with_options(ds, shard_by_data):
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_deterministic = False
    if shard_by_data:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def train_dataset(
    data_dir,
    image_size,
    batch_size,
    num_classes,
    augment=True,
    seed=0,
    split="train",
    repeat=True,
    shard_by_data=False,
    cache=None,
):
    """Augmented, shuffled, one-hot, batched (global batch) training dataset.

    ``augment``: False/"none", True (medium), a level of :data:`AUGMENT_LEVELS` or of
    :data:`MIXED_LEVELS` (mixup / cutmix blend the photos and one-hot labels of a batch).
    With ``repeat`` it repeats forever: use ``steps(n, batch_size)`` steps per epoch."""
    import tensorflow as tf

    n = data.num_examples(data_dir, split)
    if cache is None:
        cache = n * image_size * image_size * 3 * 4 <= CACHE_LIMIT_BYTES
    ds = data.load(
        data_dir, split=split, image_size=image_size, as_supervised=True, shuffle=not cache, seed=seed, prefetch=False
    )
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(min(max(n, 1), 4096), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is True:
        augment = "medium"
    if augment and augment != "none":
        aug = augmenter(seed=seed, level=augment)
        ds = ds.map(
            lambda x, y: (aug(x, training=True), tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    mix = label_mixer(augment, seed=seed)
    if mix is not None:
        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        ds = ds.repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return _with_options(ds, shard_by_data)


def eval_dataset(
    data_dir,
    image_size,
    batch_size,
    num_classes=None,
    split="validation",
    repeat=False,
    shard_by_data=False,
    with_labels=True,
):
    """Batched, ordered, not augmented dataset of a split; labels one-hot when
    ``num_classes`` is given, integer otherwise. With ``repeat``, one pass is
    ``steps(n, batch_size)`` steps."""
    import tensorflow as tf

    ds = data.load(data_dir, split=split, image_size=image_size, as_supervised=True, prefetch=False)
    if num_classes:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    if not with_labels:
        ds = ds.map(lambda x, y: x)
    ds = ds.batch(int(batch_size))
    if repeat:
        ds = ds.repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return _with_options(ds, shard_by_data)


def label_counts(data_dir, split="train"):
    """Number of examples per class in a split (reads labels only, no image decoding)."""
    import numpy as np
    import tensorflow_datasets as tfds

    names = data.class_names(data_dir)
    counts = np.zeros(len(names), dtype=np.int64)
    if data.num_examples(data_dir, split) == 0:
        return counts
    b = data.builder(data_dir)
    ds = b.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: ex["label"]).batch(4096)
    for labels in ds.as_numpy_iterator():
        counts += np.bincount(labels, minlength=len(names))
    return counts
