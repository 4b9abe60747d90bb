"""Incremental index updates: ``amazon-visual index RUN_DIR --data NEW_DATA --out INDEX_DIR --update``.

The result equals a full ``index`` of the new data (the same items in the new dataset's
order, the same attributes, embeddings within float tolerance), at the cost of embedding
only what changed:

- an item of the new dataset whose (ASIN, SHA-256 of the stored photo bytes) is in the index
  keeps its old embedding and thumbnail (hard-linked) and takes its title, price, ... from the
  new dataset (``reused``);
- the others are embedded: ``added`` (a new ASIN) or ``changed`` (a known ASIN with other photo
  bytes);
- items of the index that are not in the new dataset are dropped (``removed``);
- a fresh ANN index (the manifest's backend and parameters) is built over all the vectors.

The model must be the index's (the manifest's ``fingerprint``); another model, or an index
built before photo hashes were recorded, means a full build, said in one line.

Generations. The files of an update go into a folder of INDEX_DIR, ``gen-000002/``
(``items.csv``, ``embeddings.npy``, the ANN file, ``thumbs/``; the thumbnail names in
``items.csv`` are relative to INDEX_DIR, e.g. ``gen-000002/thumbs/...``), then ``manifest.json``
is replaced atomically (``os.replace``): that is the swap, and a running ``serve`` reloads
when it sees it. The generation before the previous one is removed afterwards; the previous
one stays for a server that has not reloaded yet. A fresh ``index`` writes generation 1 at the
top level. Killed at any moment, INDEX_DIR still serves the old generation; the same command
again resumes: the embedded ranges of the new generation are kept in ``gen-N/.partial`` (one
shard per range of the dataset, as a full build does; used again only for the same old index,
model, dataset and settings), folders of other unfinished generations are removed.

The steps, for callers that extend them (the live-write log folds its entries into
:func:`final_blocks`' output): :func:`start_update` (the plan), :func:`embed_changes`
(one shard per range: every row, and the vectors of the embedded rows),
:func:`final_blocks` (``(rows, embeddings)`` blocks in final item order), :func:`assemble`,
:func:`finish_update` (ANN, manifest swap, old generation removed).
"""

import contextlib
import csv
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time

import numpy as np

from amazon_visual.errors import UserError
from amazon_visual.retrieval import backends, writelog
from amazon_visual.retrieval.index import (
    _remove_stale_tmp,
    atomic_write_json,
    generation_folder,
    index_path,
    is_generation_folder,
    read_items,
    read_manifest,
)
from amazon_visual.retrieval.layout import (
    EMBEDDER_FILE,
    EMBEDDINGS,
    INDEX_FILE,
    ITEM_COLUMNS,
    ITEMS,
    MANIFEST,
    NUMERIC_ATTRIBUTES,
    PARTIAL,
    THUMBS,
    safe_name,
)

PHASES = ("read_plan", "hash", "embed", "assemble", "ann_build", "swap")
TOP_LEVEL_FILES = (INDEX_FILE, backends.HnswBackend.index_file, EMBEDDINGS, ITEMS, THUMBS)
_OLD = "_old"  # private row keys of the shards: the old item id reused (-1: embedded now) and the change kind
_KIND = "_kind"


# --------------------------------------------------------------------------
# keys: 64-bit hashes, so the old index's table is a few sorted arrays (not a dict of strings)
# --------------------------------------------------------------------------
def _key(*parts):
    h = hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "little")


class OldItems:
    """What an update needs of the index it updates: per item, keys of its ASIN and of (ASIN, photo hash),
    and its thumbnail name; ``lookup`` finds the old item of (ASIN, photo hash) pairs."""

    def __init__(self, items):
        asins = items["asin"].astype(str).tolist()
        shas = items["image_sha256"].astype(str).tolist()
        self.n = len(asins)
        self.has_hashes = all(shas)
        self.thumbs = items["thumb"].astype(str).to_numpy(dtype=object) if "thumb" in items else None
        pair = np.fromiter((_key(a, s) for a, s in zip(asins, shas, strict=True)), np.uint64, self.n)
        self.order = np.argsort(pair, kind="stable")
        self.pair = pair[self.order]
        self.asin = np.unique(np.fromiter((_key(a) for a in asins), np.uint64, self.n))

    def lookup(self, pair_keys):
        """Old item ids of the (ASIN, photo hash) keys, -1 where the index has no such item."""
        pair_keys = np.asarray(pair_keys, np.uint64)
        pos = np.searchsorted(self.pair, pair_keys)
        found = pos < len(self.pair)
        found[found] = self.pair[pos[found]] == pair_keys[found]
        out = np.full(len(pair_keys), -1, np.int64)
        out[found] = self.order[pos[found]]
        return out

    def known_asins(self, asin_keys):
        return np.isin(np.asarray(asin_keys, np.uint64), self.asin)


