"""Look-alike recommendations from an INDEX_DIR, by image or by ASIN.

    from amazon_visual import Recommender
    rec = Recommender.load("index/")                       # memory-mapped, shareable by processes
    rec.similar_to_image("photo.jpg", k=10)                # path, http(s) URL, bytes, PIL image or array
    rec.similar_to_asin("B00ABC1234", k=10, same_category=True, min_similarity=0.5)
    rec.similar_to_asin("B00ABC1234", k=10, filters={"brand": ["Acme"], "max_price": 40, "min_rating": 4})

Each result is a dict ``{rank, asin, title, category, label, image_url, split, similarity,
thumb, item_id, brand, price, average_rating, rating_number}``, best first; ``similarity`` is
the exact cosine similarity of the stored (normalised) embeddings, ``thumb`` the path of the
item's thumbnail in INDEX_DIR/thumbs (or None); a missing attribute is None.

- ``filters``: ``category``, ``brand`` (one or several), ``min_price``, ``max_price``,
  ``min_rating``, combined with AND (:mod:`amazon_visual.retrieval.filters`: every result
  matches, and k results come back whenever k items match).

- An ASIN query never returns the item itself.
- ``min_similarity``: keep results with similarity >= S (fewer than k may come back).
- ``same_category``: keep items whose ``label`` (the dataset class, the category the
  index was built with) is the query's. For an ASIN query that is the item's label; for
  an image query with a trained run, the class the model predicts for the image; for an
  image query with a pretrained backbone (no classifier), the similarity-weighted
  majority label of the image's 10 nearest items. A string instead of True names the
  label to keep.
- The query image goes through :func:`amazon_visual.retrieval.embeddings.load_image` and
  :func:`amazon_visual.retrieval.embeddings.prepare_image`: the same resize the indexed items went
  through, then the same model.

Thread safety: one Recommender may be shared by threads; Annoy reads are thread-safe and
the model call is serialised by a lock. The model is loaded on the first image query
(ASIN queries never load TensorFlow).
"""

import dataclasses
import math
import os
import threading

import numpy as np

from amazon_visual.errors import UserError
from amazon_visual.retrieval import filters as F
from amazon_visual.retrieval import writelog
from amazon_visual.retrieval.collapse import collapsed_search, group_ids
from amazon_visual.retrieval.index import check_manifest, load_index


