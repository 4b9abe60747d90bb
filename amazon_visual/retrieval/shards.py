"""Embedding shards: the unit of work, of resumption and of assembly of an INDEX_DIR.

A shard is two files under ``INDEX_DIR/.partial``: ``<base>.npy`` (float32, rows x dim,
L2-normalised) and ``<base>.json`` (the items table rows of those embeddings, in the same
order). Both are written atomically, the ``.json`` last, so a shard counts as done exactly
when its ``.json`` exists: a process killed at any moment leaves either a complete shard or
no shard (at most a ``*.tmp-<pid>`` file, which a rerun ignores and overwrites).

The local embedding writes one shard per ``chunk_items`` items; the Beam embedding one
shard per TFRecord shard of DATA_DIR. Either way the INDEX_DIR's ``embeddings.npy`` and
``items.csv`` are assembled by streaming the shards in item order (:func:`assemble`), and
the ANN index is built from :func:`iter_npy_blocks` of ``embeddings.npy``: no step holds
all the vectors or all the rows in memory.
"""

import csv
import io
import json
import os

import numpy as np

from amazon_visual.atomic import write_bytes
from amazon_visual.errors import UserError
from amazon_visual.retrieval.layout import EMBEDDINGS, ITEM_COLUMNS, ITEMS


def write_shard(base, embeddings, rows):
    """Write one shard: ``base.npy`` then ``base.json`` (the completion mark), each atomically."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(embeddings, dtype=np.float32))
    write_bytes(base + ".npy", buf.getvalue())
    write_bytes(base + ".json", json.dumps(rows).encode("utf-8"))


def read_rows(base):
    with open(base + ".json", encoding="utf-8") as f:
        return json.load(f)


def shard_complete(base, thumbs_root=None):
    """True when the shard's files exist and, with ``thumbs_root``, every thumbnail its rows name."""
    if not os.path.isfile(base + ".json") or not os.path.isfile(base + ".npy"):
        return False
    if thumbs_root is None:
        return True
    try:
        rows = read_rows(base)
    except (OSError, ValueError):
        return False
    return all(os.path.isfile(os.path.join(thumbs_root, r["thumb"])) for r in rows if r.get("thumb"))


def _npy_header(path):
    """(shape, dtype, data offset) of a C-ordered .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise UserError(f"{path} has .npy format version {version}: rebuild the index")
        shape, fortran, dtype = read(f)
        if fortran:
            raise UserError(f"{path} is Fortran-ordered: rebuild the index")
        return shape, dtype, f.tell()


def iter_npy_blocks(path, rows=65536):
    """Row blocks of a 2-D .npy file read with plain file reads (no memory map stays resident)."""
    shape, dtype, offset = _npy_header(path)
    n, dim = shape
    row_bytes = dim * dtype.itemsize
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, n, rows):
            m = min(rows, n - start)
            buf = f.read(m * row_bytes)
            if len(buf) != m * row_bytes:
                raise UserError(f"{path} is truncated: rebuild the index with amazon-visual index --overwrite")
            yield np.frombuffer(buf, dtype=dtype).reshape(m, dim).astype(np.float32, copy=False)


class NpyWriter:
    """Writes a float32 (n, dim) .npy file block by block (header first, then the rows appended)."""

    def __init__(self, path, n, dim):
        self.f = open(path, "wb")
        self.n, self.written = int(n), 0
        np.lib.format.write_array_header_1_0(
            self.f,
            {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                "fortran_order": False,
                "shape": (int(n), int(dim)),
            },
        )

    def write(self, block):
        block = np.ascontiguousarray(block, dtype=np.float32)
        if self.written + len(block) <= self.n:
            self.f.write(block.tobytes())
        self.written += len(block)

    def close(self):
        self.f.close()


def write_npy(path, blocks, n, dim):
    """Stream row blocks into a float32 (n, dim) .npy at ``path`` (atomically); UserError if the count differs."""
    tmp = f"{path}.tmp-{os.getpid()}"
    w = NpyWriter(tmp, n, dim)
    try:
        for b in blocks:
            w.write(b)
        w.close()
        if w.written != n:
            raise UserError(f"{path}: {w.written} rows written, expected {n}")
        os.replace(tmp, path)
    finally:
        w.close()
        if os.path.exists(tmp):
            os.remove(tmp)


def assemble(bases, out_dir, dim, expected):
    """Stream the shards ``bases`` (in item order) into ``out_dir/embeddings.npy`` and ``items.csv``.

    Both are written under temporary names and moved into place once complete. Returns the
    number of items; a count other than ``expected`` is a UserError (the shards are incomplete).
    """
    emb_path, items_path = os.path.join(out_dir, EMBEDDINGS), os.path.join(out_dir, ITEMS)
    emb_tmp, items_tmp = f"{emb_path}.tmp-{os.getpid()}", f"{items_path}.tmp-{os.getpid()}"
    n = 0
    fe = NpyWriter(emb_tmp, expected, dim)
    try:
        with open(items_tmp, "w", encoding="utf-8", newline="") as fi:
            writer = csv.DictWriter(fi, fieldnames=ITEM_COLUMNS, lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            for base in bases:
                e = np.load(base + ".npy")
                rows = read_rows(base)
                if e.ndim != 2 or e.shape[1] != dim or len(e) != len(rows):
                    raise UserError(
                        f"embedding shard {base} is inconsistent ({e.shape}, {len(rows)} rows): "
                        f"remove {os.path.dirname(base)} and run the command again"
                    )
                fe.write(e)
                writer.writerows(rows)
                n += len(e)
        fe.close()
        if n != expected:
            raise UserError(
                f"the embedding shards hold {n} items, expected {expected}: "
                f"remove {os.path.dirname(bases[0]) if bases else out_dir}/ and run the command again"
            )
        os.replace(emb_tmp, emb_path)
        os.replace(items_tmp, items_path)
    finally:
        fe.close()
        for p in (emb_tmp, items_tmp):
            if os.path.exists(p):
                os.remove(p)
    return n