# --------------------------------------------------------------------------
# a serialized record's fields, read without decoding its photo
# --------------------------------------------------------------------------
def _feature(ex, name):
    return ex.features.feature[name] if name in ex.features.feature else None


def record_fields(record):
    """``(asin, image_sha256, fields)`` of a serialized example; ``fields`` are the text, label and attribute
    values a full index takes from the decoded example (the same values: the photo is hashed, not decoded)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(record)
    out = {}
    for name in ("asin", "title", "category", "image_url", "brand"):
        f = _feature(ex, name)
        if f is not None:
            out[name] = f.bytes_list.value[0] if f.bytes_list.value else b""
    out["label"] = int(ex.features.feature["label"].int64_list.value[0])
    for name in NUMERIC_ATTRIBUTES:
        f = _feature(ex, name)
        if f is not None:
            out[name] = float(f.float_list.value[0]) if f.float_list.value else math.nan
    image = ex.features.feature["image"].bytes_list.value[0]
    asin = out["asin"].decode("utf-8", "replace")
    return asin, hashlib.sha256(image).hexdigest(), out


# --------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------
def _generation_of(manifest):
    """(generation number, its folder: "" for the top level) of a manifest."""
    items_file = str(manifest.get("items_file") or ITEMS).replace("\\", "/")
    return int(manifest.get("generation") or 1), (items_file.split("/")[0] if "/" in items_file else "")


@contextlib.contextmanager
def _exclusive(index_dir):
    """One update of an INDEX_DIR at a time (an advisory lock on the folder itself)."""
    try:
        import fcntl
    except ImportError:  # not on this platform: no lock
        yield
        return
    fd = os.open(index_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another index --update of {index_dir} is running: wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _embedder(manifest, index_dir, run_dir, backbone, weights, image_size, partial):
    """The model of the update. A backbone with random weights is the index's own kept model when the
    backbone and image size are the ones it was built with (random weights cannot be drawn again)."""
    from amazon_visual.retrieval import embeddings as E

    if run_dir is None and E._is_random(weights) and manifest.get("embedder_file"):
        base = E.backbone_fingerprint(backbone, weights, int(image_size or 224))
        if str(manifest.get("fingerprint", "")).startswith(base + ":"):
            return E.Embedder.from_manifest(manifest, index_dir=index_dir), True
    return E.embedder_for_index(run_dir, backbone, weights, image_size, partial), False


def _full_build_reason(manifest, desc, old, n_new, thumbnails):
    if any(manifest.get(k) != desc.get(k) for k in ("source", "fingerprint", "embedding_dim")):
        return f"the model differs from the index's: building all {n_new} items again"
    if old.n and not old.has_hashes:
        return f"the index has no photo hashes (built before they were recorded): building all {n_new} items again"
    if thumbnails and not manifest.get("thumbnails", True):
        return f"the index has no thumbnails to reuse: building all {n_new} items again"
    return None


def _open_generation(gen_dir, state):
    """The new generation's ``.partial`` for ``state``: kept (a resumed update) when an update with the same
    state wrote it; otherwise the folder is emptied, but for the model kept in ``.partial``."""
    from amazon_visual.retrieval import embeddings as E

    try:
        with open(os.path.join(gen_dir, PARTIAL, "state.json"), encoding="utf-8") as f:
            same = json.load(f) == json.loads(json.dumps(state))
    except (OSError, ValueError):
        same = False
    if not same:
        for name in os.listdir(gen_dir):
            if name != PARTIAL:
                p = os.path.join(gen_dir, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    return E.open_partial(gen_dir, state)


def _clean_generations(index_dir, keep):
    """Remove the generations of INDEX_DIR not in ``keep`` (folder names; "" = the top-level files)."""
    for name in os.listdir(index_dir):
        if is_generation_folder(name) and name not in keep:
            shutil.rmtree(os.path.join(index_dir, name), ignore_errors=True)
    if "" not in keep:
        for name in TOP_LEVEL_FILES + (EMBEDDER_FILE, PARTIAL):
            p = os.path.join(index_dir, name)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)


def start_update(
    data_dir,
    index_dir,
    run_dir=None,
    backbone=None,
    weights="imagenet",
    splits=None,
    image_size=None,
    batch_size=64,
    thumbnails=None,
    chunk_items=None,
):
    """Plan the update of INDEX_DIR from DATA_DIR: the job the other steps take (a dict)."""
    from amazon_visual import data
    from amazon_visual.retrieval import embeddings as E
    from amazon_visual.retrieval import records

    t0 = time.perf_counter()
    manifest = read_manifest(index_dir)
    number, current = _generation_of(manifest)
    previous = manifest.get("previous_generation_dir")
    target = generation_folder(number + 1)
    _clean_generations(index_dir, {current, previous, target} - {None})
    gen_dir = os.path.join(index_dir, target)
    os.makedirs(gen_dir, exist_ok=True)
    for folder in (gen_dir, os.path.join(gen_dir, PARTIAL), os.path.join(gen_dir, THUMBS)):
        _remove_stale_tmp(folder)  # left by a killed update
    if splits is None:
        splits = manifest.get("splits") or [s for s in data.SPLITS if data.num_examples(data_dir, s) > 0]
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    if int(batch_size) < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    thumbnails = bool(manifest.get("thumbnails", True)) if thumbnails is None else bool(thumbnails)
    chunk = records.round_chunk(chunk_items or E.CHUNK_ITEMS, batch_size)
    ranges, counts = records.plan(data_dir, list(splits), chunk)
    total = sum(counts.values())
    if total == 0:
        raise UserError(f"the splits {', '.join(splits)} of {data_dir} hold no example: choose other --splits")
    embedder, kept = _embedder(
        manifest, index_dir, run_dir, backbone, weights, image_size, os.path.join(gen_dir, PARTIAL)
    )
    desc = embedder.describe()
    old = OldItems(read_items(index_dir, manifest))
    reason = _full_build_reason(manifest, desc, old, total, thumbnails)
    state = {
        "update_of": [
            manifest.get("items_file"),
            manifest.get("updated") or manifest.get("created"),
            manifest.get("n_items"),
        ],
        "reuse": reason is None,
        "thumbnails": thumbnails,
        **E.partial_state(desc.get("fingerprint"), data_dir, splits, counts, chunk, thumbnails),
    }
    emb_path = index_path(index_dir, manifest, "embeddings_file", EMBEDDINGS)
    try:
        old_emb = np.load(emb_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(
            f"{emb_path} is missing or unreadable ({e}): rebuild the index with amazon-visual index --overwrite"
        ) from None
    if old_emb.shape != (old.n, int(manifest["embedding_dim"])):
        raise UserError(
            f"{emb_path} holds {old_emb.shape} vectors for {old.n} items: rebuild the index with "
            "amazon-visual index --overwrite"
        )
    partial = _open_generation(gen_dir, state)
    if thumbnails:
        os.makedirs(os.path.join(gen_dir, THUMBS), exist_ok=True)
    return {
        "index_dir": os.fspath(index_dir),
        "data_dir": os.fspath(data_dir),
        "manifest": manifest,
        "old_emb": old_emb,
        "old": old,
        "reuse": reason is None,
        "full_build_reason": reason,
        "embedder": embedder,
        "embedder_kept_in_index": kept,
        "generation": number + 1,
        "gen": target,
        "gen_dir": gen_dir,
        "current": current,
        "partial": partial,
        "ranges": ranges,
        "counts": counts,
        "total": total,
        "splits": list(splits),
        "names": data.class_names(data_dir),
        "features": data.info(data_dir).features,
        "thumbnails": thumbnails,
        "batch_size": int(batch_size),
        "seconds": dict.fromkeys(PHASES, 0.0) | {"read_plan": time.perf_counter() - t0},
    }


# --------------------------------------------------------------------------
# embedding what changed, range by range
# --------------------------------------------------------------------------
def _link(src, dst):
    """``dst`` as a hard link of ``src`` (a copy where links are not possible); False when ``src`` is missing.
    A link appears whole (one system call); a copy is written under a temporary name and moved into place."""
    try:
        os.link(src, dst)
    except FileExistsError:  # left by an interrupted try of this update
        os.remove(dst)
        return _link(src, dst)
    except FileNotFoundError:
        return False
    except OSError:
        if not os.path.isfile(src):
            return False
        tmp = f"{dst}.tmp-{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return True


_THUMB_NAME = re.compile(r"(gen-\d{6}/)?" + THUMBS + r"/[^/\\]+\.jpg")  # what the items tables of ours name


def _reused_row(job, fields, item_id, split, old_id):
    """The items-table row of a reused item: the new dataset's fields, the old thumbnail linked into the generation."""
    from amazon_visual.retrieval import records

    row = records.item_row(fields, item_id, split, job["names"])
    old_thumb = job["old"].thumbs[old_id] if job["old"].thumbs is not None else ""
    if job["thumbnails"] and old_thumb:
        name = f"{THUMBS}/{item_id:07d}-{safe_name(row['asin'])}.jpg"
        if _THUMB_NAME.fullmatch(old_thumb) and _link(
            os.path.join(job["index_dir"], old_thumb), os.path.join(job["gen_dir"], name)
        ):
            row["thumb"] = f"{job['gen']}/{name}"
    return row


