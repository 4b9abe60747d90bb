"""Training: every model learns, the run folder, two phases, resume after SIGKILL, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

sys.path.insert(0, os.path.dirname(__file__))
import helpers_training  # noqa: E402
from amazon_visual import cli, models, training  # noqa: E402
from amazon_visual.errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"alexnet": {"width": 0.25, "fc_units": 64}, "vgg16_bn": {"width": 0.125}}
NO_DROPOUT = {
    "alexnet": {"dropout": 0.0},
    "vgg16_bn": {"dropout": 0.0},
    "vgg16": {"dropout": 0.0},
    "resnet50": {"dropout": 0.0},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return helpers_training.tiny_dataset(tmp_path_factory.mktemp("tiny"), per_class=12, size=32)


def _batch(n=8, size=32, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.uniform(0, 80, size=(n, size, size, 3)).astype("float32")
    for i, c in enumerate(y):
        x[i, ..., c] += 150
    return x, np.eye(k, dtype="float32")[y]


# steps, learning rate: vgg16 and resnet50 are heavy on 2 CPU cores, so only a few steps
STEPS = {"svm": (25, 1e-3), "alexnet": (12, 1e-3), "vgg16_bn": (8, 1e-3), "vgg16": (3, 1e-4), "resnet50": (4, 1e-4)}


@pytest.mark.parametrize("name", list(STEPS))
def test_every_model_overfits_eight_images(name):
    from amazon_visual.models import svm

    keras.utils.set_random_seed(0)
    steps, lr = STEPS[name]
    model = models.build(name, 3, image_size=32, **SMALL.get(name, {}), **NO_DROPOUT.get(name, {}))
    fit_model = svm.training_model(model) if name == "svm" else model
    training.compile_model(fit_model, name, lr, weight_decay=0.0, label_smoothing=0.0)
    x, y = _batch()
    hist = fit_model.fit(x, y, batch_size=8, epochs=steps, verbose=0, shuffle=False).history["loss"]
    assert hist[-1] < hist[0], (name, hist)


def test_train_writes_run_folder_that_reloads(tiny, tmp_path):
    out = tmp_path / "run"
    summary = training.train(
        tiny,
        model="alexnet",
        out=out,
        image_size=32,
        epochs=2,
        batch_size=8,
        model_kwargs=SMALL["alexnet"],
        quiet=True,
        seed=1,
    )
    assert summary["epochs_run"] == 2 and summary["phases"] == ["train"]
    for f in ("model.keras", "labels.json", "config.json", "history.csv", "learning_curves.png", "state.json"):
        assert (out / f).is_file(), f
    assert not (out / "backup").exists()  # cleaned once training finished
    model, config, labels = training.load_run(out)
    assert labels == ["red", "green", "blue"]
    for key in (
        "model",
        "image_size",
        "preprocessing",
        "embedding_layer",
        "embedding_dim",
        "num_classes",
        "weights",
        "data_dir",
        "dataset_fingerprint",
    ):
        assert key in config, key
    assert config["embedding_layer"] == "embedding" and config["embedding_dim"] == 16
    assert config["dataset_fingerprint"]["class_names"] == labels
    x, _ = _batch()
    p1 = keras.ops.convert_to_numpy(model(x))
    model2, _, _ = training.load_run(out)
    np.testing.assert_array_equal(p1, keras.ops.convert_to_numpy(model2(x)))
    # rerunning a finished run does nothing
    again = training.train(
        tiny,
        model="alexnet",
        out=out,
        image_size=32,
        epochs=2,
        batch_size=8,
        model_kwargs=SMALL["alexnet"],
        quiet=True,
        seed=1,
    )
    assert again["epochs_run"] == 2
    # another model into the same folder is refused
    with pytest.raises(UserError, match="holds another run"):
        training.train(tiny, model="svm", out=out, image_size=32, epochs=2, batch_size=8, quiet=True)


def test_best_model_is_saved_with_identical_predictions(tiny, tmp_path):
    """The model kept in memory at the best epoch equals model.keras reloaded."""
    out = tmp_path / "svm"
    summary = training.train(
        tiny,
        model="svm",
        out=out,
        image_size=32,
        epochs=1,
        batch_size=8,
        quiet=True,
        early_stopping=0,
        mixed_precision=True,
    )
    model, config, _ = training.load_run(out)
    assert config["mixed_precision_policy"] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after train
    assert model.output.dtype == "float32"
    assert summary["epochs_run"] == 1
    from amazon_visual import evaluation

    probs, y, _ = evaluation.predict(model, tiny, "validation", 32)
    assert probs.shape == (len(y), 3)


def test_two_phases_with_a_weights_file(tiny, tmp_path):
    path = str(tmp_path / "mobilenet_v2_notop.weights.h5")
    keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(path)
    out = tmp_path / "two"
    summary = training.train(
        tiny,
        model="mobilenet_v2",
        out=out,
        weights=path,
        image_size=32,
        epochs=2,
        batch_size=8,
        steps_per_epoch=1,
        validation_steps=1,
        fine_tune_at="block_15",
        quiet=True,
    )
    assert summary["phases"] == ["head", "fine_tune"]
    hist = training.read_history(out)
    assert [r["phase"] for r in hist] == ["head", "fine_tune"]
    model, config, _ = training.load_run(out)
    # fine-tuning peaks at a tenth of the head's rate; the logged rates follow each phase's schedule
    assert config["fine_tune_learning_rate"] == pytest.approx(config["learning_rate"] / 10, rel=1e-6)
    assert (
        hist[0]["learning_rate"] <= config["learning_rate"]
        and hist[1]["learning_rate"] <= config["fine_tune_learning_rate"]
    )
    assert config["weights"] == os.path.abspath(path) and config["phases"] == ["head", "fine_tune"]


def test_fine_tune_at_resolution():
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
    names = [layer.name for layer in backbone.layers]
    assert training._resolve_fine_tune_at(backbone, "block_16_expand", "mobilenet_v2") == names.index("block_16_expand")
    assert training._resolve_fine_tune_at(backbone, "block_16", "mobilenet_v2") == names.index("block_16_expand")
    assert training._resolve_fine_tune_at(backbone, "100", "mobilenet_v2") == 100
    assert training._resolve_fine_tune_at(backbone, "-5", "mobilenet_v2") == len(names) - 5
    with pytest.raises(UserError, match="names no layer"):
        training._resolve_fine_tune_at(backbone, "conv9", "mobilenet_v2")


def test_strategy_selection(monkeypatch):
    import tensorflow as tf

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert training.select_strategy("auto") is tf.distribute.get_strategy()
    assert isinstance(training.select_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    with pytest.raises(UserError, match="unknown strategy"):
        training.select_strategy("tpu")
    with pytest.raises(UserError, match="TF_CONFIG"):
        training.select_strategy("multi_worker")
    assert training.mixed_precision_policy(False) == "float32"


def _run_cli(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_bad_inputs(tiny, tmp_path, capsys):
    rc, _, err = _run_cli(["train", "--data", tiny, "--model", "lenet", "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "unknown model 'lenet'" in err and "resnet50" in err
    rc, _, err = _run_cli(["train", "--data", str(tmp_path), "--model", "svm", "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "is not an amazon-visual dataset" in err
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"\x89HDF junk")
    rc, _, err = _run_cli(
        [
            "train",
            "--data",
            tiny,
            "--model",
            "mobilenet_v2",
            "--weights",
            str(bad),
            "--image-size",
            "32",
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert rc == 2 and "weights.h5 does not fit model mobilenet_v2" in err
    rc, _, err = _run_cli(["evaluate", str(tmp_path / "nothing"), "--data", tiny], capsys)
    assert rc == 2 and "is not a training run" in err
    assert "Traceback" not in err


def test_cli_train_json(tiny, tmp_path, capsys):
    out = tmp_path / "cli_svm"
    rc, stdout, _ = _run_cli(
        [
            "train",
            "--data",
            tiny,
            "--model",
            "svm",
            "--out",
            str(out),
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--no-augment",
            "--json",
        ],
        capsys,
    )
    assert rc == 0
    summary = json.loads(stdout)
    assert summary["model"] == "svm" and summary["epochs_run"] == 2
    assert json.load(open(out / "config.json"))["augment"] == "none"


KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from amazon_visual import training
    training.train(sys.argv[1], model="vgg16_bn", out=sys.argv[2], image_size=32, epochs=5, batch_size=4,
                   steps_per_epoch=12, validation_steps=1, model_kwargs={"width": 0.25}, early_stopping=0,
                   seed=0, verbose=2)
""")


