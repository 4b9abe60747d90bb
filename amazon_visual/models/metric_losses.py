"""Metric-learning losses for ``--objective retrieval``, written in ``keras.ops`` (any backend).

Every loss takes integer class labels ``y_true`` (shape (B,) or (B, 1)) and returns one
scalar for the batch.

Pair losses take ``y_pred`` = the L2-normalised embeddings (B, d); the cosine similarity
of two items is their dot product ``S = E E^T``:

- :class:`MultiSimilarityLoss` (Wang et al., CVPR 2019), with its pair mining: a negative
  pair (i, k) is kept when ``S_ik + margin > min_{positives j} S_ij``, a positive pair when
  ``S_ij - margin < max_{negatives k} S_ik``; then for each anchor i
  ``L_i = 1/alpha log(1 + sum_{kept pos} exp(-alpha (S_ij - base)))
  + 1/beta log(1 + sum_{kept neg} exp(beta (S_ik - base)))``, averaged over the batch.
- :class:`SupConLoss` (Khosla et al., NeurIPS 2020, L_out): for each anchor i with positives
  P(i), ``L_i = -1/|P(i)| sum_{p in P(i)} log(exp(S_ip / t) / sum_{a != i} exp(S_ia / t))``,
  averaged over the anchors that have positives.

Proxy losses take ``y_pred`` = the cosine similarities (B, C) of the embeddings to one
learned proxy per class, which a :class:`CosineProxies` layer holds as its weights (so
Keras trains, saves and restores them with the model that ends in that layer):

- :class:`ProxyAnchorLoss` (Kim et al., CVPR 2020): with P+ the proxies of classes present
  in the batch, ``L = 1/|P+| sum_{p in P+} log(1 + sum_{x of class p} exp(-alpha (s(x,p) - delta)))
  + 1/C sum_p log(1 + sum_{x not of class p} exp(alpha (s(x,p) + delta)))``.
- :class:`ArcFaceLoss` (Deng et al., CVPR 2019): softmax cross-entropy of the logits
  ``scale * cos(theta_y + margin)`` for the true class and ``scale * cos(theta_j)`` for the
  others (where ``theta_y + margin`` would pass pi, ``cos(theta_y) - margin * sin(margin)``).
"""

import math

import keras
from keras import ops

from amazon_visual.errors import UserError

_BIG = 1e4  # stands in for +-infinity in masked min / max / log-sum-exp (exp(-1e4) == 0)


def _labels(y_true):
    return ops.reshape(ops.cast(y_true, "int32"), (-1,))


def _pair_masks(labels):
    """(positive mask: same class, not the diagonal; negative mask: other class), float32 (B, B)."""
    same = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32")
    eye = ops.eye(ops.shape(labels)[0], dtype="float32")
    return same * (1.0 - eye), 1.0 - same


def log1p_sum_exp(x, mask):
    """Row-wise ``log(1 + sum_j mask_ij exp(x_ij))``, numerically stable."""
    masked = ops.where(mask > 0, x, -_BIG)
    zeros = ops.zeros_like(masked[:, :1])
    return ops.logsumexp(ops.concatenate([zeros, masked], axis=1), axis=1)


@keras.saving.register_keras_serializable(package="amazon_visual")
class MultiSimilarityLoss(keras.losses.Loss):
    def __init__(self, alpha=2.0, beta=50.0, base=0.5, margin=0.1, name="multi_similarity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.beta, self.base, self.margin = float(alpha), float(beta), float(base), float(margin)

    def call(self, y_true, y_pred):
        labels = _labels(y_true)
        emb = ops.cast(y_pred, "float32")
        sim = ops.matmul(emb, ops.transpose(emb))
        pos, neg = _pair_masks(labels)
        hardest_pos = ops.min(ops.where(pos > 0, sim, _BIG), axis=1, keepdims=True)
        hardest_neg = ops.max(ops.where(neg > 0, sim, -_BIG), axis=1, keepdims=True)
        keep_neg = neg * ops.cast(sim + self.margin > hardest_pos, "float32")
        keep_pos = pos * ops.cast(sim - self.margin < hardest_neg, "float32")
        pos_term = log1p_sum_exp(-self.alpha * (sim - self.base), keep_pos) / self.alpha
        neg_term = log1p_sum_exp(self.beta * (sim - self.base), keep_neg) / self.beta
        return ops.mean(pos_term + neg_term)

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "base": self.base,
            "margin": self.margin,
        }


