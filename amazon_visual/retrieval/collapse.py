"""Collapse duplicate listings in search results: one product of each duplicate group.

The groups are those of ``amazon-visual audit`` (its ``duplicates.csv``: ``group,asin,...``),
copied into INDEX_DIR after review (``cp AUDIT_DIR/duplicates.csv INDEX_DIR/``): the index and
its groups travel and reload together. Rows whose ASIN the index does not hold are ignored (an
audit of an older index). :func:`group_ids` reads the file once per loaded index;
:func:`collapsed_search` asks the search for more candidates until ``k`` items of distinct
groups are found or the candidates run out.
"""

import csv
import os

import numpy as np

from amazon_visual.errors import UserError

DUPLICATES = "duplicates.csv"


def group_ids(index):
    """An int per item: its duplicate group, or a group of its own (cached on the index)."""
    cached = getattr(index, "_duplicate_groups", None)
    if cached is not None:
        return cached
    path = os.path.join(index.index_dir, DUPLICATES)
    if not os.path.isfile(path):
        raise UserError(
            f"collapse_duplicates needs duplicate groups: {index.index_dir} has no {DUPLICATES} "
            "(copy the one amazon-visual audit wrote into the index folder)"
        )
    groups = np.arange(index.n_items, dtype=np.int64) + 1  # own groups: 1..n; audit groups: negative
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f):
                i = index.asin_to_id.get((row.get("asin") or "").strip())
                if i is not None and 0 <= int(i) < len(groups):  # a product written live keeps its own group
                    groups[int(i)] = -int(row["group"])
    except (KeyError, ValueError, csv.Error) as e:
        raise UserError(
            f"{path} is not a duplicates.csv of amazon-visual audit ({type(e).__name__}: {e}): "
            "copy the audit's file again"
        ) from None
    index._duplicate_groups = groups
    return groups


def keep_first(ids, sims, groups, k, seen=()):
    """The first ``k`` of ``ids`` (best first) whose group is not already taken (nor in ``seen``)."""
    taken = set(int(g) for g in seen)
    keep = []
    for t, i in enumerate(ids):
        g = int(groups[int(i)]) if int(i) < len(groups) else int(i) + 1  # a live product: a group of its own
        if g not in taken:
            taken.add(g)
            keep.append(t)
            if len(keep) == k:
                break
    keep = np.asarray(keep, dtype=np.int64)
    return ids[keep], sims[keep]


def collapsed_search(search, index, k, exclude=()):
    """``search(n) -> (ids, sims)`` asked for 2k, 4k, ... candidates until ``k`` distinct groups are
    found or it returns fewer than asked; the groups of ``exclude`` (the query product) are left out."""
    groups = group_ids(index)
    seen = [groups[int(i)] for i in exclude if int(i) < len(groups)]
    n = 2 * int(k)
    while True:
        ids, sims = search(n)
        out = keep_first(ids, sims, groups, k, seen)
        if len(out[0]) >= k or len(ids) < n:
            return out
        n *= 2
