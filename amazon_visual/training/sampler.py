"""Class-balanced P x K batches in ``tf.data``: P classes, K photos of each, per batch.

Pair losses need positives in every batch, which a plain shuffle of a catalog with many
classes rarely gives. :func:`pk_stream` draws, for each batch, P distinct classes uniformly
(a numpy generator seeded with ``seed``: the class schedule) and takes the next group of K
photos of each from that class's own stream, through ``tf.data.Dataset.choose_from_datasets``.
A class's stream reshuffles its photos (with a seed) every pass and cuts them into groups of
K distinct photos (the few left over in a pass wait for the next, differently shuffled,
pass). A class with fewer than K photos still works: its groups repeat photos (sampling
with replacement). Same data, same ``seed``: the same batches (the order is deterministic).

:func:`train_dataset` does this for DATA_DIR's train split (JPEG bytes cached in memory
when small, decoded and resized after the choice, augmented per batch).
"""

import os

import numpy as np

from amazon_visual.errors import UserError

SCHEDULE_MAX_BATCHES = 20000  # the class schedule repeats after this many batches
CACHE_LIMIT_BYTES = 1 << 30


def check_pk(counts, classes_per_batch, per_class, names=None, where="the train split"):
    """UserError unless P x K batches can be drawn from classes with ``counts`` photos."""
    counts = np.asarray(counts)
    present = int((counts > 0).sum())
    p, k = int(classes_per_batch), int(per_class)
    if present < 2:
        which = f" ({names[int(np.argmax(counts))]})" if names is not None and present == 1 else ""
        raise UserError(f"{where} holds photos of {present} class{which}: retrieval training needs at least 2 classes")
    if p < 2:
        raise UserError(f"--classes-per-batch {p} is too small: use at least 2 (a batch needs negatives)")
    if p > present:
        raise UserError(f"--classes-per-batch {p} is more than the {present} classes of {where}: use at most {present}")
    if k < 1:
        raise UserError(f"--per-class {k} is too small: use at least 1")
    if k > int(counts.max()):
        raise UserError(
            f"--per-class {k} is more than the photos of any class of {where} "
            f"(largest: {int(counts.max())}): use at most {int(counts.max())}"
        )
    return p, k


def class_schedule(counts, classes_per_batch, n_batches, seed=0):
    """int64 (n_batches * P,): for each batch, P distinct classes that have photos, drawn uniformly."""
    present = np.flatnonzero(np.asarray(counts) > 0)
    rng = np.random.default_rng(int(seed))
    batches = [rng.choice(present, int(classes_per_batch), replace=False) for _ in range(int(n_batches))]
    return np.concatenate(batches).astype(np.int64)


def pk_batches(labels, classes_per_batch, per_class, seed=0):
    """Endless P x K batches of indices into ``labels`` (examples held in memory, e.g. cached
    features): each batch P distinct classes drawn uniformly among those present, K examples of
    each, taken in turn from a permutation of the class redrawn when used up (so every example of a
    class comes before any comes again; a class with fewer than K examples repeats some). The same
    ``seed``, the same batches. Memory: one index array, whatever the number of classes."""
    labels = np.asarray(labels)
    p, k = int(classes_per_batch), int(per_class)
    rng = np.random.default_rng(int(seed))
    by_label = np.argsort(labels, kind="stable")
    present, starts, sizes = np.unique(labels[by_label], return_index=True, return_counts=True)
    members = [by_label[s : s + n] for s, n in zip(starts, sizes)]
    order = [rng.permutation(m) for m in members]
    cursor = [0] * len(members)
    while True:
        batch = []
        for c in rng.choice(len(present), p, replace=False):
            taken = 0
            while taken < k:
                if cursor[c] >= len(order[c]):
                    order[c], cursor[c] = rng.permutation(members[c]), 0
                n = min(k - taken, len(order[c]) - cursor[c])
                batch.extend(order[c][cursor[c] : cursor[c] + n])
                cursor[c] += n
                taken += n
        yield np.asarray(batch, np.int64)


def _class_groups(examples, label_index, c, n, k, seed):
    """Endless groups of K photos of class ``c`` (``n`` photos): distinct when ``n >= k``."""
    import tensorflow as tf

    one = examples.filter(lambda *ex: tf.equal(tf.cast(ex[label_index], tf.int64), c))
    one = one.shuffle(int(min(n, 4096)), seed=int(seed) * 1000003 + c, reshuffle_each_iteration=True)
    if n >= k:
        return one.batch(k, drop_remainder=True).repeat()
    return one.repeat().batch(k)


def pk_stream(examples, counts, classes_per_batch, per_class, seed=0, n_batches=SCHEDULE_MAX_BATCHES, label_index=1):
    """An endless, unbatched stream of ``examples`` (tuples whose ``label_index`` item is the
    class id) in P x K order: batch it with ``classes_per_batch * per_class``."""
    import tensorflow as tf

    counts, k = np.asarray(counts), int(per_class)
    streams = []
    for c in range(len(counts)):
        if counts[c] == 0:  # never scheduled; a placeholder keeps the class id as the index
            streams.append(examples.take(1).repeat().batch(k))
        else:
            streams.append(_class_groups(examples, label_index, c, int(counts[c]), k, seed))
    schedule = class_schedule(counts, classes_per_batch, min(int(n_batches), SCHEDULE_MAX_BATCHES), seed)
    choice = tf.data.Dataset.from_tensor_slices(schedule).repeat()
    return tf.data.Dataset.choose_from_datasets(streams, choice, stop_on_empty_dataset=False).unbatch()


def _encoded_split(data_dir, split):
    """(JPEG bytes, label) of a split, not decoded; cached in memory when the shards are small."""
    import tensorflow_datasets as tfds

    from amazon_visual import data

    b = data.builder(data_dir)
    ds = b.as_dataset(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}, read_config=tfds.ReadConfig(try_autocache=False)
    )
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    shard_bytes = sum(
        os.path.getsize(os.path.join(data_dir, f))
        for f in os.listdir(data_dir)
        if ".tfrecord" in f and f"-{split}." in f
    )
    return ds.cache() if shard_bytes <= CACHE_LIMIT_BYTES else ds


def train_dataset(
    data_dir, image_size, counts, classes_per_batch, per_class, augment=True, seed=0, n_batches=None, split="train"
):
    """Batches of (float32 images [0, 255], int labels), P x K per batch, forever."""
    import tensorflow as tf

    from amazon_visual import data
    from amazon_visual.training import pipeline

    stream = pk_stream(
        _encoded_split(data_dir, split),
        counts,
        classes_per_batch,
        per_class,
        seed=seed,
        n_batches=n_batches or SCHEDULE_MAX_BATCHES,
    )

    def decode(jpeg, label):
        image = tf.io.decode_image(jpeg, channels=3, expand_animations=False)
        return data.resize_image(image, int(image_size)), label

    ds = stream.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(int(classes_per_batch) * int(per_class), drop_remainder=True)
    level = augment if isinstance(augment, str) else ("medium" if augment else "none")
    if level != "none":
        aug = pipeline.augmenter(seed=seed, level=level)
        ds = ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True  # P x K order must survive the parallel maps
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
