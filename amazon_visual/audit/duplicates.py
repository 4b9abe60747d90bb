"""Duplicate listings: candidate pairs from the ANN, a second look at each, connected groups.

1. :func:`candidate_pairs`: each item's ``k`` nearest neighbours by the index's ANN (never all
   pairs), rescored exactly from the stored embeddings; a pair stays when each is among the
   other's ``rank_gate`` nearest at cosine ``cosine_floor`` or more, or at ``cosine_gate`` or more
   whatever its rank; ``mutual`` says whether each is among the other's neighbours. Photos with
   the same bytes (``image_sha256``) are paired too, whatever the ANN says.
2. :func:`decide`: the photos of the surviving pairs get a second look (:mod:`.photos`): a pair
   is a duplicate when the photo bytes are equal, or when one photo placed inside the other
   correlates at ``near_aligned`` or more and their colour histograms agree (``colour`` or more);
   its kind is ``exact`` (a re-encode or resize) when the bytes are equal or the pHashes are
   within ``exact_phash`` bits, else ``near`` (a crop, a brightness change, an overlay). The defaults are the ones
   measured by ``benchmarks/audit.py`` (BENCHMARKS.md, "Audit"); ``audit.json`` records the ones used.
3. :func:`groups`: connected components of the accepted pairs, each with a representative (the
   most metadata, then the largest photo, then the first item) and its rows for ``duplicates.csv``.
"""

import concurrent.futures
import os

import numpy as np

DEFAULTS = {
    "k": 10,
    "rank_gate": 4,
    "cosine_floor": 0.60,
    "cosine_gate": 0.90,
    "near_aligned": 0.60,
    "colour": 0.60,
    "exact_phash": 8,
}
METADATA = ("title", "brand", "price", "average_rating", "rating_number", "category")


def neighbours(index, k, search_k=None, workers=None):
    """``(n, k+1)`` int64 neighbour ids of every item by the index's ANN (-1 = none)."""
    n = index.n_items
    want = min(n, int(k) + 1)
    out = np.full((n, int(k) + 1), -1, np.int64)
    sk = -1 if search_k is None else int(search_k)
    annoy = index.annoy
    hnsw = getattr(index.ann, "index", None)
    if annoy is not None:

        def block(lo, hi):
            for i in range(lo, hi):
                ids = annoy.get_nns_by_item(i, want, search_k=sk)
                out[i, : len(ids)] = ids
    elif hnsw is not None:
        hnsw.set_ef(max(want, int(index.manifest.get("search_k") or 0), 2 * want))

        def block(lo, hi):
            labels, _ = hnsw.knn_query(np.asarray(index.embeddings[lo:hi], np.float32), k=want, num_threads=1)
            out[lo:hi, :want] = labels
    else:

        def block(lo, hi):
            for i in range(lo, hi):
                ids = index.ann.search(index.vector(i), want, sk)
                out[i, : len(ids)] = ids

    step = 4096
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(lambda lo: block(lo, min(n, lo + step)), range(0, n, step)))
    return out


