"""--objective retrieval end to end (train -> index -> eval-retrieval), held-out classes, bad input."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

import helpers_training  # noqa: E402
from amazon_visual import cli, training  # noqa: E402
from amazon_visual.errors import UserError  # noqa: E402

CLASSES = ("red", "green", "blue", "stripes")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 4-class DATA_DIR and, from the same photos, a 3-class one (``stripes`` held out)."""
    from tfrecords_builder.build import build_data

    root = tmp_path_factory.mktemp("metric")
    full = helpers_training.tiny_dataset(root, classes=CLASSES, per_class=12, size=32)
    seen = str(root / "seen")
    build_data(
        str(root / "data-meta.jsonl"),
        seen,
        images_dir=str(root / "data-images"),
        categories=list(CLASSES[:3]),
        image_size=32,
        splits=(0.6, 0.2, 0.2),
        seed=0,
        workers=1,
        progress=False,
    )
    return {"root": root, "full": full, "seen": seen}


def _cli(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "name,kwargs",
    [("svm", {}), ("alexnet", {"width": 0.25, "fc_units": 32}), ("vgg16_bn", {"width": 0.125}), ("mobilenet_v2", {})],
)
def test_every_family_gets_a_unit_length_embedding(name, kwargs):
    from amazon_visual.models.retrieval_head import build_retrieval_model

    keras.utils.set_random_seed(0)
    net = build_retrieval_model(name, 32, embedding_dim=6, **kwargs)
    # batch statistics: an untrained network's inference-mode batch norm shrinks the features to ~1e-12
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3))
    out = keras.ops.convert_to_numpy(net(images, training=name == "mobilenet_v2"))
    assert net.output is net.get_layer("embedding").output and out.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_retrieval_run_two_phases_index_and_eval(world, tmp_path, capsys):
    """A pretrained-style run (weights file: head then fine_tune) through the CLI, the index and eval-retrieval."""
    weights = str(tmp_path / "mnv2.weights.h5")
    keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(weights)
    run, index = str(tmp_path / "run"), str(tmp_path / "index")
    summary = training.train(
        world["full"],
        model="mobilenet_v2",
        out=run,
        weights=weights,
        image_size=32,
        epochs=2,
        steps_per_epoch=2,
        fine_tune_at="block_15",
        objective="retrieval",
        loss="supcon",
        embedding_dim=16,
        classes_per_batch=3,
        per_class=2,
        quiet=True,
    )
    assert summary["phases"] == ["head", "fine_tune"]
    assert json.load(open(os.path.join(run, "config.json")))["cached_head"] is not None  # head on cached features
    assert summary["best_val_recall_at_1"] is not None and summary["best_val_accuracy"] is None
    hist = training.read_history(run)
    assert summary["best_val_precision_at_10"] == max(r["val_precision_at_10"] for r in hist)
    assert [r["phase"] for r in hist] == ["head", "fine_tune"]
    assert all(0.0 <= r["val_recall_at_1"] <= 1.0 and 0.0 <= r["val_precision_at_10"] <= 1.0 for r in hist)
    model, config, labels = training.load_run(run)
    assert (config["objective"], config["loss"], config["embedding_dim"], config["batch_size"]) == (
        "retrieval",
        "supcon",
        16,
        6,
    )
    assert model.output_shape == (None, 16) and set(labels) == set(CLASSES)

    assert _cli(["index", run, "--data", world["full"], "--out", index, "--trees", "5", "--json"], capsys)[0] == 0
    manifest = json.load(open(os.path.join(index, "manifest.json")))
    assert manifest["objective"] == "retrieval" and manifest["embedding_dim"] == 16
    emb = np.load(os.path.join(index, "embeddings.npy"))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    rc, out, _ = _cli(["eval-retrieval", index, "--data", world["full"], "-k", "3", "--json"], capsys)
    assert rc == 0 and json.loads(out)["objective"] == "retrieval"

    from amazon_visual import Recommender

    rec = Recommender.load(index)
    res = rec.recommend(image=os.path.join(world["root"], "data-images", "A000000.jpg"), k=3, same_category=True)
    assert res["query"]["category_source"] == "majority label of the 10 nearest items"  # no classifier to ask
    assert len(res["results"]) == 3 and {r["label"] for r in res["results"]} == {res["query"]["label"]}
    rec.close()
    rc, _, err = _cli(["evaluate", run, "--data", world["full"]], capsys)
    assert rc == 2 and "has no classifier to evaluate" in err
    rc, _, err = _cli(["eval-retrieval", index, "--exclude-train-classes"], capsys)
    assert rc == 2 and "every query of" in err and "its run was trained on" in err


