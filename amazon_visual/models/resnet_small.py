"""``resnet_small``: a small ResNet for photos of 32-128 px trained from scratch on a CPU.

The layout of ResNet-18 (He et al. 2015: four stages of two basic blocks, two 3x3
convolutions each with batch normalisation, identity shortcuts, a 1x1 convolution where the
shape changes) at half its width (32, 64, 128, 256 filters x ``width``), with a stem sized
for small photos: a 3x3 convolution, stride 2 from 64 px (stride 1 below), instead of
ResNet's 7x7 stride 2 and max-pool (kept from 160 px). At 64 px that is about 150 M
multiply-adds per photo, as many as VGG16-BN at width 0.25. The last batch norm of every
residual branch starts at zero ("zero-gamma", Goyal et al. 2017): each block starts as the
identity, which lets a short run train at a large learning rate. Batch norm momentum 0.9 as
in :mod:`.alexnet`. Then the shared head (:mod:`.heads`); no nested backbone model, so a run
has one phase, from scratch.
"""

import keras

from amazon_visual.models.heads import DEFAULT_DROPOUT, DEFAULT_EMBEDDING_DIM, classification_head
from amazon_visual.models.layers import Preprocess

STAGES = ((32, 2), (64, 2), (128, 2), (256, 2))
# Layers keep at least 16 filters: with 8 (width 0.25) in this network, TensorFlow 2.21's oneDNN CPU kernels
# corrupted memory (the process aborted) on a batch smaller than the ones before it.
MIN_FILTERS = 16


def _conv_bn(x, filters, kernel, strides, name, bn_momentum, relu=True, zero_gamma=False):
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(
        momentum=bn_momentum, gamma_initializer="zeros" if zero_gamma else "ones", name=f"{name}_bn"
    )(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def basic_block(x, filters, strides, name, bn_momentum=0.9):
    """conv3x3-BN-ReLU-conv3x3-BN (zero gamma) + shortcut, then ReLU."""
    shortcut = x
    if strides != 1 or int(x.shape[-1]) != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_short", bn_momentum, relu=False)
    y = _conv_bn(x, filters, 3, strides, f"{name}_1", bn_momentum)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", bn_momentum, relu=False, zero_gamma=True)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def build_resnet_small(
    num_classes,
    image_size=64,
    width=1.0,
    embedding_dim=DEFAULT_EMBEDDING_DIM,
    dropout=DEFAULT_DROPOUT,
    bn_momentum=0.9,
    name="resnet_small",
):
    def w(n):
        return max(MIN_FILTERS, int(round(n * width)))

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess("unit", name="preprocess")(inputs)
    if image_size >= 160:
        x = _conv_bn(x, w(STAGES[0][0]), 7, 2, "stem", bn_momentum)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    else:
        x = _conv_bn(x, w(STAGES[0][0]), 3, 2 if image_size >= 64 else 1, "stem", bn_momentum)
    for s, (filters, blocks) in enumerate(STAGES, start=1):
        for b in range(1, blocks + 1):
            strides = 2 if s > 1 and b == 1 else 1
            x = basic_block(x, w(filters), strides, f"stage{s}_block{b}", bn_momentum)
    outputs = classification_head(x, num_classes, embedding_dim=embedding_dim, dropout=dropout)
    return keras.Model(inputs, outputs, name=name)