def pair_cosines(embeddings, i, j, chunk=65536):
    """Exact cosine of item pairs ``(i[t], j[t])`` from the normalised embeddings."""
    out = np.empty(len(i), np.float32)
    for lo in range(0, len(i), chunk):
        a = np.asarray(embeddings[i[lo : lo + chunk]], np.float32)
        b = np.asarray(embeddings[j[lo : lo + chunk]], np.float32)
        out[lo : lo + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def candidate_pairs(
    index,
    k=DEFAULTS["k"],
    cosine_gate=DEFAULTS["cosine_gate"],
    rank_gate=DEFAULTS["rank_gate"],
    cosine_floor=DEFAULTS["cosine_floor"],
    search_k=None,
    nbrs=None,
    **_,
):
    """Dict of arrays ``i < j``, ``cosine``, ``rank``, ``mutual``, ``same_bytes``: the pairs worth a second look.

    A pair is kept when each is among the other's ``rank_gate`` nearest (mutual neighbours) at
    cosine >= ``cosine_floor`` (a copy is its original's first or second neighbour, at a cosine
    that can be low: 0.68 for a re-encode at half size), or when one is among the other's ``k``
    nearest at cosine >= ``cosine_gate`` (groups of more copies), or when the photo bytes are the same.
    ``rank``: the worse of the two ranks (``k + 1`` when only one side lists the other)."""
    nbrs = neighbours(index, k, search_k) if nbrs is None else nbrs
    n, width = nbrs.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), width)
    cols = nbrs.reshape(-1)
    valid = (cols >= 0) & (cols != rows)
    rank = valid.reshape(n, width).cumsum(1).reshape(-1)[valid]
    a, b = np.minimum(rows[valid], cols[valid]), np.maximum(rows[valid], cols[valid])
    key, inverse = np.unique(a * n + b, return_inverse=True)
    forward, backward = np.full(len(key), width, np.int64), np.full(len(key), width, np.int64)
    side = rows[valid] == a  # i -> j seen from the smaller id
    np.minimum.at(forward, inverse[side], rank[side])
    np.minimum.at(backward, inverse[~side], rank[~side])
    best = np.maximum(forward, backward)  # the rank each has in the other's list, the worse of the two
    a, b, mutual = key // n, key % n, best < width  # a pair seen from both sides is mutual
    same = _same_bytes_pairs(index)
    if len(same):
        extra = np.setdiff1d(same[:, 0] * n + same[:, 1], key)
        a = np.concatenate([a, extra // n])
        b = np.concatenate([b, extra % n])
        mutual = np.concatenate([mutual, np.ones(len(extra), bool)])
        best = np.concatenate([best, np.full(len(extra), width, np.int64)])
    cos = pair_cosines(index.embeddings, a, b)
    code = _sha_codes(index)
    same_bytes = (code[a] >= 0) & (code[a] == code[b])
    keep = (cos >= cosine_gate) | ((best <= rank_gate) & (cos >= cosine_floor)) | same_bytes
    return {
        "i": a[keep],
        "j": b[keep],
        "cosine": cos[keep],
        "rank": best[keep],
        "mutual": mutual[keep],
        "same_bytes": same_bytes[keep],
    }


def _sha_codes(index):
    """An integer per item naming its photo bytes (-1: unknown)."""
    import pandas as pd

    sha = index.items["image_sha256"].fillna("").astype(str)
    codes, _ = pd.factorize(sha.where(sha != "", None), use_na_sentinel=True)
    return np.asarray(codes, np.int64)


def _same_bytes_pairs(index):
    """``(m, 2)`` pairs ``(first item, other item)`` of photos with the same SHA-256."""
    sha = index.items["image_sha256"]
    sha = sha[sha != ""]
    pairs = []
    for _, ids in sha.groupby(sha).groups.items():
        ids = sorted(int(x) for x in ids)
        pairs.extend((ids[0], other) for other in ids[1:])
    return np.array(pairs, np.int64).reshape(-1, 2)


def second_look(pairs, looks, colour_min=None):
    """Adds ``phash``, ``colour``, ``aligned`` arrays to ``pairs`` (NaN where a photo is missing).

    ``colour_min``: pairs whose colours differ more are not aligned (``aligned`` NaN: rejected),
    the costly part skipped."""
    from amazon_visual.audit.photos import aligned_correlation, colour_similarity

    m = len(pairs["i"])
    ph, col, al = np.full(m, np.nan), np.full(m, np.nan), np.full(m, np.nan)
    for t, (x, y) in enumerate(zip(pairs["i"], pairs["j"])):
        a, b = looks.get(int(x)), looks.get(int(y))
        if a is None or b is None:
            continue
        ph[t], col[t] = a.phash - b.phash, colour_similarity(a.hist, b.hist)
        if colour_min is None or col[t] >= colour_min:
            al[t] = aligned_correlation(a, b)
    return {**pairs, "phash": ph, "colour": col, "aligned": al}


def decide(
    pairs, near_aligned=DEFAULTS["near_aligned"], colour=DEFAULTS["colour"], exact_phash=DEFAULTS["exact_phash"], **_
):
    """``(accepted bool array, exact bool array)`` of the looked-at pairs."""
    with np.errstate(invalid="ignore"):
        accepted = pairs["same_bytes"] | ((pairs["aligned"] >= near_aligned) & (pairs["colour"] >= colour))
        exact = pairs["same_bytes"] | (accepted & (pairs["phash"] <= exact_phash))
    return accepted, exact


def _metadata_score(items):
    score = np.zeros(len(items), np.int64)
    for name in METADATA:
        if name in items:
            col = items[name]
            score += (col.notna() & (col.astype(str).str.strip() != "") & (col.astype(str) != "nan")).to_numpy()
    return score


def groups(index, pairs, accepted, exact, sizes):
    """Rows of ``duplicates.csv`` (dicts) and the group count: components of the accepted pairs.

    ``sizes``: ``{item id: (width, height)}`` of the looked-at photos (the representative's tie-break)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = pairs["i"][accepted], pairs["j"][accepted]
    if not len(i):
        return [], 0
    nodes = np.unique(np.concatenate([i, j]))
    pos = {int(x): t for t, x in enumerate(nodes)}
    li = np.array([pos[int(x)] for x in i])
    lj = np.array([pos[int(x)] for x in j])
    graph = coo_matrix((np.ones(len(li)), (li, lj)), shape=(len(nodes), len(nodes)))
    _, comp = connected_components(graph, directed=False)
    ex = exact[accepted]
    exact_graph = coo_matrix((np.ones(int(ex.sum())), (li[ex], lj[ex])), shape=(len(nodes), len(nodes)))
    _, exact_comp = connected_components(exact_graph, directed=False)
    meta = _metadata_score(index.items.iloc[nodes])
    members = {}
    for t, c in enumerate(comp):
        members.setdefault(int(c), []).append(t)
    ordered = sorted(members.values(), key=lambda m: (-len(m), int(nodes[m[0]])))
    rows = []
    for g, m in enumerate(ordered, start=1):
        rep = max(m, key=lambda t: (meta[t], _area(sizes.get(int(nodes[t]))), -int(nodes[t])))
        ids = nodes[m]
        sims = pair_cosines(index.embeddings, np.full(len(ids), nodes[rep]), ids)
        any_exact = any(exact_comp[t] == exact_comp[rep] for t in m if t != rep)
        for t, sim in zip(m, sims):
            item = index.items.iloc[int(nodes[t])]
            kind = (
                ("exact" if any_exact else "near")
                if t == rep
                else ("exact" if exact_comp[t] == exact_comp[rep] else "near")
            )
            rows.append(
                {
                    "group": g,
                    "asin": item["asin"],
                    "split": item["split"],
                    "similarity": round(float(sim), 4),
                    "representative": "true" if t == rep else "false",
                    "kind": kind,
                    "id": int(nodes[t]),
                }
            )
    return rows, len(ordered)


def _area(size):
    return 0 if not size else int(size[0]) * int(size[1])
