"""AlexNet written by hand after Krizhevsky, Sutskever & Hinton (2012): 5 conv, 3 FC.

Deviations, on purpose: batch normalisation after every convolution (it replaces local
response normalisation after conv1 and conv2 and lets the net train at a 10x larger
learning rate with a short schedule: README "Recipes"), a single tower (no two-GPU split), and small inputs
(32-128 px) use a 5x5 stride-1/2 first convolution instead of 11x11 stride 4 so the
three max-pools still leave a spatial map. FC6 and FC7 have ``fc_units`` units
(4096 in the paper; 1024 by default below 160 px); FC7 is the ``embedding`` layer.
``width`` scales every layer's size (1.0 = paper). Batch norm uses momentum 0.9 (Keras's
default 0.99 leaves the moving statistics far from the data after the few hundred steps of
a short CPU run, and validation accuracy then swings wildly).
"""

import keras

from amazon_visual.models.layers import Preprocess


def build_alexnet(num_classes, image_size=224, width=1.0, fc_units=None, dropout=0.5, bn_momentum=0.9, name="alexnet"):
    def w(n):
        return max(4, int(round(n * width)))

    if fc_units is None:
        fc_units = 4096 if image_size >= 160 else 1024
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess("unit", name="preprocess")(inputs)
    if image_size >= 160:
        x = keras.layers.Conv2D(w(96), 11, strides=4, padding="same", activation="relu", name="conv1")(x)
    else:
        stride = 2 if image_size >= 64 else 1
        x = keras.layers.Conv2D(w(96), 5, strides=stride, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="norm1")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = keras.layers.Conv2D(w(256), 5, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="norm2")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    x = keras.layers.Conv2D(w(384), 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="norm3")(x)
    x = keras.layers.Conv2D(w(384), 3, padding="same", activation="relu", name="conv4")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="norm4")(x)
    x = keras.layers.Conv2D(w(256), 3, padding="same", activation="relu", name="conv5")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="norm5")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool5")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(dropout, name="dropout6")(x)
    x = keras.layers.Dense(w(fc_units), activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="dropout7")(x)
    x = keras.layers.Dense(w(fc_units), activation="relu", name="embedding")(x)  # FC7
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)  # FC8
    return keras.Model(inputs, outputs, name=name)
