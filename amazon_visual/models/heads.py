"""The classification head shared by the CNN families.

``GlobalAveragePooling2D -> Dropout -> Dense(embedding_dim, relu, name="embedding")
-> Dropout -> Dense(num_classes, softmax, name="predictions", dtype float32)``.

The ``embedding`` layer's output is the input of ``predictions`` (the dropout in
between is the identity at inference), so it is the trained, class-aware
embedding the retrieval stage indexes.
"""

import keras

DEFAULT_EMBEDDING_DIM = 512
DEFAULT_DROPOUT = 0.3


def classification_head(features, num_classes, embedding_dim=DEFAULT_EMBEDDING_DIM, dropout=DEFAULT_DROPOUT, pool=True):
    x = features
    if pool:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout1")(x)
    x = keras.layers.Dense(embedding_dim, activation="relu", name="embedding")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout2")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
