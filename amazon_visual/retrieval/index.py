"""The Annoy index of an INDEX_DIR: build, validate, load by memory map, search.

The INDEX_DIR layout is :mod:`amazon_visual.retrieval.layout`.

Similarity. Annoy's angular distance between u and v is ``d = sqrt(2 - 2 cos(u, v))``,
so ``cos = 1 - d*d/2`` (:func:`cosine_from_angular`). Annoy computes it in float32;
:meth:`Index.search` instead *rescores* Annoy's candidates exactly from the stored
normalised embeddings (a dot product per candidate) and sorts by that value, so the
similarities reported are the exact cosine of the stored float32 embeddings.

Serving. :func:`load_index` opens ``index.ann`` with ``AnnoyIndex.load(path,
prefault=False)`` (a read-only ``mmap``) and ``embeddings.npy`` with
``np.load(mmap_mode="r")``: several processes serving one INDEX_DIR share one copy of
the pages in the OS page cache. Annoy queries are read-only and thread-safe.

Safety. Annoy trusts its file: a truncated or overwritten ``index.ann`` can make a
query read out of bounds and crash the process. Before ``AnnoyIndex.load`` the file is
checked against the manifest (exact byte size, node-size multiple, checksum of its
first and last MiB, the root nodes at the end of the file); ``verify="full"`` also
checks every node's child pointers. A mismatch is a :class:`UserError`.
"""
import datetime
import hashlib
import json
import os
import threading
import time

import numpy as np

from amazon_visual.atomic import write_json
from amazon_visual.errors import UserError
from amazon_visual.retrieval.layout import (EMBEDDER_FILE, EMBEDDINGS, FORMAT_VERSION, INDEX_FILE,  # noqa: F401
                                            ITEMS, MANIFEST, METRIC, THUMBS, cosine_from_angular, normalize)

DEFAULT_TREES = 50
_SAMPLE = 1 << 20  # bytes hashed at each end of index.ann


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def node_size(dim):
    """Bytes per node of an angular Annoy index: int32 n_descendants, int32 children[2], float32 v[dim]."""
    return 12 + 4 * int(dim)


def atomic_write_json(path, obj):
    write_json(path, obj, sort_keys=True)


def _file_sample_hash(path, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(_SAMPLE, size - _SAMPLE))
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------
# Annoy file: build and validated open
# --------------------------------------------------------------------------
def build_annoy(vectors, path, trees=DEFAULT_TREES, on_disk=False, n_jobs=-1, seed=42, chunk=65536):
    """Build an angular Annoy index of ``vectors`` (n x dim, array or memmap) at ``path``.

    ``on_disk=True`` calls ``on_disk_build`` before adding items, so the forest is built
    in the file rather than in RAM (catalogs larger than memory). The file is written
    under a temporary name and moved into place. Returns ``{"build_seconds", "size_bytes",
    "n_items", "trees", "dim", "sample_sha256", "on_disk"}``.
    """
    from annoy import AnnoyIndex

    n, dim = int(vectors.shape[0]), int(vectors.shape[1])
    if n == 0:
        raise UserError("no items to index: the chosen splits are empty")
    trees = int(trees)
    if trees < 1:
        raise UserError(f"--trees must be at least 1, not {trees}")
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    t0 = time.perf_counter()
    index = AnnoyIndex(dim, METRIC)
    index.set_seed(int(seed))
    if on_disk:
        index.on_disk_build(tmp)
    try:
        for start in range(0, n, chunk):
            block = np.asarray(vectors[start:start + chunk], dtype=np.float32)
            for j, v in enumerate(block):
                index.add_item(start + j, v)
        index.build(trees, n_jobs=n_jobs)
        if not on_disk:
            index.save(tmp)
        index.unload()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    seconds = time.perf_counter() - t0
    size = os.path.getsize(path)
    return {"build_seconds": round(seconds, 3), "size_bytes": size, "n_items": n, "trees": trees, "dim": dim,
            "sample_sha256": _file_sample_hash(path, size), "on_disk": bool(on_disk)}


