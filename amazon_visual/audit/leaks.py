"""Split leaks: duplicate groups whose members sit in more than one split, and what they cost.

A test photo with a copy in the training split is not a test: the model has seen it. :func:`find`
lists every member of a group that spans splits (``leaks.csv``: ``group,asin,split``);
:func:`run_accuracy` runs a classifier RUN_DIR over the test split and gives its accuracy on all
test items beside the accuracy without the leaked ones (and the figure ``evaluate`` reported,
when ``RUN_DIR/eval_test/metrics.json`` is there).
"""

import json
import os

import numpy as np


def find(duplicate_rows):
    """``(rows of leaks.csv, summary)`` from the rows of ``duplicates.csv``."""
    by_group = {}
    for r in duplicate_rows:
        by_group.setdefault(r["group"], []).append(r)
    rows, leaked_test = [], []
    for g, members in by_group.items():
        splits = {m["split"] for m in members}
        if len(splits) < 2:
            continue
        rows.extend({"group": g, "asin": m["asin"], "split": m["split"], "id": m["id"]} for m in members)
        if "test" in splits:
            leaked_test.extend(m["asin"] for m in members if m["split"] == "test")
    pairs = {}
    for g in {r["group"] for r in rows}:
        splits = sorted({m["split"] for m in by_group[g]})
        key = "+".join(splits)
        pairs[key] = pairs.get(key, 0) + 1
    summary = {
        "groups": len({r["group"] for r in rows}),
        "items": len(rows),
        "test_items": len(leaked_test),
        "groups_by_splits": pairs,
    }
    return rows, summary, set(leaked_test)


def predict_split(model, data_dir, image_size, split="test", batch_size=64):
    """``(asins, true labels, predicted labels)`` of a classifier over one split of DATA_DIR."""
    from amazon_visual import data

    asins, trues, preds = [], [], []
    for batch in data.load(data_dir, split=split, image_size=int(image_size), batch_size=batch_size):
        p = np.asarray(model(batch["image"], training=False))
        preds.append(p.argmax(1))
        trues.append(batch["label"].numpy())
        asins.extend(a.decode("utf-8", "replace") for a in batch["asin"].numpy())
    if not asins:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64)
    return asins, np.concatenate(trues), np.concatenate(preds)


def run_accuracy(run_dir, model, config, data_dir, leaked_test):
    """Test accuracy of RUN_DIR's classifier with and without the leaked test items."""
    asins, y, pred = predict_split(model, data_dir, config["image_size"])
    keep = np.array([a not in leaked_test for a in asins], bool)
    out = {
        "run_dir": os.path.abspath(run_dir),
        "test_items": int(len(y)),
        "leaked_test_items": int((~keep).sum()),
        "accuracy": round(float((y == pred).mean()), 4) if len(y) else None,
        "accuracy_without_leaks": round(float((y[keep] == pred[keep]).mean()), 4) if keep.any() else None,
        "accuracy_on_leaked": round(float((y[~keep] == pred[~keep]).mean()), 4) if (~keep).any() else None,
    }
    path = os.path.join(run_dir, "eval_test", "metrics.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            out["reported_accuracy"] = json.load(f).get("accuracy")
    return out