@keras.saving.register_keras_serializable(package="amazon_visual")
class SupConLoss(keras.losses.Loss):
    def __init__(self, temperature=0.1, name="supcon", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        labels = _labels(y_true)
        emb = ops.cast(y_pred, "float32")
        logits = ops.matmul(emb, ops.transpose(emb)) / self.temperature
        pos, _ = _pair_masks(labels)
        not_self = 1.0 - ops.eye(ops.shape(labels)[0], dtype="float32")
        log_denominator = ops.logsumexp(ops.where(not_self > 0, logits, -_BIG), axis=1)
        n_pos = ops.sum(pos, axis=1)
        mean_pos_logit = ops.sum(pos * logits, axis=1) / ops.maximum(n_pos, 1.0)
        per_anchor = log_denominator - mean_pos_logit
        has_pos = ops.cast(n_pos > 0, "float32")
        return ops.sum(per_anchor * has_pos) / ops.maximum(ops.sum(has_pos), 1.0)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="amazon_visual")
class CosineProxies(keras.layers.Layer):
    """One learned proxy per class; outputs the cosine similarity (B, C) of each input
    embedding (already L2-normalised) to each L2-normalised proxy."""

    def __init__(self, num_classes, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def build(self, input_shape):
        self.proxies = self.add_weight(
            name="proxies", shape=(self.num_classes, int(input_shape[-1])), initializer="he_normal", trainable=True
        )

    def call(self, embeddings):
        proxies = self.proxies / ops.maximum(ops.norm(self.proxies, axis=1, keepdims=True), 1e-12)
        return ops.matmul(ops.cast(embeddings, "float32"), ops.transpose(proxies))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="amazon_visual")
class ProxyAnchorLoss(keras.losses.Loss):
    def __init__(self, alpha=32.0, delta=0.1, name="proxy_anchor", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.delta = float(alpha), float(delta)

    def call(self, y_true, y_pred):
        sim = ops.transpose(ops.cast(y_pred, "float32"))  # (C, B): one row per proxy
        onehot = ops.transpose(ops.one_hot(_labels(y_true), ops.shape(y_pred)[1], dtype="float32"))
        pos_term = log1p_sum_exp(-self.alpha * (sim - self.delta), onehot)
        neg_term = log1p_sum_exp(self.alpha * (sim + self.delta), 1.0 - onehot)
        present = ops.cast(ops.sum(onehot, axis=1) > 0, "float32")
        return ops.sum(pos_term * present) / ops.maximum(ops.sum(present), 1.0) + ops.mean(neg_term)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "delta": self.delta}


@keras.saving.register_keras_serializable(package="amazon_visual")
class ArcFaceLoss(keras.losses.Loss):
    def __init__(self, scale=30.0, margin=0.3, name="arcface", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale, self.margin = float(scale), float(margin)

    def call(self, y_true, y_pred):
        cos = ops.clip(ops.cast(y_pred, "float32"), -1.0, 1.0)
        onehot = ops.one_hot(_labels(y_true), ops.shape(y_pred)[1], dtype="float32")
        sin = ops.sqrt(ops.clip(1.0 - cos * cos, 1e-7, 1.0))
        m = self.margin
        with_margin = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        with_margin = ops.where(cos > math.cos(math.pi - m), with_margin, cos - m * math.sin(m))
        logits = self.scale * (onehot * with_margin + (1.0 - onehot) * cos)
        return ops.mean(keras.losses.categorical_crossentropy(onehot, logits, from_logits=True))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}


# name -> (loss class, uses proxies)
LOSSES = {
    "multi_similarity": (MultiSimilarityLoss, False),
    "supcon": (SupConLoss, False),
    "proxy_anchor": (ProxyAnchorLoss, True),
    "arcface": (ArcFaceLoss, True),
}
DEFAULT_LOSS = "multi_similarity"


def check_loss(name):
    """The normalised loss name; UserError for an unknown one."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in LOSSES:
        raise UserError(f"unknown --loss {name!r}: choose one of {', '.join(LOSSES)}")
    return key


def make_loss(name):
    return LOSSES[check_loss(name)][0]()


def uses_proxies(name):
    return LOSSES[check_loss(name)][1]