@pytest.mark.slow
def test_sigkill_resumes_at_the_right_epoch(tiny, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "train_kill.py"
    script.write_text(KILL_SCRIPT)
    cmd = [sys.executable, str(script), tiny, str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    meta = out / "backup" / "train" / "training_metadata.json"
    try:
        while time.time() < deadline:
            if meta.is_file() and len(training.read_history(out)) >= 1:
                break
            if proc.poll() is not None:
                pytest.fail("training ended before it could be killed: " + proc.stdout.read().decode()[-2000:])
            time.sleep(0.05)
        else:
            pytest.fail("no epoch finished in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = json.loads(meta.read_text())["epoch"]
    assert 1 <= done < 5, "killed after the last epoch: make the epochs longer"
    rows_before = training.read_history(out)
    assert len(rows_before) in (done, done + 1)  # a backup and its history row are written together
    second = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    log = second.stdout.decode()
    assert second.returncode == 0, log[-3000:]
    first_epoch = next(line for line in log.splitlines() if line.startswith("Epoch "))
    assert first_epoch.startswith(f"Epoch {done + 1}/5"), first_epoch
    hist = training.read_history(out)
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3, 4]
    assert json.load(open(out / "state.json"))["finished"] is True
    assert (out / "model.keras").is_file()


@pytest.mark.slow
def test_clothing_small_integration(tmp_path):
    if not os.path.isdir(helpers_training.CLOTHING_SMALL):
        pytest.skip("clothing-small is not available")
    data_dir = helpers_training.clothing_small(tmp_path, image_size=64)
    out = tmp_path / "run"
    summary = training.train(data_dir, model="svm", out=out, image_size=64, epochs=8, batch_size=32, quiet=True)
    from amazon_visual import evaluation

    result = evaluation.evaluate(out, data_dir, split="test")
    assert summary["epochs_run"] >= 3
    assert result["accuracy"] > 0.3, result["accuracy"]  # 10 classes: chance is 0.1 (majority class 0.13)
