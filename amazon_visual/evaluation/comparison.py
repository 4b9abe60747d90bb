"""``compare``: the course project's table over several runs (train / validation / test
accuracy, each measured by evaluating the saved model without augmentation), written as
``compare.md``, ``compare.csv`` and ``learning_curves.png``.
"""

import csv
import io
import os

from amazon_visual.atomic import write_text as _atomic_text
from amazon_visual.errors import UserError
from amazon_visual.evaluation.evaluator import _check_dataset, _evaluate_loaded


def format_table(rows):
    """The course project's table as Markdown."""

    def f(v):
        return "-" if v is None else f"{v:.4f}"

    lines = ["| Model | Training accuracy | Validation accuracy | Test accuracy |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {f(r['training_accuracy'])} | {f(r['validation_accuracy'])} | {f(r['test_accuracy'])} |"
        )
    return "\n".join(lines) + "\n"


def compare(run_dirs, data_dir, out="compare", batch_size=64, write_evaluations=True, train_limit=None):
    """One row per run: Model | Training accuracy | Validation accuracy | Test accuracy,
    each measured by evaluating the saved model (no augmentation) on that split
    (``train_limit``: only the first N training examples, to save time on big splits).
    Writes ``compare.md``, ``compare.csv``, ``learning_curves.png`` into ``out``."""
    from amazon_visual import data, training
    from amazon_visual.evaluation import plots

    if not run_dirs:
        raise UserError("compare: give at least one RUN_DIR")
    available = data.splits(data_dir)
    rows, curves = [], {}
    seen = {}
    for run_dir in run_dirs:
        model, config, labels = training.load_run(run_dir)
        _check_dataset(run_dir, config, labels, data_dir)
        name = config.get("model", os.path.basename(os.path.normpath(run_dir)))
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({os.path.basename(os.path.normpath(run_dir))})"
        row = {"model": name, "run_dir": os.path.abspath(run_dir)}
        for split, key in (
            ("train", "training_accuracy"),
            ("validation", "validation_accuracy"),
            ("test", "test_accuracy"),
        ):
            if split in available and data.num_examples(data_dir, split):
                res = _evaluate_loaded(
                    model,
                    config,
                    labels,
                    run_dir,
                    data_dir,
                    split,
                    batch_size,
                    write=write_evaluations,
                    limit=train_limit if split == "train" else None,
                )
                row[key] = res["accuracy"]
            else:
                row[key] = None
        rows.append(row)
        hist = training.read_history(run_dir)
        if hist:
            curves[name] = hist
    table = format_table(rows)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    _atomic_text(os.path.join(out, "compare.md"), table)
    buf = io.StringIO()
    w = csv.DictWriter(
        buf, fieldnames=["model", "training_accuracy", "validation_accuracy", "test_accuracy", "run_dir"]
    )
    w.writeheader()
    for r in rows:
        w.writerow(r)
    _atomic_text(os.path.join(out, "compare.csv"), buf.getvalue())
    files = {"compare.md": os.path.join(out, "compare.md"), "compare.csv": os.path.join(out, "compare.csv")}
    if curves:
        files["learning_curves.png"] = plots.learning_curves(curves, os.path.join(out, "learning_curves.png"))
    source = "evaluated on the train split without augmentation"
    if train_limit:
        source += f" (first {int(train_limit)} examples)"
    return {"rows": rows, "markdown": table, "files": files, "training_accuracy_source": source}
