"""Retrieval: embeddings of a dataset's photos, the ANN index of an INDEX_DIR, look-alike
recommendations, and retrieval metrics.

Modules, in the order data flows: :mod:`.layout` (the INDEX_DIR contract), :mod:`.embeddings`
(``Embedder``, ``embed_dataset``), :mod:`.index` (``build_index``, ``load_index``, Annoy),
:mod:`.recommend` (``Recommender``), :mod:`.metrics` (``evaluate_retrieval``: precision@k, mAP@k).
Import the modules themselves; this package imports nothing heavy.
"""
