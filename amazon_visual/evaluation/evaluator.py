"""``evaluate``: one trained run on one split of a dataset.

``evaluate`` writes ``RUN_DIR/eval_<split>/``: ``metrics.json``,
``classification_report.txt``, ``confusion_matrix.png``, ``misclassified.png``. With
test-time augmentation (``tta``, :mod:`.tta`) ``metrics.json`` holds its ``tta`` block: the
accuracy without it and the model's seconds with and without it.
"""

import json
import os
import sys

from amazon_visual.atomic import write_text as _atomic_text
from amazon_visual.errors import UserError

MAX_MISCLASSIFIED = 24


def _check_dataset(run_dir, config, labels, data_dir):
    from amazon_visual import training

    if (config or {}).get("objective") == "retrieval":
        raise UserError(
            f"{run_dir} was trained with --objective retrieval and has no classifier to evaluate: "
            f"measure it with amazon-visual index {run_dir} ... and amazon-visual eval-retrieval"
        )
    training.check_same_labels(run_dir, labels, data_dir)
    fp = (config or {}).get("dataset_fingerprint") or {}
    current = training.dataset_fingerprint(data_dir)
    if fp.get("sha1") and fp.get("sha1") != current["sha1"]:
        print(
            f"amazon-visual: warning: {data_dir} has the run's classes but other split sizes "
            f"({current['splits']} vs {fp.get('splits')}): was it rebuilt?",
            file=sys.stderr,
        )


def predict(
    model,
    data_dir,
    split,
    image_size,
    batch_size=64,
    keep_misclassified=MAX_MISCLASSIFIED,
    limit=None,
    tta="none",
    details=None,
):
    """Runs ``model`` over a split. Returns (probabilities [n, k], true labels [n],
    a few misclassified examples as (images, true, pred, confidence)).

    ``tta``: ``none``, ``flip`` or ``flip-crop`` (:mod:`.tta`): the probabilities are the
    average over the views, in the same shape and class order. ``details``: a dict that
    receives ``plain_probabilities`` (view 0 alone) and the :class:`.tta.Predictor`."""
    import numpy as np

    from amazon_visual.evaluation.tta import Predictor
    from amazon_visual.training import pipeline

    predictor = Predictor(model, tta)
    ds = pipeline.eval_dataset(data_dir, image_size, batch_size, split=split)
    if limit:
        ds = ds.unbatch().take(int(limit)).batch(int(batch_size))
    probs, plains, trues = [], [], []
    bad_images, bad_true, bad_pred, bad_conf = [], [], [], []
    for x, y in ds:
        p, plain = predictor(x)
        y = y.numpy()
        probs.append(p)
        plains.append(plain)
        trues.append(y)
        if len(bad_images) < keep_misclassified:
            pred = p.argmax(1)
            for i in np.nonzero(pred != y)[0][: keep_misclassified - len(bad_images)]:
                bad_images.append(x[i].numpy())
                bad_true.append(int(y[i]))
                bad_pred.append(int(pred[i]))
                bad_conf.append(float(p[i, pred[i]]))
    if not probs:
        raise UserError(f"{data_dir} has no examples in split {split!r}: evaluate another split")
    if details is not None:
        details.update(plain_probabilities=np.concatenate(plains), predictor=predictor)
    return np.concatenate(probs), np.concatenate(trues), (bad_images, bad_true, bad_pred, bad_conf)


def _evaluate_loaded(model, config, labels, run_dir, data_dir, split, batch_size, write, limit=None, tta="none"):
    import numpy as np
    from sklearn.metrics import classification_report, confusion_matrix

    from amazon_visual.evaluation import plots

    details = {}
    probs, y, bad = predict(
        model, data_dir, split, int(config["image_size"]), batch_size, limit=limit, tta=tta, details=details
    )
    pred = probs.argmax(1)
    predictor = details["predictor"]
    tta_block, tta_title = None, ""
    if predictor.mode != "none":
        plain_accuracy = (details["plain_probabilities"].argmax(1) == y).mean()
        tta_block = predictor.report(len(y), (pred == y).mean(), plain_accuracy)
        tta_title = f", TTA {predictor.mode}"
    k = len(labels)
    report = classification_report(
        y, pred, labels=list(range(k)), target_names=labels, output_dict=True, zero_division=0
    )
    text = classification_report(y, pred, labels=list(range(k)), target_names=labels, digits=4, zero_division=0)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    result = {
        "run_dir": os.path.abspath(run_dir),
        "model": config.get("model"),
        "split": split,
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "classification_report": report,
        "classification_report_text": text,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "tta": tta_block,
        "files": {},
    }
    if write:
        out = os.path.join(run_dir, f"eval_{split}")
        os.makedirs(out, exist_ok=True)
        metrics = {
            k_: result[k_]
            for k_ in ("split", "accuracy", "n", "classification_report", "confusion_matrix", "labels", "model", "tta")
        }
        _atomic_text(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
        _atomic_text(os.path.join(out, "classification_report.txt"), text)
        plots.confusion_matrix(
            cm,
            labels,
            os.path.join(out, "confusion_matrix.png"),
            title=f"{config.get('model')} on {split} (accuracy {result['accuracy']:.3f}{tta_title})",
        )
        images, t, p, c = bad
        plots.misclassified_grid(
            np.asarray(images) if images else [],
            t,
            p,
            labels,
            os.path.join(out, "misclassified.png"),
            confidences=c,
            title=f"{config.get('model')}: misclassified {split} examples",
        )
        result["files"] = {
            name: os.path.join(out, name)
            for name in ("metrics.json", "classification_report.txt", "confusion_matrix.png", "misclassified.png")
        }
    return result


def evaluate(run_dir, data_dir, split="test", batch_size=64, write=True, tta="none"):
    """Evaluates RUN_DIR on a split of DATA_DIR.

    ``tta``: ``none`` (default), ``flip`` or ``flip-crop``: test-time augmentation (:mod:`.tta`),
    the softmax averaged over the views; ``result["tta"]`` then gives the accuracy without it
    and the model's seconds with and without it, measured in the same pass.

    Returns {"run_dir", "model", "split", "n", "accuracy", "classification_report" (sklearn
    output_dict), "classification_report_text", "confusion_matrix", "labels", "tta", "files"}."""
    from amazon_visual import data, training
    from amazon_visual.evaluation.tta import check_mode

    tta = check_mode(tta)
    model, config, labels = training.load_run(run_dir)
    _check_dataset(run_dir, config, labels, data_dir)
    if split not in data.splits(data_dir):
        raise UserError(f"{data_dir} has no split {split!r}: use one of {', '.join(data.splits(data_dir))}")
    return _evaluate_loaded(model, config, labels, run_dir, data_dir, split, batch_size, write, tta=tta)
