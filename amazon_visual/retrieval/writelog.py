"""Live writes on a read-only index: a durable write log (SQLite) and the overlay searched beside the index.

An INDEX_DIR built with ``amazon-visual index ... --writable`` has ``writes.sqlite`` beside its
read-only ANN index (Annoy or HNSW), and its manifest says ``"writable": true``, ``"log_id"`` (the
log that belongs to it) and ``"log_folded_seq"`` (the last log entry already folded into the
index's own files; 0 for a fresh build).

The log. One table of writes, one row per write, numbered by ``seq`` (``AUTOINCREMENT``: never
reused): ``put`` (asin, the L2-normalised float32 embedding as a blob, the attributes as a JSON
object, the thumbnail JPEG) or ``delete`` (asin). SQLite in WAL mode with ``synchronous=FULL``: a
write is one ``BEGIN IMMEDIATE`` .. ``COMMIT`` transaction, fsynced before :meth:`WriteLog.put` /
:meth:`WriteLog.delete` return, so an answered write survives ``kill -9`` and never half-applies.
SQLite serialises the writers of every process (``busy_timeout``); readers never block them.

The overlay. :class:`Overlay` replays the entries newer than the manifest's ``log_folded_seq`` in
memory: the vectors and attributes of the ASINs put live (one *slot* each, append-only: a slot, once
numbered, always means the same write) and a mask of the index's own items that are hidden
(replaced or deleted). Before each use it asks SQLite ``PRAGMA data_version`` (a few microseconds)
and reads only the rows with ``seq`` above the last one seen, so every process sees a committed write
at its next query. :class:`LiveIndex` is the index plus its overlay: ids ``0 .. n_items-1`` are the
index's items, ids ``n_items + slot`` the live ones; ``asin_to_id``, ``item``, ``vector`` and
``thumb_path`` answer for both, and :meth:`LiveIndex.search_overlay` is the exact scan the
Recommender merges with the index's filtered search. ``amazon-visual index --update`` folds the log
(:func:`fold_entries`) into a new generation of the index.
"""

import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid

import numpy as np

from amazon_visual.atomic import write_bytes
from amazon_visual.errors import UserError
from amazon_visual.retrieval import filters as F
from amazon_visual.retrieval.layout import dot_rows, normalize

LOG_FILE = "writes.sqlite"
LIVE_THUMBS = "live-thumbs"
LOG_FORMAT = 1
BUSY_TIMEOUT_MS = 30_000
LIVE_SPLIT = "live"
TEXT_ATTRIBUTES = ("title", "brand")
NUMBER_ATTRIBUTES = {"price": (0.0, math.inf), "average_rating": (0.0, 5.0), "rating_number": (0.0, math.inf)}
ATTRIBUTES = ("title", "category", "brand", "price", "average_rating", "rating_number")
MAX_TEXT = 1000
FEW_HIDDEN = 100  # under 1% of the index's items hidden: an unfiltered query drops them from the ANN's answer
ASIN_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS writes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    asin TEXT NOT NULL,
    embedding BLOB,
    attributes TEXT,
    thumbnail BLOB,
    written_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS writes_by_asin ON writes (asin, seq);
"""


def log_path(index_dir):
    return os.path.join(os.fspath(index_dir), LOG_FILE)


def _connect(path):
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def remove_log(index_dir):
    """Remove INDEX_DIR's write log (the database, its WAL / shared-memory files, its live thumbnails)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = log_path(index_dir) + suffix
        if os.path.exists(p):
            os.remove(p)
    shutil.rmtree(os.path.join(os.fspath(index_dir), LIVE_THUMBS), ignore_errors=True)


def create_log(index_dir, describe):
    """A new, empty write log in INDEX_DIR (an old one is replaced); returns the manifest's write fields.

    ``describe``: the embedder's description (``embedding_dim``, ``fingerprint``), which the log
    records so that entries are never mixed with another model's vectors.
    """
    remove_log(index_dir)
    log_id = uuid.uuid4().hex
    conn = _connect(log_path(index_dir))
    try:
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise UserError(
                f"{log_path(index_dir)}: SQLite cannot use WAL mode on this file system: put the index on a local disk"
            )
        conn.executescript(SCHEMA)
        meta = {
            "log_id": log_id,
            "format": str(LOG_FORMAT),
            "embedding_dim": str(int(describe["embedding_dim"])),
            "fingerprint": str(describe.get("fingerprint") or ""),
        }
        with conn:
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items())
    finally:
        conn.close()
    return {"writable": True, "log_file": LOG_FILE, "log_id": log_id, "log_folded_seq": 0}


