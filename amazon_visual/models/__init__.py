"""Model families and the registry by name.

The five models of the course project -- ``svm``, ``alexnet``, ``vgg16``, ``vgg16_bn``,
``resnet50`` --, ``resnet_small`` (a half-width ResNet-18 layout for small photos from
scratch, :mod:`.resnet_small`) and any other ``keras.applications`` backbone by snake-case
name (``mobilenet_v2``, ``efficientnet_b0``, ``convnext_tiny``, ...).

Every model takes float32 RGB images in [0, 255] of shape (image_size, image_size, 3),
does its own preprocessing in its first layer, has a layer named ``embedding`` (the input
of the final classification layer ``predictions``) and outputs softmax probabilities.

- :func:`build` (name, num_classes, image_size, weights, ...) -> keras.Model
- :func:`build_embedder` (name, image_size, weights) -> pooled-feature extractor
- :func:`embedding_model` (model) -> sub-model input -> ``embedding``
- :func:`available_models`, :func:`model_info`
"""

from amazon_visual.errors import UserError

FIVE = ("svm", "alexnet", "vgg16", "vgg16_bn", "resnet50")
SMALL = ("resnet_small",)  # written here for small photos from scratch
_HAND = {"svm": "centered", "alexnet": "unit", "vgg16_bn": "caffe", "resnet_small": "unit"}
_FAMILY = {"svm": "svm", "alexnet": "alexnet", "vgg16_bn": "vgg", "resnet_small": "resnet_small"}
WIDTH_MODELS = ("alexnet", "vgg16_bn", "resnet_small")


def available_models():
    """The five course models first, then ``resnet_small``, then every other keras.applications backbone."""
    from amazon_visual.models import applications

    others = [n for n in applications.available_applications() if n not in FIVE + SMALL]
    return list(FIVE) + list(SMALL) + others


def _check_name(name):
    name = str(name).strip().lower().replace("-", "_")
    if name not in available_models():
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(available_models())}")
    return name


def model_info(name):
    """{"name", "family", "preprocessing", "pretrainable", "two_phase_capable"} for a model name."""
    from amazon_visual.models import applications

    name = _check_name(name)
    if name in _HAND:
        return {
            "name": name,
            "family": _FAMILY[name],
            "preprocessing": _HAND[name],
            "pretrainable": name == "vgg16_bn",
            "loss": "multiclass_hinge" if name == "svm" else "crossentropy",
        }
    return {
        "name": name,
        "family": "applications",
        "preprocessing": applications.preprocessing_mode(name),
        "pretrainable": True,
        "loss": "crossentropy",
    }


def build(name, num_classes, image_size=224, weights="none", **kwargs):
    """Builds a classifier by name.

    ``weights``: ``"none"``/None (random init), ``"imagenet"`` (Keras downloads it), or a
    path to a keras.applications weights file for the backbone (vgg16_bn takes VGG16's).
    Extra keyword arguments: ``embedding_dim``, ``dropout`` (CNN heads), ``width``
    (alexnet, vgg16_bn, resnet_small: filter multiplier), ``fc_units`` (alexnet),
    ``pixels``, ``l2`` (svm).
    """
    from amazon_visual.models import alexnet, applications, resnet_small, svm, vgg

    name = _check_name(name)
    num_classes = int(num_classes)
    image_size = int(image_size)
    if "width" in kwargs and name not in WIDTH_MODELS:
        raise UserError(f"--width applies to {', '.join(WIDTH_MODELS)}, not {name}: drop --width")
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    if name == "svm":
        if applications.normalize_weights(weights) is not None:
            raise UserError("svm has no pretrained weights: use --weights none")
        return svm.build_svm(num_classes, image_size, **kwargs)
    if name == "alexnet":
        if applications.normalize_weights(weights) is not None:
            raise UserError("alexnet is written by hand and has no pretrained weights: use --weights none")
        return alexnet.build_alexnet(num_classes, image_size, **kwargs)
    if name == "vgg16_bn":
        return vgg.build_vgg16_bn(num_classes, image_size, weights=weights, **kwargs)
    if name == "resnet_small":
        if applications.normalize_weights(weights) is not None:
            raise UserError("resnet_small is written by hand and has no pretrained weights: use --weights none")
        return resnet_small.build_resnet_small(num_classes, image_size, **kwargs)
    return applications.build_application(name, num_classes, image_size, weights=weights, **kwargs)


def build_embedder(name, image_size=224, weights="imagenet"):
    """A pretrained backbone with global average pooling: input [0, 255] float images,
    output the pooled features (layer ``embedding``). Any keras.applications name or
    ``vgg16_bn`` (with VGG16's conv weights)."""
    from amazon_visual.models import applications, vgg

    name = _check_name(name)
    if name == "vgg16_bn":
        return vgg.build_vgg16_bn_embedder(int(image_size), weights)
    if name in ("svm", "alexnet", "resnet_small"):
        raise UserError(
            f"{name} has no pretrained backbone to embed with: use a trained run (--run) "
            f"or a keras.applications backbone such as resnet50"
        )
    return applications.build_application_embedder(name, int(image_size), weights)


def embedding_model(model):
    """The sub-model from the input to the layer named ``embedding`` (shares weights)."""
    import keras

    try:
        layer = model.get_layer("embedding")
    except ValueError:
        raise UserError(f"model {model.name} has no layer named 'embedding'") from None
    return keras.Model(model.input, layer.output, name=f"{model.name}_embedding")


def find_backbone(model):
    """The nested backbone model of a CNN (``None`` for svm and alexnet)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


__all__ = [
    "FIVE",
    "SMALL",
    "available_models",
    "model_info",
    "build",
    "build_embedder",
    "embedding_model",
    "find_backbone",
]