def scan_range(job, rng):
    """Read and hash one range: ``{"parsed": [(asin, sha, fields)], "old_ids", "known", "todo": {j: record}}``
    (the records to embed: their ASIN and photo are not in the index, or the model is another)."""
    from amazon_visual.retrieval import records

    serialized = records.read_range(rng)
    parsed = [record_fields(r) for r in serialized]
    old = job["old"]
    old_ids = old.lookup([_key(a, s) for a, s, _ in parsed]) if job["reuse"] else np.full(len(parsed), -1)
    known = old.known_asins([_key(a) for a, _, _ in parsed])
    todo = {j: serialized[j] for j in range(len(parsed)) if old_ids[j] < 0}
    return {"parsed": parsed, "old_ids": old_ids, "known": known, "todo": todo}


def write_range(job, rng, scan, emb, fields):
    """Write the shard of one range: every row (reused or embedded now) and the vectors of the embedded rows
    (``emb``, ``fields``: those of ``scan["todo"]``, in order)."""
    from amazon_visual.retrieval import records
    from amazon_visual.retrieval.shards import write_shard

    new_rows = iter(fields)
    rows = []
    for j, (_, sha, f) in enumerate(scan["parsed"]):
        item_id, old_id = rng.offset + j, int(scan["old_ids"][j])
        if old_id >= 0:
            row = _reused_row(job, dict(f, image_sha256=sha), item_id, rng.split, old_id)
            kind = "reused"
        else:
            row = records.item_row(
                next(new_rows), item_id, rng.split, job["names"], job["gen_dir"] if job["thumbnails"] else None
            )
            if row["thumb"]:
                row["thumb"] = f"{job['gen']}/{row['thumb']}"
            kind = "changed" if scan["known"][j] else "added"
        row[_OLD], row[_KIND] = old_id, kind
        rows.append(row)
    write_shard(os.path.join(job["partial"], rng.name), emb, rows)


