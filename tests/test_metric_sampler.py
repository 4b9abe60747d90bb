"""The P x K class-balanced sampler: batch composition, determinism, small classes, bad input."""

import numpy as np
import pytest

from amazon_visual.errors import UserError


def _items(counts):
    """Item i of class c has the id 100 * c + i, so repeats and classes can be read off."""
    ids = np.concatenate([100 * c + np.arange(n) for c, n in enumerate(counts)]).astype(np.int64)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    order = np.random.default_rng(0).permutation(len(ids))
    return ids[order], labels[order]


def _batches(counts, p, k, seed, n):
    import tensorflow as tf

    from amazon_visual.training.sampler import pk_stream

    ids, labels = _items(counts)
    ds = pk_stream(tf.data.Dataset.from_tensor_slices((ids, labels)), np.asarray(counts), p, k, seed=seed)
    return [(x, y) for x, y in ds.batch(p * k).take(n).as_numpy_iterator()]


def test_every_batch_holds_p_classes_of_k_photos():
    counts = [9, 5, 7, 0, 12, 6]  # class 3 has no photo in this split
    for x, y in _batches(counts, p=3, k=4, seed=1, n=25):
        classes, per = np.unique(y, return_counts=True)
        assert len(classes) == 3 and (per == 4).all() and 3 not in classes
        assert ((x // 100) == y).all()  # each photo is of the class it is labelled with
        for c in classes:  # K distinct photos when the class has at least K
            assert len(set(x[y == c])) == 4


def test_every_photo_is_seen_and_classes_are_balanced():
    counts = [30, 4, 8, 16]
    seen, classes = set(), []
    for x, y in _batches(counts, p=2, k=4, seed=0, n=200):
        seen.update(x.tolist())
        classes.extend(np.unique(y).tolist())
    assert len(seen) == sum(counts)
    share = np.bincount(classes, minlength=4) / len(classes)
    np.testing.assert_allclose(share, 0.25, atol=0.06)  # uniform over classes, whatever their size


def test_classes_smaller_than_k_repeat_photos():
    counts = [2, 10, 1]
    for x, y in _batches(counts, p=3, k=4, seed=3, n=5):
        assert sorted(set(x[y == 0] % 100)) == [0, 1]  # both photos, twice each
        assert (x[y == 2] == 200).all() and (y == 2).sum() == 4


def test_same_seed_same_batches_other_seed_other_batches():
    counts = [9, 5, 7, 12]
    a = _batches(counts, 2, 3, seed=5, n=12)
    b = _batches(counts, 2, 3, seed=5, n=12)
    c = _batches(counts, 2, 3, seed=6, n=12)
    assert all((xa == xb).all() and (ya == yb).all() for (xa, ya), (xb, yb) in zip(a, b))
    assert any((xa != xc).any() for (xa, _), (xc, _) in zip(a, c))


def test_train_dataset_on_a_data_dir(tmp_path):
    import helpers_training
    from amazon_visual.training import pipeline
    from amazon_visual.training.sampler import train_dataset

    data_dir = helpers_training.tiny_dataset(
        tmp_path, classes=("red", "green", "blue", "stripes"), per_class=6, size=32
    )
    counts = pipeline.label_counts(data_dir, "train")
    runs = [
        list(train_dataset(data_dir, 32, counts, 2, 3, augment=False, seed=2).take(3).as_numpy_iterator())
        for _ in range(2)
    ]
    for (x, y), (x2, y2) in zip(*runs):
        assert x.shape == (6, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
        assert sorted(np.unique(y, return_counts=True)[1]) == [3, 3]
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
        means = x.reshape(6, -1, 3).mean(1)  # the generated classes differ in colour: labels match images
        for c in range(3):
            assert (means[y == c].argmax(1) == c).all()


@pytest.mark.parametrize(
    "p,k,counts,message",
    [
        (5, 2, [3, 3, 3, 0], "--classes-per-batch 5 is more than the 3 classes"),
        (1, 2, [3, 3], "--classes-per-batch 1 is too small"),
        (2, 9, [3, 8, 2], r"--per-class 9 is more than the photos of any class .*largest: 8.*use at most 8"),
        (2, 0, [3, 3], "--per-class 0 is too small"),
        (2, 2, [0, 7, 0], r"holds photos of 1 class \(b\): retrieval training needs at least 2"),
    ],
)
def test_check_pk_errors(p, k, counts, message):
    from amazon_visual.training.sampler import check_pk

    with pytest.raises(UserError, match=message):
        check_pk(counts, p, k, names=["a", "b", "c", "d"])
    assert check_pk([3, 8, 2], 3, 8) == (3, 8)


def test_pk_batches_over_examples_in_memory():
    """P distinct classes x K each; every example of a class before any repeats; the same seed, the
    same batches; a class with fewer than K examples repeats some."""
    import itertools

    import numpy as np

    from amazon_visual.training.sampler import pk_batches

    labels = np.array([0] * 6 + [1] * 6 + [2] * 6 + [3] * 1 + [5] * 4)  # no class 4; class 3 has 1 example
    batches = list(itertools.islice(pk_batches(labels, 3, 2, seed=7), 60))
    again = list(itertools.islice(pk_batches(labels, 3, 2, seed=7), 60))
    assert all((a == b).all() for a, b in zip(batches, again))
    assert any((a != b).any() for a, b in zip(batches, itertools.islice(pk_batches(labels, 3, 2, seed=8), 60)))
    seen = {c: [] for c in (0, 1, 2, 3, 5)}
    for b in batches:
        assert b.shape == (6,) and b.dtype == np.int64
        groups = labels[b].reshape(3, 2)
        assert (groups[:, 0] == groups[:, 1]).all() and len(set(groups[:, 0])) == 3  # P distinct classes x K
        for idx in b.reshape(3, 2):
            seen[int(labels[idx[0]])].extend(int(i) for i in idx)
    assert 4 not in labels[np.concatenate(batches)]
    for c, taken in seen.items():
        members = set(np.flatnonzero(labels == c).tolist())
        n = len(members)
        for start in range(0, len(taken) - n + 1, n):  # each run of n draws is one whole permutation
            assert set(taken[start : start + n]) == members, (c, taken)
    assert seen[3] and set(seen[3]) == {18}  # one example, drawn twice per batch