def is_writable(manifest):
    return bool(manifest.get("writable"))


# --------------------------------------------------------------------------
# attributes of a write
# --------------------------------------------------------------------------
def parse_attributes(raw, categories=None):
    """The attributes of a put, checked: a dict with any of :data:`ATTRIBUTES` (UserError otherwise).

    ``raw``: a JSON string, bytes, a dict or None. ``categories``: the index's classes; a
    category must be one of them (a live product joins an existing class: the model and the
    filters know no other). Missing numbers are NaN, a missing brand / title / category "".
    """
    if raw is None or raw == "" or raw == b"":
        attrs = {}
    elif isinstance(raw, dict):
        attrs = raw
    else:
        try:
            attrs = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise UserError(
                'attributes is not valid JSON: send a JSON object such as {"title": "...", "price": 12.5}'
            ) from None
    if not isinstance(attrs, dict):
        raise UserError("attributes must be a JSON object with any of " + ", ".join(ATTRIBUTES))
    unknown = sorted(set(attrs) - set(ATTRIBUTES))
    if unknown:
        raise UserError(f"unknown attribute {unknown[0]!r}: use any of " + ", ".join(ATTRIBUTES))
    out = {"title": "", "category": "", "brand": ""}
    for name in ("title", "category", "brand"):
        value = attrs.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise UserError(f"attribute {name} must be a string of at most {MAX_TEXT} characters")
        out[name] = value.strip()
    if out["category"] and categories is not None and out["category"] not in categories:
        raise UserError(
            f"unknown category {out['category']!r}: a live product takes one of the index's categories "
            "(see GET /v1/categories)"
        )
    for name, (lo, hi) in NUMBER_ATTRIBUTES.items():
        value = attrs.get(name)
        if value is None:
            out[name] = math.nan
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"attribute {name} must be a finite number, not {value!r}")
        if not lo <= value <= hi:
            raise UserError(f"attribute {name} {value} is outside [{lo:g}, {hi:g}]")
        out[name] = float(value)
    return out


def _json_attrs(attrs):
    return json.dumps(
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in attrs.items()}, sort_keys=True
    )


def _load_attrs(text):
    attrs = json.loads(text or "{}")
    for name in NUMBER_ATTRIBUTES:
        attrs[name] = math.nan if attrs.get(name) is None else float(attrs[name])
    for name in ("title", "category", "brand"):
        attrs[name] = attrs.get(name) or ""
    return attrs


