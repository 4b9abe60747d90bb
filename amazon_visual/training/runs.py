"""The run folder (RUN_DIR): its history, the dataset it was trained on, saving and loading.

A RUN_DIR holds ``model.keras`` (best by validation accuracy), ``labels.json``,
``config.json``, ``history.csv``, ``logs/`` (TensorBoard), ``backup/``
(BackupAndRestore) and ``state.json`` (completed phases).
``load_run(run_dir)`` returns ``(model, config, labels)``.
"""

import csv
import hashlib
import json
import os

from amazon_visual.errors import UserError

# what --objective retrieval logs (recall@1 / precision@10 of the validation split, or of the train split without one)
RETRIEVAL_FIELDS = ("val_recall_at_1", "val_precision_at_10", "recall_at_1", "precision_at_10")
HISTORY_FIELDS = (
    "epoch",
    "phase",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
    *RETRIEVAL_FIELDS,
)


def read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def read_history(run_dir):
    """Rows of ``history.csv`` as dicts with float values (epoch as int)."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out = {}
            for k, v in row.items():
                if k == "phase":
                    out[k] = v
                elif k == "epoch":
                    out[k] = int(float(v))
                else:
                    try:
                        out[k] = float(v) if v not in ("", None) else None
                    except ValueError:
                        out[k] = None
            rows.append(out)
    return rows


def write_history(run_dir, rows):
    path = os.path.join(run_dir, "history.csv")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        # a classifier's history keeps its columns; the retrieval ones appear when logged
        fields = [k for k in HISTORY_FIELDS if k not in RETRIEVAL_FIELDS or any(r.get(k) is not None for r in rows)]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in sorted(rows, key=lambda r: r["epoch"]):
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    os.replace(tmp, path)


def dataset_fingerprint(data_dir):
    """{"class_names", "splits": {split: n}, "sha1"}: identifies a dataset's labels and size."""
    from amazon_visual import data

    names = data.class_names(data_dir)
    splits = {s: data.num_examples(data_dir, s) for s in data.SPLITS}
    digest = hashlib.sha1(json.dumps([names, splits], sort_keys=True).encode()).hexdigest()[:16]
    return {"class_names": names, "splits": splits, "sha1": digest}


def check_same_labels(run_dir, labels, data_dir):
    """UserError when DATA_DIR's classes differ from the run's labels."""
    from amazon_visual import data

    names = data.class_names(data_dir)
    if list(names) != list(labels):
        raise UserError(
            f"run {run_dir} was trained on other labels ({len(labels)} classes: "
            f"{', '.join(labels[:5])}...) than dataset {data_dir} ({len(names)} classes: "
            f"{', '.join(names[:5])}...): evaluate it on the dataset it was trained on"
        )


def save_model(model, path):
    """Saves a Keras model atomically (temporary ``.keras`` file, then ``os.replace``)."""
    tmp = os.path.join(os.path.dirname(path), f"model.tmp-{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)


def summary(run_dir, config, state, seconds):
    """What ``train`` returns: the run's key figures and its history."""
    hist = read_history(run_dir)
    val = [r.get("val_accuracy") for r in hist if r.get("val_accuracy") is not None]
    return {
        "run_dir": run_dir,
        "model": config["model"],
        "image_size": config["image_size"],
        "weights": config["weights"],
        "epochs_run": len(hist),
        "epochs": config["epochs"],
        "best_val_accuracy": max(val) if val else None,
        **{
            f"best_{k}": max((r[k] for r in hist if r.get(k) is not None), default=None)
            for k in ("val_precision_at_10", "val_recall_at_1")
        },
        "final_accuracy": hist[-1].get("accuracy") if hist else None,
        "phases": state.get("phases_done", []),
        "stopped_by_time_budget": state.get("stopped_by_time_budget", False),
        "seconds": round(seconds, 1),
        "history": hist,
        "chief": True,
    }


def load_run(run_dir):
    """Loads a RUN_DIR: returns ``(keras.Model, config dict, labels list)``."""
    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, "model.keras")
    for f in ("model.keras", "config.json", "labels.json"):
        if not os.path.isfile(os.path.join(run_dir, f)):
            raise UserError(f"{run_dir} is not a training run (no {f}): run amazon-visual train --out {run_dir} first")
    import keras

    import amazon_visual.models.layers  # noqa: F401  (registers custom objects)
    import amazon_visual.models.losses  # noqa: F401

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise UserError(
            f"{path} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}): retrain the run"
        ) from None
    config = read_json(os.path.join(run_dir, "config.json"))
    labels = read_json(os.path.join(run_dir, "labels.json"))
    return model, config, labels
