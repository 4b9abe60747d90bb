"""The ANN index of an INDEX_DIR: build, validate, load by memory map, search.

The INDEX_DIR layout is :mod:`amazon_visual.retrieval.layout`; the ANN structure is one of
:mod:`amazon_visual.retrieval.backends` (Annoy by default, HNSW with ``backend="hnsw"``),
named by the manifest's ``backend``. What follows describes Annoy; HNSW differs where
:mod:`.backends` says so (its file is read into memory, not mapped).

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
import json
import os
import re
import shutil
import threading
import time

import numpy as np

from amazon_visual.atomic import write_json
from amazon_visual.errors import UserError
from amazon_visual.retrieval import backends

# the names marked F401 are offered here for older code, the README's examples and the tests
from amazon_visual.retrieval.backends import (
    DEFAULT_SEARCH_K,  # noqa: F401
    DEFAULT_TREES,
    AnnoyBackend,
    check_annoy_file,  # noqa: F401
    iter_blocks,
    node_size,  # noqa: F401
    open_annoy,  # noqa: F401
)
from amazon_visual.retrieval.layout import (
    EMBEDDER_FILE,
    EMBEDDINGS,
    FORMAT_VERSION,
    INDEX_FILE,
    ITEMS,
    MANIFEST,
    METRIC,
    NUMERIC_ATTRIBUTES,
    PARTIAL,
    THUMBS,
    cosine_from_angular,  # noqa: F401
    normalize,
)


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def atomic_write_json(path, obj):
    write_json(path, obj, sort_keys=True)


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def build_annoy(vectors, path, trees=DEFAULT_TREES, on_disk=False, n_jobs=-1, seed=42, chunk=65536):
    """Build an angular Annoy index of ``vectors`` (n x dim, array or memmap) at ``path``.

    ``on_disk=True`` calls ``on_disk_build`` before adding items, so the forest is built
    in the file rather than in RAM (catalogs larger than memory). The file is written
    under a temporary name and moved into place. Returns ``{"build_seconds", "size_bytes",
    "n_items", "trees", "dim", "sample_sha256", "on_disk"}``.
    """
    n, dim = int(vectors.shape[0]), int(vectors.shape[1])
    return AnnoyBackend.build(
        iter_blocks(vectors, chunk),
        n,
        dim,
        path,
        AnnoyBackend.params(trees=trees),
        on_disk=on_disk,
        n_jobs=n_jobs,
        seed=seed,
    )


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
        raise UserError(
            f"{index_dir} is not an amazon-visual index (no {MANIFEST}): build one with amazon-visual index"
        )
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
                    f"{index_dir} was built with {key}={manifest[key]!r} but the model given has "
                    f"{key}={expect[key]!r}: query it with the model it was built with, "
                    "or rebuild the index with amazon-visual index --overwrite"
                )


# --------------------------------------------------------------------------
# loaded index
# --------------------------------------------------------------------------
GENERATION_PREFIX = "gen-"  # INDEX_DIR/gen-000002/: the files of a generation written by index --update
_GENERATION_RE = re.compile(re.escape(GENERATION_PREFIX) + r"\d{6}")


def generation_folder(number):
    """The folder (inside INDEX_DIR) of generation ``number`` >= 2; generation 1 lives at the top level."""
    return f"{GENERATION_PREFIX}{int(number):06d}"


def is_generation_folder(name):
    return bool(_GENERATION_RE.fullmatch(str(name)))


def index_path(index_dir, manifest, key, default):
    """The path of the file the manifest names under ``key`` (``items_file``, ``embeddings_file``, ``index_file``):
    relative to INDEX_DIR, at the top level or in a generation folder; ``default`` when the manifest lacks it."""
    name = (manifest or {}).get(key) or default
    parts = str(name).replace("\\", "/").split("/")
    if (
        os.path.isabs(str(name))
        or ".." in parts
        or len(parts) > 2
        or (len(parts) == 2 and not is_generation_folder(parts[0]))
    ):
        raise UserError(
            f"{os.path.join(os.fspath(index_dir), MANIFEST)} names {key} {name!r}, which is not a file "
            "of the index: rebuild the index with amazon-visual index --overwrite"
        )
    return os.path.join(os.fspath(index_dir), *parts)


def thumbnail_file(index_dir, name):
    """The real path of a thumbnail named in the items table (``thumbs/x.jpg`` or ``gen-000002/thumbs/x.jpg``),
    or None when the name points anywhere else (a served thumbnail never leaves INDEX_DIR's thumbs folders)."""
    if not name:
        return None
    root = os.path.realpath(os.fspath(index_dir))
    path = os.path.realpath(os.path.join(root, str(name)))
    folder = os.path.dirname(path)
    if os.path.basename(folder) != THUMBS:
        return None
    parent = os.path.dirname(folder)
    if parent == root or (os.path.dirname(parent) == root and is_generation_folder(os.path.basename(parent))):
        return path
    return None


def _manifest_or_none(index_dir):
    try:
        with open(os.path.join(os.fspath(index_dir), MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def read_items(index_dir, manifest=None):
    """The items table the manifest names (``manifest``: read from INDEX_DIR when not given)."""
    import pandas as pd

    if manifest is None:
        manifest = _manifest_or_none(index_dir)
    path = index_path(index_dir, manifest, "items_file", ITEMS)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: rebuild the index with amazon-visual index --overwrite")
    items = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "label_id" in items:
        items["label_id"] = pd.to_numeric(items["label_id"], errors="coerce").fillna(-1).astype(int)
    # attributes: an empty cell (or an index built before attributes existed) is missing: NaN numbers, "" brand
    for name in NUMERIC_ATTRIBUTES:
        items[name] = pd.to_numeric(items[name], errors="coerce") if name in items else np.nan
    for name in ("brand", "image_sha256"):
        if name not in items:
            items[name] = ""
    return items


class Index:
    """A loaded INDEX_DIR: manifest, items table, memory-mapped embeddings and the ANN searcher
    (a :mod:`.backends` searcher, or an ``AnnoyIndex``)."""

    def __init__(self, index_dir, manifest, items, embeddings, ann, search_k=None):
        self.index_dir = os.fspath(index_dir)
        self.manifest = manifest
        self.items = items
        self.embeddings = embeddings
        self.ann = ann if hasattr(ann, "search") else backends.AnnoySearcher(ann)
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

        Candidates come from the backend (``search_k``: Annoy's nodes inspected, -1 = Annoy's
        default ``n * trees``; HNSW's ``ef``, -1 = the manifest's); their similarity is recomputed
        exactly from the stored normalised embeddings. Items in ``exclude`` are dropped (n + len(exclude) are fetched).
        """
        q = normalize(np.asarray(vector, dtype=np.float32).reshape(-1))
        if q.shape[0] != self.dim:
            raise UserError(f"query vector has dimension {q.shape[0]}, the index {self.dim}")
        exclude = set(int(e) for e in exclude)
        want = min(self.n_items, int(n) + len(exclude))
        sk = self.search_k if search_k is None else int(search_k)
        ids = self.ann.search(q, want, sk)
        ids = np.array([i for i in ids if i not in exclude][: int(n)], dtype=np.int64)
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

    @property
    def annoy(self):
        """The AnnoyIndex of an Annoy-backed index (None for another backend, or once closed)."""
        return getattr(self.ann, "annoy", None)

    def close(self):
        if self.ann is not None:
            self.ann.close()
            self.ann = None


def load_index(index_dir, expect=None, search_k=None, verify="quick"):
    """Open INDEX_DIR for queries (memory-mapped). ``expect``: model description to check against the manifest."""
    index_dir = os.fspath(index_dir)
    manifest = read_manifest(index_dir)
    if expect:
        check_manifest(manifest, expect, index_dir)
    n, dim = int(manifest["n_items"]), int(manifest["embedding_dim"])
    items = read_items(index_dir, manifest)
    if len(items) != n:
        raise UserError(
            f"{index_path(index_dir, manifest, 'items_file', ITEMS)} has {len(items)} rows but the "
            f"manifest says {n} items: rebuild the index with amazon-visual index --overwrite"
        )
    emb_path = index_path(index_dir, manifest, "embeddings_file", EMBEDDINGS)
    try:
        emb = np.load(emb_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(
            f"{emb_path} is missing or unreadable ({e}): rebuild the index with amazon-visual index --overwrite"
        ) from None
    if emb.shape != (n, dim) or emb.dtype != np.float32:
        raise UserError(
            f"{emb_path} is {emb.dtype} {emb.shape}, expected float32 ({n}, {dim}): "
            "rebuild the index with amazon-visual index --overwrite"
        )
    ann = backends.for_manifest(manifest).open(
        index_path(index_dir, manifest, "index_file", INDEX_FILE), dim, n, manifest, verify
    )
    return Index(index_dir, manifest, items, emb, ann, search_k)


# --------------------------------------------------------------------------
# the `amazon-visual index` command
# --------------------------------------------------------------------------
def _remove_stale_tmp(folder):
    """Remove ``*.tmp-<pid>*`` files of processes that are gone (left by a killed build)."""
    if not os.path.isdir(folder):
        return
    with os.scandir(folder) as it:
        for entry in it:
            m = re.search(r"\.tmp-(\d+)", entry.name)
            if m and entry.is_file() and not _alive(int(m.group(1))):
                os.remove(entry.path)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_out(out_dir, overwrite):
    out_dir = os.fspath(out_dir)
    from amazon_visual.retrieval.writelog import LOG_FILE

    # a writable build writes its (empty) log just before the manifest: a kill in between leaves it
    files = {
        INDEX_FILE,
        backends.HnswBackend.index_file,
        EMBEDDINGS,
        ITEMS,
        THUMBS,
        EMBEDDER_FILE,
        LOG_FILE,
        f"{LOG_FILE}-wal",
        f"{LOG_FILE}-shm",
    }
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        # an interrupted build (no manifest yet, only files of ours) resumes; anything else needs --overwrite
        resumable = (
            os.path.isdir(os.path.join(out_dir, PARTIAL))
            and not os.path.exists(os.path.join(out_dir, MANIFEST))
            and all(n in files | {PARTIAL} or ".tmp-" in n for n in os.listdir(out_dir))
        )
        if not overwrite and not resumable:
            raise UserError(f"{out_dir} is not empty: choose another --out or pass --overwrite")
        if overwrite:
            # .partial stays: embed_dataset resumes it only when model, dataset and settings are the same
            generations = {n for n in os.listdir(out_dir) if is_generation_folder(n)}  # of index --update
            for name in files | {MANIFEST} | generations:
                p = os.path.join(out_dir, name)
                if os.path.isdir(p):
                    shutil.rmtree(p)
                elif os.path.exists(p):
                    os.remove(p)
        for folder in (out_dir, os.path.join(out_dir, PARTIAL), os.path.join(out_dir, THUMBS)):
            _remove_stale_tmp(folder)
    elif os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir} is a file: choose a folder for --out")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def build_index(
    data_dir,
    out_dir,
    run_dir=None,
    backbone=None,
    weights="imagenet",
    splits=("train", "validation", "test"),
    trees=None,
    search_k=None,
    on_disk=False,
    image_size=None,
    batch_size=64,
    thumbnails=True,
    overwrite=False,
    n_jobs=-1,
    progress=True,
    backend="annoy",
    hnsw_m=None,
    ef_construction=None,
    beam=False,
    beam_options=None,
    chunk_items=None,
    writable=False,
):
    """Embed DATA_DIR's ``splits`` with a trained run (``run_dir``) or a pretrained ``backbone`` and index them.

    Writes INDEX_DIR = ``out_dir`` (manifest.json, items.csv, embeddings.npy, the ANN index
    file, thumbs/). Embeddings are written in shards under ``out_dir/.partial`` so an
    interrupted run (even ``kill -9``) resumes where it stopped; the manifest is written last
    and ``.partial`` removed after it. ``backend``: ``"annoy"`` (``trees``, ``search_k``,
    ``on_disk``) or ``"hnsw"`` (``hnsw_m``, ``ef_construction``, ``search_k`` = ``ef``); None
    values take the defaults of :mod:`.backends`. ``beam=True`` embeds with Apache Beam's
    RunInference (:mod:`.beam_embed`; ``beam_options``: pipeline options) and builds the
    index on disk. ``chunk_items``: items per embedding shard (the unit of resumption and of
    Beam's parallelism; default 2048). ``writable=True``: a write log beside the index takes
    live writes (:mod:`.writelog`). Returns the manifest (plus timings).
    """
    from amazon_visual.retrieval import embeddings as E
    from amazon_visual.retrieval.shards import iter_npy_blocks

    if (run_dir is None) == (backbone is None):
        raise UserError("give either a RUN_DIR or --backbone NAME, not both or neither")
    if beam_options and not beam:
        raise UserError("--beam-options needs --beam")
    B = backends.get(backend)
    params = B.params(trees=trees, search_k=search_k, hnsw_m=hnsw_m, ef_construction=ef_construction)
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    out_dir = _prepare_out(out_dir, overwrite)
    partial = os.path.join(out_dir, PARTIAL)
    embedder = E.embedder_for_index(run_dir, backbone, weights, image_size, partial)
    t0 = time.perf_counter()
    if beam:
        from amazon_visual.retrieval.beam_embed import embed_dataset_beam

        summary = embed_dataset_beam(
            embedder,
            data_dir,
            out_dir,
            splits=splits,
            batch_size=batch_size,
            thumbnails=thumbnails,
            beam_options=beam_options,
            progress=progress,
            chunk_items=chunk_items,
        )
        on_disk = on_disk or B is AnnoyBackend
    else:
        summary = E.embed_dataset(
            embedder,
            data_dir,
            out_dir,
            splits=splits,
            batch_size=batch_size,
            thumbnails=thumbnails,
            progress=progress,
            cleanup=False,
            chunk_items=chunk_items or E.CHUNK_ITEMS,
        )
    embed_seconds = time.perf_counter() - t0
    n, dim = int(summary["n_items"]), embedder.dim
    if progress:
        import sys

        print(
            f"building the {B.name} index: {n} items, dim {dim}, "
            + ", ".join(f"{k} {v}" for k, v in params.items())
            + (" (on disk)" if on_disk else ""),
            file=sys.stderr,
        )
    stats = B.build(
        iter_npy_blocks(os.path.join(out_dir, EMBEDDINGS)),
        n,
        dim,
        os.path.join(out_dir, B.index_file),
        params,
        on_disk=on_disk,
        n_jobs=n_jobs,
    )
    desc = embedder.describe()
    extra = _files_beside_the_index(out_dir, partial, desc, writable)
    run = {
        "data_dir": data_dir,
        "splits": splits,
        "thumbnails": thumbnails,
        "beam": beam,
        "embed_seconds": embed_seconds,
    }
    manifest = _manifest(desc, B, params, stats, summary, run, extra)
    atomic_write_json(os.path.join(out_dir, MANIFEST), manifest)
    shutil.rmtree(partial, ignore_errors=True)
    return manifest


def _files_beside_the_index(out_dir, partial, desc, writable):
    """The model file (random weights only) and the write log (``writable``) beside a new index; their manifest keys."""
    from amazon_visual.retrieval import writelog

    extra = {}
    if desc["source"] == "backbone" and desc.get("weights") == "none":
        # random weights cannot be rebuilt at query time: keep this very model beside the index
        # (copied: until the manifest is written, a resumed run reloads it from .partial)
        tmp = os.path.join(out_dir, f"embedder.tmp-{os.getpid()}.keras")
        shutil.copyfile(os.path.join(partial, EMBEDDER_FILE), tmp)
        os.replace(tmp, os.path.join(out_dir, EMBEDDER_FILE))
        extra["embedder_file"] = EMBEDDER_FILE
    if writable:  # a new, empty write log for live writes
        extra.update(writelog.create_log(out_dir, desc))
    else:  # an old index's log goes with it
        writelog.remove_log(out_dir)
    return extra


def _manifest(desc, B, params, stats, summary, run, extra):
    """The manifest of a new index: the model, the backend and its files, the dataset, the timings."""
    return {
        "format_version": FORMAT_VERSION,
        **desc,
        "metric": METRIC,
        "backend": B.name,
        "n_items": stats["n_items"],
        "embedding_dim": stats["dim"],
        **params,
        "on_disk_build": bool(stats.get("on_disk")),
        "index_file": B.index_file,
        "index_size_bytes": stats["size_bytes"],
        "index_sample_sha256": stats["sample_sha256"],
        "embeddings_file": EMBEDDINGS,
        "embeddings_normalized": True,
        "items_file": ITEMS,
        "thumbnails": bool(run["thumbnails"]),
        "data_dir": os.path.abspath(os.fspath(run["data_dir"])),
        "dataset_fingerprint": summary.get("dataset_fingerprint"),
        "splits": list(run["splits"]),
        "split_counts": summary["split_counts"],
        "class_names": summary.get("class_names"),
        "embedding_engine": "beam" if run["beam"] else "local",
        "embed_seconds": round(run["embed_seconds"], 3),
        "build_seconds": stats["build_seconds"],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "package_version": _version(),
        **extra,
    }


def _version():
    from amazon_visual import __version__

    return __version__