# --------------------------------------------------------------------------
# the log
# --------------------------------------------------------------------------
class WriteLog:
    """INDEX_DIR/writes.sqlite opened for writing (thread-safe: one connection behind a lock)."""

    def __init__(self, index_dir, manifest):
        self.index_dir = os.fspath(index_dir)
        self.path = log_path(index_dir)
        if not os.path.isfile(self.path):
            raise UserError(
                f"{self.path} is missing: the index says it is writable but has no write log; "
                "rebuild it with amazon-visual index --writable --overwrite"
            )
        self.conn = _connect(self.path)
        self.meta = read_meta(self.conn, self.path)
        check_log(self.meta, manifest, self.path)
        self.dim = int(self.meta["embedding_dim"])
        self._lock = threading.Lock()

    def close(self):
        self.conn.close()

    def _latest(self, asin, after):
        row = self.conn.execute(
            "SELECT op FROM writes WHERE asin = ? AND seq > ? ORDER BY seq DESC LIMIT 1", (asin, int(after))
        ).fetchone()
        return row[0] if row else None

    def _transaction(self, asin, after, in_base, insert):
        """Run ``insert(existed) -> seq or None`` in one IMMEDIATE transaction; (seq, existed)."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                op = self._latest(asin, after)
                existed = op == "put" or (op is None and bool(in_base(asin)))
                seq = insert(existed)
                self.conn.execute("COMMIT" if seq is not None else "ROLLBACK")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        return seq, existed

    def put(self, asin, embedding, attributes, thumbnail, after, in_base):
        """Append a put of ``asin``; durable when it returns. (seq, True when it replaced a product).

        ``after``: the manifest's ``log_folded_seq``; ``in_base(asin)``: whether the index's own files
        hold ``asin`` (both tell whether this write creates or replaces).
        """
        vec = normalize(np.asarray(embedding, np.float32).reshape(-1))
        if vec.shape[0] != self.dim:
            raise UserError(f"embedding has dimension {vec.shape[0]}, the write log {self.dim}")
        blob = vec.astype("<f4").tobytes()

        def insert(existed):
            cur = self.conn.execute(
                "INSERT INTO writes (op, asin, embedding, attributes, thumbnail, written_at) "
                "VALUES ('put', ?, ?, ?, ?, ?)",
                (asin, blob, _json_attrs(attributes), thumbnail, time.time()),
            )
            return cur.lastrowid

        return self._transaction(asin, after, in_base, insert)

    def delete(self, asin, after, in_base):
        """Append a delete of ``asin``; durable when it returns. The seq, or None (and nothing written)
        when ``asin`` is not in the catalog."""

        def insert(existed):
            if not existed:
                return None
            cur = self.conn.execute(
                "INSERT INTO writes (op, asin, written_at) VALUES ('delete', ?, ?)", (asin, time.time())
            )
            return cur.lastrowid

        return self._transaction(asin, after, in_base, insert)[0]

    def last_seq(self):
        with self._lock:
            row = self.conn.execute("SELECT MAX(seq) FROM writes").fetchone()
        return int(row[0] or 0)


def read_meta(conn, path):
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        raise UserError(
            f"{path} is not a readable write log ({e}): rebuild the index with "
            "amazon-visual index --writable --overwrite"
        ) from None


def check_log(meta, manifest, path):
    if meta.get("log_id") != manifest.get("log_id"):
        raise UserError(
            f"{path} does not belong to this index (another log_id): rebuild it with "
            "amazon-visual index --writable --overwrite"
        )
    if int(meta.get("embedding_dim", -1)) != int(manifest["embedding_dim"]):
        raise UserError(
            f"{path} holds {meta.get('embedding_dim')}-d vectors, the index "
            f"{manifest['embedding_dim']}-d: rebuild it with amazon-visual index --writable --overwrite"
        )


def read_entries(index_dir, after=0, upto=None, thumbnails=False):
    """The log's entries with ``after < seq <= upto`` in order: dicts ``{seq, op, asin, embedding,
    attributes[, thumbnail]}`` (what ``index --update`` folds)."""
    conn = _connect(log_path(index_dir))
    try:
        cols = "seq, op, asin, embedding, attributes" + (", thumbnail" if thumbnails else "")
        q = f"SELECT {cols} FROM writes WHERE seq > ?" + (" AND seq <= ?" if upto is not None else "") + " ORDER BY seq"
        rows = conn.execute(q, (int(after),) if upto is None else (int(after), int(upto))).fetchall()
    finally:
        conn.close()
    return [_entry(r) for r in rows]


def _entry(r):
    e = {"seq": int(r[0]), "op": r[1], "asin": r[2]}
    if r[1] == "put":
        e["embedding"] = np.frombuffer(r[3], dtype="<f4").astype(np.float32)
        e["attributes"] = _load_attrs(r[4])
        if len(r) > 5:
            e["thumbnail"] = r[5]
    return e


def last_seq(index_dir):
    conn = _connect(log_path(index_dir))
    try:
        return int(conn.execute("SELECT MAX(seq) FROM writes").fetchone()[0] or 0)
    finally:
        conn.close()


def fold_entries(entries):
    """The net effect of log entries in order: ``{asin: entry}`` of the last put of each ASIN still
    present, and the set of ASINs whose last write is a delete."""
    puts, deleted = {}, set()
    for e in entries:
        if e["op"] == "put":
            puts[e["asin"]] = e
            deleted.discard(e["asin"])
        else:
            puts.pop(e["asin"], None)
            deleted.add(e["asin"])
    return puts, deleted


# --------------------------------------------------------------------------
# folding the log into a new generation (index --update)
# --------------------------------------------------------------------------
class Fold:
    """The write log folded into ``index --update``'s new generation (:mod:`.update`).

    Live writes override the catalog data: the whole log up to its last entry ``seq`` (kept compact)
    is applied on top of the new data at every update, so a write stays until a later write of the
    same ASIN changes it: a dataset row whose ASIN the log puts or deletes is dropped, and each ASIN
    the log puts is appended with the log's embedding, attributes and thumbnail. The new manifest
    records ``log_folded_seq = seq``; the workers replay only the entries after it.
    """

    def __init__(self, index_dir, manifest, describe):
        for key in ("fingerprint", "embedding_dim"):
            if describe.get(key) != manifest.get(key):
                raise UserError(
                    f"{log_path(index_dir)} holds vectors of the index's model, and this update uses "
                    "another model: update a writable index with the model it was built with"
                )
        self.index_dir = os.fspath(index_dir)
        self.previous_seq = int(manifest.get("log_folded_seq") or 0)
        self.seq = last_seq(index_dir)
        self.puts, self.deleted = fold_entries(read_entries(index_dir, 0, self.seq))
        self.touched = set(self.puts) | self.deleted

    def n_items(self, blocks):
        """How many rows :meth:`blocks` will give for these dataset blocks (a first pass over them)."""
        return sum(sum(r["asin"] not in self.touched for r in rows) for rows, _ in blocks) + len(self.puts)

    def blocks(self, blocks, gen, gen_dir, names, thumbnails, kind_key="_kind"):
        """The dataset's ``(rows, embeddings)`` blocks without the rows the log overrides, then the live rows
        (``kind_key``: "live"); their thumbnails are written into ``gen_dir/thumbs``."""
        for rows, emb in blocks:
            keep = np.array([r["asin"] not in self.touched for r in rows], bool)
            if keep.any():
                yield [r for r, k in zip(rows, keep) if k], emb[keep]
        if not self.puts:
            return
        label_ids = {str(n): i for i, n in enumerate(names or [])}
        rows, vecs = [], []
        conn = _connect(log_path(self.index_dir))
        try:
            for asin, e in self.puts.items():
                thumb = ""
                if thumbnails:
                    blob = conn.execute("SELECT thumbnail FROM writes WHERE seq = ?", (e["seq"],)).fetchone()
                    if blob and blob[0]:
                        thumb = f"{gen}/thumbs/live-{e['seq']}.jpg"
                        os.makedirs(os.path.join(gen_dir, "thumbs"), exist_ok=True)
                        write_bytes(os.path.join(gen_dir, "thumbs", f"live-{e['seq']}.jpg"), blob[0])
                row = live_row(asin, e["attributes"], thumb, label_ids)
                row[kind_key] = "live"
                rows.append(row)
                vecs.append(e["embedding"])
        finally:
            conn.close()
        yield rows, np.stack(vecs).astype(np.float32)

    def manifest_fields(self):
        return {"log_folded_seq": self.seq}

    def compact(self):
        """After the swap: drop the entries every served generation has folded and a later entry of the same
        ASIN supersedes (the log stays as long as the ASINs it holds), and their live thumbnails."""
        return compact(self.index_dir, self.previous_seq)


def compact(index_dir, upto):
    """Remove the entries with ``seq <= upto`` that a later entry (also ``<= upto``) of the same ASIN supersedes."""
    conn = _connect(log_path(index_dir))
    try:
        with conn:
            gone = [
                r[0]
                for r in conn.execute(
                    "SELECT seq FROM writes AS w WHERE seq <= ? AND seq < (SELECT MAX(seq) FROM writes "
                    "WHERE asin = w.asin AND seq <= ?)",
                    (int(upto), int(upto)),
                ).fetchall()
            ]
            conn.executemany("DELETE FROM writes WHERE seq = ?", [(s,) for s in gone])
        log_id = read_meta(conn, log_path(index_dir)).get("log_id", "")
    finally:
        conn.close()
    for seq in gone:
        path = os.path.join(os.fspath(index_dir), thumb_name(log_id, seq))
        if os.path.exists(path):
            os.remove(path)
    return len(gone)


def live_row(asin, attrs, thumb, label_ids=None):
    """The items-table row of a live product (the columns of :data:`layout.ITEM_COLUMNS`)."""
    category = attrs.get("category", "")
    label_id = (label_ids or {}).get(category, -1) if category else -1
    return {
        "asin": asin,
        "title": attrs.get("title", ""),
        "category": category,
        "label": category,
        "label_id": label_id,
        "image_url": "",
        "split": LIVE_SPLIT,
        "thumb": thumb or "",
        "brand": attrs.get("brand", ""),
        "price": attrs["price"],
        "average_rating": attrs["average_rating"],
        "rating_number": attrs["rating_number"],
        "image_sha256": attrs.get("image_sha256", ""),
    }


# --------------------------------------------------------------------------
# the overlay: the log's newer entries in memory
# --------------------------------------------------------------------------
class _Columns:
    """Append-only columns of the live slots (rows below a snapshot's count never change)."""

    def __init__(self, dim, capacity=256):
        self.dim = dim
        self.vecs = np.zeros((capacity, dim), np.float32)
        self.seq = np.zeros(capacity, np.int64)
        self.label = np.empty(capacity, object)
        self.brand = np.empty(capacity, object)
        self.numbers = {name: np.full(capacity, np.nan) for name in NUMBER_ATTRIBUTES}
        self.rows = []

    def append(self, vec, seq, row):
        n = len(self.rows)
        if n == self.vecs.shape[0]:
            self._grow(2 * n)
        self.vecs[n] = vec
        self.seq[n] = seq
        self.label[n], self.brand[n] = row["label"], row["brand"].strip().casefold()
        for name, col in self.numbers.items():
            col[n] = row[name]
        self.rows.append(row)
        return n

    def _grow(self, cap):
        # new arrays (a reader holding the old ones keeps valid rows); assigned once filled
        def grow(a, fill):
            shape = (cap,) + a.shape[1:]
            b = np.full(shape, fill, a.dtype) if fill is not None else np.empty(shape, a.dtype)
            b[: a.shape[0]] = a
            return b

        self.vecs, self.seq = grow(self.vecs, 0), grow(self.seq, 0)
        self.label, self.brand = grow(self.label, None), grow(self.brand, None)
        self.numbers = {k: grow(v, np.nan) for k, v in self.numbers.items()}


class Snapshot:
    """What one query sees: the live slots ``0 .. n-1``, which are alive, and the hidden index items."""

    def __init__(self, columns, n, alive, slot_of, hidden, n_hidden, seq):
        self.columns, self.n, self.alive, self.slot_of = columns, n, alive, slot_of
        self.hidden, self.n_hidden, self.seq = hidden, n_hidden, seq
        # the arrays as they are now (a later _grow replaces the column objects, never these rows)
        self.vecs = columns.vecs[:n]
        self.label, self.brand = columns.label[:n], columns.brand[:n]
        self.numbers = {k: v[:n] for k, v in columns.numbers.items()}

    @property
    def n_live(self):
        return len(self.slot_of)

    def visible_base(self):
        """Boolean mask of the index's own items still in the catalog (None: all of them)."""
        return None if self.n_hidden == 0 else ~self.hidden


class Overlay:
    """The log's entries newer than the manifest's ``log_folded_seq``, kept current (thread-safe)."""

    def __init__(self, index, min_check_seconds=0.0):
        self.index = index  # the base Index
        self.index_dir = index.index_dir
        manifest = index.manifest
        self.folded_seq = int(manifest.get("log_folded_seq") or 0)
        self.path = log_path(self.index_dir)
        if not os.path.isfile(self.path):
            raise UserError(
                f"{self.path} is missing: the index says it is writable but has no write log; "
                "rebuild it with amazon-visual index --writable --overwrite"
            )
        self._reader = _connect(self.path)
        check_log(read_meta(self._reader, self.path), manifest, self.path)
        self.log_id = manifest["log_id"]
        self._lock = threading.Lock()
        self._version = None
        self._columns = _Columns(int(manifest["embedding_dim"]))
        self._slot_of, self._alive = {}, np.zeros(0, bool)
        self._hidden, self._n_hidden = np.zeros(index.n_items, bool), 0
        self._last = self.folded_seq
        self._dupes = None
        self.min_check = float(min_check_seconds)
        self._checked = 0.0
        self._snap = Snapshot(self._columns, 0, self._alive, {}, self._hidden, 0, self._last)
        self.refresh()

    def close(self):
        with self._lock:
            self._reader.close()

    def snapshot(self):
        """The current state, after reading any entry committed since the last look."""
        if self.min_check and time.monotonic() - self._checked < self.min_check:
            return self._snap
        return self.refresh()

    def refresh(self):
        with self._lock:
            self._checked = time.monotonic()
            version = self._reader.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return self._snap
            rows = self._reader.execute(
                "SELECT seq, op, asin, embedding, attributes FROM writes WHERE seq > ? ORDER BY seq", (self._last,)
            ).fetchall()
            self._version = version
            if rows:
                self._apply([_entry(r) for r in rows])
            return self._snap

    def _apply(self, entries):
        slot_of, alive = dict(self._slot_of), self._alive
        hidden, n_hidden = self._hidden, self._n_hidden
        copied = False
        cols = self._columns
        for e in entries:
            asin = e["asin"]
            base_ids = self._base_ids(asin)
            if len(base_ids) and not hidden[base_ids].all():
                if not copied:
                    hidden, copied = hidden.copy(), True
                n_hidden += int((~hidden[base_ids]).sum())
                hidden[base_ids] = True
            slot_of.pop(asin, None)
            if e["op"] == "put":
                row = live_row(asin, e["attributes"], thumb_name(self.log_id, e["seq"]), self._label_ids())
                slot_of[asin] = cols.append(e["embedding"], e["seq"], row)
            self._last = e["seq"]
        alive = np.zeros(len(cols.rows), bool)
        alive[list(slot_of.values())] = True
        self._slot_of, self._alive, self._hidden, self._n_hidden = slot_of, alive, hidden, n_hidden
        self._snap = Snapshot(cols, len(cols.rows), alive, slot_of, hidden, n_hidden, self._last)

    def _base_ids(self, asin):
        idx = self.index
        i = idx.asin_to_id.get(asin)
        if i is None:
            return np.zeros(0, np.int64)
        if self._dupes is None:
            self._dupes = len(idx.asin_to_id) != idx.n_items
        if self._dupes:  # the same ASIN indexed twice (two splits): hide every copy
            return np.flatnonzero(idx.items["asin"].to_numpy() == asin)
        return np.array([i], np.int64)

    def _label_ids(self):
        if not hasattr(self, "_labels"):
            names = self.index.manifest.get("class_names") or []
            self._labels = {str(n): i for i, n in enumerate(names)}
        return self._labels


def thumb_name(log_id, seq):
    """A live thumbnail's path relative to INDEX_DIR (named by the log and the write: never reused)."""
    return os.path.join(LIVE_THUMBS, f"{str(log_id)[:12]}-{int(seq)}.jpg")


class _AsinView:
    """``asin -> id`` over the index and its overlay (live ASINs map to ``n_items + slot``)."""

    def __init__(self, live):
        self._live = live

    def get(self, asin, default=None):
        snap = self._live.snap()
        slot = snap.slot_of.get(asin)
        if slot is not None:
            return self._live.base.n_items + slot
        i = self._live.base.asin_to_id.get(asin)
        if i is None or (snap.n_hidden and snap.hidden[i]):
            return default
        return i

    def __contains__(self, asin):
        return self.get(asin) is not None

    def __getitem__(self, asin):
        i = self.get(asin)
        if i is None:
            raise KeyError(asin)
        return i

    def __len__(self):
        snap = self._live.snap()
        return len(self._live.base.asin_to_id) - snap.n_hidden + snap.n_live


class LiveIndex:
    """An :class:`~amazon_visual.retrieval.index.Index` (``base``) with its write log's overlay.

    Everything not defined here is the base index's (``items``, ``embeddings``, ``ann``,
    ``n_items``, ``search``, ...): the ANN and its filtered search see only the index's own
    items; :meth:`snap` tells which of them are hidden and what was written live.
    """

    def __init__(self, base, overlay=None):
        self.base = base
        self.overlay = overlay if overlay is not None else Overlay(base)
        self.asin_to_id = _AsinView(self)
        self._has_dupes = len(base.asin_to_id) != base.n_items
        self._thumb_lock = threading.Lock()
        self._writer = None
        self._masks = {}
        self._columns = None
        self.categories = {str(n) for n in base.items["label"].unique() if str(n)}  # what the filters know

    def writer(self):
        """The :class:`WriteLog` this process appends to (opened on first use)."""
        if self._writer is None:
            with self._thumb_lock:
                if self._writer is None:
                    self._writer = WriteLog(self.index_dir, self.manifest)
        return self._writer

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def snap(self):
        return self.overlay.snapshot()

    @property
    def _filter_columns(self):
        """:func:`filters.columns` of this index: the index's columns, whose selections remember their filter
        (so the search applies the same filter to the live items)."""
        if self._columns is None:
            self._columns = _LiveColumns(F.columns(self.base))
        return self._columns

    def _cached(self, snap, key, make):
        """``make()`` kept for this snapshot (masks are paid once per filter and write, not per query)."""
        key = (snap.seq,) + key
        hit = self._masks.get(key)
        if hit is None:
            hit = make()
            with self._thumb_lock:
                if len(self._masks) >= 64 or any(k[0] != snap.seq for k in self._masks):
                    self._masks = {}  # another write came: the old masks are stale
                self._masks[key] = hit
        return hit

    def visible_selection(self, snap, allowed, filters):
        """``allowed`` (the Selection of ``filters``, or None) AND not hidden by the log."""

        def make():
            visible = snap.visible_base()
            sel = F.Selection(visible) if allowed is None else allowed & visible
            sel.key = ("live", self.overlay.log_id, snap.seq, filters or None)  # its rows kept until the next write
            return sel

        return self._cached(snap, ("base", filters or None), make)

    def live_mask(self, snap, filters):
        """The live slots that are alive and allowed by ``filters``."""
        return self._cached(snap, ("live", filters or None), lambda: snap.alive & filter_mask(snap, filters))

    def is_live(self, item_id):
        return int(item_id) >= self.base.n_items

    def in_base(self, asin):
        """Whether the index's own files hold ``asin`` (hidden or not)."""
        return asin in self.base.asin_to_id

    def vector(self, item_id):
        i = int(item_id)
        if i < self.base.n_items:
            return self.base.vector(i)
        return np.array(self.overlay._columns.vecs[i - self.base.n_items])

    def item(self, item_id):
        i = int(item_id)
        if i < self.base.n_items:
            return self.base.item(i)
        return dict(self.overlay._columns.rows[i - self.base.n_items])

    def thumb_path(self, item_id):
        i = int(item_id)
        if i < self.base.n_items:
            return self.base.thumb_path(i)
        seq = int(self.overlay._columns.seq[i - self.base.n_items])
        path = os.path.join(self.index_dir, thumb_name(self.overlay.log_id, seq))
        if not os.path.isfile(path):
            return self._materialize(seq, path)
        return path

    def _materialize(self, seq, path):
        """Write a live thumbnail from the log (a worker that did not take the write, or a lost file)."""
        with self._thumb_lock:
            if os.path.isfile(path):
                return path
            row = self.overlay._reader.execute("SELECT thumbnail FROM writes WHERE seq = ?", (seq,)).fetchone()
            if not row or not row[0]:
                return None
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_bytes(path, row[0])
            return path

    def search_overlay(self, vector, k, mask=None, exclude=(), snap=None):
        """Exact top ``k`` of the live items: ``(ids, sims)`` best first (ids are ``n_items + slot``).

        ``mask``: the slots to consider (default: the alive ones); ``exclude``: ids to skip.
        """
        snap = snap or self.snap()
        if snap.n_live == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        mask = snap.alive if mask is None else mask
        nb = self.base.n_items
        skip = [int(i) - nb for i in exclude if int(i) >= nb]
        if skip:
            mask = mask.copy()
            mask[skip] = False
        n_ok = int(np.count_nonzero(mask))
        if n_ok == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = normalize(np.asarray(vector, np.float32).reshape(-1))
        # every slot (contiguous rows, no gather), then the masked ones dropped
        sims = dot_rows(snap.vecs, q)
        sims[~mask] = -np.inf
        k = min(int(k), n_ok)
        top = np.argpartition(-sims, k - 1)[:k] if k < sims.size else np.arange(sims.size)
        top = top[np.argsort(-sims[top], kind="stable")]
        return top.astype(np.int64) + nb, sims[top].astype(np.float32)

    def close(self):
        if self._writer is not None:
            self._writer.close()
        self.overlay.close()
        self.base.close()


class ReadOnlyIndex(UserError):
    """The index takes no writes (built without ``--writable``)."""


def live_index(index):
    if not isinstance(index, LiveIndex):
        raise ReadOnlyIndex(
            f"{index.index_dir} is read-only (built without --writable): rebuild it with "
            "amazon-visual index ... --writable to take live writes"
        )
    return index


def check_asin(asin):
    asin = str(asin).strip()
    if not ASIN_RE.fullmatch(asin):
        raise UserError(f"ASIN {asin[:80]!r} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'")
    return asin


def put_product(rec, asin, image, attributes=None):
    """Add or replace the product ``asin`` of a writable index: ``image`` (bytes, path, array, ...)
    embedded with ``rec``'s model, ``attributes`` (see :func:`parse_attributes`). Durable when it
    returns ``(row, seq, created)``; every process serving the index sees it at its next query."""
    from amazon_visual.retrieval.embeddings import thumbnail_jpeg

    live = live_index(rec.index)
    asin = check_asin(asin)
    attrs = parse_attributes(attributes, live.categories)
    vec, _, array = rec.embed_image(image)
    if isinstance(image, (bytes, bytearray)):
        attrs["image_sha256"] = hashlib.sha256(image).hexdigest()
    seq, existed = live.writer().put(asin, vec, attrs, thumbnail_jpeg(array), live.overlay.folded_seq, live.in_base)
    row = live_row(asin, attrs, thumb_name(live.overlay.log_id, seq), live.overlay._label_ids())
    return row, seq, not existed


def delete_product(rec, asin):
    """Remove the product ``asin`` of a writable index; the write's seq, or None when it is not there."""
    live = live_index(rec.index)
    asin = str(asin).strip()
    return live.writer().delete(asin, live.overlay.folded_seq, live.in_base)


class _LiveColumns:
    """A :class:`~amazon_visual.retrieval.filters.Columns` whose ``select`` answers a :class:`FilterSelection`."""

    def __init__(self, columns):
        self._columns = columns

    def __getattr__(self, name):
        return getattr(self._columns, name)

    def select(self, filters):
        sel = self._columns.select(filters)
        return None if sel is None else FilterSelection(sel, filters)


class FilterSelection(F.Selection):
    """The Selection of ``filters`` over the index's items, ``filters`` kept for the live items."""

    def __init__(self, sel, filters):
        super().__init__(sel.mask, sel.count)
        self._sel, self.filters = sel, filters
        self.key = sel.key  # the exact path's kept rows are the index's selection's

    @property
    def ids(self):
        return self._sel.ids  # the cached Selection's ids, computed once


def filter_mask(snap, filters):
    """The live slots a :class:`~amazon_visual.retrieval.filters.Filters` allows (the same rules as over the
    index's items: brands compared without regard to case, a missing attribute never matches a bound)."""
    mask = np.ones(snap.n, bool)
    if not filters:
        return mask
    if filters.category is not None:
        mask &= snap.label == filters.category
    if filters.brands:
        mask &= np.isin(snap.brand, [b.casefold() for b in filters.brands])  # the column is casefolded
    price, rating = snap.numbers["price"], snap.numbers["average_rating"]
    with np.errstate(invalid="ignore"):
        if filters.min_price is not None:
            mask &= price >= filters.min_price
        if filters.max_price is not None:
            mask &= price <= filters.max_price
        if filters.min_rating is not None:
            mask &= rating >= filters.min_rating
    return mask


def live_search(live, vector, k, allowed=None, exclude=(), filters=None, search_k=None):
    """Top ``k`` of a :class:`LiveIndex`: the index's filtered search over its items still in the catalog
    (``allowed`` AND not hidden), merged with the exact scan of the live items ``filters`` allows."""
    if filters is None:
        filters = getattr(allowed, "filters", None)
    snap = live.snap()
    if snap.n_hidden and allowed is None and snap.n_hidden * FEW_HIDDEN < live.n_items:
        base = _without_hidden(live, vector, k, exclude, snap.hidden, search_k)
    else:
        if snap.n_hidden:
            allowed = live.visible_selection(snap, allowed, filters)
        base = F.filtered_search(live, vector, k, allowed=allowed, exclude=exclude, search_k=search_k)
    extra = live.search_overlay(vector, k, mask=live.live_mask(snap, filters), exclude=exclude, snap=snap)
    return merge(base, extra, k)


def _without_hidden(live, vector, k, exclude, hidden, search_k):
    """Unfiltered top ``k`` of the index's items that are not hidden, when few are: a few more from the ANN,
    the hidden ones dropped, more asked while fewer than ``k`` remain (as cheap as an unfiltered query,
    where a mask of nearly every item would make the planner widen the ANN's candidate list)."""
    n = k + 8
    while True:
        ids, sims = F.filtered_search(live, vector, n, exclude=exclude, search_k=search_k)
        keep = ~hidden[ids]
        if keep.sum() >= k or len(ids) < n:
            return ids[keep][:k], sims[keep][:k]
        n *= 4


def merge(base, live, k):
    """Merge two ``(ids, sims)`` results (each best first) into the best ``k``."""
    ids = np.concatenate([base[0], live[0]])
    sims = np.concatenate([base[1], live[1]])
    order = np.argsort(-sims, kind="stable")[: int(k)]
    return ids[order], sims[order]


def open_live(index):
    """``index`` with its overlay when its manifest is writable, else ``index`` itself."""
    if isinstance(index, LiveIndex) or not is_writable(index.manifest):
        return index
    return LiveIndex(index)
