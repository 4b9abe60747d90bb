"""Metric losses (keras.ops) against numpy references written loop by loop from the papers' formulas."""

import math

import numpy as np
import pytest

from amazon_visual.errors import UserError


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _batch(seed=0, n=8, d=5, classes=(0, 0, 1, 1, 1, 2, 2, 3)):
    rng = np.random.default_rng(seed)
    return _unit(rng, n, d), np.asarray(classes[:n])


def np_multi_similarity(emb, labels, alpha=2.0, beta=50.0, base=0.5, margin=0.1):
    s = emb @ emb.T
    n = len(labels)
    losses = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        min_pos = min(s[i, j] for j in pos) if pos else math.inf
        max_neg = max(s[i, j] for j in neg) if neg else -math.inf
        kept_pos = [j for j in pos if s[i, j] - margin < max_neg]
        kept_neg = [j for j in neg if s[i, j] + margin > min_pos]
        lp = math.log(1 + sum(math.exp(-alpha * (s[i, j] - base)) for j in kept_pos)) / alpha
        ln = math.log(1 + sum(math.exp(beta * (s[i, j] - base)) for j in kept_neg)) / beta
        losses.append(lp + ln)
    return float(np.mean(losses))


def np_supcon(emb, labels, t=0.1):
    s = emb @ emb.T / t
    n = len(labels)
    losses = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denominator = sum(math.exp(s[i, a]) for a in range(n) if a != i)
        losses.append(-sum(math.log(math.exp(s[i, p]) / denominator) for p in pos) / len(pos))
    return float(np.mean(losses))


def np_proxy_anchor(emb, labels, proxies, alpha=32.0, delta=0.1):
    proxies = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    s = emb @ proxies.T
    n, c = s.shape
    present = sorted(set(labels.tolist()))
    pos = sum(
        math.log(1 + sum(math.exp(-alpha * (s[x, p] - delta)) for x in range(n) if labels[x] == p)) for p in present
    ) / len(present)
    neg = (
        sum(
            math.log(1 + sum(math.exp(alpha * (s[x, p] + delta)) for x in range(n) if labels[x] != p)) for p in range(c)
        )
        / c
    )
    return pos + neg


def np_arcface(emb, labels, proxies, scale=30.0, margin=0.3):
    proxies = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    cos = emb @ proxies.T
    losses = []
    for x in range(len(labels)):
        logits = scale * cos[x].copy()
        y = labels[x]
        theta = math.acos(min(1.0, max(-1.0, cos[x, y])))
        if theta + margin < math.pi:
            logits[y] = scale * math.cos(theta + margin)
        else:
            logits[y] = scale * (cos[x, y] - margin * math.sin(margin))
        losses.append(-(logits[y] - math.log(sum(math.exp(v) for v in logits))))
    return float(np.mean(losses))


def _keras_loss(loss, labels, y_pred):
    import keras

    return float(keras.ops.convert_to_numpy(loss(labels, y_pred.astype(np.float32))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_similarity_matches_numpy(seed):
    from amazon_visual.models.metric_losses import MultiSimilarityLoss

    emb, labels = _batch(seed)
    assert _keras_loss(MultiSimilarityLoss(), labels, emb) == pytest.approx(np_multi_similarity(emb, labels), rel=1e-4)
    loose = MultiSimilarityLoss(alpha=1.0, beta=10.0, base=0.3, margin=0.5)
    assert _keras_loss(loose, labels, emb) == pytest.approx(
        np_multi_similarity(emb, labels, 1.0, 10.0, 0.3, 0.5), rel=1e-4
    )


def test_multi_similarity_by_hand():
    """Two classes on a line: every pair's similarity is +-1, so the sums can be written out."""
    from amazon_visual.models.metric_losses import MultiSimilarityLoss

    emb = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    labels = np.array([0, 0, 1, 1])
    # positives at S = 1 are not kept (1 - 0.1 < -1 is false); negatives at S = -1 neither: no pair is hard
    assert _keras_loss(MultiSimilarityLoss(), labels, emb) == pytest.approx(0.0, abs=1e-6)
    # now each anchor's positive sits at -1, its negatives at +1 and -1: every pair is kept
    swapped = np.array([0, 1, 0, 1])
    expected = (
        math.log(1 + math.exp(-2 * (-1 - 0.5))) / 2
        + math.log(1 + math.exp(50 * (1 - 0.5)) + math.exp(50 * (-1 - 0.5))) / 50
    )
    assert _keras_loss(MultiSimilarityLoss(), swapped, emb) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 3])
