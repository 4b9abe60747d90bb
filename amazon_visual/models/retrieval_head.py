"""The retrieval head: an L2-normalised ``embedding`` of ``embedding_dim`` on any registry model.

:func:`build_retrieval_model` builds the registry's classifier (same backbone, same
preprocessing, same weights) and keeps its trunk: everything up to the input of its
``embedding`` layer, without the dropout in front of it (the pooled backbone features for
the CNNs, FC6 for alexnet, the downsampled pixels for svm). On it goes
:func:`projection_head`, a small MLP (on cached clothing-small features a hidden layer
did better than a linear projection, chosen on a split of the train photos)::

    [Flatten] -> Dropout -> Dense(512, relu, name="embedding_hidden")
              -> Dense(embedding_dim, name="embedding_projection")
              -> UnitNormalization(name="embedding", float32)

The model's output *is* the ``embedding`` layer, so the index, the Recommender and the
server use it unchanged; the vectors have unit length, so cosine similarity is a dot product.
:func:`training_model` adds the proxies of a proxy loss (:class:`CosineProxies`) on top.
"""

import keras

from amazon_visual.models.heads import DEFAULT_DROPOUT
from amazon_visual.models.metric_losses import CosineProxies, uses_proxies

DEFAULT_RETRIEVAL_DIM = 128
DEFAULT_HIDDEN = 512


def projection_head(features, embedding_dim=DEFAULT_RETRIEVAL_DIM, dropout=DEFAULT_DROPOUT, hidden=DEFAULT_HIDDEN):
    """``hidden``: units of the hidden layer (0: a linear projection)."""
    x = features
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="embedding_flatten")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    if hidden:
        x = keras.layers.Dense(int(hidden), activation="relu", name="embedding_hidden")(x)
    x = keras.layers.Dense(int(embedding_dim), name="embedding_projection")(x)
    return keras.layers.UnitNormalization(axis=-1, dtype="float32", name="embedding")(x)


def _trunk_output(classifier):
    """The tensor that feeds the classifier's ``embedding`` layer, skipping dropout layers."""
    tensor = classifier.get_layer("embedding").input
    while isinstance(tensor._keras_history.operation, keras.layers.Dropout):
        tensor = tensor._keras_history.operation.input
    return tensor


def build_retrieval_model(
    name,
    image_size=224,
    weights="none",
    embedding_dim=DEFAULT_RETRIEVAL_DIM,
    dropout=DEFAULT_DROPOUT,
    hidden=DEFAULT_HIDDEN,
    **model_kwargs,
):
    """image [0, 255] -> L2-normalised ``embedding`` (B, embedding_dim), for any registry model."""
    from amazon_visual import models

    classifier = models.build(name, 2, image_size, weights=weights, **model_kwargs)
    outputs = projection_head(_trunk_output(classifier), embedding_dim, dropout, hidden)
    return keras.Model(classifier.input, outputs, name=f"{classifier.name}_retrieval")


def training_model(net, loss_name, num_classes):
    """The model ``fit`` trains: ``net`` itself for a pair loss; ``net`` followed by one
    learned proxy per class (cosine similarities, (B, C)) for a proxy loss."""
    if not uses_proxies(loss_name):
        return net
    sims = CosineProxies(num_classes, name="proxies")(net.output)
    return keras.Model(net.input, sims, name=f"{net.name}_proxies")
