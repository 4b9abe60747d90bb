"""The course project's linear SVM on flattened, downsampled raw pixels.

Layers: ``Resizing(pixels x pixels)`` -> ``Preprocess("centered")`` ([-0.5, 0.5]) ->
``Flatten(name="embedding")`` (the raw pixels are the embedding) ->
``Dense(num_classes, linear, L2 kernel regularizer, name="predictions")`` (class scores
s_j, trained with :class:`~amazon_visual.models.losses.MulticlassHinge`) ->
``Softmax(name="probabilities")``, a parameter-free final layer so the saved model
outputs probabilities like every other model (arg-max unchanged). The hinge loss is
computed on the ``predictions`` scores; see ``training_model``.
"""

import keras

from amazon_visual.models.layers import Preprocess

DEFAULT_PIXELS = 32
DEFAULT_L2 = 1e-4


def build_svm(num_classes, image_size=224, pixels=DEFAULT_PIXELS, l2=DEFAULT_L2, name="svm"):
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    if pixels and pixels != image_size:
        x = keras.layers.Resizing(pixels, pixels, name="downsample")(x)
    x = Preprocess("centered", name="preprocess")(x)
    x = keras.layers.Flatten(name="embedding")(x)
    scores = keras.layers.Dense(
        num_classes, kernel_regularizer=keras.regularizers.L2(l2), dtype="float32", name="predictions"
    )(x)
    probs = keras.layers.Softmax(dtype="float32", name="probabilities")(scores)
    return keras.Model(inputs, probs, name=name)


def training_model(model):
    """The sub-model image -> class scores (``predictions``), sharing the weights."""
    return keras.Model(model.input, model.get_layer("predictions").output, name=model.name + "_scores")
