"""``amazon-visual demo`` end to end on the embedded sample (one epoch), and its artifacts.

The demo runs once per test session (``demo_output``, shared with test_browser.py).
CI shrinks only the training (``--epochs 1``); every stage still runs.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest

from amazon_visual.errors import UserError

_DEMO = {}


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _command():
    exe = shutil.which("amazon-visual")
    return [exe] if exe else [sys.executable, "-m", "amazon_visual.cli"]


def demo_output(tmp_path_factory):
    """Run ``amazon-visual demo --epochs 1 --json`` once; returns its output folder."""
    if "dir" not in _DEMO:
        out = str(tmp_path_factory.mktemp("demo") / "demo-out")
        # offline and no Keras cache (a proxy that refuses, an empty KERAS_HOME): the demo says so
        # in one line and trains from scratch -- the path a user without network takes
        off = "http://127.0.0.1:9"
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            KERAS_HOME=str(tmp_path_factory.mktemp("keras-home")),
            HTTPS_PROXY=off,
            HTTP_PROXY=off,
            https_proxy=off,
            http_proxy=off,
        )
        r = subprocess.run(
            _command() + ["demo", "--out", out, "--epochs", "1", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-4000:]
        _DEMO.update(dir=out, stdout=r.stdout, stderr=r.stderr)
    return _DEMO["dir"]


# --------------------------------------------------------------------------- fast: the sample itself
def test_sample_catalog_is_installed_and_consistent():
    from PIL import Image

    from amazon_visual import sample

    names = sample.class_names()
    assert len(names) == 10 and len(set(names)) == 10
    with gzip.open(sample.metadata_path(), "rt", encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    assert len(recs) == 1000
    files = set(os.listdir(sample.images_dir()))
    per_class = {}
    for r in recs:
        asin = r["parent_asin"]
        assert len(asin) == 10 and asin.startswith("B0") and asin.isalnum()
        assert r["categories"][-1] in names and r["main_category"]
        assert r["images"][0]["large"] == f"{asin}.jpg" and f"{asin}.jpg" in files
        per_class[r["categories"][-1]] = per_class.get(r["categories"][-1], 0) + 1
    assert set(per_class.values()) == {100}
    assert len({r["parent_asin"] for r in recs}) == 1000
    total = 0
    for f in sorted(files)[:25]:
        with Image.open(os.path.join(sample.images_dir(), f)) as im:
            assert max(im.size) <= 160 and im.format == "JPEG"
    for f in files:
        total += os.path.getsize(os.path.join(sample.images_dir(), f))
    assert total < 8 * 2**20  # a few MB


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    from amazon_visual.demo import run_demo

    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a demo folder"):
        run_demo(str(tmp_path), epochs=1)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="does not exist"):
        run_demo(str(tmp_path / "no" / "such"), epochs=1)
    with pytest.raises(UserError, match="weights file"):
        run_demo(str(tmp_path / "w"), weights=str(tmp_path / "missing.weights.h5"))


def test_demo_trains_a_fixed_amount_of_work_and_says_how_long_it_takes():
    from amazon_visual.demo import PRETRAINED, SCRATCH, expected_seconds, run_demo

    # the presets are epochs, not a time budget: same work on a quiet or a busy machine
    assert SCRATCH["epochs"] == 18 and PRETRAINED["epochs"] == 28 and PRETRAINED["head_epochs"] == 25
    scratch = expected_seconds("vgg16_bn", 64, SCRATCH["epochs"])
    pretrained = expected_seconds("mobilenet_v2", 224, PRETRAINED["epochs"], PRETRAINED["head_epochs"])
    assert 90 <= scratch <= 150 and 90 <= pretrained <= 150  # "about two minutes"
    assert expected_seconds("vgg16_bn", 64, 1) < scratch / 3  # --epochs 1 is quick, and says so
    assert expected_seconds("vgg16_bn", 96, 18) is None and expected_seconds("alexnet", 64, 18) is None
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(UserError, match="--minutes"):
            run_demo("unused-demo-folder", weights="none", minutes=bad)


def test_demo_cli_help_is_fast_and_lists_options():
    r = subprocess.run(_command() + ["demo", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for opt in ("--out", "--model", "--weights", "--epochs", "--image-size", "--json"):
        assert opt in r.stdout


def test_choose_queries_spreads_over_classes():
    import pandas as pd

    from amazon_visual.web.report import choose_queries

    items = pd.DataFrame(
        {
            "asin": [f"B0{i:08d}" for i in range(12)],
            "label": ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f"],
            "split": ["test", "train"] * 6,
        }
    )
    q = choose_queries(items, 3)
    assert q == ["B000000000", "B000000004", "B000000008"]
    assert len(choose_queries(items, 50)) == 6


# --------------------------------------------------------------------------- slow: the whole chain
@pytest.mark.slow
def test_demo_end_to_end_writes_every_artifact(tmp_path_factory):
    out = demo_output(tmp_path_factory)
    summary = json.loads(_DEMO["stdout"])  # --json: exactly one JSON document on stdout
    err = _DEMO["stderr"]
    assert "FROM SCRATCH" in err and "ImageNet weights for mobilenet_v2 are not available" in err
    for i in range(1, 7):
        assert f"[{i}/6]" in err  # progress at every stage
    assert "expected time: about 0.4 minutes" in err  # up front, for this amount of work (1 epoch)
    assert "[2/6] train: vgg16_bn (from scratch), 1 epochs\n" in err  # no time budget
    assert summary["trained_from_scratch"] is True and summary["epochs_run"] == 1
    assert summary["report"] == os.path.join(out, "report.html")

    # dataset
    from amazon_visual import data

    d = summary["data_dir"]
    assert data.class_names(d) == __import__("amazon_visual.sample", fromlist=["x"]).class_names()
    assert sum(data.num_examples(d, s) for s in ("train", "validation", "test")) == 1000
    for f in ("dataset_info.json", "build_report.json", "label_distribution.png"):
        assert os.path.isfile(os.path.join(d, f)), f

    # run, evaluation, compare
    r = summary["run_dir"]
    for f in (
        "model.keras",
        "config.json",
        "labels.json",
        "history.csv",
        "learning_curves.png",
        "eval_test/metrics.json",
        "eval_test/confusion_matrix.png",
        "eval_test/classification_report.txt",
    ):
        assert os.path.isfile(os.path.join(r, f)), f
    metrics = _load(os.path.join(r, "eval_test", "metrics.json"))
    assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["confusion_matrix"]) == 10
    assert summary["test_accuracy"] == pytest.approx(metrics["accuracy"])
    for f in ("compare.csv", "compare.md"):
        assert os.path.isfile(os.path.join(summary["compare_dir"], f)), f

    # index
    ix = summary["index_dir"]
    man = _load(os.path.join(ix, "manifest.json"))
    assert man["n_items"] == 1000
    for f in ("items.csv", "embeddings.npy", "index.ann"):
        assert os.path.isfile(os.path.join(ix, f)), f

    # recommendations whose images exist
    recs = _load(summary["recommendations"])
    assert len(recs["queries"]) == 4
    base = os.path.dirname(summary["recommendations"])
    for q in recs["queries"]:
        assert len(q["results"]) == 5
        assert all(res["asin"] != q["query"]["asin"] for res in q["results"])
        sims = [res["similarity"] for res in q["results"]]
        assert sims == sorted(sims, reverse=True)
        for item in [q["query"]] + q["results"]:
            assert item["thumb"] and os.path.isfile(os.path.join(base, item["thumb"])), item
        assert os.path.isfile(os.path.join(base, q["query"]["gallery"]))
    assert len(summary["galleries"]) == 4

    # report: every section and figure, self-contained
    with open(summary["report"], encoding="utf-8") as f:
        page = f.read()
    for anchor in ('id="data"', 'id="compare"', 'id="run-1"', 'id="recommendations"'):
        assert anchor in page
    for alt in (
        "examples per class and split",
        "loss and accuracy per epoch",
        "misclassified examples (test)",
        "confusion matrix (test)",
    ):
        assert f'alt="{alt}' in page, alt
    assert page.count("<img") >= 4 + 4 * 6  # 4 figures, 4 galleries of a query and 5 look-alikes
    assert page.count('class="av-gallery"') == 4
    assert 'src="http' not in page and "src='http" not in page and 'href="http' not in page
    # precision@5 of the demo's queries, as the summary says, on the page (card, section, each gallery)
    shown = f"{summary['precision_at_k']:.2f}"
    assert f"precision@5 of these 4 queries: <strong>{shown}</strong>" in page
    assert page.count("\u2014 precision@5 ") == 4
    assert summary["precision_at_k"] == pytest.approx(
        sum(sum(r["label"] == q["query"]["label"] for r in q["results"]) / 5 for q in recs["queries"]) / 4
    )

    # a report for the run alone, with galleries queried live from the index (no TensorFlow)
    from amazon_visual.web.report import write_report

    alone = write_report(r, out=str(tmp_path_factory.mktemp("report") / "run.html"), index_dir=ix)
    with open(alone, encoding="utf-8") as f:
        page = f.read()
    assert page.count('class="av-gallery"') == 4 and 'id="run-1"' in page

    # rerunning the same command resumes: every stage is kept, only the report is rewritten
    from amazon_visual.demo import run_demo

    again = run_demo(out, epochs=1, weights="none")
    assert again["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert again["seconds"] < summary["seconds"]
