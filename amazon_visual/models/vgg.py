"""VGG16 (``keras.applications``, see :mod:`.applications`) and VGG16-BN written by hand.

``vgg16_bn``: the 13 convolutions of VGG16 (Simonyan & Zisserman 2014) with batch
normalisation after every convolution, inside a nested model named ``backbone`` whose
conv layers carry Keras's VGG16 names (``block1_conv1`` ... ``block5_conv3``), then the
shared head. :func:`load_vgg16_conv_weights` copies the 13 conv kernels and biases of
``keras.applications.VGG16`` (a model, ``"imagenet"`` or a weights file) into it.
Preprocessing is caffe-style like VGG16, so ImageNet conv weights see what they expect.
"""

import keras

from amazon_visual.errors import UserError
from amazon_visual.models import applications
from amazon_visual.models.heads import DEFAULT_DROPOUT, DEFAULT_EMBEDDING_DIM, classification_head
from amazon_visual.models.layers import Preprocess

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG16_CONV_NAMES = tuple(f"block{b + 1}_conv{c + 1}" for b, (_, n) in enumerate(VGG16_BLOCKS) for c in range(n))


def vgg16_bn_backbone(image_size=224, width=1.0, bn_momentum=0.9):
    inputs = keras.Input((image_size, image_size, 3), name="backbone_input")
    x = inputs
    for b, (filters, convs) in enumerate(VGG16_BLOCKS, start=1):
        for c in range(1, convs + 1):
            x = keras.layers.Conv2D(max(4, int(round(filters * width))), 3, padding="same", name=f"block{b}_conv{c}")(x)
            x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"block{b}_bn{c}")(x)
            x = keras.layers.Activation("relu", name=f"block{b}_relu{c}")(x)
        x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"block{b}_pool")(x)
    return keras.Model(inputs, x, name="backbone")


def build_vgg16_bn(
    num_classes,
    image_size=224,
    weights=None,
    width=1.0,
    embedding_dim=DEFAULT_EMBEDDING_DIM,
    dropout=DEFAULT_DROPOUT,
    name="vgg16_bn",
):
    weights = applications.normalize_weights(weights)
    if weights is not None and width != 1.0:
        raise UserError("vgg16_bn with width != 1 cannot take VGG16 weights: use --weights none")
    backbone = vgg16_bn_backbone(image_size, width)
    if weights is not None:
        load_vgg16_conv_weights(backbone, weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess("caffe", name="preprocess")(inputs)
    x = backbone(x, training=False) if weights is not None else backbone(x)
    outputs = classification_head(x, num_classes, embedding_dim=embedding_dim, dropout=dropout)
    return keras.Model(inputs, outputs, name=name)


def build_vgg16_bn_embedder(image_size=224, weights="imagenet"):
    weights = applications.normalize_weights(weights)
    backbone = vgg16_bn_backbone(image_size)
    if weights is not None:
        load_vgg16_conv_weights(backbone, weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess("caffe", name="preprocess")(inputs)
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, x, name="vgg16_bn_embedder")


def _find_conv(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                try:
                    return layer.get_layer(name)
                except ValueError:
                    continue
    raise ValueError(f"no layer {name}")


def load_vgg16_conv_weights(model, source="imagenet"):
    """Copies the 13 conv kernels and biases of VGG16 into ``model`` (a vgg16_bn model or
    its backbone). ``source``: a ``keras.applications.VGG16`` model, ``"imagenet"``, or a
    path to a VGG16 weights file (``..._notop.h5`` as Keras downloads it, a file with the
    top, or a ``.weights.h5`` saved by Keras 3). Returns the number of layers copied (13)."""
    if isinstance(source, keras.Model):
        vgg = source
    else:
        source = applications.normalize_weights(source)
        if source == "imagenet":
            vgg = keras.applications.VGG16(include_top=False, weights="imagenet")
        else:
            vgg = keras.applications.VGG16(include_top=False, weights=None)
            applications.load_backbone_weights("vgg16", vgg, source)
    copied = 0
    for name in VGG16_CONV_NAMES:
        src = _find_conv(vgg, name)
        dst = _find_conv(model, name)
        kernel, bias = src.get_weights()
        if dst.kernel.shape != kernel.shape:
            raise UserError(
                f"VGG16 weights do not fit layer {name} of {model.name} "
                f"({tuple(kernel.shape)} vs {tuple(dst.kernel.shape)})"
            )
        dst.set_weights([kernel, bias])
        copied += 1
    return copied