def check_annoy_file(path, dim, n_items, size_bytes=None, sample_sha256=None, verify="quick"):
    """Raise UserError unless ``path`` looks like the angular Annoy file the manifest describes."""
    what = f"index file {path}"
    fix = "rebuild it with amazon-visual index --overwrite"
    if not os.path.isfile(path):
        raise UserError(f"{what} is missing: {fix}")
    size = os.path.getsize(path)
    s = node_size(dim)
    if size_bytes is not None and size != int(size_bytes):
        raise UserError(f"{what} is {size} bytes but the manifest says {size_bytes} (truncated or replaced): {fix}")
    if size == 0 or size % s:
        raise UserError(f"{what} is corrupt (size {size} is not a multiple of the node size {s}): {fix}")
    n_nodes = size // s
    if n_nodes < n_items:
        raise UserError(f"{what} is corrupt ({n_nodes} nodes for {n_items} items): {fix}")
    if sample_sha256 and _file_sample_hash(path, size) != sample_sha256:
        raise UserError(f"{what} is corrupt (checksum differs from the manifest): {fix}")
    width = s // 4
    raw = np.memmap(path, dtype=np.int32, mode="r", shape=(n_nodes, width))
    try:
        # Annoy appends a copy of each root at the end; each root covers every item.
        if int(raw[-1, 0]) != n_items:
            raise UserError(f"{what} is corrupt (its roots cover {int(raw[-1, 0])} items, not {n_items}): {fix}")
        rng = range(n_items, n_nodes) if verify == "full" else range(max(n_items, n_nodes - 64), n_nodes)
        K = width - 1  # ids an internal leaf node can hold (children[] overlaps v[])
        step = 65536
        for start in range(rng.start, rng.stop, step):
            block = np.asarray(raw[start:min(rng.stop, start + step)])
            nd = block[:, 0]
            if (nd < 1).any():
                raise UserError(f"{what} is corrupt (bad node header): {fix}")
            small = nd <= K
            ids = block[:, 1:]
            mask = np.arange(K)[None, :] < nd[:, None]
            bad_small = (small[:, None] & mask & ((ids < 0) | (ids >= n_items))).any()
            kids = block[~small, 1:3]
            bad_big = ((kids < 0) | (kids >= n_nodes)).any()
            if bad_small or bad_big:
                raise UserError(f"{what} is corrupt (a node points outside the file): {fix}")
        if verify == "full":
            for start in range(0, n_items, step):
                if (np.asarray(raw[start:min(n_items, start + step), 0]) != 1).any():
                    raise UserError(f"{what} is corrupt (bad item node): {fix}")
    finally:
        del raw
    return size


def open_annoy(path, dim, n_items, size_bytes=None, sample_sha256=None, verify="quick"):
    """Validate then memory-map an angular Annoy file (``prefault=False``); UserError when it does not fit."""
    from annoy import AnnoyIndex

    check_annoy_file(path, dim, n_items, size_bytes, sample_sha256, verify)
    index = AnnoyIndex(int(dim), METRIC)
    try:
        index.load(os.fspath(path), prefault=False)
    except (OSError, IOError, ValueError) as e:
        raise UserError(f"index file {path} cannot be loaded ({e}): rebuild it with amazon-visual index --overwrite") from None
    if index.get_n_items() != n_items:
        got = index.get_n_items()
        index.unload()
        raise UserError(f"index file {path} holds {got} items but the manifest says {n_items}: "
                        "rebuild it with amazon-visual index --overwrite")
    return index


# --------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------
MODEL_KEYS = ("source", "model", "fingerprint", "embedding_dim", "image_size", "metric")


def read_manifest(index_dir):
    index_dir = os.fspath(index_dir)
    path = os.path.join(index_dir, MANIFEST)
    if not os.path.isdir(index_dir):
        raise UserError(f"{index_dir} does not exist: build an index with amazon-visual index")
    if not os.path.isfile(path):
        raise UserError(f"{index_dir} is not an amazon-visual index (no {MANIFEST}): build one with amazon-visual index")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}): rebuild the index with amazon-visual index --overwrite") from None
    for key in ("n_items", "embedding_dim", "metric", "index_file"):
        if key not in manifest:
            raise UserError(f"{path} lacks {key!r}: rebuild the index with amazon-visual index --overwrite")
    if manifest["metric"] != METRIC:
        raise UserError(f"{index_dir} uses metric {manifest['metric']!r}; only {METRIC!r} is supported")
    return manifest


def check_manifest(manifest, expect, index_dir="the index"):
    """Raise UserError when the model described by ``expect`` is not the one the index was built with.

    ``expect`` holds any of :data:`MODEL_KEYS` (typically :meth:`Embedder.describe`).
    """
    for key in MODEL_KEYS:
        if key in expect and expect[key] is not None and key in manifest and manifest[key] is not None:
            if expect[key] != manifest[key]:
                raise UserError(
                    f"{index_dir} was built with {key}={manifest[key]!r} but the model given has {key}={expect[key]!r}: "
                    "query it with the model it was built with, or rebuild the index with amazon-visual index --overwrite")


