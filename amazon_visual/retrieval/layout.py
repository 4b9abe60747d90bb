"""The INDEX_DIR contract: its file names, and the vector conventions every stage shares.

An INDEX_DIR holds::

    manifest.json    model/backbone, embedding layer, dim, metric, n_items, trees, search_k, ...
    items.csv        row i = index item i: asin, title, category, label, label_id, image_url, split, thumb,
                     brand, price, average_rating, rating_number (empty cell = missing), image_sha256
    embeddings.npy   float32 n x dim, L2-normalised (so cosine similarity is a dot product)
    index.ann        the ANN index: Annoy forest (default), or index.hnsw (HNSW graph, --backend hnsw)
    thumbs/          small JPEG thumbnails (galleries work offline)
    .partial/        only while building: embedding shards and their state (removed once the manifest is written)

:mod:`.embeddings` writes the embeddings, items and thumbnails; :mod:`.index` builds and
reads the index; both take the names and :func:`normalize` from here.
"""

import re

import numpy as np

METRIC = "angular"
MANIFEST = "manifest.json"
INDEX_FILE = "index.ann"
EMBEDDINGS = "embeddings.npy"
ITEMS = "items.csv"
THUMBS = "thumbs"
THUMB_SIZE = 160  # longer side of a thumbnail (never enlarged)
PARTIAL = ".partial"
# product attributes carried from the metadata (an empty cell in items.csv = missing; NaN once read)
ATTRIBUTE_COLUMNS = ["brand", "price", "average_rating", "rating_number"]
NUMERIC_ATTRIBUTES = ["price", "average_rating", "rating_number"]
ITEM_COLUMNS = [
    "asin",
    "title",
    "category",
    "label",
    "label_id",
    "image_url",
    "split",
    "thumb",
    *ATTRIBUTE_COLUMNS,
    "image_sha256",
]
EMBEDDER_FILE = "embedder.keras"
FORMAT_VERSION = 1


def normalize(x, eps=1e-12):
    """Rows of ``x`` scaled to unit L2 norm (float32; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


# floats per matrix-vector product in dot_rows: under the size at which OpenBLAS splits a product over its
# threads, which on a busy 2-core machine costs more than it gains (measured there: 10,000 x 128 rows in one
# product 23.7 ms p50, in blocks of this size 0.35 ms; 900 x 1,280: 13.6 ms against 0.43 ms)
DOT_BLOCK_FLOATS = 131072


def dot_rows(rows, q):
    """``rows @ q`` (float32) for a query ``q`` against many rows, in blocks of at most :data:`DOT_BLOCK_FLOATS`."""
    rows = np.asarray(rows, dtype=np.float32)
    block = max(1, DOT_BLOCK_FLOATS // max(1, rows.shape[1]))
    if rows.shape[0] <= block:
        return rows @ q
    return np.concatenate([rows[i : i + block] @ q for i in range(0, rows.shape[0], block)])


def cosine_from_angular(distance):
    """Cosine similarity from Annoy's angular distance ``d = sqrt(2 - 2 cos)``: ``1 - d*d/2``."""
    d = np.asarray(distance, dtype=np.float64)
    return 1.0 - d * d / 2.0


def safe_name(text, max_len=60):
    """A file-name-safe form of ``text`` (letters, digits, ``._-``), at most ``max_len`` characters."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s[:max_len] or "item"