@pytest.mark.parametrize("n_val", [12, 0])
def test_cached_head_phase_trains_the_runs_own_head_and_proxies(n_val):
    """The retrieval head phase on cached features: the model it fits is ``net``'s own head with the
    run's proxies layer on top (so the fine-tuning phase goes on with trained proxies), batches are
    P x K, and validation runs on cached features (on the train photos as they are without a split)."""
    import types

    from amazon_visual.models.retrieval_head import build_retrieval_model, training_model
    from amazon_visual.training import feature_cache, metric_learning

    keras.utils.set_random_seed(0)
    net = build_retrieval_model("mobilenet_v2", 32, embedding_dim=8)
    fit_model = training_model(net, "proxy_anchor", 4)
    head = feature_cache.head_model(net)
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(4), 10)  # every class in the first rows too (validation takes them)
    centres = rng.normal(size=(4, head.input.shape[-1])) * 3
    x = (rng.normal(size=(40, head.input.shape[-1])) + centres[y]).astype(np.float32)
    plan = types.SimpleNamespace(
        config={"loss": "proxy_anchor", "classes_per_batch": 3, "per_class": 2, "epochs": 2, "weight_decay": 1e-4},
        options={"seed": 0},
        labels=list(CLASSES),
        n_train=20,
        n_val=n_val,
        name="mobilenet_v2",
        lr=1e-2,
    )
    # 20 train photos x 2 views: view 0 (the photos as they are) first
    cached = {"train": (x, y), "validation": (x[:n_val], y[:n_val])}
    head_fit, inputs, validation = metric_learning.cached_head(plan, head, fit_model, cached)
    assert head_fit.get_layer("proxies") is fit_model.get_layer("proxies")
    assert head_fit.get_layer("embedding") is net.get_layer("embedding")
    assert inputs["steps"] == 7 and inputs["monitor"] == ("val_precision_at_10" if n_val else "precision_at_10")
    _, labels = next(iter(inputs["train_ds"]))
    labels = labels.numpy()
    assert len(labels) == 6 and all(labels[i] == labels[i + 1] for i in range(0, 6, 2))
    assert len(set(labels)) == 3
    before = [w.copy() for w in fit_model.get_layer("proxies").get_weights()]
    head_fit.fit(inputs["train_ds"], epochs=1, steps_per_epoch=inputs["steps"], callbacks=[validation], verbose=0)
    after = fit_model.get_layer("proxies").get_weights()
    assert any(not np.allclose(b, a) for b, a in zip(before, after))  # the run's proxies trained
    logs = {}
    validation.on_epoch_end(0, logs)
    key = "val_precision_at_10" if n_val else "precision_at_10"
    assert set(logs) == {key, key.replace("precision_at_10", "recall_at_1")}
    recall = logs[key.replace("precision_at_10", "recall_at_1")]
    assert recall > 0.9  # 4 well separated classes (chance about 0.25) stay apart through the head
    n_items = sum(len(b[1]) for b in validation.dataset)
    assert n_items == (n_val or plan.n_train)


def test_held_out_classes(world, tmp_path, capsys):
    """Trained on 3 classes, indexed on all 4: --exclude-train-classes queries only the 4th, against everything."""
    from amazon_visual import data
    from amazon_visual.retrieval.metrics import evaluate_retrieval

    run, index = str(tmp_path / "run"), str(tmp_path / "index")
    rc, out, _ = _cli(
        [
            "train",
            "--data",
            world["seen"],
            "--model",
            "alexnet",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--objective",
            "retrieval",
            "--loss",
            "proxy_anchor",
            "--per-class",
            "1",
            "--out",
            run,
            "--json",
        ],
        capsys,
    )
    assert rc == 0 and json.loads(out)["epochs_run"] == 1
    assert (
        _cli(["index", run, "--data", world["full"], "--out", index, "--trees", "5", "--no-thumbnails"], capsys)[0] == 0
    )
    r = evaluate_retrieval(index, queries="test", k=3, exclude_train_classes=True, progress=False)
    stripes = data.class_names(world["full"]).index("stripes")
    test_labels = [ex["label"] for ex in data.load(world["full"], "test").as_numpy_iterator()]
    assert r["n_queries"] == test_labels.count(stripes) > 0
    assert r["n_indexed"] == sum(data.num_examples(world["full"], s) for s in ("train", "validation"))
    assert set(r["per_category"]) == {"stripes"} and r["exclude_train_classes"] is True
    rc, out, _ = _cli(["eval-retrieval", index, "--exclude-train-classes"], capsys)
    assert rc == 0 and "(classes the run never saw)" in out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--loss", "triplet"], "unknown --loss 'triplet': choose one of multi_similarity"),
        (["--per-class", "40"], "--per-class 40 is more than the photos of any class"),
        (["--embedding-dim", "1"], "--embedding-dim 1 is too small: use at least 2"),
        (["--classes-per-batch", "5"], "--classes-per-batch 5 is more than the 4 classes"),
        (["--per-class", "1"], "--per-class 1 gives --loss multi_similarity no positive pairs"),
    ],
)
def test_bad_input_is_one_line_before_training(world, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    rc, _, err = _cli(
        [
            "train",
            "--data",
            world["full"],
            "--model",
            "alexnet",
            "--image-size",
            "32",
            "--objective",
            "retrieval",
            "--out",
            str(out),
        ]
        + extra,
        capsys,
    )
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing written: refused before any training


def test_one_class_dataset_and_classify_only_flags(tmp_path, capsys):
    # build-data never writes a one-class dataset (a clear error instead), so none can reach training
    with pytest.raises(UserError, match="fewer than 2 classes have products"):
        helpers_training.tiny_dataset(tmp_path, classes=("red",), per_class=6, size=32, name="one")
    two = helpers_training.tiny_dataset(tmp_path, classes=("red", "blue"), per_class=6, size=32, name="two")
    rc, _, err = _cli(
        ["train", "--data", two, "--model", "alexnet", "--per-class", "2", "--out", str(tmp_path / "r")], capsys
    )
    assert rc == 2 and "--per-class only apply to --objective retrieval" in err


def test_embedding_dim_sizes_a_classifier_head(world, tmp_path, capsys):
    summary = training.train(
        world["full"],
        model="vgg16_bn",
        out=tmp_path / "c",
        image_size=32,
        epochs=1,
        steps_per_epoch=1,
        validation_steps=1,
        embedding_dim=24,
        model_kwargs={"width": 0.125},
        quiet=True,
    )
    _, config, _ = training.load_run(summary["run_dir"])
    assert (config["objective"], config["embedding_dim"]) == ("classify", 24)
    rc, _, err = _cli(
        ["train", "--data", world["full"], "--model", "alexnet", "--embedding-dim", "24", "--out", str(tmp_path / "a")],
        capsys,
    )
    assert rc == 2 and "--embedding-dim does not size alexnet's classifier" in err
