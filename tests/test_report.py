"""The HTML report over fake stage folders (no TensorFlow): every section, embedded images, CLI."""

import base64
import csv
import json
import os
import re
import subprocess
import sys

import pytest

from amazon_visual.errors import UserError

CLASSES = ["T-Shirt", "Pants", "Shoes"]


def _dump(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _png(path, color=(200, 60, 60), size=(40, 30)):
    from PIL import Image

    Image.new("RGB", size, color).save(path)


def _jpg(path, color=(60, 120, 200), size=(32, 40)):
    from PIL import Image

    Image.new("RGB", size, color).save(path, format="JPEG")


def make_fake_experiment(root, with_compare=True, with_recs=True):
    """A demo-shaped folder: data/, run/ (evaluated), compare/, index/, recommendations/."""
    data = os.path.join(root, "data")
    run = os.path.join(root, "run")
    os.makedirs(data)
    os.makedirs(os.path.join(run, "eval_test"))
    _dump(
        {
            "splits": [
                {"name": "train", "shardLengths": ["21"]},
                {"name": "validation", "shardLengths": ["6"]},
                {"name": "test", "shardLengths": ["6"]},
            ]
        },
        os.path.join(data, "dataset_info.json"),
    )
    _dump(
        {"featuresDict": {"features": {"label": {"classLabel": {"names": CLASSES}}}}},
        os.path.join(data, "features.json"),
    )
    _dump(
        {
            "classes": CLASSES,
            "image_size": 64,
            "counts": {
                "train": {c: 7 for c in CLASSES},
                "validation": {c: 2 for c in CLASSES},
                "test": {c: 2 for c in CLASSES},
            },
        },
        os.path.join(data, "build_report.json"),
    )
    _png(os.path.join(data, "label_distribution.png"))

    _dump(
        {
            "model": "alexnet",
            "image_size": 64,
            "weights": "none",
            "data_dir": data,
            "num_classes": 3,
            "embedding_layer": "embedding",
            "embedding_dim": 8,
        },
        os.path.join(run, "config.json"),
    )
    _dump(CLASSES, os.path.join(run, "labels.json"))
    with open(os.path.join(run, "history.csv"), "w") as f:
        f.write("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.3,1.2,0.35,1.1\n1,0.5,0.9,0.5,1.0\n")
    # no learning_curves.png: the report draws it from history.csv
    rep = {c: {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 2} for c in CLASSES}
    rep.update(
        {
            "accuracy": 0.5,
            "macro avg": {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 6},
            "weighted avg": {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 6},
        }
    )
    _dump(
        {
            "split": "test",
            "accuracy": 0.5,
            "classification_report": rep,
            "confusion_matrix": [[1, 1, 0], [0, 1, 1], [1, 0, 1]],
            "labels": CLASSES,
        },
        os.path.join(run, "eval_test", "metrics.json"),
    )
    _png(os.path.join(run, "eval_test", "confusion_matrix.png"), (20, 160, 20))

    if with_compare:
        comp = os.path.join(root, "compare")
        os.makedirs(comp)
        with open(os.path.join(comp, "compare.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run", "model", "test_accuracy"])
            w.writerow(["run", "alexnet", "0.5"])
        _png(os.path.join(comp, "learning_curves.png"), (90, 90, 200))

    if with_recs:
        idx = os.path.join(root, "index")
        os.makedirs(os.path.join(idx, "thumbs"))
        _dump({"n_items": 6, "embedding_dim": 8}, os.path.join(idx, "manifest.json"))
        recs_dir = os.path.join(root, "recommendations")
        os.makedirs(recs_dir)
        queries = []
        for qi in range(2):
            qimg = os.path.join(idx, "thumbs", f"Q{qi}.jpg")
            _jpg(qimg, (qi * 100, 50, 50))
            results = []
            for k in range(3):
                t = os.path.join(idx, "thumbs", f"R{qi}{k}.jpg")
                _jpg(t, (50, k * 80, 50))
                results.append(
                    {
                        "rank": k + 1,
                        "asin": f"B0R{qi}{k}",
                        "title": f"result {k} <b>",
                        "label": CLASSES[k],
                        "similarity": 0.9 - 0.1 * k,
                        "thumb": os.path.relpath(t, recs_dir),
                    }
                )
            queries.append(
                {
                    "query": {
                        "asin": f"B0Q{qi}",
                        "title": f"query {qi}",
                        "label": CLASSES[qi],
                        "kind": "asin",
                        "thumb": qimg,
                    },
                    "results": results,
                }
            )
        _dump({"k": 3, "queries": queries}, os.path.join(recs_dir, "recommendations.json"))
    return root


def _check_data_uris(page):
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert srcs
    for s in srcs:
        assert s.startswith("data:image/"), s[:40]
        base64.b64decode(s.split(",", 1)[1], validate=True)
    return srcs


def test_report_on_demo_folder_has_every_section(tmp_path):
    root = make_fake_experiment(str(tmp_path / "exp"))
    _dump({"trained_from_scratch": True, "weights": "none"}, os.path.join(root, "demo.json"))
    from amazon_visual.web.report import write_report

    out = write_report(root)
    assert out == os.path.join(root, "report.html")
    with open(out, encoding="utf-8") as f:
        page = f.read()
    for anchor in ('id="data"', 'id="compare"', 'id="run-1"', 'id="recommendations"'):
        assert anchor in page
    assert "trained from scratch" in page
    # label distribution, compare curves, learning curves (drawn from history.csv), confusion matrix
    # label distribution, learning curves (drawn from history.csv), confusion matrix + 2 queries x (1 + 3)
    srcs = _check_data_uris(page)
    assert len(srcs) >= 3 + 8
    assert "http://" not in page and "https://" not in page
    # the per-class report and the confusion matrix as tables
    for c in CLASSES:
        assert f"<td>{c}</td>" in page
    assert "macro avg" in page and "weighted avg" in page
    assert 'class="cm"' in page and 'class="diag"' in page
    # the compare table comes from compare.csv
    assert "test_accuracy" in page
    # titles are escaped, scores shown
    assert "result 0 &lt;b&gt;" in page and "result 0 <b>" not in page
    assert "0.900" in page or "0.90" in page


def test_report_on_a_bare_run_dir_builds_its_own_compare_row(tmp_path):
    root = make_fake_experiment(str(tmp_path / "exp"), with_compare=False, with_recs=False)
    run = os.path.join(root, "run")
    from amazon_visual.web.report import find_artifacts, write_report

    found = find_artifacts(run)
    assert found["kind"] == "run" and found["runs"] == [run]
    assert found["data_dir"] == os.path.join(root, "data")  # from config.json
    out = write_report(run, out=str(tmp_path / "r.html"))
    with open(out, encoding="utf-8") as f:
        page = f.read()
    assert "best val accuracy" in page and "test accuracy" in page
    assert "No saved recommendations" in page
    _check_data_uris(page)


def test_report_errors_are_user_errors(tmp_path):
    from amazon_visual.web.report import write_report

    with pytest.raises(UserError, match="no such folder"):
        write_report(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no training run"):
        write_report(str(tmp_path / "empty"))
    root = make_fake_experiment(str(tmp_path / "exp"), with_recs=False)
    with pytest.raises(UserError, match="does not exist"):
        write_report(root, out=str(tmp_path / "nope" / "r.html"))


def test_report_cli(tmp_path):
    root = make_fake_experiment(str(tmp_path / "exp"))
    out = tmp_path / "page.html"
    r = subprocess.run(
        [sys.executable, "-m", "amazon_visual.cli", "report", root, "--out", str(out), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["report"] == str(out) and out.is_file()
    r = subprocess.run(
        [sys.executable, "-m", "amazon_visual.cli", "report", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert r.stderr.startswith("amazon-visual: error:") and "Traceback" not in r.stderr