def _embed(job, serialized):
    """Embeddings and decoded fields of serialized records, in batches of one size (a short last batch is
    padded, so the model's compiled function is traced once, not once per size)."""
    from amazon_visual.retrieval import records

    embedder, bs = job["embedder"], job["batch_size"]

    def predict(b):
        n = len(b)
        if n < bs:
            b = np.concatenate([b, np.zeros((bs - n,) + b.shape[1:], b.dtype)])
        return embedder.predict(b)[0][:n]

    return records.embed_records(
        predict, serialized, job["features"], embedder.image_size, embedder.resize, job["thumbnails"], bs
    )


def _flush(job, pending):
    """Embed the records to embed of the ``pending`` (range, scan) pairs in one pass, then write their shards."""
    t0 = time.perf_counter()
    serialized = [r for _, scan in pending for r in scan["todo"].values()]
    dim = job["embedder"].dim
    emb, fields = _embed(job, serialized) if serialized else (np.zeros((0, dim), np.float32), [])
    t1 = time.perf_counter()
    start = 0
    for rng, scan in pending:
        m = len(scan["todo"])
        write_range(job, rng, scan, emb[start : start + m], fields[start : start + m])
        start += m
    job["seconds"]["embed"] += t1 - t0
    job["seconds"]["hash"] += time.perf_counter() - t1