# --------------------------------------------------------------------------
# loaded index
# --------------------------------------------------------------------------
def read_items(index_dir):
    import pandas as pd

    path = os.path.join(os.fspath(index_dir), ITEMS)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: rebuild the index with amazon-visual index --overwrite")
    items = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "label_id" in items:
        items["label_id"] = pd.to_numeric(items["label_id"], errors="coerce").fillna(-1).astype(int)
    return items


class Index:
    """A loaded INDEX_DIR: manifest, items table, memory-mapped embeddings and Annoy forest."""

    def __init__(self, index_dir, manifest, items, embeddings, annoy, search_k=None):
        self.index_dir = os.fspath(index_dir)
        self.manifest = manifest
        self.items = items
        self.embeddings = embeddings
        self.annoy = annoy
        self.search_k = int(search_k if search_k is not None else manifest.get("search_k", -1) or -1)
        self.asin_to_id = {}
        for i, a in enumerate(items["asin"].tolist()):
            self.asin_to_id.setdefault(a, i)
        self._lock = threading.Lock()

    @property
    def n_items(self):
        return int(self.manifest["n_items"])

    @property
    def dim(self):
        return int(self.manifest["embedding_dim"])

    def search(self, vector, n, search_k=None, exclude=()):
        """Top ``n`` items for a query vector: ``(ids int64, similarities float32)`` sorted by cosine, best first.

        Candidates come from Annoy (``search_k``: nodes inspected, -1 = Annoy's default
        ``n * trees``); their similarity is recomputed exactly from the stored normalised
        embeddings. Items in ``exclude`` are dropped (n + len(exclude) are fetched).
        """
        q = normalize(np.asarray(vector, dtype=np.float32).reshape(-1))
        if q.shape[0] != self.dim:
            raise UserError(f"query vector has dimension {q.shape[0]}, the index {self.dim}")
        exclude = set(int(e) for e in exclude)
        want = min(self.n_items, int(n) + len(exclude))
        sk = self.search_k if search_k is None else int(search_k)
        ids = self.annoy.get_nns_by_vector(q, want, search_k=sk)
        ids = np.array([i for i in ids if i not in exclude][:int(n)], dtype=np.int64)
        if ids.size == 0:
            return ids, np.zeros(0, np.float32)
        order = np.argsort(ids)
        rows = np.asarray(self.embeddings[ids[order]], dtype=np.float32)
        sims = np.empty(ids.size, np.float32)
        sims[order] = rows @ q
        best = np.argsort(-sims, kind="stable")
        return ids[best], sims[best]

    def vector(self, item_id):
        return np.asarray(self.embeddings[int(item_id)], dtype=np.float32)

    def item(self, item_id):
        return self.items.iloc[int(item_id)].to_dict()

    def thumb_path(self, item_id):
        name = self.items.iloc[int(item_id)].get("thumb", "")
        if not name:
            return None
        path = os.path.join(self.index_dir, name)
        return path if os.path.isfile(path) else None

    def close(self):
        if self.annoy is not None:
            self.annoy.unload()
            self.annoy = None


