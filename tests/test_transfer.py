"""Transfer learning through the real paths: ImageNet weights via a seeded KERAS_HOME, the
cached-feature head phase, the time-budget split, quiet CLI output, the demo's choice."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.normpath(os.path.join(ROOT, "..", "shared", "weights"))
MNV2_FILE = os.path.join(WEIGHTS, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
needs_weights = pytest.mark.skipif(
    not os.path.isfile(MNV2_FILE), reason="../shared/weights (ImageNet MobileNetV2) is not available"
)
NOISE = ("oneDNN", "cuda", "I0000", "absl::InitializeLog", "cpu_feature_guard")


def _cli(args, env=None, timeout=600):
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "amazon_visual.cli"] + args,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def seeded_keras_home(path):
    subprocess.run([os.path.join(WEIGHTS, "seed-keras-cache"), str(path)], check=True, capture_output=True)
    return str(path)


def test_cached_head_gives_the_plain_models_outputs():
    """feature_model then head_model == the full model: same weights in, same outputs out."""
    from amazon_visual import models
    from amazon_visual.training import feature_cache

    net = models.build("mobilenet_v2", 4, 32, weights="none", embedding_dim=16)
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    plain = net.predict(x, verbose=0)
    cached = feature_cache.head_model(net).predict(feature_cache.feature_model(net).predict(x, verbose=0), verbose=0)
    np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-6)
    assert [layer.name for layer in feature_cache.head_layers(net)] == [
        "head_dropout1",
        "embedding",
        "head_dropout2",
        "predictions",
    ]
    assert not feature_cache.supports_cached_head(models.build("alexnet", 4, 32, width=0.125))


@needs_weights
def test_imagenet_through_keras_cache_two_phases_cached_head_quiet(tmp_path):
    from helpers_training import tiny_dataset

    data = tiny_dataset(tmp_path, per_class=8, size=64)
    home = seeded_keras_home(tmp_path / "keras-home")
    out = tmp_path / "run"
    r = _cli(
        [
            "train",
            "--data",
            data,
            "--model",
            "mobilenet_v2",
            "--weights",
            "imagenet",
            "--image-size",
            "96",
            "--epochs",
            "3",
            "--max-minutes",
            "5",
            "--out",
            str(out),
            "--json",
        ],
        env={"KERAS_HOME": home},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert not [n for n in NOISE if n in r.stderr], r.stderr[:2000]  # TensorFlow's start-up lines stay hidden
    summary = json.loads(r.stdout)
    assert summary["phases"] == ["head", "fine_tune"]
    config = json.loads((out / "config.json").read_text())
    assert config["weights"] == "imagenet" and config["recipe"]["name"] == "pretrained"
    assert config["cached_head"]["views"] == 2
    assert config["time_budget"]["head_minutes_max"] == pytest.approx(5 * 0.35, abs=1e-3)
    assert not (out / "features").exists()  # the cache is removed once the run finished
    hist = [json.loads(json.dumps(h)) for h in summary["history"]]
    assert [h["phase"] for h in hist] == ["head", "fine_tune", "fine_tune"]

    # the frozen stem holds the ImageNet weights Keras loaded from its cache
    import keras

    model = keras.saving.load_model(str(out / "model.keras"), compile=False)
    reference = keras.applications.MobileNetV2(include_top=False, weights=MNV2_FILE, input_shape=(96, 96, 3))
    np.testing.assert_array_equal(
        model.get_layer("backbone").get_layer("Conv1").get_weights()[0], reference.get_layer("Conv1").get_weights()[0]
    )


def test_verbose_shows_tensorflow_start_up_lines(tmp_path):
    args = ["train", "--model", "alexnet", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    loud = _cli(args + ["--verbose"])  # TensorFlow starts before the dataset is read
    assert loud.returncode == 2 and "amazon-visual: error:" in loud.stderr
    assert [n for n in NOISE if n in loud.stderr], loud.stderr
    quiet = _cli(args)
    assert quiet.returncode == 2 and quiet.stderr.strip().count("\n") == 0, quiet.stderr  # one line only


def test_demo_falls_back_to_scratch_offline_in_one_line(tmp_path):
    """No Keras cache and no network (a proxy that refuses): one line says so, then VGG16-BN from scratch."""
    from amazon_visual import demo

    env = {
        "KERAS_HOME": str(tmp_path / "empty"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }
    code = "import amazon_visual.demo as d; import sys; w = d._choose_weights('auto', None); print(w)"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT, **env),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "none"
    lines = [line for line in r.stderr.splitlines() if line.startswith("[demo]")]
    assert len(lines) == 1 and "not available" in lines[0] and "from scratch" in lines[0]
    assert demo._choose_weights("none", None) == "none"


@needs_weights
def test_pretrained_demo_starts_from_imagenet(tmp_path):
    home = seeded_keras_home(tmp_path / "keras-home")
    r = _cli(
        ["demo", "--out", str(tmp_path / "demo"), "--epochs", "4", "--minutes", "1", "--image-size", "96", "--json"],
        env={"KERAS_HOME": home},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["trained_from_scratch"] is False and summary["weights"] == "imagenet"
    assert summary["model"] == "mobilenet_v2" and summary["test_accuracy"] > 0.2
    assert "transfer learning" in r.stderr
    shutil.rmtree(tmp_path / "demo")


@needs_weights
def test_every_index_the_cli_builds_the_cli_can_query(tmp_path):
    """index --backbone NAME --weights FILE records the file (path and checksum) in the manifest;
    recommend and eval-retrieval load it from there, or from --weights once it moved."""
    from helpers_training import tiny_dataset

    data = tiny_dataset(tmp_path, per_class=6, size=48)
    weights = tmp_path / "mnv2.h5"
    shutil.copy(MNV2_FILE, weights)
    index = tmp_path / "index"
    r = _cli(
        [
            "index",
            "--backbone",
            "mobilenet_v2",
            "--weights",
            str(weights),
            "--image-size",
            "64",
            "--data",
            data,
            "--out",
            str(index),
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["weights"].startswith("sha256:") and manifest["weights_path"] == str(weights)
    asin = (index / "items.csv").read_text().splitlines()[1].split(",")[0]
    r = _cli(["recommend", str(index), "--asin", asin, "-k", "3", "--json"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(json.loads(r.stdout)["results"]) == 3
    image = next(p for p in (tmp_path / "data-images").iterdir())
    r = _cli(["recommend", str(index), "--image", str(image), "-k", "3", "--json"])
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli(["eval-retrieval", str(index), "--data", data, "--json"])
    assert r.returncode == 0, r.stderr[-2000:]

    moved = tmp_path / "moved.h5"
    weights.rename(moved)
    r = _cli(["recommend", str(index), "--image", str(image), "-k", "3"])
    assert r.returncode == 2 and "--weights PATH" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = _cli(["recommend", str(index), "--image", str(image), "-k", "3", "--weights", str(moved), "--json"])
    assert r.returncode == 0, r.stderr[-2000:]
    other = tmp_path / "other.h5"
    other.write_bytes(moved.read_bytes()[:-16] + b"0" * 16)  # not the file the index was built with
    r = _cli(["recommend", str(index), "--image", str(image), "--weights", str(other)])
    assert r.returncode == 2 and "query it with the model it was built with" in r.stderr, r.stderr
