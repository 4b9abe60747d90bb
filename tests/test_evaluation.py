"""Evaluation: metrics, classification report, figures, compare table, wrong-dataset errors."""

import csv
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import helpers_training  # noqa: E402
from amazon_visual import cli, evaluation, training  # noqa: E402
from amazon_visual.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data_dir = helpers_training.tiny_dataset(root, per_class=12, size=32)
    other = helpers_training.tiny_dataset(root, classes=("cat", "dog", "cow"), per_class=6, size=32, name="other")
    runs = []
    for name, kwargs in (("svm", {}), ("alexnet", {"width": 0.25, "fc_units": 32})):
        out = root / f"run_{name}"
        training.train(
            data_dir, model=name, out=out, image_size=32, epochs=3, batch_size=8, quiet=True, model_kwargs=kwargs
        )
        runs.append(str(out))
    return data_dir, other, runs, root


def test_evaluate_writes_metrics_and_figures(setup):
    data_dir, _, runs, _ = setup
    result = evaluation.evaluate(runs[0], data_dir, split="test")
    assert 0.0 <= result["accuracy"] <= 1.0
    report = result["classification_report"]
    for key in ("red", "green", "blue", "accuracy", "macro avg", "weighted avg"):
        assert key in report
    assert set(report["red"]) == {"precision", "recall", "f1-score", "support"}
    assert sum(map(sum, result["confusion_matrix"])) == result["n"]
    assert report["accuracy"] == pytest.approx(result["accuracy"])
    out = os.path.join(runs[0], "eval_test")
    for f in ("metrics.json", "classification_report.txt", "confusion_matrix.png", "misclassified.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["split"] == "test" and metrics["labels"] == ["red", "green", "blue"]
    assert "macro avg" in open(os.path.join(out, "classification_report.txt")).read()


def test_evaluate_cli_json(setup, capsys):
    data_dir, _, runs, _ = setup
    assert cli.main(["evaluate", runs[0], "--data", data_dir, "--split", "validation", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["split"] == "validation" and "classification_report" in doc


def test_compare_table(setup, capsys):
    data_dir, _, runs, root = setup
    out = root / "cmp"
    assert cli.main(["compare", *runs, "--data", data_dir, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| Model | Training accuracy | Validation accuracy | Test accuracy |" in text
    assert "| svm |" in text and "| alexnet |" in text
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["model"] for r in rows] == ["svm", "alexnet"]
    for r in rows:
        for k in ("training_accuracy", "validation_accuracy", "test_accuracy"):
            assert 0.0 <= float(r[k]) <= 1.0
    assert (out / "compare.md").read_text().startswith("| Model |")
    assert (out / "learning_curves.png").stat().st_size > 0


def test_run_from_another_dataset_is_a_user_error(setup, capsys):
    data_dir, other, runs, root = setup
    with pytest.raises(UserError, match="other labels"):
        evaluation.evaluate(runs[0], other)
    assert cli.main(["compare", runs[0], "--data", other, "--out", str(root / "x")]) == 2
    assert "other labels" in capsys.readouterr().err
    with pytest.raises(UserError, match="no split 'holdout'"):
        evaluation.evaluate(runs[0], data_dir, split="holdout")