EMBED_GROUP = 1024  # records embedded in one pass (several ranges' changes together)
PENDING_ITEMS = 1 << 16  # at most this many scanned items wait for their group's embedding


def embed_changes(job, progress=True):
    """Every range of the new dataset into its shard (ranges whose shard is complete are kept: a resumed
    update). The records to embed of consecutive ranges are embedded together, up to :data:`EMBED_GROUP`
    of them or :data:`PENDING_ITEMS` items scanned; the progress bar counts items."""
    from tqdm import tqdm

    from amazon_visual.retrieval.shards import shard_complete

    bar = tqdm(total=job["total"], desc="updating", unit="item", file=sys.stderr, disable=not progress)
    pending, todo, items = [], 0, 0
    for rng in job["ranges"]:
        if shard_complete(os.path.join(job["partial"], rng.name), job["index_dir"]):
            bar.update(len(rng))
            continue
        t0 = time.perf_counter()
        scan = scan_range(job, rng)
        job["seconds"]["hash"] += time.perf_counter() - t0
        pending.append((rng, scan))
        todo, items = todo + len(scan["todo"]), items + len(rng)
        if todo >= EMBED_GROUP or items >= PENDING_ITEMS:
            _flush(job, pending)
            bar.update(items)
            pending, todo, items = [], 0, 0
    if pending:
        _flush(job, pending)
        bar.update(items)
    bar.close()


# --------------------------------------------------------------------------
# the final items, the files of the generation
# --------------------------------------------------------------------------
def final_blocks(job):
    """``(rows, embeddings)`` per range, in the final item order: each row is an items-table row (with its
    change ``_kind``: reused / added / changed), each embedding row its vector (float32, normalised)."""
    from amazon_visual.retrieval.shards import read_rows

    old_emb = job["old_emb"]
    for rng in job["ranges"]:
        base = os.path.join(job["partial"], rng.name)
        rows, new = read_rows(base), np.load(base + ".npy")
        ids = np.array([r[_OLD] for r in rows], np.int64)
        out = np.empty((len(rows), job["embedder"].dim), np.float32)
        reused = ids >= 0
        if reused.any():
            order = np.argsort(ids[reused])  # the memory map read in file order
            block = np.empty((int(reused.sum()), old_emb.shape[1]), np.float32)
            block[order] = old_emb[ids[reused][order]]
            out[reused] = block
        if new.shape[0] != int((~reused).sum()):
            raise UserError(f"update shard {base} is inconsistent: remove {job['gen_dir']} and run the command again")
        out[~reused] = new
        yield rows, out


