"""The frozen phase on cached features.

With a pretrained backbone the first phase trains only the head, and the frozen backbone
would compute the same features for every photo in every epoch. Here it runs once per
*view*: view 0 is each training photo as it is, views 1.. are randomly augmented copies
(the recipe's augmentation, a different seed per view). The pooled features (the input
of the head) are stored in ``RUN_DIR/features/`` (one ``.npz`` per split and view, written
atomically, so a killed run keeps the views it finished), and the head -- the very
layers of the full model, sharing their weights -- trains on them for as many epochs as
the phase has, each epoch as many examples as the cached views hold (shuffled batches for a
classifier, P x K batches drawn from them for ``--objective retrieval``). Validation runs on
cached validation features. The fine-tuning phase then trains on photos as usual.

:func:`feature_model` (image -> pooled features) and :func:`head_model` (features ->
``net``'s output) compose to the full model: same weights in, same outputs.
"""

import os

import numpy as np

from amazon_visual.atomic import write_bytes

FEATURES_DIR = "features"
POOL_LAYER = "avg_pool"


def supports_cached_head(net):
    """True when ``net`` is backbone -> ``avg_pool`` -> a chain of head layers."""
    try:
        head_layers(net)
        return True
    except ValueError:
        return False


def head_layers(net):
    """The layers after ``avg_pool``, in order; ValueError unless they form a chain."""
    names = [layer.name for layer in net.layers]
    if POOL_LAYER not in names:
        raise ValueError(f"{net.name} has no {POOL_LAYER} layer")
    layers = net.layers[names.index(POOL_LAYER) + 1 :]
    previous = net.get_layer(POOL_LAYER)
    for layer in layers:
        inbound = layer._inbound_nodes[0].input_tensors if layer._inbound_nodes else []
        if len(inbound) != 1 or inbound[0]._keras_history[0] is not previous:
            raise ValueError(f"layer {layer.name} of {net.name} is not a plain chain after {POOL_LAYER}")
        previous = layer
    return layers


def feature_model(net):
    """image -> pooled backbone features (the head's input), sharing ``net``'s weights."""
    import keras

    return keras.Model(net.input, net.get_layer(POOL_LAYER).output, name=f"{net.name}_features")


def head_model(net):
    """pooled features -> ``net``'s output (probabilities, or the embedding of a retrieval run):
    ``net``'s own head layers on a new input."""
    import keras

    dim = int(net.get_layer(POOL_LAYER).output.shape[-1])
    x = inputs = keras.Input((dim,), name="features")
    for layer in head_layers(net):
        x = layer(x)
    return keras.Model(inputs, x, name=f"{net.name}_head")


def _path(run_dir, split, view):
    return os.path.join(run_dir, FEATURES_DIR, f"{split}_view{view}.npz")


def _save(path, features, labels):
    import io

    buf = io.BytesIO()
    np.savez(buf, features=features.astype(np.float32), labels=labels.astype(np.int64))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_bytes(path, buf.getvalue())


def _load(path):
    with np.load(path) as z:
        return z["features"], z["labels"]


def _split_dataset(data_dir, split, image_size, batch_size, augment, seed):
    import tensorflow as tf

    from amazon_visual import data
    from amazon_visual.training.pipeline import augmenter

    ds = data.load(data_dir, split=split, image_size=image_size, as_supervised=True, shuffle=False, prefetch=False)
    ds = ds.batch(int(batch_size))
    if augment and augment != "none":  # mixup / cutmix: their images' part (labels do not mix here)
        aug = augmenter(seed=seed, level=augment)
        ds = ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def compute(features, data_dir, split, image_size, batch_size=64, augment=None, seed=0):
    """(features (n, d) float32, labels (n,)) of a split through ``features`` (a model)."""
    feats, labels = [], []
    for x, y in _split_dataset(data_dir, split, image_size, batch_size, augment, seed):
        feats.append(np.asarray(features.predict_on_batch(x), np.float32))
        labels.append(np.asarray(y))
    if not feats:
        return np.zeros((0, int(features.output.shape[-1])), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(feats), np.concatenate(labels)


def cache_views(net, run_dir, data_dir, image_size, views, augment, seed=0, batch_size=64, splits=("train",), log=None):
    """Computes (or reads back) the cached features: ``views`` views of ``train``, one of the
    other splits. Returns {split: (features, labels)} with the train views concatenated."""
    fm = feature_model(net)
    out = {}
    for split in splits:
        n_views = int(views) if split == "train" else 1
        parts = []
        for view in range(n_views):
            path = _path(run_dir, split, view)
            if not os.path.isfile(path):
                if log:
                    log(
                        f"caching backbone features: {split}, view {view + 1}/{n_views}{' (augmented)' if view else ''}"
                    )
                f, y = compute(
                    fm, data_dir, split, image_size, batch_size, augment=augment if view else None, seed=seed + view
                )
                _save(path, f, y)
            parts.append(_load(path))
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def feature_dataset(features, labels, num_classes, batch_size, shuffle=True, seed=0, repeat=True):
    """tf.data over cached features with one-hot labels."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((features, tf.one_hot(labels, num_classes)))
    if shuffle:
        ds = ds.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size))
    if repeat:
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


def remove(run_dir):
    """Deletes RUN_DIR/features (called when the run has finished)."""
    import shutil

    shutil.rmtree(os.path.join(run_dir, FEATURES_DIR), ignore_errors=True)
