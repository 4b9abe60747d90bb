"""Look-alike recommendations from an INDEX_DIR, by image or by ASIN.

    from amazon_visual import Recommender
    rec = Recommender.load("index/")                       # memory-mapped, shareable by processes
    rec.similar_to_image("photo.jpg", k=10)                # path, http(s) URL, bytes, PIL image or array
    rec.similar_to_asin("B00ABC1234", k=10, same_category=True, min_similarity=0.5)

Each result is a dict ``{rank, asin, title, category, label, image_url, split, similarity,
thumb, item_id}``, best first; ``similarity`` is the exact cosine similarity of the stored
(normalised) embeddings, ``thumb`` the path of the item's thumbnail in INDEX_DIR/thumbs
(or None).

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
import os
import threading

import numpy as np

from amazon_visual.errors import UserError
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
                raise UserError(f"{index_dir} was built from the backbone {m.get('model')}, not a trained run: "
                                "leave run_dir out")
            if not os.path.isfile(os.path.join(run_dir, "model.keras")):
                raise UserError(f"{run_dir} is not a trained run (no model.keras): pass the run the index was built from")
            check_manifest(m, {"fingerprint": run_fingerprint(run_dir)}, index_dir)
        elif m.get("source") == "run" and m.get("run_dir") and os.path.isfile(os.path.join(m["run_dir"], "model.keras")):
            # the run is still where it was: it must still be the same model
            check_manifest(m, {"fingerprint": run_fingerprint(m["run_dir"])}, index_dir)
        if backbone_weights is not None:
            if m.get("source") != "backbone":
                raise UserError(f"{index_dir} was built from a trained run: leave backbone_weights out")
            check_manifest(m, {"fingerprint": backbone_fingerprint(m["model"], backbone_weights, m["image_size"])},
                           index_dir)
        return cls(index, run_dir=run_dir, backbone_weights=backbone_weights)

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
    def similar_to_image(self, img, k=10, min_similarity=None, same_category=False):
        """Items that look like ``img`` (path, http(s) URL, bytes, PIL image or array)."""
        return self.recommend(image=img, k=k, min_similarity=min_similarity, same_category=same_category)["results"]

    def similar_to_asin(self, asin, k=10, min_similarity=None, same_category=False):
        """Items that look like the indexed product ``asin`` (never the product itself)."""
        return self.recommend(asin=asin, k=k, min_similarity=min_similarity, same_category=same_category)["results"]

    def embed_image(self, img):
        """(embedding (d,), class probabilities or None, decoded uint8 image) of one query image."""
        emb, probs, arrays = self.embedder.embed_images([img])
        return emb[0], (None if probs is None else probs[0]), arrays[0]

    def recommend(self, image=None, asin=None, k=10, min_similarity=None, same_category=False):
        """One query by ``image`` or ``asin``: ``{"query": {...}, "results": [...], "query_image": array|None}``.

        ``query`` describes the query (kind, asin/title/label or the image's predicted
        category, the category used by ``same_category``).
        """
        if (image is None) == (asin is None):
            raise UserError("give either an image or an ASIN to query")
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
            query = {"kind": "asin", "asin": asin, "title": row.get("title", ""), "category": row.get("category", ""),
                     "label": row.get("label", ""), "image_url": row.get("image_url", ""), "thumb": idx.thumb_path(qid)}
            category = row.get("label", "")
            query["category_source"] = "the item's label"
        else:
            vec, probs, query_image = self.embed_image(image)
            query = {"kind": "image", "image": image if isinstance(image, (str, os.PathLike)) else f"<{type(image).__name__}>"}
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
        results = self._search(vec, k, min_similarity, keep_label, exclude)
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

    def _search(self, vec, k, min_similarity, keep_label, exclude):
        idx = self.index
        n_total = idx.n_items
        labels = idx.items["label"].to_numpy()
        n = k if (min_similarity is None and keep_label is None) else max(4 * k, 50)
        base_sk = idx.search_k
        while True:
            n = min(n, n_total)
            sk = base_sk if base_sk <= 0 else max(base_sk, base_sk * n // max(k, 1))
            ids, sims = idx.search(vec, n, search_k=sk, exclude=exclude)
            keep = np.ones(len(ids), bool)
            if keep_label is not None:
                keep &= labels[ids] == keep_label
            if min_similarity is not None:
                keep &= sims >= float(min_similarity)
            exhausted = n >= n_total or len(ids) < n
            below = min_similarity is not None and len(sims) and sims[-1] < float(min_similarity)
            if keep.sum() >= k or exhausted or below:
                break
            n *= 4
        ids, sims = ids[keep][:k], sims[keep][:k]
        out = []
        for rank, (i, s) in enumerate(zip(ids, sims), 1):
            row = idx.item(i)
            out.append({"rank": rank, "asin": row.get("asin", ""), "title": row.get("title", ""),
                        "category": row.get("category", ""), "label": row.get("label", ""),
                        "image_url": row.get("image_url", ""), "split": row.get("split", ""),
                        "similarity": round(float(s), 6), "thumb": idx.thumb_path(i), "item_id": int(i)})
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
    if not results:
        lines.append("no result (try a lower --min-similarity or without --same-category)")
        return "\n".join(lines)
    width_title = 48
    lines.append(f"{'rank':>4}  {'similarity':>10}  {'asin':<12}  {'label':<16}  title")
    for r in results:
        title = str(r.get("title", ""))
        if len(title) > width_title:
            title = title[:width_title - 1] + "\u2026"
        lines.append(f"{r['rank']:>4}  {r['similarity']:>10.4f}  {str(r['asin']):<12}  {str(r.get('label', ''))[:16]:<16}  {title}")
    return "\n".join(lines)