class Recommender:
    """Queries one loaded INDEX_DIR. Build it with :meth:`Recommender.load`."""

    def __init__(self, index, run_dir=None, backbone_weights=None, embedder=None):
        self.index = index
        self.manifest = index.manifest
        self._run_dir = run_dir
        self._backbone_weights = backbone_weights
        self._embedder = embedder
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, index_dir, search_k=None, run_dir=None, backbone_weights=None, verify="quick"):
        """Open INDEX_DIR for queries.

        ``search_k``: Annoy nodes inspected per query (None: the manifest's value, -1:
        Annoy's default ``n * trees``). ``run_dir``: the trained run to embed query images
        with, when it moved since the index was built (it must be the same model: checked).
        ``backbone_weights``: the weights file of a backbone index built with a file.
        ``verify``: ``"quick"`` or ``"full"`` check of index.ann before it is mapped.
        Raises :class:`UserError` for a missing/corrupt index or a model that does not fit it.
        """
        from amazon_visual.retrieval.embeddings import backbone_fingerprint, run_fingerprint

        index = load_index(index_dir, search_k=search_k, verify=verify)
        m = index.manifest
        if run_dir is not None:
            if m.get("source") != "run":
                raise UserError(
                    f"{index_dir} was built from the backbone {m.get('model')}, not a trained run: leave run_dir out"
                )
            if not os.path.isfile(os.path.join(run_dir, "model.keras")):
                raise UserError(
                    f"{run_dir} is not a trained run (no model.keras): pass the run the index was built from"
                )
            check_manifest(m, {"fingerprint": run_fingerprint(run_dir)}, index_dir)
        elif (
            m.get("source") == "run" and m.get("run_dir") and os.path.isfile(os.path.join(m["run_dir"], "model.keras"))
        ):
            # the run is still where it was: it must still be the same model
            check_manifest(m, {"fingerprint": run_fingerprint(m["run_dir"])}, index_dir)
        if backbone_weights is not None:
            if m.get("source") != "backbone":
                raise UserError(f"{index_dir} was built from a trained run: leave backbone_weights out")
            check_manifest(
                m, {"fingerprint": backbone_fingerprint(m["model"], backbone_weights, m["image_size"])}, index_dir
            )
        return cls(writelog.open_live(index), run_dir=run_dir, backbone_weights=backbone_weights)

    @property
    def embedder(self):
        """The model the index was built with (loaded on first use, checked against the manifest)."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    from amazon_visual.retrieval.embeddings import Embedder

                    m = self.manifest
                    if m.get("source") == "backbone" and self._backbone_weights is not None:
                        emb = Embedder.from_backbone(m["model"], self._backbone_weights, m["image_size"])
                    else:
                        emb = Embedder.from_manifest(m, run_dir=self._run_dir, index_dir=self.index.index_dir)
                    check_manifest(m, emb.describe(), self.index.index_dir)
                    self._embedder = emb
        return self._embedder

    def close(self):
        self.index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ queries
    def similar_to_image(self, img, k=10, min_similarity=None, same_category=False, filters=None):
        """Items that look like ``img`` (path, http(s) URL, bytes, PIL image or array)."""
        return self.recommend(
            image=img, k=k, min_similarity=min_similarity, same_category=same_category, filters=filters
        )["results"]

    def similar_to_asin(self, asin, k=10, min_similarity=None, same_category=False, filters=None):
        """Items that look like the indexed product ``asin`` (never the product itself)."""
        return self.recommend(
            asin=asin, k=k, min_similarity=min_similarity, same_category=same_category, filters=filters
        )["results"]

    def embed_image(self, img):
        """(embedding (d,), class probabilities or None, decoded uint8 image) of one query image."""
        emb, probs, arrays = self.embedder.embed_images([img])
        return emb[0], (None if probs is None else probs[0]), arrays[0]

    def recommend(
        self,
        image=None,
        asin=None,
        k=10,
        min_similarity=None,
        same_category=False,
        filters=None,
        collapse_duplicates=False,
    ):
        """One query by ``image`` or ``asin``: ``{"query": {...}, "results": [...], "query_image": array|None}``.

        ``query`` describes the query (kind, asin/title/label or the image's predicted
        category, the category used by ``same_category``, the ``filters`` applied).
        ``filters``: a mapping or :class:`~amazon_visual.retrieval.filters.Filters` (checked
        before the model runs: bad filters raise :class:`UserError`). ``collapse_duplicates``: one
        product of each duplicate group (:mod:`.collapse`; INDEX_DIR's ``duplicates.csv``), and none
        of the query product's own group.
        """
        if (image is None) == (asin is None):
            raise UserError("give either an image or an ASIN to query")
        filters = F.parse_filters(filters)
        F.columns(self.index).select(filters)  # an unknown category fails before the model runs
        if collapse_duplicates:
            group_ids(self.index)  # no duplicates.csv fails before the model runs too
        k = int(k)
        if k < 1:
            raise UserError(f"k must be at least 1, not {k}")
        if min_similarity is not None and not -1.0 <= float(min_similarity) <= 1.0:
            raise UserError(f"min_similarity {min_similarity} is outside [-1, 1]")
        idx = self.index
        exclude = ()
        query_image = None
        if asin is not None:
            asin = str(asin).strip()
            if asin not in idx.asin_to_id:
                raise UserError(f"ASIN {asin} is not in the index {idx.index_dir}: query an indexed ASIN or an image")
            qid = idx.asin_to_id[asin]
            vec = idx.vector(qid)
            row = idx.item(qid)
            # the same ASIN may be indexed twice (e.g. in two splits): never return it
            same = np.flatnonzero(idx.items["asin"].to_numpy() == asin) if _dupes(idx) else [qid]
            exclude = tuple(int(i) for i in same)
            query = {
                "kind": "asin",
                "asin": asin,
                "title": row.get("title", ""),
                "category": row.get("category", ""),
                "label": row.get("label", ""),
                "image_url": row.get("image_url", ""),
                "thumb": idx.thumb_path(qid),
            }
            category = row.get("label", "")
            query["category_source"] = "the item's label"
        else:
            vec, probs, query_image = self.embed_image(image)
            query = {
                "kind": "image",
                "image": image if isinstance(image, (str, os.PathLike)) else f"<{type(image).__name__}>",
            }
            labels = self.embedder.labels
            if probs is not None and labels:
                c = int(np.argmax(probs))
                query["predicted_label"] = labels[c] if c < len(labels) else str(c)
                query["predicted_probability"] = float(probs[c])
                category = query["predicted_label"]
                query["category_source"] = "the model's predicted class"
            else:
                category = self._vote(vec) if same_category else None
                if same_category:
                    query["category_source"] = "majority label of the 10 nearest items"
            query["label"] = category
        if isinstance(same_category, str):
            category = same_category
            query["category_source"] = "given"
        keep_label = category if same_category else None
        if same_category:
            query["same_category"] = keep_label
        if filters:
            query["filters"] = filters.to_dict()
        if collapse_duplicates:
            query["collapse_duplicates"] = True
        results = self._search(vec, k, min_similarity, keep_label, exclude, filters, collapse_duplicates)
        return {"query": query, "results": results, "query_image": query_image}

    # ------------------------------------------------------------------ internals
    def _vote(self, vec, n=10):
        ids, sims = self.index.search(vec, n)
        if len(ids) == 0:
            return None
        labels = self.index.items["label"].to_numpy()[ids]
        score = {}
        for lab, s in zip(labels, sims):
            score[lab] = score.get(lab, 0.0) + max(float(s), 0.0) + 1e-6
        return max(score, key=score.get)

    def _search(self, vec, k, min_similarity, keep_label, exclude, filters=None, collapse_duplicates=False):
        """The results of one query: the items allowed by ``filters`` AND ``keep_label`` nearest ``vec``."""
        filters = F.Filters() if filters is None else filters
        cols = F.columns(self.index)
        if keep_label is not None and filters.category in (None, keep_label) and cols.has_label(keep_label):
            filters = dataclasses.replace(filters, category=str(keep_label))
        elif keep_label is not None:  # a category no item has, or two different ones: nothing matches
            return []
        allowed = cols.select(filters)
        if collapse_duplicates:
            ids, sims = collapsed_search(lambda n: self._candidates(vec, n, allowed, exclude), self.index, k, exclude)
        else:
            ids, sims = self._candidates(vec, k, allowed, exclude)
        if min_similarity is not None:
            keep = sims >= float(min_similarity)
            ids, sims = ids[keep], sims[keep]
        return [self._result(rank, i, s) for rank, (i, s) in enumerate(zip(ids, sims), 1)]

    def _candidates(self, vec, k, allowed, exclude):
        """(ids, similarities) of the ``k`` allowed items nearest ``vec`` (``allowed``: a Selection or None);
        a writable index merges its live writes in (:func:`.writelog.live_search`)."""
        if isinstance(self.index, writelog.LiveIndex):
            return writelog.live_search(self.index, vec, k, allowed=allowed, exclude=exclude)
        return F.filtered_search(self.index, vec, k, allowed=allowed, exclude=exclude)

    def _result(self, rank, item_id, similarity):
        idx = self.index
        row = idx.item(item_id)
        return {
            "rank": rank,
            "asin": row.get("asin", ""),
            "title": row.get("title", ""),
            "category": row.get("category", ""),
            "label": row.get("label", ""),
            "image_url": row.get("image_url", ""),
            "split": row.get("split", ""),
            "similarity": round(float(similarity), 6),
            "thumb": idx.thumb_path(item_id),
            "item_id": int(item_id),
            **attributes(row),
        }


def attributes(row):
    """``brand``, ``price``, ``average_rating``, ``rating_number`` of an items row; None when missing."""
    brand = row.get("brand", "")
    out = {"brand": str(brand) if isinstance(brand, str) and brand else None}
    for name in ("price", "average_rating", "rating_number"):
        v = row.get(name)
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = float("nan")
        out[name] = v if math.isfinite(v) else None
    if out["rating_number"] is not None:
        out["rating_number"] = int(out["rating_number"])
    return out


def _dupes(idx):
    if not hasattr(idx, "_has_dupes"):
        idx._has_dupes = len(idx.asin_to_id) != idx.n_items
    return idx._has_dupes


def format_table(results, query=None):
    """A readable text table of results (what ``amazon-visual recommend`` prints)."""
    lines = []
    if query:
        if query.get("kind") == "asin":
            lines.append(f"query: ASIN {query['asin']}  [{query.get('label', '')}]  {query.get('title', '')}")
        else:
            extra = ""
            if query.get("predicted_label"):
                extra = f"  predicted: {query['predicted_label']} ({query.get('predicted_probability', 0):.2f})"
            lines.append(f"query: image {query.get('image')}{extra}")
        if query.get("same_category"):
            lines.append(f"same category: {query['same_category']} ({query.get('category_source', '')})")
    if query and query.get("filters"):
        lines.append(
            "filters: "
            + ", ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in query["filters"].items())
        )
    if not results:
        lines.append("no result (try a lower --min-similarity, fewer filters or without --same-category)")
        return "\n".join(lines)
    width_title = 48
    # attribute columns only when some result has the attribute
    columns = (
        ("price", "price", "{:>9.2f}"),
        ("average_rating", "rating", "{:>6.1f}"),
        ("brand", "brand", "{:<16.16}"),
    )
    extra = [(name, head, fmt) for name, head, fmt in columns if any(r.get(name) is not None for r in results)]
    width = {"price": 9, "rating": 6, "brand": 16}

    def cells(r):
        out = []
        for name, head, fmt in extra:
            v = r.get(name)
            out.append(fmt.format(v) if v is not None else f"{'-':>{width[head]}}" if head != "brand" else f"{'-':<16}")
        return "".join(c + "  " for c in out)

    head = "".join((f"{h:>{width[h]}}" if h != "brand" else f"{h:<16}") + "  " for _, h, _ in extra)
    lines.append(f"{'rank':>4}  {'similarity':>10}  {'asin':<12}  {'label':<16}  {head}title")
    for r in results:
        title = str(r.get("title", ""))
        if len(title) > width_title:
            title = title[: width_title - 1] + "\u2026"
        label = str(r.get("label", ""))[:16]
        lines.append(f"{r['rank']:>4}  {r['similarity']:>10.4f}  {str(r['asin']):<12}  {label:<16}  {cells(r)}{title}")
    return "\n".join(lines)
