"""The phases of a run: which layers train, the optimizer, the loss, the learning rate.

From scratch a run has one phase, ``train``. From pretrained weights it has two: ``head``
(the backbone frozen) then ``fine_tune`` (the backbone trainable from ``fine_tune_at``,
batch norm layers kept frozen, a smaller learning rate).
"""

from amazon_visual.errors import UserError

DEFAULT_FINE_TUNE_AT = {
    "resnet50": "conv5_block1",
    "vgg16": "block5_conv1",
    "vgg16_bn": "block5_conv1",
    "vgg19": "block5_conv1",
    "resnet101": "conv5_block1",
    "resnet152": "conv5_block1",
}


def resolve_fine_tune_at(backbone, fine_tune_at, model_name):
    layers = backbone.layers
    if fine_tune_at is None or fine_tune_at == "":
        fine_tune_at = DEFAULT_FINE_TUNE_AT.get(model_name)
        if fine_tune_at is None:
            return int(len(layers) * 0.7)
    spec = str(fine_tune_at)
    if spec.lstrip("-").isdigit():
        idx = int(spec)
        if idx < 0:
            idx += len(layers)
        if not 0 <= idx < len(layers):
            raise UserError(
                f"--fine-tune-at {spec} is out of range: the {model_name} backbone has {len(layers)} layers"
            )
        return idx
    for i, layer in enumerate(layers):
        if layer.name == spec:
            return i
    for i, layer in enumerate(layers):
        if layer.name.startswith(spec):
            return i
    examples = ", ".join(sorted({layer.name.split("_")[0] for layer in layers if "_" in layer.name})[:8])
    raise UserError(
        f"--fine-tune-at {spec!r} names no layer of the {model_name} backbone: give a layer "
        f"name, a name prefix (e.g. {examples}) or an index 0..{len(layers) - 1}"
    )


def set_phase_trainable(model, phase, fine_tune_from):
    import keras

    from amazon_visual.models import find_backbone

    backbone = find_backbone(model)
    if backbone is None:
        return
    if phase == "head":
        backbone.trainable = False
    elif phase == "fine_tune":
        backbone.trainable = True
        for i, layer in enumerate(backbone.layers):
            frozen = i < fine_tune_from or isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = not frozen
    else:
        backbone.trainable = True


def make_optimizer(name, lr, weight_decay, ema_momentum=None):
    """AdamW with decoupled weight decay (biases and batch norm excluded), Adam for svm or
    without decay. ``ema_momentum``: keep an exponential moving average of the weights
    (Keras ``use_ema``; :func:`amazon_visual.training.callbacks.ema_callbacks` puts it in the
    model for validation and saving, and ``fit`` leaves it in the model at the end)."""
    import keras

    ema = {"use_ema": True, "ema_momentum": float(ema_momentum)} if ema_momentum else {}
    if name == "svm" or not weight_decay:
        return keras.optimizers.Adam(learning_rate=lr, **ema)
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay, **ema)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "moving"])
    return opt


def compile_model(fit_model, name, learning_rate, weight_decay=1e-4, label_smoothing=0.1, ema_momentum=None):
    """Compiles a model as ``train`` does: multiclass hinge for svm (on its scores model,
    see :func:`amazon_visual.models.svm.training_model`), else categorical cross-entropy
    with label smoothing; AdamW (Adam for svm, whose L2 decay is a kernel regularizer),
    with an EMA of the weights when ``ema_momentum`` is given; metric ``accuracy`` on one-hot labels."""
    import keras

    from amazon_visual import models

    if models.model_info(name)["loss"] == "multiclass_hinge":
        from amazon_visual.models.losses import MulticlassHinge

        loss = MulticlassHinge()
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing or 0.0)
    fit_model.compile(
        optimizer=make_optimizer(name, learning_rate, weight_decay, ema_momentum),
        loss=loss,
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return fit_model
