"""``kill -9`` at random moments of train (mid-epoch) and index (embedding, tree building),
then the same command again: it finishes, the result equals an uninterrupted run, and no
partial file is ever where a reader would take it as complete.

The random delays come from a seed printed on failure (``KILL_SEED`` reruns one).
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from amazon_visual.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = int(os.environ.get("KILL_SEED", time.time_ns() % 100000))


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def kill_when(cmd, log, ready, delay, timeout=300):
    """Start ``cmd``; once ``ready()`` holds, wait ``delay`` s (a number or a function giving one)
    and SIGKILL it. True when it was killed (False: it exited by itself first)."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while not ready():
            if proc.poll() is not None:
                return False
            if time.time() > deadline:
                pytest.fail(f"{cmd[1]} never reached the kill point; log: {open(log).read()[-2000:]}")
            time.sleep(0.01)
        time.sleep(delay() if callable(delay) else delay)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)


def kill_after_epochs(cmd, log, out, n, spread, rnd, backup):
    """Start a training ``cmd`` and SIGKILL it once ``n`` epochs are logged, after a random delay of
    ``spread`` (low, high) times the n-th epoch's length; returns (the history before the kill, the
    training metadata of ``RUN_DIR/backup/<backup>``)."""
    from amazon_visual import training

    def ready():
        return len(training.read_history(out)) >= n

    def delay():
        return rnd.uniform(*spread) * float(training.read_history(out)[n - 1]["seconds"])

    assert kill_when(cmd, log, ready, delay), f"seed {SEED}: training ended before the kill"
    before = training.read_history(out)
    meta = json.load(open(out / "backup" / backup / "training_metadata.json"))
    assert meta["epoch"] in (len(before), len(before) - 1)  # a backup follows its epoch's row
    return before, meta


def run_to_end(cmd, log):
    with open(log, "ab") as f:
        r = subprocess.run(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert r.returncode == 0, open(log).read()[-3000:]


# ------------------------------------------------------------------ index
INDEX_SCRIPT = textwrap.dedent("""
    import sys
    from amazon_visual.retrieval.index import build_index
    build_index(sys.argv[1], sys.argv[2], run_dir=sys.argv[3], trees=2000, on_disk=True, batch_size=16,
                chunk_items=128, n_jobs=1)
""")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """About 2,200 items (the tiny dataset's train records repeated over 3 shards), a run of dim 64."""
    from amazon_visual import data
    from helpers_training import tiny_dataset
    from scale_fixtures import reshard
    from test_index import make_run

    root = str(tmp_path_factory.mktemp("killsafe"))
    d = tiny_dataset(root, per_class=12, size=32)
    reshard(d, "train", 3, repeat=100)
    run = make_run(os.path.join(root, "run"), data.class_names(d), image_size=32, dim=64)
    return {"root": root, "data": d, "run": run}


def _not_loadable(out):
    from amazon_visual.retrieval.index import load_index

    assert not os.path.exists(os.path.join(out, "manifest.json"))
    with pytest.raises(UserError):
        load_index(out)


def test_index_survives_kills_while_embedding_and_building_trees(big, tmp_path):
    from amazon_visual.retrieval.index import build_index, load_index, read_items

    rnd = random.Random(SEED)
    ref = str(tmp_path / "reference")
    build_index(
        big["data"],
        ref,
        run_dir=big["run"],
        trees=2000,
        on_disk=True,
        batch_size=16,
        chunk_items=128,
        n_jobs=1,
        progress=False,
    )
    script = tmp_path / "index.py"
    script.write_text(INDEX_SCRIPT)
    out, log = str(tmp_path / "killed"), str(tmp_path / "index.log")
    cmd = [sys.executable, str(script), big["data"], out, big["run"]]
    partial = os.path.join(out, ".partial")

    # 1. during the embedding: once two shards are written
    def two_shards():
        return len(glob.glob(os.path.join(partial, "train-*.json"))) >= 2

    assert kill_when(cmd, log, two_shards, rnd.uniform(0, 0.5)), f"seed {SEED}: ended before the kill"
    _not_loadable(out)
    shards = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(partial, "*-*.json"))}
    assert len(shards) >= 2

    # 2. while the Annoy forest is built (on disk: a temporary file next to the index)
    def building():
        return "building the annoy index" in open(log, errors="replace").read()

    open(log, "w").close()
    assert kill_when(cmd, log, building, rnd.uniform(0.05, 0.4)), f"seed {SEED}: the build ended before the kill"
    _not_loadable(out)
    assert glob.glob(os.path.join(out, "index.ann.tmp-*")), "the kill did not land in the tree build"
    assert all(os.path.getmtime(p) == t for p, t in shards.items()), "a finished shard was embedded again"

    # 3. the same command again: it finishes, equal to the uninterrupted run, nothing partial left
    run_to_end(cmd, log)
    a, b = read_items(ref), read_items(out)
    assert len(b) == json.load(open(os.path.join(out, "manifest.json")))["n_items"] > 2000
    assert a.drop(columns="thumb").equals(b.drop(columns="thumb"))
    np.testing.assert_allclose(
        np.load(os.path.join(out, "embeddings.npy")), np.load(os.path.join(ref, "embeddings.npy")), atol=1e-5
    )
    idx = load_index(out, verify="full")
    ids, _ = idx.search(idx.vector(7), 5)
    assert len(ids) == 5
    idx.close()
    left = [os.path.join(r, n) for r, _, files in os.walk(out) for n in files if ".tmp-" in n]
    assert not left and not os.path.exists(partial), left


