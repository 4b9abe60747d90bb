"""Retrieval quality and speed of an INDEX_DIR (``amazon-visual eval-retrieval``).

Every item of the query split is searched against an index of the *other* items (a
temporary index over the non-query rows of ``embeddings.npy``, built with the manifest's
backend -- Annoy or HNSW, :mod:`amazon_visual.retrieval.backends` -- and parameters).
When the index does not hold the query split, the split is embedded from DATA_DIR with
the index's model and searched against the whole index.

Reported (``k`` results per query, the query item itself never among them):

- ``precision_at_k``: mean fraction of the k results whose category (``label``, the
  dataset class) is the query's; ``class_prior``: the same for a random ranking
  (mean over queries of the share of the query's class among the indexed items);
- ``map_at_k``: mean average precision at k, ``AP@k = sum_i P@i * rel_i / min(k, R)``
  with R the number of indexed items of the query's class;
- both also for exact search (``exact_precision_at_k``, ``exact_map_at_k``);
- ``recall_at_k``: the share of the index's k results that belong to the exact top k (numpy
  cosine search, batched matmul of the normalised vectors); tie-aware: a result whose
  cosine equals the exact k-th best (within 1e-6) counts, so near-duplicate embeddings
  do not make an exact answer look wrong;
- ``latency_ms_p50/p99`` and ``qps`` (1 / mean latency) of single sequential queries
  (the index + exact rescoring, as :meth:`amazon_visual.retrieval.index.Index.search`), ``exact_*`` the
  same for numpy brute force one query at a time;
- ``build_seconds`` and ``index_size_bytes`` of the evaluation index, plus the size of
  the INDEX_DIR on disk.

``exclude_train_classes`` keeps only the queries of classes the run never saw (the
manifest's ``train_classes``: a run trained on a dataset without them), still searched
against every other item: retrieval on held-out classes. Recall@1 in the metric-learning
sense (the top result has the query's class) is precision@1: ``k=1``.
"""

import os
import shutil
import sys
import tempfile
import time

import numpy as np

from amazon_visual.errors import UserError
from amazon_visual.retrieval import backends
from amazon_visual.retrieval.index import EMBEDDINGS, Index, dir_size, index_path, read_items, read_manifest


def average_precision_at_k(rel, n_relevant, k):
    """AP@k of one ranked list of 0/1 relevances; ``n_relevant`` relevant items exist."""
    rel = np.asarray(rel[:k], dtype=np.float64)
    denom = min(k, int(n_relevant))
    if denom == 0:
        return 0.0
    hits = np.cumsum(rel)
    prec = hits / np.arange(1, len(rel) + 1)
    return float((prec * rel).sum() / denom)


def exact_search(queries, gallery, k, chunk=32768, batch=256):
    """Exact cosine top-k (rows already normalised): (ids (q, k), sims (q, k)).

    One pass over ``gallery`` (an array or a memory map) in chunks of ``chunk`` rows, keeping
    each query's best k so far: memory is O(queries x k + batch x chunk) (about 100 MB of
    scores and candidate ids at the defaults), not O(gallery)."""
    n = len(gallery)
    k = min(k, n)
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for g in range(0, n, chunk):
        block = np.asarray(gallery[g : g + chunk], np.float32)
        kk = min(k, len(block))
        for s in range(0, len(queries), batch):
            sc = queries[s : s + batch] @ block.T
            part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s[s : s + batch], np.take_along_axis(sc, part, 1)], 1)
            cand_i = np.concatenate([best_i[s : s + batch], part + g], 1)
            top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s[s : s + batch] = np.take_along_axis(cand_s, top, 1)
            best_i[s : s + batch] = np.take_along_axis(cand_i, top, 1)
    return best_i, best_s


def _gallery(emb, keep, path, chunk=65536):
    """The rows of ``emb`` where ``keep`` holds, streamed into a .npy at ``path``; returned memory-mapped."""
    from amazon_visual.retrieval.shards import write_npy

    blocks = (np.asarray(emb[s : s + chunk], np.float32)[keep[s : s + chunk]] for s in range(0, len(emb), chunk))
    write_npy(path, blocks, int(keep.sum()), emb.shape[1])
    return np.load(path, mmap_mode="r")