def assemble(job, blocks, n_items=None):
    """Stream ``blocks`` into the generation's ``embeddings.npy`` and ``items.csv`` (atomically); returns
    ``(n, counts)``. ``n_items``: how many rows the blocks hold (default: the new dataset's count; a caller
    whose blocks add or drop rows says how many, the .npy header is written first)."""
    from amazon_visual.retrieval.shards import NpyWriter

    expected = job["total"] if n_items is None else int(n_items)
    emb_path, items_path = os.path.join(job["gen_dir"], EMBEDDINGS), os.path.join(job["gen_dir"], ITEMS)
    emb_tmp, items_tmp = f"{emb_path}.tmp-{os.getpid()}", f"{items_path}.tmp-{os.getpid()}"
    counts = {"added": 0, "changed": 0, "reused": 0}
    asins = []
    n = 0
    fe = NpyWriter(emb_tmp, expected, job["embedder"].dim)
    try:
        with open(items_tmp, "w", encoding="utf-8", newline="") as fi:
            writer = csv.DictWriter(fi, fieldnames=ITEM_COLUMNS, lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            for rows, emb in blocks:
                fe.write(emb)
                writer.writerows(rows)
                for r in rows:
                    kind = r.get(_KIND, "added")
                    counts[kind] = counts.get(kind, 0) + 1
                    asins.append(_key(r["asin"]))
                n += len(rows)
        fe.close()
        if n != expected:
            raise UserError(f"the update assembled {n} items, expected {expected}: run the command again")
        os.replace(emb_tmp, emb_path)
        os.replace(items_tmp, items_path)
    finally:
        fe.close()
        for p in (emb_tmp, items_tmp):
            if os.path.exists(p):
                os.remove(p)
    counts["removed"] = int((~np.isin(job["old"].asin, np.asarray(asins, np.uint64))).sum())
    counts["embedded"] = counts["added"] + counts["changed"]
    return n, counts


# --------------------------------------------------------------------------
# ANN, manifest, swap
# --------------------------------------------------------------------------
def _embedder_file(job):
    """The generation's copy of the kept model of a random-weights backbone (None for other models)."""
    from amazon_visual.retrieval import embeddings as E

    if job["embedder_kept_in_index"]:
        src = os.path.join(job["index_dir"], job["manifest"]["embedder_file"])
    else:
        desc = job["embedder"].describe()
        if not (desc["source"] == "backbone" and desc.get("weights") == "none"):
            return None
        src = E.kept_model(job["partial"], None)[0]
    if not _link(src, os.path.join(job["gen_dir"], EMBEDDER_FILE)):
        raise UserError(f"the model kept at {src} is missing: run the command again")
    return f"{job['gen']}/{EMBEDDER_FILE}"


def new_manifest(job, stats, B, params, n, counts):
    """The manifest of the new generation: the old one's, with the new model (a full build), files, counts."""
    from amazon_visual.retrieval.embeddings import dataset_fingerprint
    from amazon_visual.retrieval.index import _version

    m = dict(job["manifest"])
    m.pop("embedder_file", None)
    m.update(job["embedder"].describe())
    gen = job["gen"]
    m.update(
        {
            "backend": B.name,
            "n_items": n,
            "embedding_dim": stats["dim"],
            **params,
            "on_disk_build": bool(stats.get("on_disk")),
            "index_file": f"{gen}/{B.index_file}",
            "index_size_bytes": stats["size_bytes"],
            "index_sample_sha256": stats["sample_sha256"],
            "embeddings_file": f"{gen}/{EMBEDDINGS}",
            "items_file": f"{gen}/{ITEMS}",
            "thumbnails": job["thumbnails"],
            "data_dir": os.path.abspath(job["data_dir"]),
            "dataset_fingerprint": dataset_fingerprint(job["data_dir"]),
            "splits": job["splits"],
            "split_counts": job["counts"],
            "class_names": job["names"],
            "embedding_engine": "local",
            "embed_seconds": round(job["seconds"]["embed"], 3),
            "build_seconds": stats["build_seconds"],
            "generation": job["generation"],
            "previous_generation_dir": job["current"],
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "package_version": _version(),
        }
    )
    kept = _embedder_file(job)
    if kept:
        m["embedder_file"] = kept
    m["update"] = {**counts, "full_build": job["full_build_reason"]}
    m.update(job.get("manifest_extra") or {})  # a writable index: the write log folded up to log_folded_seq
    return m


def finish_update(job, n, counts, backend=None, params=None, on_disk=False, n_jobs=-1, progress=True):
    """Build the ANN over the generation's vectors, swap the manifest in, remove the generation before the
    previous one. Returns the new manifest."""
    from amazon_visual.retrieval.shards import iter_npy_blocks

    t0 = time.perf_counter()
    B = backends.get(backend) if backend else backends.for_manifest(job["manifest"])
    params = params or backends.build_params(dict(job["manifest"], backend=B.name))
    dim = job["embedder"].dim
    if progress:
        print(
            f"building the {B.name} index: {n} items, dim {dim}, " + ", ".join(f"{k} {v}" for k, v in params.items()),
            file=sys.stderr,
        )
    stats = B.build(
        iter_npy_blocks(os.path.join(job["gen_dir"], EMBEDDINGS)),
        n,
        dim,
        os.path.join(job["gen_dir"], B.index_file),
        params,
        on_disk=on_disk,
        n_jobs=n_jobs,
    )
    t1 = time.perf_counter()
    job["seconds"]["ann_build"] += t1 - t0
    m = new_manifest(job, stats, B, params, n, counts)
    shutil.rmtree(job["partial"], ignore_errors=True)  # before the swap: the new generation is complete
    atomic_write_json(os.path.join(job["index_dir"], MANIFEST), m)  # the swap
    _clean_generations(job["index_dir"], {job["gen"], job["current"]})
    job["seconds"]["swap"] += time.perf_counter() - t1
    m["update"]["seconds"] = {k: round(v, 3) for k, v in job["seconds"].items()}
    return m


def update_index(
    data_dir,
    index_dir,
    run_dir=None,
    backbone=None,
    weights="imagenet",
    splits=None,
    image_size=None,
    batch_size=64,
    thumbnails=None,
    backend=None,
    trees=None,
    search_k=None,
    hnsw_m=None,
    ef_construction=None,
    on_disk=False,
    n_jobs=-1,
    chunk_items=None,
    progress=True,
):
    """Update INDEX_DIR to DATA_DIR's items (see the module doc); returns the new manifest, whose ``update``
    holds the counts (added, changed, removed, reused, embedded), ``full_build`` (the reason of a full build,
    or None) and ``seconds`` per phase. The backend and its parameters are the manifest's unless given.
    An INDEX_DIR without an index yet gets a full ``index`` (:func:`.index.build_index`)."""
    from amazon_visual.retrieval.index import build_index

    if (run_dir is None) == (backbone is None):
        raise UserError("give either a RUN_DIR or --backbone NAME, not both or neither")
    index_dir = os.fspath(index_dir)
    if not os.path.isfile(os.path.join(index_dir, MANIFEST)):
        if progress:
            print(f"{index_dir} holds no index yet: building it", file=sys.stderr)
        return build_index(
            data_dir,
            index_dir,
            run_dir=run_dir,
            backbone=backbone,
            weights=weights,
            splits=splits or ("train", "validation", "test"),
            trees=trees,
            search_k=search_k,
            on_disk=on_disk,
            image_size=image_size,
            batch_size=batch_size,
            thumbnails=True if thumbnails is None else thumbnails,
            n_jobs=n_jobs,
            progress=progress,
            backend=backend or "annoy",
            hnsw_m=hnsw_m,
            ef_construction=ef_construction,
            chunk_items=chunk_items,
        )
    with _exclusive(index_dir):
        job = start_update(
            data_dir,
            index_dir,
            run_dir=run_dir,
            backbone=backbone,
            weights=weights,
            splits=splits,
            image_size=image_size,
            batch_size=batch_size,
            thumbnails=thumbnails,
            chunk_items=chunk_items,
        )
        if job["full_build_reason"]:
            print(job["full_build_reason"], file=sys.stderr)
        fold = (
            writelog.Fold(index_dir, job["manifest"], job["embedder"].describe())
            if writelog.is_writable(job["manifest"])
            else None
        )  # live writes (writelog.py) go on top of the data
        embed_changes(job, progress)
        t0 = time.perf_counter()
        if fold is None:
            n, counts = assemble(job, final_blocks(job))
        else:
            n, counts = assemble(
                job,
                fold.blocks(final_blocks(job), job["gen"], job["gen_dir"], job["names"], job["thumbnails"], _KIND),
                fold.n_items(final_blocks(job)),
            )
            job["manifest_extra"] = fold.manifest_fields()
        job["seconds"]["assemble"] += time.perf_counter() - t0
        params = None
        if backend is not None or any(v is not None for v in (trees, search_k, hnsw_m, ef_construction)):
            B = backends.get(backend) if backend else backends.for_manifest(job["manifest"])
            given = backends.build_params(job["manifest"]) if B is backends.for_manifest(job["manifest"]) else {}
            given = {"ef_construction" if k == "hnsw_ef_construction" else k: v for k, v in given.items()}
            given.update(
                {
                    k: v
                    for k, v in {
                        "trees": trees,
                        "search_k": search_k,
                        "hnsw_m": hnsw_m,
                        "ef_construction": ef_construction,
                    }.items()
                    if v is not None
                }
            )
            params = B.params(**given)
        on_disk = on_disk or bool(job["manifest"].get("on_disk_build"))  # built like the index it replaces
        m = finish_update(
            job, n, counts, backend=backend, params=params, on_disk=on_disk, n_jobs=n_jobs, progress=progress
        )
        if fold is not None:
            m["update"]["log_entries_compacted"] = fold.compact()
        return m