# ------------------------------------------------------------------ train
TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    from amazon_visual import training
    training.train(sys.argv[1], model="vgg16_bn", out=sys.argv[2], image_size=32, epochs=6, batch_size=4,
                   steps_per_epoch=24, validation_steps=1, model_kwargs={"width": 0.25}, early_stopping=0,
                   seed=0, verbose=2)
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers_training import tiny_dataset

    return tiny_dataset(tmp_path_factory.mktemp("killtrain"), per_class=12, size=32)


def test_train_survives_a_kill_mid_epoch(tiny, tmp_path):
    from amazon_visual import training

    rnd = random.Random(SEED)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    out, log = tmp_path / "run", str(tmp_path / "train.log")
    cmd = [sys.executable, str(script), tiny, str(out)]

    # a random moment of the third epoch: the delay is drawn from the second one's length (the first
    # one also compiles the model)
    before, meta = kill_after_epochs(cmd, log, out, 2, (0.1, 0.9), rnd, "train")
    assert not (out / "model.keras").is_file() or training.load_run(str(out))[0] is not None

    open(log, "w").close()
    run_to_end(cmd, log)
    resumed_at = next(line for line in open(log) if line.startswith("Epoch "))
    assert resumed_at.startswith(f"Epoch {meta['epoch'] + 1}/6"), resumed_at
    hist = training.read_history(out)
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3, 4, 5]
    for r in before[: meta["epoch"]]:  # epochs finished before the kill were not trained again
        assert hist[r["epoch"]] == r
    rates = [r["learning_rate"] for r in hist]  # the schedule went on from the restored epoch (no new warm-up)
    assert all(a >= b for a, b in zip(rates, rates[1:])), rates
    assert json.load(open(out / "state.json"))["finished"] is True
    model, config, labels = training.load_run(str(out))
    assert config["epochs"] == 6 and len(labels) == 3
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert np.isfinite(model.predict_on_batch(x)).all()
    assert not list(out.glob("model.tmp-*")) and not (out / "backup").exists()


def test_a_backup_interrupted_while_written_leaves_the_last_one_usable(tmp_path):
    """Keras writes latest.weights.h5 in place: a kill in that write left a truncated file and every
    rerun failed. AtomicBackupAndRestore keeps the previous backup until the new one is whole."""
    import keras

    from amazon_visual.training.callbacks import AtomicBackupAndRestore

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 3)), epochs=1, verbose=0)
    cb = AtomicBackupAndRestore(str(tmp_path / "backup"))
    cb.set_model(model)
    cb.on_epoch_end(0)
    weights = tmp_path / "backup" / "latest.weights.h5"
    good = weights.read_bytes()

    def killed_mid_write(filepath, overwrite=True):
        with open(filepath, "wb") as f:
            f.write(good[: len(good) // 2])
        raise KeyboardInterrupt  # stands for the SIGKILL

    model.save_weights = killed_mid_write
    with pytest.raises(KeyboardInterrupt):
        cb.on_epoch_end(1)
    assert weights.read_bytes() == good
    del model.save_weights
    restored = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    restored.compile(optimizer="adam", loss="mse")
    restored.fit(np.ones((8, 4)), np.ones((8, 3)), epochs=1, verbose=0)
    cb2 = AtomicBackupAndRestore(str(tmp_path / "backup"))
    cb2.set_model(restored)
    cb2.on_train_begin()
    assert restored._initial_epoch == 1
    np.testing.assert_array_equal(restored.get_weights()[0], model.get_weights()[0])


RETRIEVAL_SCRIPT = textwrap.dedent("""
    import sys
    import keras
    from amazon_visual import training
    weights = sys.argv[3]
    keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(weights)
    training.train(sys.argv[1], model="mobilenet_v2", out=sys.argv[2], weights=weights, image_size=32, epochs=40,
                   head_epochs=38, objective="retrieval", loss="proxy_anchor", embedding_dim=8,
                   classes_per_batch=3, per_class=2, cached_views=4, early_stopping=0, seed=0, verbose=2)
""")


def test_retrieval_head_on_cached_features_survives_a_kill(tiny, tmp_path):
    """kill -9 in the head phase that trains on cached features (retrieval, a proxy loss), then the
    same command: it resumes from the cached head's own backup and finishes both phases."""
    from amazon_visual import training

    rnd = random.Random(SEED)
    script = tmp_path / "retrieval.py"
    script.write_text(RETRIEVAL_SCRIPT)
    out, log = tmp_path / "run", str(tmp_path / "train.log")
    cmd = [sys.executable, str(script), tiny, str(out), str(tmp_path / "mnv2.weights.h5")]

    before, meta = kill_after_epochs(cmd, log, out, 3, (0.0, 3.0), rnd, "head_cached")
    assert before[-1]["phase"] == "head", before[-1]  # killed in the cached head phase
    assert not (out / "backup" / "head").exists()  # the photo-model head phase never ran

    open(log, "w").close()
    run_to_end(cmd, log)
    hist = training.read_history(out)
    assert [r["epoch"] for r in hist] == list(range(40))
    assert [r["phase"] for r in hist] == ["head"] * 38 + ["fine_tune"] * 2
    for r in before[: meta["epoch"]]:  # epochs finished before the kill were not trained again
        assert hist[r["epoch"]] == r
    assert json.load(open(out / "state.json"))["finished"] is True
    assert not (out / "backup").exists() and not (out / "features").exists()
    model, config, _ = training.load_run(str(out))
    assert config["objective"] == "retrieval" and config["cached_head"] is not None
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.linalg.norm(model.predict_on_batch(x), axis=1), 1.0, rtol=1e-5)
