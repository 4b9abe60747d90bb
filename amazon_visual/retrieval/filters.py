"""Filtered search: product-attribute filters, their masks, and a per-query plan that is right and complete.

    from amazon_visual.retrieval.filters import parse_filters, select, filtered_search
    f = parse_filters({"brand": ["Acme", "Zed"], "max_price": 40, "min_rating": 4})
    sel = select(index, f)                      # boolean mask over the index's items (cached per index)
    ids, sims = filtered_search(index, vector, 10, allowed=sel)

Filters (combined with AND; the CLI, the API and Python all go through :func:`parse_filters`):

- ``category``: the item's ``label`` (the dataset class, see ``/v1/categories``);
- ``brand``: one brand or several (any of them matches; compared without regard to case);
- ``min_price`` / ``max_price``: bounds on ``price`` (inclusive);
- ``min_rating``: lower bound on ``average_rating`` (0 to 5).

A missing attribute never matches a bound: an item without a price is not "under $40", an item
without a brand matches no brand.

The plan (as Qdrant and Weaviate plan filtered search: by the filter's cardinality), from the
number ``m`` of the ``n`` items the filter allows, per query:

- the ANN path: a candidate list sized for the filter's selectivity, ``c = 2 k n / m``, with the
  ANN's effort grown with it (Annoy's ``search_k`` x ``c / k``: about as many matching
  candidates inspected as an unfiltered query inspects), the list grown 4x until k matching
  items are found; when the ANN runs out (it returned fewer than asked), an exact scan
  finishes the query;
- the exact path: a scan of the matching rows' stored embeddings (float32, L2-normalised, so
  cosine is a dot product; the rows are gathered from the memory map, and kept as one block for
  the most recent filters, up to ``ROWS_CACHE_BYTES`` per loaded index: a repeated filter only
  scans);
- the cheaper one by cost: exact when ``m <= EXACT_ROWS_PER_CANDIDATE x`` the ANN's candidates
  (Annoy: its ``search_k``; HNSW: ``ef`` x ``M``, not measured). Measured on 128-d vectors
  (``benchmarks/index_bench.py --filtered``, BENCHMARKS.md "Filtered search"): gathering and
  scoring one row costs a half to three quarters of an Annoy candidate.

So every result matches and k results come back whenever at least k items match (less the
excluded ones), and an unselective filter costs about what an unfiltered query costs.
"""

import dataclasses
import math
import threading
from collections import OrderedDict

import numpy as np

from amazon_visual.errors import UserError
from amazon_visual.retrieval.layout import dot_rows, normalize

