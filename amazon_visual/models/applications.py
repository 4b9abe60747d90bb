"""``keras.applications`` backbones by snake-case name, with a new head.

``build_application(name, ...)``: ``Input [0,255]`` -> ``Preprocess(mode)`` (the
application's own preprocessing, written as a layer) -> backbone (a nested model
named ``backbone``, ``include_top=False``) -> the shared head
(:mod:`amazon_visual.models.heads`). With pretrained weights the backbone is called
with ``training=False`` so its batch normalisation stays in inference mode, in both
training phases (the Keras transfer-learning recipe); from scratch it trains normally.
"""

import os

import keras

from amazon_visual.errors import UserError
from amazon_visual.models.heads import DEFAULT_DROPOUT, DEFAULT_EMBEDDING_DIM, classification_head
from amazon_visual.models.layers import Preprocess

# snake-case name -> (keras.applications attribute, preprocessing mode)
APPLICATIONS = {
    "vgg16": ("VGG16", "caffe"),
    "vgg19": ("VGG19", "caffe"),
    "resnet50": ("ResNet50", "caffe"),
    "resnet101": ("ResNet101", "caffe"),
    "resnet152": ("ResNet152", "caffe"),
    "resnet50_v2": ("ResNet50V2", "tf"),
    "resnet101_v2": ("ResNet101V2", "tf"),
    "resnet152_v2": ("ResNet152V2", "tf"),
    "inception_v3": ("InceptionV3", "tf"),
    "inception_resnet_v2": ("InceptionResNetV2", "tf"),
    "xception": ("Xception", "tf"),
    "mobilenet": ("MobileNet", "tf"),
    "mobilenet_v2": ("MobileNetV2", "tf"),
    "mobilenet_v3_small": ("MobileNetV3Small", "none"),
    "mobilenet_v3_large": ("MobileNetV3Large", "none"),
    "nasnet_mobile": ("NASNetMobile", "tf"),
    "nasnet_large": ("NASNetLarge", "tf"),
    "densenet121": ("DenseNet121", "torch"),
    "densenet169": ("DenseNet169", "torch"),
    "densenet201": ("DenseNet201", "torch"),
    **{f"efficientnet_b{i}": (f"EfficientNetB{i}", "none") for i in range(8)},
    **{f"efficientnet_v2_b{i}": (f"EfficientNetV2B{i}", "none") for i in range(4)},
    **{f"efficientnet_v2_{s}": (f"EfficientNetV2{s.upper()}", "none") for s in ("s", "m", "l")},
    **{f"convnext_{s}": (f"ConvNeXt{s.capitalize()}", "none") for s in ("tiny", "small", "base", "large", "xlarge")},
}


def available_applications():
    return sorted(n for n, (attr, _) in APPLICATIONS.items() if hasattr(keras.applications, attr))


def preprocessing_mode(name):
    return APPLICATIONS[name][1]


def _constructor(name):
    attr = APPLICATIONS[name][0]
    return getattr(keras.applications, attr)


def normalize_weights(weights):
    """``None``/"none" -> None, "imagenet" -> "imagenet", else an existing file path."""
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise UserError(f"weights file {weights} does not exist: pass --weights imagenet, none or an existing file")
    return path


def _make_backbone(name, image_size, weights):
    ctor = _constructor(name)
    kwargs = dict(include_top=False, input_shape=(image_size, image_size, 3))
    try:
        backbone = ctor(weights="imagenet" if weights == "imagenet" else None, **kwargs)
    except ValueError as e:
        raise UserError(f"model {name} cannot be built at image size {image_size}: {e}") from None
    if weights not in (None, "imagenet"):
        load_backbone_weights(name, backbone, weights)
    _rename(backbone, "backbone")
    return backbone


def _rename(model, name):
    try:
        model.name = name
    except AttributeError:
        model._name = name


def load_backbone_weights(name, backbone, path):
    """Loads a keras.applications weights file (notop or with top, legacy .h5 or
    Keras 3 .weights.h5) into ``backbone`` (an ``include_top=False`` model)."""
    import warnings

    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load_backbone_weights(name, backbone, path, errors)


def _load_backbone_weights(name, backbone, path, errors):
    try:
        backbone.load_weights(path)
        return backbone
    except Exception as e:  # wrong layout -> try as a file with the top
        errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    try:
        full = _constructor(name)(include_top=True, weights=None)
        full.load_weights(path)
        copied = 0
        for layer in backbone.layers:
            if not layer.weights:
                continue
            source = full.get_layer(layer.name)
            layer.set_weights(source.get_weights())
            copied += 1
        if copied == 0:
            raise ValueError("no layer matched by name")
        return backbone
    except Exception as e:
        errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise UserError(
        f"weights file {path} does not fit model {name} ({'; '.join(errors)[:300]}): "
        f"pass a keras.applications {APPLICATIONS[name][0]} weights file, imagenet or none"
    )


def build_application(
    name, num_classes, image_size=224, weights=None, embedding_dim=DEFAULT_EMBEDDING_DIM, dropout=DEFAULT_DROPOUT
):
    weights = normalize_weights(weights)
    backbone = _make_backbone(name, image_size, weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess(preprocessing_mode(name), name="preprocess")(inputs)
    if weights is None:
        x = backbone(x)
    else:
        x = backbone(x, training=False)
    outputs = classification_head(x, num_classes, embedding_dim=embedding_dim, dropout=dropout)
    return keras.Model(inputs, outputs, name=name)


def build_application_embedder(name, image_size=224, weights="imagenet"):
    weights = normalize_weights(weights)
    backbone = _make_backbone(name, image_size, weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess(preprocessing_mode(name), name="preprocess")(inputs)
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, x, name=f"{name}_embedder")
