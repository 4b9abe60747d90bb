"""Misfiled products: out-of-fold class probabilities into cleanlab, ranked, cut where measured.

:func:`out_of_fold` fits a logistic regression on the stored embeddings (standardised) ``folds``
times, each time predicting the fold it did not see; folds follow duplicate groups, so a copy
of a product never vouches for its own label. :func:`find` hands the probabilities to cleanlab:
its label quality (``self_confidence``: the out-of-fold probability of the filed class) ranks the
products, worst first, and the cut is one of

- ``confidence`` (default): the products whose filed class has an out-of-fold probability under
  :data:`MAX_FILED_PROBABILITY` and whose most probable class is another. Measured in
  ``benchmarks/audit.py`` (clothing-small, 5 % of labels moved): cleanlab's estimates count
  genuine confusions between close classes (shirt / longsleeve) as issues and flag four times
  as many products as were moved (precision 0.23); this cut doubles the precision (0.49) at
  recall 0.82;
- ``count``: as many of the worst ranked as cleanlab estimates are mislabelled
  (``num_label_issues``, ``off_diagonal_calibrated``);
- ``filter``: cleanlab's default ``find_label_issues`` (the baseline).

Each flagged product gets its filed class, the suggested one (the most probable) and a
confidence (the out-of-fold probability of the suggested class).
"""

import numpy as np

from amazon_visual.errors import UserError

CUTS = ("confidence", "count", "filter")
MAX_FILED_PROBABILITY = 0.02  # the "confidence" cut: measured on clothing-small (benchmarks/audit.py)
REGULARISATION = 160.0  # sklearn's C times the rows fitted: C = 0.05 for clothing-small's 3,200 (measured)


def out_of_fold(embeddings, labels, folds=5, groups=None, seed=0, max_train=50_000, c=REGULARISATION):
    """``(n, classes)`` out-of-fold probabilities of a logistic regression on ``embeddings``.

    ``c``: the inverse regularisation per fitted row (sklearn's ``C`` is ``c / rows``): the penalty
    weighs the same against the data whatever the catalog's size, so the cut's probability
    threshold means about the same on a small catalog as on a large one. ``groups``: an int per
    item; items of one group share a fold. ``max_train``: each fold's model is fitted on at most
    this many rows (a random subset), so a million items stay affordable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, np.float32)
    y = np.asarray(labels, np.int64)
    n, k = len(y), int(y.max()) + 1
    rng = np.random.default_rng(seed)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    fold = rng.permutation(len(uniq))[inverse] % folds
    x = StandardScaler().fit_transform(x).astype(np.float32)
    probs = np.zeros((n, k), np.float32)
    # one BLAS thread: on a shared machine OpenBLAS's spinning threads made the fit 23x slower (measured:
    # 148 s instead of 6.4 s for 5 folds of 100,000 x 128)
    with threadpool_limits(1):
        for f in range(folds):
            test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
            if len(train) > max_train:
                train = rng.choice(train, max_train, replace=False)
            present = np.unique(y[train])
            model = LogisticRegression(C=c / len(train), max_iter=100)
            model.fit(x[train], y[train])
            probs[np.ix_(test, present)] = model.predict_proba(x[test])
    return probs


def find(labels, probs, cut="confidence", max_filed_probability=MAX_FILED_PROBABILITY):
    """``(flagged ids ranked worst first, label quality per item, estimated issue count)``."""
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if cut not in CUTS:
        raise UserError(f"--misfiled-cut {cut!r} is not one of {', '.join(CUTS)}")
    labels = np.asarray(labels, np.int64)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    estimate = int(num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated"))
    if cut == "filter":
        flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
        return np.asarray(flagged), quality, estimate
    ranked = np.argsort(quality, kind="stable")
    ranked = ranked[probs[ranked].argmax(1) != labels[ranked]]
    if cut == "count":
        flagged = ranked[:estimate]
    else:
        flagged = ranked[quality[ranked] < max_filed_probability]
    return flagged, quality, estimate


def rows(items, flagged, probs, class_names):
    """Rows of ``misfiled.csv``: ``asin, filed, suggested, confidence`` (plus the item ``id``), in rank order."""
    out = []
    asins, labels = items["asin"].tolist(), items["label_id"].to_numpy()
    for i in flagged:
        s = int(probs[i].argmax())
        out.append(
            {
                "asin": asins[i],
                "filed": class_names[int(labels[i])],
                "suggested": class_names[s],
                "confidence": round(float(probs[i, s]), 4),
                "id": int(i),
            }
        )
    return out


def audit(index, groups=None, folds=5, cut="confidence", seed=0, max_train=50_000):
    """The misfiled finding of a loaded index: ``(rows, summary dict)``."""
    items = index.items
    labels = items["label_id"].to_numpy()
    names = index.manifest.get("class_names")
    if not names:  # an index without class names: each label id's label, as the items table has it
        named = dict(zip(items["label_id"].tolist(), items["label"].tolist()))
        names = [str(named.get(c, c)) for c in range(int(labels.max()) + 1)]
    known = labels >= 0
    if known.sum() < 2 * folds or len(np.unique(labels[known])) < 2:
        return [], {"skipped": "fewer than two classes or too few labelled items"}
    ids = np.flatnonzero(known)
    probs = out_of_fold(
        index.embeddings[ids] if len(ids) < len(labels) else index.embeddings,
        labels[ids],
        folds,
        None if groups is None else np.asarray(groups)[ids],
        seed,
        max_train,
    )
    flagged, quality, estimate = find(labels[ids], probs, cut)
    found = rows(items.iloc[ids].reset_index(drop=True), flagged, probs, names)
    for r in found:
        r["id"] = int(ids[r["id"]])
    summary = {
        "cut": cut,
        "folds": folds,
        "estimated_issues": estimate,
        "flagged": len(found),
        "oof_accuracy": round(float((probs.argmax(1) == labels[ids]).mean()), 4),
    }
    return found, summary