def _ranking_metrics(result_ids, q_labels, g_labels, class_count, k):
    prec, aps = [], []
    for r, lab in zip(result_ids, q_labels):
        r = r[r >= 0]  # fewer than k results: the missing ones count as not relevant
        rel = (g_labels[r] == lab).astype(np.float64)
        prec.append(rel[:k].sum() / k)
        aps.append(average_precision_at_k(rel, class_count.get(lab, 0), k))
    return np.asarray(prec), np.asarray(aps)


def _embed_split(manifest, index_dir, data_dir, split, run_dir=None, progress=True):
    from amazon_visual.retrieval.embeddings import Embedder, embed_dataset
    from amazon_visual.retrieval.index import check_manifest

    embedder = Embedder.from_manifest(manifest, run_dir=run_dir, index_dir=index_dir)
    check_manifest(manifest, embedder.describe())
    tmp = tempfile.mkdtemp(prefix="av-eval-queries-")
    try:
        embed_dataset(embedder, data_dir, tmp, splits=[split], thumbnails=False, progress=progress)
        emb = np.load(os.path.join(tmp, EMBEDDINGS))
        items = read_items(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return emb, items


def _unseen_class_queries(manifest, index_dir, q_emb, q_items):
    """The queries whose class is not one the index's run was trained on."""
    trained = manifest.get("train_classes")
    if trained is None:
        raise UserError(
            f"{index_dir} was not built from a trained run, so no class is held out: "
            "drop --exclude-train-classes or index a run"
        )
    keep = ~q_items["label"].isin(set(trained)).to_numpy()
    if not keep.any():
        raise UserError(
            f"every query of {index_dir} has a class its run was trained on: train on a dataset "
            "without some classes (build-data --category ...) and index the full dataset with it"
        )
    return q_emb[keep], q_items[keep].reset_index(drop=True)


def _exact_latency(gallery, queries, k, chunk=65536):
    """Seconds of single exact queries (chunked over the gallery, as :func:`exact_search`)."""
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        exact_search(q[None, :], gallery, k, chunk=chunk)
        out[i] = time.perf_counter() - t0
    return out


def evaluate_retrieval(
    index_dir,
    data_dir=None,
    queries="test",
    k=10,
    search_k=None,
    trees=None,
    max_queries=None,
    latency_queries=1000,
    run_dir=None,
    progress=True,
    exclude_train_classes=False,
    backbone_weights=None,
):
    """Measure an INDEX_DIR; returns a dict of metrics (see the module doc).

    ``exclude_train_classes``: query only the items of classes the index's run was not
    trained on (held-out classes), still against every other indexed item.
    ``backbone_weights``: the weights file of a backbone index, if it moved."""
    from tqdm import tqdm

    index_dir = os.fspath(index_dir)
    manifest = read_manifest(index_dir)
    if backbone_weights is not None:  # a backbone index whose weights file moved
        manifest = dict(manifest, weights_path=os.path.abspath(os.fspath(backbone_weights)))
    k = int(k)
    if k < 1:
        raise UserError(f"-k must be at least 1, not {k}")
    items = read_items(index_dir, manifest)
    try:
        emb = np.load(index_path(index_dir, manifest, "embeddings_file", EMBEDDINGS), mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{index_dir}/{EMBEDDINGS} is unreadable ({e}): rebuild the index") from None
    if emb.shape[0] != len(items):
        raise UserError(
            f"{index_dir}: {EMBEDDINGS} and items.csv disagree ({emb.shape[0]} vs {len(items)} rows): rebuild the index"
        )
    if data_dir is not None and manifest.get("dataset_fingerprint"):
        from amazon_visual import data
        from amazon_visual.retrieval.embeddings import dataset_fingerprint

        data.builder(data_dir)  # UserError when it is not a dataset
        fp = dataset_fingerprint(data_dir)
        in_index = queries in set(items["split"])
        if in_index and fp != manifest["dataset_fingerprint"]:
            raise UserError(
                f"{index_dir} was built from another dataset than {data_dir}: "
                f"pass the DATA_DIR it was built from ({manifest.get('data_dir')})"
            )
    split_mask = (items["split"] == queries).to_numpy()
    if split_mask.any():
        q_idx = np.flatnonzero(split_mask)
        if max_queries and len(q_idx) > int(max_queries):  # sampled before anything is read
            q_idx = np.sort(np.random.default_rng(0).choice(q_idx, int(max_queries), replace=False))
        q_emb = np.asarray(emb[q_idx], np.float32)
        q_items = items.iloc[q_idx].reset_index(drop=True)
        g_idx = np.flatnonzero(~split_mask)
        source = "index"
    else:
        data_dir = data_dir or manifest.get("data_dir")
        if not data_dir:
            raise UserError(f"{index_dir} holds no {queries!r} items: pass --data DATA_DIR to embed them")
        from amazon_visual import data

        if list(data.class_names(data_dir)) != list(manifest.get("class_names") or data.class_names(data_dir)):
            raise UserError(
                f"{data_dir} has other classes than the index {index_dir}: use the dataset it was built from"
            )
        q_emb, q_items = _embed_split(manifest, index_dir, data_dir, queries, run_dir=run_dir, progress=progress)
        g_idx = np.arange(len(items))
        source = "data_dir"
    if len(g_idx) == 0:
        raise UserError(f"{index_dir} holds only {queries!r} items: index more splits to search against")
    if exclude_train_classes:
        q_emb, q_items = _unseen_class_queries(manifest, index_dir, q_emb, q_items)
    if max_queries and len(q_emb) > int(max_queries):
        sel = np.random.default_rng(0).choice(len(q_emb), int(max_queries), replace=False)
        sel.sort()
        q_emb, q_items = q_emb[sel], q_items.iloc[sel].reset_index(drop=True)
    g_items = items.iloc[g_idx].reset_index(drop=True)
    kk = min(k, len(g_idx))

    backend = backends.for_manifest(manifest)
    params = backends.build_params(manifest)
    if trees and "trees" in params:
        params["trees"] = int(trees)
    sk = params["search_k"] if search_k is None else int(search_k)
    tmpdir = tempfile.mkdtemp(prefix="av-eval-index-")
    try:
        keep = np.zeros(len(items), bool)
        keep[g_idx] = True
        g_emb = _gallery(emb, keep, os.path.join(tmpdir, "gallery.npy"))  # on disk: bounded memory at any size
        ann_path = os.path.join(tmpdir, backend.index_file)
        st = backend.build(backends.iter_blocks(g_emb), len(g_emb), g_emb.shape[1], ann_path, params)
        ann = backend.open(ann_path, g_emb.shape[1], len(g_emb), {"index_size_bytes": st["size_bytes"], "search_k": sk})
        sub = Index(
            tmpdir, {"n_items": len(g_emb), "embedding_dim": g_emb.shape[1], "search_k": sk}, g_items, g_emb, ann, sk
        )
        nq = len(q_emb)
        annoy_ids = np.full((nq, kk), -1, np.int64)
        lat = np.empty(nq)
        for i in tqdm(range(nq), desc="queries", unit="q", file=sys.stderr, disable=not progress):
            t0 = time.perf_counter()
            ids, _ = sub.search(q_emb[i], kk)
            lat[i] = time.perf_counter() - t0
            annoy_ids[i, : len(ids)] = ids
        sub.close()
        exact_ids, exact_sims = exact_search(q_emb, g_emb, kk)
        elat = _exact_latency(g_emb, q_emb[: min(nq, int(latency_queries))], kk)
        # recall@k, tie-aware: an index result counts when its cosine reaches the exact k-th best (within 1e-6)
        hits = []
        for i, (a, e_s) in enumerate(zip(annoy_ids, exact_sims)):
            a = np.sort(a[a >= 0])
            hits.append(int((np.asarray(g_emb[a]) @ q_emb[i] >= e_s[-1] - 1e-6).sum()) / kk if len(a) else 0.0)
        del g_emb
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    m = len(elat)

    q_labels = q_items["label"].to_numpy()
    g_labels = g_items["label"].to_numpy()
    labs, cnt = np.unique(g_labels, return_counts=True)
    class_count = dict(zip(labs, cnt))
    p_ann, ap_ann = _ranking_metrics(annoy_ids, q_labels, g_labels, class_count, k)
    p_ex, ap_ex = _ranking_metrics(exact_ids, q_labels, g_labels, class_count, k)
    recall = float(np.mean(hits))
    prior = float(np.mean([class_count.get(lab, 0) / len(g_labels) for lab in q_labels]))
    per_cat = {}
    for lab in sorted(set(q_labels)):
        sel = q_labels == lab
        per_cat[str(lab)] = {
            "queries": int(sel.sum()),
            "precision_at_k": float(p_ann[sel].mean()),
            "map_at_k": float(ap_ann[sel].mean()),
        }
    return {
        "index_dir": index_dir,
        "queries": queries,
        "query_source": source,
        "n_queries": int(nq),
        "n_indexed": int(len(g_idx)),
        "k": k,
        "backend": backend.name,
        "trees": params.get("trees"),
        "hnsw_m": params.get("hnsw_m"),
        "search_k": int(sk),
        "precision_at_k": float(p_ann.mean()),
        "map_at_k": float(ap_ann.mean()),
        "exact_precision_at_k": float(p_ex.mean()),
        "exact_map_at_k": float(ap_ex.mean()),
        "class_prior": prior,
        "recall_at_k": float(recall),
        "latency_ms_p50": 1e3 * float(np.percentile(lat, 50)),
        "latency_ms_p99": 1e3 * float(np.percentile(lat, 99)),
        "qps": float(nq / lat.sum()) if lat.sum() > 0 else None,
        "exact_latency_ms_p50": 1e3 * float(np.percentile(elat, 50)),
        "exact_latency_ms_p99": 1e3 * float(np.percentile(elat, 99)),
        "exact_qps": float(m / elat.sum()) if elat.sum() > 0 else None,
        "build_seconds": st["build_seconds"],
        "index_size_bytes": st["size_bytes"],
        "index_dir_bytes": dir_size(index_dir),
        "per_category": per_cat,
        "model": manifest.get("model"),
        "embedding_dim": manifest.get("embedding_dim"),
        "objective": manifest.get("objective"),
        "exclude_train_classes": bool(exclude_train_classes),
    }


def format_report(r):
    """A readable text report of :func:`evaluate_retrieval`'s result."""
    k = r["k"]
    held_out = " (classes the run never saw)" if r.get("exclude_train_classes") else ""
    lines = [
        f"index {r['index_dir']}  model {r.get('model')}  dim {r.get('embedding_dim')}",
        f"queries: {r['n_queries']} items of split {r['queries']!r}{held_out} against {r['n_indexed']} indexed "
        f"items ({r.get('backend', 'annoy')}: "
        + (f"trees {r['trees']}" if r.get("trees") else f"M {r.get('hnsw_m')}")
        + f", search_k {r['search_k']})",
        "",
        f"{'metric':<28}{r.get('backend', 'annoy'):>10}{'exact':>10}",
        f"{f'category precision@{k}':<28}{r['precision_at_k']:>10.4f}{r['exact_precision_at_k']:>10.4f}",
        f"{f'category mAP@{k}':<28}{r['map_at_k']:>10.4f}{r['exact_map_at_k']:>10.4f}",
        f"{'class prior (random)':<28}{r['class_prior']:>10.4f}",
        f"{f'recall@{k} vs exact':<28}{r['recall_at_k']:>10.4f}",
        f"{'latency p50 (ms)':<28}{r['latency_ms_p50']:>10.3f}{r['exact_latency_ms_p50']:>10.3f}",
        f"{'latency p99 (ms)':<28}{r['latency_ms_p99']:>10.3f}{r['exact_latency_ms_p99']:>10.3f}",
        f"{'queries per second':<28}{(r['qps'] or 0):>10.0f}{(r['exact_qps'] or 0):>10.0f}",
        f"{'build time (s)':<28}{r['build_seconds']:>10.2f}",
        f"{'index size (MiB)':<28}{r['index_size_bytes'] / 2**20:>10.2f}",
        f"{'INDEX_DIR on disk (MiB)':<28}{r['index_dir_bytes'] / 2**20:>10.2f}",
        "",
        f"{'category':<24}{'queries':>8}{f'P@{k}':>10}{f'mAP@{k}':>10}",
    ]
    for lab, v in r["per_category"].items():
        lines.append(f"{lab[:24]:<24}{v['queries']:>8}{v['precision_at_k']:>10.4f}{v['map_at_k']:>10.4f}")
    return "\n".join(lines)
