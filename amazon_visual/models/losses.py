"""The multiclass hinge loss of the course project's linear SVM."""

import keras
from keras import ops


def multiclass_hinge(y_true, scores, margin=1.0):
    """Per-example multiclass hinge loss (Weston-Watkins / CS231n form).

    ``L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin)``.

    ``y_true``: one-hot (or label-smoothed: the arg-max is the true class) of shape
    (batch, classes), or integer labels of shape (batch,) / (batch, 1).
    ``scores``: raw class scores (batch, classes). Returns shape (batch,).
    """
    scores = ops.convert_to_tensor(scores)
    num_classes = ops.shape(scores)[-1]
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 2 and y_true.shape[-1] is not None and y_true.shape[-1] > 1:
        labels = ops.argmax(y_true, axis=-1)
    else:
        labels = ops.reshape(y_true, (-1,))
    one_hot = ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype=scores.dtype)
    correct = ops.sum(scores * one_hot, axis=-1, keepdims=True)
    margins = ops.maximum(0.0, scores - correct + ops.cast(margin, scores.dtype)) * (1.0 - one_hot)
    return ops.sum(margins, axis=-1)


@keras.saving.register_keras_serializable(package="amazon_visual")
class MulticlassHinge(keras.losses.Loss):
    """Mean over the batch of :func:`multiclass_hinge`; the L2 weight decay is the
    ``kernel_regularizer`` of the SVM's ``predictions`` layer (Keras adds it to the loss)."""

    def __init__(self, margin=1.0, name="multiclass_hinge", reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.margin = margin

    def call(self, y_true, y_pred):
        return multiclass_hinge(y_true, ops.cast(y_pred, "float32"), self.margin)

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config
