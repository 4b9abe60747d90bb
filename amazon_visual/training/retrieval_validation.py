"""Retrieval validation: recall@1 and precision@10 on a held-out split, every epoch.

:class:`RetrievalValidation` embeds the validation split with the model being trained
(no augmentation) at the end of each epoch and searches each item against the *other*
items of the split (exact cosine search, the vectors are L2-normalised):

- ``recall_at_1``: the share of items whose nearest other item has its class;
- ``precision_at_10``: the mean share of its class among its 10 nearest other items.

It writes them into the epoch's logs as ``val_recall_at_1`` and ``val_precision_at_10``
(``recall_at_1`` / ``precision_at_10`` when it measures a sample of the train split,
for a dataset without a validation split), so EarlyStopping and the best-model saver can
monitor them. It must come before those callbacks: Keras hands every callback the same
logs dict, in order.
"""

import keras
import numpy as np

DEFAULT_MAX_ITEMS = 2000


def retrieval_scores(embeddings, labels, k=10):
    """(recall@1, precision@k) of each item searched against the other items (leave one out)."""
    emb = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    n = len(emb)
    if n < 2:
        return 0.0, 0.0
    k = min(int(k), n - 1)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    first = top[np.arange(n), np.argmax(top_sims, axis=1)]
    recall_at_1 = float((labels[first] == labels).mean())
    precision_at_k = float((labels[top] == labels[:, None]).mean())
    return recall_at_1, precision_at_k


class RetrievalValidation(keras.callbacks.Callback):
    """Puts ``{prefix}recall_at_1`` and ``{prefix}precision_at_10`` into the epoch logs.

    ``embed_model``: image -> embedding; ``dataset``: finite batches of (images, int labels).
    """

    def __init__(self, embed_model, dataset, prefix="val_", k=10):
        super().__init__()
        self.embed_model, self.dataset, self.prefix, self.k = embed_model, dataset, prefix, int(k)

    def _embed(self):
        embs, labels = [], []
        for x, y in self.dataset:
            embs.append(np.asarray(self.embed_model.predict_on_batch(x), np.float32))
            labels.append(np.asarray(y).reshape(-1))
        return np.concatenate(embs), np.concatenate(labels)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        emb, labels = self._embed()
        recall, precision = retrieval_scores(emb, labels, self.k)
        logs[f"{self.prefix}recall_at_1"] = recall
        logs[f"{self.prefix}precision_at_{self.k}"] = precision


def validation_dataset(data_dir, image_size, batch_size, split="validation", max_items=DEFAULT_MAX_ITEMS):
    """Batches of (images, int labels) of a split, at most ``max_items`` (the first ones, in file order)."""
    from amazon_visual.training import pipeline

    ds = pipeline.eval_dataset(data_dir, image_size, batch_size, split=split)
    return ds.unbatch().take(int(max_items)).batch(int(batch_size))