FILTER_NAMES = ("category", "brand", "min_price", "max_price", "min_rating")
MAX_RATING = 5.0
# the exact scan is planned when the matching rows are at most this many times the ANN's candidates. Measured at
# 1,000,000 x 128 (BENCHMARKS.md, "Filtered search"): 10,000 rows gathered and scored in 4.0-4.1 ms of CPU (p50),
# 8,000 Annoy candidates in 4.3-6.2 ms, so 1.3 to 1.9 rows cost one candidate; 2 leans to the exact path (recall 1)
EXACT_ROWS_PER_CANDIDATE = 2.0
CANDIDATE_MARGIN = 2.0  # ANN candidates asked = margin * k / selectivity (the first try)
MASK_CACHE = 32  # recent filters' masks kept per loaded index
# the exact path's gathered rows of recent filters, kept per loaded index (a repeated filter scans one contiguous
# block instead of gathering its rows from the memory map again): at most this many bytes in all
ROWS_CACHE_BYTES = 128 << 20


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Filters:
    """A parsed filter (hashable: the mask cache's key). Empty (``not f``) matches everything."""

    category: str = None
    brands: tuple = ()
    min_price: float = None
    max_price: float = None
    min_rating: float = None

    def __bool__(self):
        return any(v not in (None, ()) for v in dataclasses.astuple(self))

    def to_dict(self):
        """The filters that are set, in the names :func:`parse_filters` takes (``brand`` a list)."""
        out = {}
        if self.category is not None:
            out["category"] = self.category
        if self.brands:
            out["brand"] = list(self.brands)
        for name in ("min_price", "max_price", "min_rating"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _number(name, value):
    if isinstance(value, bool):
        raise UserError(f"filter {name} must be a number, not {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"filter {name} must be a number, not {str(value)[:60]!r}") from None
    if not math.isfinite(x):
        raise UserError(f"filter {name} must be a finite number, not {value!r}")
    return x


def _brands(value):
    values = [value] if isinstance(value, str) else list(value)
    out = []
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise UserError(f"filter brand must be a non-empty brand name, not {str(v)[:60]!r}")
        out.append(v.strip())
    return tuple(sorted(set(out), key=str.casefold))


def parse_filters(spec):
    """:class:`Filters` from a mapping ``{name: value}`` (or a Filters, or None = no filter).

    None values are ignored. Raises :class:`UserError` for an unknown name, a non-number or
    non-finite price or rating, a negative price, ``min_price > max_price``, a rating outside
    [0, 5], an empty brand or category.
    """
    if spec is None:
        return Filters()
    if isinstance(spec, Filters):
        return spec
    if not hasattr(spec, "items"):
        raise UserError(f"filters must be a mapping of {', '.join(FILTER_NAMES)}, not {type(spec).__name__}")
    spec = {k: v for k, v in spec.items() if v is not None}
    unknown = sorted(str(k) for k in spec if k not in FILTER_NAMES)
    if unknown:
        raise UserError(f"unknown filter {unknown[0]!r}: use {', '.join(FILTER_NAMES)}")
    kw = {}
    if "category" in spec:
        cat = spec["category"]
        if not isinstance(cat, str) or not cat.strip():
            raise UserError(f"filter category must be a non-empty category name, not {str(cat)[:60]!r}")
        kw["category"] = cat.strip()
    if "brand" in spec:
        kw["brands"] = _brands(spec["brand"])
    for name in ("min_price", "max_price"):
        if name in spec:
            kw[name] = _number(name, spec[name])
            if kw[name] < 0:
                raise UserError(f"filter {name} must not be negative, not {spec[name]!r}")
    if kw.get("min_price") is not None and kw.get("max_price") is not None and kw["min_price"] > kw["max_price"]:
        raise UserError(
            f"filter min_price {kw['min_price']:g} is above max_price {kw['max_price']:g}: give min_price <= max_price"
        )
    if "min_rating" in spec:
        kw["min_rating"] = _number("min_rating", spec["min_rating"])
        if not 0.0 <= kw["min_rating"] <= MAX_RATING:
            raise UserError(f"filter min_rating must be within [0, {MAX_RATING:g}], not {spec['min_rating']!r}")
    return Filters(**kw)


# --------------------------------------------------------------------------
# columns and masks
# --------------------------------------------------------------------------
class Selection:
    """The items a filter allows: ``mask`` (bool, one per item), ``count``, and ``ids`` (sorted, on first use).
    ``key``: the Filters of a selection made by :meth:`Columns.select` (None for any other mask)."""

    key = None

    def __init__(self, mask, count=None):
        self.mask = mask
        self.count = int(np.count_nonzero(mask)) if count is None else int(count)
        self._ids = None

    @property
    def ids(self):
        if self._ids is None:
            self._ids = np.flatnonzero(self.mask)
        return self._ids

    def __and__(self, other):
        other = other.mask if isinstance(other, Selection) else np.asarray(other, bool)
        return Selection(self.mask & other)


class Columns:
    """The attributes of one loaded index as numpy columns (computed once; see :func:`columns`)."""

    def __init__(self, items):
        import pandas as pd

        n = len(items)
        self.n = n
        self.label_codes, labels = pd.factorize(items["label"].astype(str), sort=True)
        self.labels = [str(x) for x in labels]
        self._label_code = {name: i for i, name in enumerate(self.labels)}
        brand = items["brand"].astype(str).str.strip() if "brand" in items else pd.Series([""] * n)
        self.brand_codes, brands = pd.factorize(brand.str.casefold(), sort=True)
        self._brand_code = {name: i for i, name in enumerate(brands) if name}
        self._brand_text, self._display, self._summary = brand.tolist(), None, None
        self.price = self._numeric(items, "price", n)
        self.rating = self._numeric(items, "average_rating", n)
        self.rating_number = self._numeric(items, "rating_number", n)
        self._cache = OrderedDict()
        self._rows, self._rows_bytes = OrderedDict(), 0
        self._lock = threading.Lock()

    @staticmethod
    def _numeric(items, name, n):
        import pandas as pd

        if name not in items:
            return np.full(n, np.nan)
        return pd.to_numeric(items[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    def _display_names(self):
        """Brand code -> the spelling of that brand's first item (brands match without regard to case)."""
        if self._display is None:
            codes, first = np.unique(self.brand_codes, return_index=True)
            self._display = {int(c): self._brand_text[int(i)] for c, i in zip(codes, first) if self._brand_text[int(i)]}
        return self._display

    def has_label(self, label):
        return str(label) in self._label_code

    def _mask(self, f):
        mask = np.ones(self.n, bool)
        if f.category is not None:
            if f.category not in self._label_code:
                shown = ", ".join(self.labels[:20]) + (", ..." if len(self.labels) > 20 else "")
                raise UserError(f"unknown category {f.category!r}: use one of the index's categories ({shown})")
            mask &= self.label_codes == self._label_code[f.category]
        if f.brands:
            codes = [self._brand_code[b.casefold()] for b in f.brands if b.casefold() in self._brand_code]
            mask &= np.isin(self.brand_codes, codes)
        # NaN (missing) compares False with any bound: a missing attribute never matches
        if f.min_price is not None:
            mask &= self.price >= f.min_price
        if f.max_price is not None:
            mask &= self.price <= f.max_price
        if f.min_rating is not None:
            mask &= self.rating >= f.min_rating
        return mask

    def select(self, filters):
        """The :class:`Selection` of a parsed filter (None for an empty filter: everything); recent ones cached."""
        if not filters:
            return None
        with self._lock:
            hit = self._cache.get(filters)
            if hit is not None:
                self._cache.move_to_end(filters)
                return hit
        sel = Selection(self._mask(filters))
        sel.mask.flags.writeable = False
        sel.key = filters
        with self._lock:
            self._cache[filters] = sel
            while len(self._cache) > MASK_CACHE:
                self._cache.popitem(last=False)
        return sel

    def rows(self, embeddings, sel):
        """The embeddings of ``sel.ids`` as one contiguous float32 array; kept for a selection made by
        :meth:`select` (the most recent ones, up to ``ROWS_CACHE_BYTES`` in all)."""
        key = sel.key
        if key is not None:
            with self._lock:
                block = self._rows.get(key)
                if block is not None:
                    self._rows.move_to_end(key)
                    return block
        block = np.asarray(embeddings[sel.ids], dtype=np.float32)
        if key is not None and block.nbytes <= ROWS_CACHE_BYTES:
            with self._lock:
                if key not in self._rows:
                    self._rows[key] = block
                    self._rows_bytes += block.nbytes
                    while self._rows_bytes > ROWS_CACHE_BYTES:
                        self._rows_bytes -= self._rows.popitem(last=False)[1].nbytes
        return block

    def summary(self, top_brands=200):
        """Which attributes the index has: brands with counts (most frequent first), price range, ratings
        (computed once per loaded index)."""
        if self._summary is None or self._summary[0] != top_brands:
            self._summary = (top_brands, self._summarize(top_brands))
        return self._summary[1]

    def _summarize(self, top_brands):
        def num(x):
            ok = x[np.isfinite(x)]
            return {
                "count": int(ok.size),
                "min": float(ok.min()) if ok.size else None,
                "max": float(ok.max()) if ok.size else None,
            }

        display = self._display_names()
        valid = np.isin(self.brand_codes, list(display)) if display else np.zeros(self.n, bool)
        codes, counts = np.unique(self.brand_codes[valid], return_counts=True)
        order = np.lexsort((codes, -counts))
        brands = [{"name": display[int(codes[i])], "count": int(counts[i])} for i in order[:top_brands]]
        return {
            "n_items": self.n,
            "brand": {"count": int(valid.sum()), "distinct": int(codes.size), "top": brands},
            "price": num(self.price),
            "average_rating": num(self.rating),
            "rating_number": num(self.rating_number),
        }


_COLUMNS_LOCK = threading.Lock()


def columns(index):
    """The :class:`Columns` of a loaded Index, computed on first use and kept on the index object."""
    cols = getattr(index, "_filter_columns", None)
    if cols is None:
        with _COLUMNS_LOCK:
            cols = getattr(index, "_filter_columns", None)
            if cols is None:
                cols = Columns(index.items)
                index._filter_columns = cols
    return cols


def select(index, filters):
    """The :class:`Selection` of ``filters`` (a mapping or :class:`Filters`) over ``index``; None = everything."""
    return columns(index).select(parse_filters(filters))


# --------------------------------------------------------------------------
# the planner
# --------------------------------------------------------------------------
def exact_scan(index, q, k, ids, exclude=None, rows=None):
    """Exact top-k among the item ``ids`` (sorted int64) by dot product with the normalised query ``q``;
    ``rows``: their embeddings, when already gathered."""
    if ids.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    sims = dot_rows(index.embeddings[ids] if rows is None else rows, q)
    if exclude is not None and exclude.size:
        keep = ~np.isin(ids, exclude)
        if not keep.all():
            ids, sims = ids[keep], sims[keep]
            if ids.size == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if ids.size > k:
        top = np.argpartition(-sims, k - 1)[:k]
        ids, sims = ids[top], sims[top]
    best = np.argsort(-sims, kind="stable")
    return ids[best].astype(np.int64), sims[best]


def _rescore(index, q, ids):
    order = np.argsort(ids)
    sims = np.empty(ids.size, np.float32)
    sims[order] = dot_rows(index.embeddings[ids[order]], q)
    best = np.argsort(-sims, kind="stable")
    return ids[best], sims[best]


def _effort(index, cand, k, search_k):
    """The ANN effort for ``cand`` candidates: Annoy's search_k grows with the list; HNSW's ef is >= n anyway."""
    base = index.search_k if search_k is None else int(search_k)
    if base <= 0 or getattr(index.ann, "annoy", None) is None:
        return base
    return max(base, base * cand // max(k, 1))


def _first_candidates(n, count, k, n_excluded):
    return min(n, int(math.ceil(CANDIDATE_MARGIN * k * n / max(count, 1))) + n_excluded)


def ann_cost(index, cand, k, search_k=None):
    """The candidates the ANN scores for a list of ``cand`` (Annoy: search_k; HNSW: ef x M)."""
    effort = _effort(index, cand, k, search_k)
    if getattr(index.ann, "annoy", None) is not None:
        return effort if effort > 0 else cand * int(index.manifest.get("trees") or 1)
    return max(cand, effort) * int(index.manifest.get("hnsw_m") or 16)


def plan(index, count, k=10, n_excluded=0, search_k=None):
    """``"exact"`` or ``"ann"`` for a filter allowing ``count`` items (see the module docstring)."""
    if count - n_excluded <= 0 or count >= index.n_items:
        return "exact" if count - n_excluded <= 0 else "ann"
    cand = _first_candidates(index.n_items, count, k, n_excluded)
    return "exact" if count <= EXACT_ROWS_PER_CANDIDATE * ann_cost(index, cand, k, search_k) else "ann"


def filtered_search(index, vector, k, allowed=None, exclude=(), search_k=None):
    """Top ``k`` items allowed by ``allowed`` (a bool mask, a :class:`Selection`, or None = all) and not in
    ``exclude``: ``(ids int64, similarities float32)``, best first, exact cosine of the stored embeddings.

    Right (every result is allowed) and complete (k results whenever k items are allowed and not
    excluded): the planner picks an exact scan or the ANN with a growing candidate list.
    """
    k = int(k)
    n = index.n_items
    q = normalize(np.asarray(vector, dtype=np.float32).reshape(-1))
    if q.shape[0] != index.dim:
        raise UserError(f"query vector has dimension {q.shape[0]}, the index {index.dim}")
    excl = np.unique(np.asarray(list(exclude), np.int64)) if len(exclude) else np.zeros(0, np.int64)
    if allowed is not None and not isinstance(allowed, Selection):
        allowed = np.asarray(allowed, bool)
        if allowed.shape != (n,):
            raise UserError(f"the filter mask has shape {allowed.shape}, the index {n} items")
        allowed = Selection(allowed)
    if allowed is not None and allowed.count == n:
        allowed = None
    if k < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    count = n if allowed is None else allowed.count
    if allowed is not None and plan(index, count, k, excl.size, search_k) == "exact":
        rows = columns(index).rows(index.embeddings, allowed) if allowed.key is not None else None
        return exact_scan(index, q, k, allowed.ids, excl, rows)
    return _ann(index, q, k, allowed, count, excl, search_k)


def _ann(index, q, k, allowed, count, excl, search_k):
    n = index.n_items
    excl_set = set(excl.tolist())
    cand = k + excl.size if allowed is None else _first_candidates(n, count, k, excl.size)
    while True:
        cand = min(cand, n)
        ids = np.asarray(index.ann.search(q, cand, _effort(index, cand, k, search_k)), np.int64)
        keep = ids if allowed is None else ids[allowed.mask[ids]]
        if excl_set:
            keep = np.array([i for i in keep.tolist() if i not in excl_set], np.int64)
        if keep.size >= k:
            ids, sims = _rescore(index, q, keep)
            return ids[:k], sims[:k]
        if ids.size < cand or cand >= n:
            break  # the ANN ran out: finish exactly
        cand *= 4
    if allowed is None:
        return exact_scan(index, q, k, np.arange(n, dtype=np.int64), excl)
    return exact_scan(index, q, k, allowed.ids, excl)