def test_supcon_matches_numpy(seed):
    from amazon_visual.models.metric_losses import SupConLoss

    emb, labels = _batch(seed)  # class 3 has a single item: it is no anchor, only a negative
    assert _keras_loss(SupConLoss(), labels, emb) == pytest.approx(np_supcon(emb, labels), rel=1e-4)
    assert _keras_loss(SupConLoss(temperature=0.5), labels, emb) == pytest.approx(np_supcon(emb, labels, 0.5), rel=1e-4)


def _proxy_sims(emb, proxies):
    import keras

    from amazon_visual.models.metric_losses import CosineProxies

    layer = CosineProxies(proxies.shape[0])
    layer.build((None, proxies.shape[1]))
    layer.proxies.assign(proxies.astype(np.float32))
    return keras.ops.convert_to_numpy(layer(emb.astype(np.float32)))


@pytest.mark.parametrize("seed", [0, 4])
def test_proxy_anchor_matches_numpy(seed):
    from amazon_visual.models.metric_losses import ProxyAnchorLoss

    emb, labels = _batch(seed)
    proxies = np.random.default_rng(seed + 10).standard_normal((5, emb.shape[1]))  # class 4: no item in the batch
    sims = _proxy_sims(emb, proxies)
    np.testing.assert_allclose(sims, emb @ (proxies / np.linalg.norm(proxies, axis=1, keepdims=True)).T, atol=1e-5)
    assert _keras_loss(ProxyAnchorLoss(), labels, sims) == pytest.approx(
        np_proxy_anchor(emb, labels, proxies), rel=1e-4
    )


@pytest.mark.parametrize("seed", [0, 5])
def test_arcface_matches_numpy(seed):
    from amazon_visual.models.metric_losses import ArcFaceLoss

    emb, labels = _batch(seed)
    proxies = np.random.default_rng(seed + 20).standard_normal((4, emb.shape[1]))
    sims = _proxy_sims(emb, proxies)
    assert _keras_loss(ArcFaceLoss(), labels, sims) == pytest.approx(np_arcface(emb, labels, proxies), rel=1e-4)
    # theta + margin past pi: the true class's proxy points away from the item
    far = np.array([[-1.0, 0.0]])
    proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert _keras_loss(ArcFaceLoss(margin=0.5), np.array([0]), _proxy_sims(far, proxies)) == pytest.approx(
        np_arcface(far, np.array([0]), proxies, margin=0.5), rel=1e-4
    )


@pytest.mark.parametrize("name", ["multi_similarity", "supcon", "proxy_anchor", "arcface"])
def test_losses_have_gradients_and_learn(name):
    """A few steps of gradient descent on free embeddings lower every loss (no NaN)."""
    import keras
    import tensorflow as tf

    from amazon_visual.models.metric_losses import CosineProxies, make_loss, uses_proxies

    emb0, labels = _batch(7, n=8, d=6)
    var = tf.Variable(emb0.astype(np.float32))
    proxies = CosineProxies(4)
    proxies.build((None, 6))
    loss = make_loss(name)
    opt = keras.optimizers.SGD(0.05)
    variables = [var] + (proxies.trainable_weights if uses_proxies(name) else [])
    values = []
    for _ in range(30):
        with tf.GradientTape() as tape:
            e = tf.math.l2_normalize(var, axis=1)
            value = loss(labels, proxies(e) if uses_proxies(name) else e)
        grads = tape.gradient(value, variables)
        assert all(np.isfinite(g.numpy()).all() for g in grads)
        opt.apply_gradients(zip(grads, variables))
        values.append(float(value))
    assert values[-1] < values[0]


def test_unknown_loss_is_a_user_error():
    from amazon_visual.models.metric_losses import check_loss

    assert check_loss("Proxy-Anchor") == "proxy_anchor"
    with pytest.raises(UserError, match="unknown --loss 'triplet': choose one of multi_similarity, supcon"):
        check_loss("triplet")