def load_index(index_dir, expect=None, search_k=None, verify="quick"):
    """Open INDEX_DIR for queries (memory-mapped). ``expect``: model description to check against the manifest."""
    index_dir = os.fspath(index_dir)
    manifest = read_manifest(index_dir)
    if expect:
        check_manifest(manifest, expect, index_dir)
    n, dim = int(manifest["n_items"]), int(manifest["embedding_dim"])
    items = read_items(index_dir)
    if len(items) != n:
        raise UserError(f"{index_dir}/{ITEMS} has {len(items)} rows but the manifest says {n} items: "
                        "rebuild the index with amazon-visual index --overwrite")
    emb_path = os.path.join(index_dir, EMBEDDINGS)
    try:
        emb = np.load(emb_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{emb_path} is missing or unreadable ({e}): rebuild the index with amazon-visual index --overwrite") from None
    if emb.shape != (n, dim) or emb.dtype != np.float32:
        raise UserError(f"{emb_path} is {emb.dtype} {emb.shape}, expected float32 ({n}, {dim}): "
                        "rebuild the index with amazon-visual index --overwrite")
    ann = open_annoy(os.path.join(index_dir, manifest["index_file"]), dim, n, manifest.get("index_size_bytes"),
                     manifest.get("index_sample_sha256"), verify)
    return Index(index_dir, manifest, items, emb, ann, search_k)


# --------------------------------------------------------------------------
# the `amazon-visual index` command
# --------------------------------------------------------------------------
def _prepare_out(out_dir, overwrite):
    out_dir = os.fspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        # an interrupted build (no manifest yet, only files of ours) resumes; anything else needs --overwrite
        ours = {INDEX_FILE, EMBEDDINGS, ITEMS, THUMBS, EMBEDDER_FILE, ".partial"}
        resumable = os.path.isdir(os.path.join(out_dir, ".partial")) and not os.path.exists(
            os.path.join(out_dir, MANIFEST)) and all(n in ours or ".tmp-" in n for n in os.listdir(out_dir))
        if not overwrite and not resumable:
            raise UserError(f"{out_dir} is not empty: choose another --out or pass --overwrite")
        if overwrite:
            import shutil

            # .partial stays: embed_dataset resumes it only when model, dataset and settings are the same
            for name in (MANIFEST, INDEX_FILE, EMBEDDINGS, ITEMS, THUMBS, EMBEDDER_FILE):
                p = os.path.join(out_dir, name)
                if os.path.isdir(p):
                    shutil.rmtree(p)
                elif os.path.exists(p):
                    os.remove(p)
    elif os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir} is a file: choose a folder for --out")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def build_index(data_dir, out_dir, run_dir=None, backbone=None, weights="imagenet", splits=("train", "validation", "test"),
                trees=DEFAULT_TREES, search_k=-1, on_disk=False, image_size=None, batch_size=64, thumbnails=True,
                overwrite=False, n_jobs=-1, progress=True):
    """Embed DATA_DIR's ``splits`` with a trained run (``run_dir``) or a pretrained ``backbone`` and index them.

    Writes INDEX_DIR = ``out_dir`` (manifest.json, items.csv, embeddings.npy, index.ann,
    thumbs/). Embeddings are written in chunks under ``out_dir/.partial`` so an
    interrupted run resumes where it stopped. Returns the manifest (plus timings).
    """
    from amazon_visual.retrieval import embeddings as E

    if (run_dir is None) == (backbone is None):
        raise UserError("give either a RUN_DIR or --backbone NAME, not both or neither")
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    out_dir = _prepare_out(out_dir, overwrite)
    embedder = E.Embedder.from_run(run_dir) if run_dir is not None else E.Embedder.from_backbone(
        backbone, weights=weights, image_size=image_size or 224)
    if image_size and run_dir is not None and int(image_size) != embedder.image_size:
        raise UserError(f"--image-size {image_size} differs from the run's image size {embedder.image_size}: "
                        "leave it out for a trained run")
    t0 = time.perf_counter()
    summary = E.embed_dataset(embedder, data_dir, out_dir, splits=splits, batch_size=batch_size,
                              thumbnails=thumbnails, progress=progress)
    embed_seconds = time.perf_counter() - t0
    emb = np.load(os.path.join(out_dir, EMBEDDINGS), mmap_mode="r")
    if progress:
        import sys

        print(f"building Annoy index: {emb.shape[0]} items, dim {emb.shape[1]}, {trees} trees"
              + (" (on disk)" if on_disk else ""), file=sys.stderr)
    stats = build_annoy(emb, os.path.join(out_dir, INDEX_FILE), trees=trees, on_disk=on_disk, n_jobs=n_jobs)
    desc = embedder.describe()
    extra = {}
    if desc["source"] == "backbone" and desc.get("weights") == "none":
        # random weights cannot be rebuilt at query time: keep this very model beside the index
        path = os.path.join(out_dir, EMBEDDER_FILE)
        tmp = os.path.join(out_dir, f"embedder.tmp-{os.getpid()}.keras")
        embedder.model.save(tmp)
        os.replace(tmp, path)
        extra["embedder_file"] = EMBEDDER_FILE
        desc["fingerprint"] = desc["fingerprint"] + ":" + _sha256_short(path)
    manifest = {
        "format_version": FORMAT_VERSION,
        **desc,
        "metric": METRIC,
        "n_items": stats["n_items"],
        "embedding_dim": stats["dim"],
        "trees": stats["trees"],
        "search_k": int(search_k if search_k is not None else -1),
        "on_disk_build": bool(on_disk),
        "index_file": INDEX_FILE,
        "index_size_bytes": stats["size_bytes"],
        "index_sample_sha256": stats["sample_sha256"],
        "embeddings_file": EMBEDDINGS,
        "embeddings_normalized": True,
        "items_file": ITEMS,
        "thumbnails": bool(thumbnails),
        "data_dir": os.path.abspath(os.fspath(data_dir)),
        "dataset_fingerprint": summary.get("dataset_fingerprint"),
        "splits": list(splits),
        "split_counts": summary["split_counts"],
        "class_names": summary.get("class_names"),
        "embed_seconds": round(embed_seconds, 3),
        "build_seconds": stats["build_seconds"],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "package_version": _version(),
        **extra,
    }
    atomic_write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


def _sha256_short(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _version():
    from amazon_visual import __version__

    return __version__
