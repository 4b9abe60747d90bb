"""The ANN backends of an INDEX_DIR: Annoy (the default) and HNSW (``hnswlib``, optional).

Everything above the index (:class:`amazon_visual.retrieval.index.Index`, the Recommender,
eval-retrieval, the service) talks to a backend through three calls:

- ``backend.build(blocks, n, dim, path, params, on_disk, n_jobs, seed)`` -- the vectors
  arrive as an iterable of float32 row blocks, in item order, so a caller never has to hold
  all of them (Annoy's on-disk build keeps them in the file it builds); the file is written
  under a temporary name and moved into place. Returns ``{"build_seconds", "size_bytes",
  "sample_sha256", ...}`` for the manifest.
- ``backend.open(path, dim, n_items, manifest, verify)`` -- checks the file against the
  manifest (a damaged file must not crash the process) and returns a searcher;
- ``searcher.search(vector, n, effort)`` -- candidate ids, nearest first; ``effort`` is
  Annoy's ``search_k`` (nodes inspected, -1: ``n * trees``) or HNSW's ``ef`` (-1: the
  manifest's). ``Index.search`` rescores the candidates exactly from the stored embeddings.

Both index cosine similarity of L2-normalised vectors (the manifest's metric "angular").

Annoy: ``index.ann`` is memory-mapped (``prefault=False``), so processes serving one
INDEX_DIR share its pages; reads are thread-safe. HNSW: ``index.hnsw`` is read into each
process's memory (hnswlib has no memory-mapped mode); queries go through a lock, because
``ef`` is a property of the whole index.
"""

import contextlib
import hashlib
import os
import threading
import time

import numpy as np

from amazon_visual.errors import UserError

METRIC = "angular"
BACKENDS = ("annoy", "hnsw")
# Measured by benchmarks/index_bench.py (BENCHMARKS.md, "The index at 1 million"): the least effort
# that reaches recall@10 >= 0.99 on 1,000,000 x 512 clustered vectors; build_index records them in
# the manifest, where a query's search_k override or Recommender.load(search_k=) can change them.
DEFAULT_TREES = 50
DEFAULT_SEARCH_K = 2000
DEFAULT_HNSW_M = 16
DEFAULT_HNSW_EF_CONSTRUCTION = 200
DEFAULT_HNSW_EF = 192
_SAMPLE = 1 << 20  # bytes hashed at each end of an index file
_FIX = "rebuild it with amazon-visual index --overwrite"


def file_sample_hash(path, size):
    """sha256 of the first and last MiB of a file (a quick identity check of a large index file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(_SAMPLE, size - _SAMPLE))
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


def iter_blocks(vectors, chunk=65536):
    """Row blocks (float32) of an array or memmap, ``chunk`` rows at a time."""
    for start in range(0, int(vectors.shape[0]), chunk):
        yield np.asarray(vectors[start : start + chunk], dtype=np.float32)


def _check_counts(n, dim):
    if n == 0:
        raise UserError("no items to index: the chosen splits are empty")
    if dim < 1:
        raise UserError(f"embedding dimension {dim} is not positive")


@contextlib.contextmanager
def _temporary(path):
    """A temporary name next to ``path``, removed when the build fails (moved into place by :func:`_finish`)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _add_blocks(blocks, n, add):
    """Feed row blocks to ``add(first_id, block)``; UserError unless exactly ``n`` rows came."""
    i = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        add(i, block)
        i += len(block)
    if i != n:
        raise UserError(f"index build got {i} vectors, expected {n}: remove the partial index and rebuild")


def _finish(tmp, path, t0, n, dim, **extra):
    os.replace(tmp, path)
    size = os.path.getsize(path)
    return {
        "build_seconds": round(time.perf_counter() - t0, 6),
        "size_bytes": size,
        "n_items": n,
        "dim": dim,
        "sample_sha256": file_sample_hash(path, size),
        **extra,
    }


def _check_file(path, size_bytes, sample_sha256):
    what = f"index file {path}"
    if not os.path.isfile(path):
        raise UserError(f"{what} is missing: {_FIX}")
    size = os.path.getsize(path)
    if size_bytes is not None and size != int(size_bytes):
        raise UserError(f"{what} is {size} bytes but the manifest says {size_bytes} (truncated or replaced): {_FIX}")
    if sample_sha256 and file_sample_hash(path, size) != sample_sha256:
        raise UserError(f"{what} is corrupt (checksum differs from the manifest): {_FIX}")
    return size


# --------------------------------------------------------------------------
# Annoy
# --------------------------------------------------------------------------
def node_size(dim):
    """Bytes per node of an angular Annoy index: int32 n_descendants, int32 children[2], float32 v[dim]."""
    return 12 + 4 * int(dim)


def check_annoy_file(path, dim, n_items, size_bytes=None, sample_sha256=None, verify="quick"):
    """Raise UserError unless ``path`` looks like the angular Annoy file the manifest describes."""
    what = f"index file {path}"
    if not os.path.isfile(path):
        raise UserError(f"{what} is missing: {_FIX}")
    size = os.path.getsize(path)
    s = node_size(dim)
    if size_bytes is not None and size != int(size_bytes):
        raise UserError(f"{what} is {size} bytes but the manifest says {size_bytes} (truncated or replaced): {_FIX}")
    if size == 0 or size % s:
        raise UserError(f"{what} is corrupt (size {size} is not a multiple of the node size {s}): {_FIX}")
    n_nodes = size // s
    if n_nodes < n_items:
        raise UserError(f"{what} is corrupt ({n_nodes} nodes for {n_items} items): {_FIX}")
    if sample_sha256 and file_sample_hash(path, size) != sample_sha256:
        raise UserError(f"{what} is corrupt (checksum differs from the manifest): {_FIX}")
    raw = np.memmap(path, dtype=np.int32, mode="r", shape=(n_nodes, s // 4))
    try:
        # Annoy appends a copy of each root at the end; each root covers every item.
        if int(raw[-1, 0]) != n_items:
            raise UserError(f"{what} is corrupt (its roots cover {int(raw[-1, 0])} items, not {n_items}): {_FIX}")
        rng = range(n_items, n_nodes) if verify == "full" else range(max(n_items, n_nodes - 64), n_nodes)
        _check_annoy_nodes(raw, rng, n_items, n_nodes, what)
        if verify == "full":
            for start in range(0, n_items, 65536):
                if (np.asarray(raw[start : min(n_items, start + 65536), 0]) != 1).any():
                    raise UserError(f"{what} is corrupt (bad item node): {_FIX}")
    finally:
        del raw
    return size


def _check_annoy_nodes(raw, rng, n_items, n_nodes, what):
    """Every internal node in ``rng`` points inside the file (item ids < n_items, children < n_nodes)."""
    K = raw.shape[1] - 1  # ids an internal leaf node can hold (children[] overlaps v[])
    for start in range(rng.start, rng.stop, 65536):
        block = np.asarray(raw[start : min(rng.stop, start + 65536)])
        nd = block[:, 0]
        if (nd < 1).any():
            raise UserError(f"{what} is corrupt (bad node header): {_FIX}")
        small = nd <= K
        ids = block[:, 1:]
        mask = np.arange(K)[None, :] < nd[:, None]
        bad_small = (small[:, None] & mask & ((ids < 0) | (ids >= n_items))).any()
        kids = block[~small, 1:3]
        if bad_small or ((kids < 0) | (kids >= n_nodes)).any():
            raise UserError(f"{what} is corrupt (a node points outside the file): {_FIX}")


def open_annoy(path, dim, n_items, size_bytes=None, sample_sha256=None, verify="quick"):
    """Validate then memory-map an angular Annoy file (``prefault=False``); UserError when it does not fit."""
    from annoy import AnnoyIndex

    check_annoy_file(path, dim, n_items, size_bytes, sample_sha256, verify)
    index = AnnoyIndex(int(dim), METRIC)
    try:
        index.load(os.fspath(path), prefault=False)
    except (OSError, ValueError) as e:
        raise UserError(f"index file {path} cannot be loaded ({e}): {_FIX}") from None
    if index.get_n_items() != n_items:
        got = index.get_n_items()
        index.unload()
        raise UserError(f"index file {path} holds {got} items but the manifest says {n_items}: {_FIX}")
    return index


class AnnoySearcher:
    """Searches a loaded AnnoyIndex (thread-safe: Annoy reads are)."""

    def __init__(self, annoy):
        self.annoy = annoy

    def search(self, vector, n, effort=-1):
        return self.annoy.get_nns_by_vector(vector, int(n), search_k=int(effort))

    def close(self):
        if self.annoy is not None:
            self.annoy.unload()
            self.annoy = None


class AnnoyBackend:
    name = "annoy"
    index_file = "index.ann"

    @staticmethod
    def params(trees=None, search_k=None, **_):
        trees = DEFAULT_TREES if trees is None else int(trees)
        if trees < 1:
            raise UserError(f"--trees must be at least 1, not {trees}")
        return {"trees": trees, "search_k": DEFAULT_SEARCH_K if search_k is None else int(search_k)}

    @staticmethod
    def build(blocks, n, dim, path, params, on_disk=False, n_jobs=-1, seed=42):
        """Angular Annoy forest of the rows in ``blocks``; ``on_disk``: built in the file (Annoy's
        ``on_disk_build``), so the vectors and the forest live in the file's pages, not in RAM."""
        from annoy import AnnoyIndex

        n, dim = int(n), int(dim)
        _check_counts(n, dim)
        t0 = time.perf_counter()
        index = AnnoyIndex(dim, METRIC)
        index.set_seed(int(seed))
        with _temporary(os.fspath(path)) as tmp:
            if on_disk:
                index.on_disk_build(tmp)

            def add(first, block):
                for j, v in enumerate(block):
                    index.add_item(first + j, v)

            _add_blocks(blocks, n, add)
            index.build(int(params["trees"]), n_jobs=n_jobs)
            if not on_disk:
                index.save(tmp)
            index.unload()
            return _finish(tmp, os.fspath(path), t0, n, dim, trees=int(params["trees"]), on_disk=bool(on_disk))

    @staticmethod
    def open(path, dim, n_items, manifest=None, verify="quick"):
        m = manifest or {}
        return AnnoySearcher(
            open_annoy(path, dim, n_items, m.get("index_size_bytes"), m.get("index_sample_sha256"), verify)
        )


# --------------------------------------------------------------------------
# HNSW (hnswlib)
# --------------------------------------------------------------------------
def _hnswlib():
    try:
        import hnswlib
    except ImportError:
        raise UserError("--backend hnsw needs hnswlib: pip install 'amazon-visual[hnsw]'") from None
    return hnswlib


class HnswSearcher:
    """Searches a loaded hnswlib index; one query at a time (``ef`` is global to the index)."""

    def __init__(self, index, ef):
        self.index, self.ef = index, int(ef)
        self._lock = threading.Lock()

    def search(self, vector, n, effort=-1):
        n = min(int(n), self.index.get_current_count())
        ef = max(n, self.ef if effort is None or int(effort) <= 0 else int(effort))
        with self._lock:
            if self.index.ef != ef:
                self.index.set_ef(ef)
            labels, _ = self.index.knn_query(np.asarray(vector, np.float32).reshape(1, -1), k=n, num_threads=1)
        return [int(i) for i in labels[0]]

    def close(self):
        self.index = None


class HnswBackend:
    name = "hnsw"
    index_file = "index.hnsw"

    @staticmethod
    def params(hnsw_m=None, ef_construction=None, search_k=None, **_):
        m = DEFAULT_HNSW_M if hnsw_m is None else int(hnsw_m)
        efc = DEFAULT_HNSW_EF_CONSTRUCTION if ef_construction is None else int(ef_construction)
        if m < 2 or efc < 1:
            raise UserError(f"--hnsw-m must be at least 2 and --ef-construction at least 1 (got {m}, {efc})")
        ef = DEFAULT_HNSW_EF if search_k is None or int(search_k) <= 0 else int(search_k)
        return {"hnsw_m": m, "hnsw_ef_construction": efc, "search_k": ef}

    @staticmethod
    def build(blocks, n, dim, path, params, on_disk=False, n_jobs=-1, seed=42):
        """HNSW graph (cosine space) of the rows in ``blocks``, added block by block. hnswlib keeps the
        vectors and the graph in RAM while it builds (``on_disk`` does not apply)."""
        hnswlib = _hnswlib()
        n, dim = int(n), int(dim)
        _check_counts(n, dim)
        t0 = time.perf_counter()
        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(
            max_elements=n,
            M=int(params["hnsw_m"]),
            ef_construction=int(params["hnsw_ef_construction"]),
            random_seed=int(seed),
        )
        with _temporary(os.fspath(path)) as tmp:
            _add_blocks(
                blocks,
                n,
                lambda first, block: index.add_items(block, np.arange(first, first + len(block)), num_threads=n_jobs),
            )
            index.save_index(tmp)
            return _finish(
                tmp,
                os.fspath(path),
                t0,
                n,
                dim,
                hnsw_m=int(params["hnsw_m"]),
                hnsw_ef_construction=int(params["hnsw_ef_construction"]),
                on_disk=False,
            )

    @staticmethod
    def open(path, dim, n_items, manifest=None, verify="quick"):
        hnswlib = _hnswlib()
        m = manifest or {}
        _check_file(path, m.get("index_size_bytes"), m.get("index_sample_sha256"))
        index = hnswlib.Index(space="cosine", dim=int(dim))
        try:
            index.load_index(os.fspath(path), max_elements=int(n_items))
        except (RuntimeError, OSError, ValueError, MemoryError) as e:
            raise UserError(f"index file {path} cannot be loaded ({e}): {_FIX}") from None
        if index.get_current_count() != n_items or index.dim != int(dim):
            raise UserError(
                f"index file {path} holds {index.get_current_count()} items of dim {index.dim}, "
                f"the manifest says {n_items} of dim {dim}: {_FIX}"
            )
        ef = m.get("search_k")
        return HnswSearcher(index, ef if ef and int(ef) > 0 else DEFAULT_HNSW_EF)


_BACKENDS = {"annoy": AnnoyBackend, "hnsw": HnswBackend}


def get(name):
    """The backend class called ``name`` ("annoy" or "hnsw")."""
    name = "annoy" if name is None else str(name).lower()
    if name not in _BACKENDS:
        raise UserError(f"unknown index backend {name!r}: use one of {', '.join(BACKENDS)}")
    return _BACKENDS[name]


def for_manifest(manifest):
    """The backend an INDEX_DIR was built with (old manifests without ``backend``: Annoy)."""
    return get(manifest.get("backend") or "annoy")


def build_params(manifest):
    """The backend parameters recorded in a manifest (to build another index the same way)."""
    keys = ("trees", "search_k", "hnsw_m", "hnsw_ef_construction")
    p = {k: manifest[k] for k in keys if manifest.get(k) is not None}
    if "hnsw_ef_construction" in p:
        p["ef_construction"] = p.pop("hnsw_ef_construction")
    return for_manifest(manifest).params(**p)
