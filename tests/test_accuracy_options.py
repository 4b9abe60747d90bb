"""Accuracy options (issue 21): test-time augmentation, an EMA of the weights, the mixed
augmentation levels, the small ResNet. Tiny generated images, a few steps."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

sys.path.insert(0, os.path.dirname(__file__))
import helpers_training  # noqa: E402
from amazon_visual import cli, evaluation, models, training  # noqa: E402
from amazon_visual.errors import UserError  # noqa: E402
from amazon_visual.evaluation import tta  # noqa: E402
from amazon_visual.training import callbacks, phases, pipeline, recipes  # noqa: E402

SMALL_RESNET = {"width": 0.25, "embedding_dim": 16, "dropout": 0.0}


def _images(n=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(n, size, size, 3)).astype("float32")


def _pooled_classifier(k=3, seed=0):
    """Mean colour -> softmax: the same answer for a photo, its mirror image and (on a uniform
    photo) its centre crop."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(k, activation="softmax")(x))


def _position_classifier(k=3, seed=0):
    """Flatten -> softmax: its answer depends on where the pixels are."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(k, activation="softmax")(x))


# ---------------------------------------------------------------- test-time augmentation
def test_tta_views_and_modes():
    x = _images()
    assert [len(tta.views(x, m)) for m in tta.TTA_MODES] == [1, 2, 4]
    v = [keras.ops.convert_to_numpy(a) for a in tta.views(x, "flip-crop")]
    np.testing.assert_array_equal(v[0], x)
    np.testing.assert_array_equal(v[1], x[:, :, ::-1, :])
    assert v[2].shape == x.shape and not np.allclose(v[2], x)
    np.testing.assert_allclose(v[3], v[2][:, :, ::-1, :])
    assert tta.check_mode(None) == "none" and tta.check_mode("FLIP") == "flip"
    with pytest.raises(UserError, match="--tta 'mirror'"):
        tta.check_mode("mirror")


def test_tta_keeps_shape_and_class_order():
    # a classifier that cannot tell the views apart gives the same probabilities, class by class
    uniform = np.repeat(np.repeat(_images(n=5, size=1), 16, axis=1), 16, axis=2)
    model = _pooled_classifier()
    plain = np.asarray(model(uniform))
    for mode in ("flip", "flip-crop"):
        p, p0 = tta.Predictor(model, mode)(uniform)
        assert p.shape == plain.shape == (5, 3)
        np.testing.assert_allclose(p, plain, atol=1e-5)
        np.testing.assert_allclose(p0, plain, atol=1e-6)
    # one that can: the mean of the views' softmax, in the model's class order
    model = _position_classifier()
    x = _images()
    predictor = tta.Predictor(model, "flip")
    p, p0 = predictor(x)
    expected = (np.asarray(model(x)) + np.asarray(model(x[:, :, ::-1, :].copy()))) / 2
    np.testing.assert_allclose(p, expected, atol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert not np.allclose(p, p0, atol=1e-4)
    assert predictor.seconds >= predictor.plain_seconds > 0
    report = predictor.report(6, 0.5, 0.25)
    assert report["views"] == 2 and report["gain"] == 0.25 and report["time_ratio"] >= 1.0


# ---------------------------------------------------------------- EMA of the weights
def _fit_with_ema(epochs, stop_at=None, momentum=0.5):
    """A tiny model fitted with the EMA callbacks; records the model's weights between them (what the
    saver sees), the optimizer's averages at that moment, and the training weights after them."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(
        optimizer=phases.make_optimizer("m", 0.1, 1e-4, ema_momentum=momentum), loss="categorical_crossentropy"
    )
    seen = []

    class Record(keras.callbacks.Callback):
        def __init__(self, where):
            super().__init__()
            self.where = where

        def on_epoch_end(self, epoch, logs=None):
            opt = self.model.optimizer
            seen.append(
                (
                    self.where,
                    epoch,
                    [np.array(w) for w in self.model.get_weights()],
                    [np.array(v) for v in opt._model_variables_moving_average],
                )
            )
            if stop_at is not None and epoch == stop_at and self.where == "saver":
                self.model.stop_training = True

    first, after = callbacks.ema_callbacks()
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(32) % 3]
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        validation_data=(x[:8], y[:8]),
        callbacks=[first, Record("saver"), after, Record("backup")],
    )
    return model, seen


def test_ema_weights_are_what_the_callbacks_save_and_what_the_model_ends_with():
    model, seen = _fit_with_ema(epochs=3)
    saver = [s for s in seen if s[0] == "saver"]
    backup = [s for s in seen if s[0] == "backup"]
    assert len(saver) == len(backup) == 3
    for (_, _, ema_in_model, raw_in_average), (_, _, raw_in_model, ema_in_average) in zip(saver, backup):
        for a, b in zip(ema_in_model, ema_in_average):
            np.testing.assert_allclose(a, b, atol=1e-6)  # the saver saw the averages
        for a, b in zip(raw_in_model, raw_in_average):
            np.testing.assert_allclose(a, b, atol=1e-6)  # the backup sees the training weights
        assert not np.allclose(ema_in_model[0], raw_in_model[0], atol=1e-4)
    for a, b in zip(model.get_weights(), saver[-1][2]):  # fit ends with the last epoch's averages
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_ema_weights_stay_when_a_run_stops_early():
    """Keras's own swap_on_epoch loses the averages when a callback stops fit before its last epoch."""
    model, seen = _fit_with_ema(epochs=5, stop_at=1)
    saver = [s for s in seen if s[0] == "saver"]
    backup = [s for s in seen if s[0] == "backup"]
    assert len(saver) == 2
    for a, ema, raw in zip(model.get_weights(), saver[-1][2], backup[-1][2]):
        np.testing.assert_allclose(a, ema, atol=1e-6)
        assert not np.allclose(a, raw, atol=1e-4)


def test_ema_recipe_values():
    base = recipes.recipe("alexnet", "alexnet", False)
    assert base["ema"] is False and base["ema_momentum"] == 0.99
    assert recipes.resolve(base, ema=True, ema_momentum=0.9)["ema"] is True
    with pytest.raises(UserError, match="--ema-momentum 1.5"):
        recipes.resolve(base, ema=True, ema_momentum=1.5)
    opt = phases.make_optimizer("alexnet", 1e-3, 5e-4, ema_momentum=0.95)
    assert opt.use_ema and opt.ema_momentum == 0.95
    assert not phases.make_optimizer("alexnet", 1e-3, 5e-4).use_ema


# ---------------------------------------------------------------- mixed augmentation levels
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return helpers_training.tiny_dataset(tmp_path_factory.mktemp("accuracy"), per_class=10, size=32)


def test_mixed_augmentation_levels(tiny):
    for level in ("randaugment", "mixup", "cutmix"):
        assert level in recipes.AUGMENT_LEVELS
        assert recipes.resolve(recipes.recipe("vgg16_bn", "vgg", False), augment=level)["augment"] == level
        ds = pipeline.train_dataset(tiny, 32, 6, 3, augment=level, seed=1, repeat=False)
        x, y = next(iter(ds))
        x, y = x.numpy(), y.numpy()
        assert x.shape == (6, 32, 32, 3) and y.shape == (6, 3)
        assert x.min() >= -1e-3 and x.max() <= 255 + 1e-3, level
        np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
        if level == "randaugment":
            assert set(np.unique(y)) <= {0.0, 1.0}
    mixed = []  # label mixing gives soft labels in some batch
    for level in ("mixup", "cutmix"):
        ds = pipeline.train_dataset(tiny, 32, 6, 3, augment=level, seed=2, repeat=False)
        mixed.append(any(((yb.numpy() > 0.01) & (yb.numpy() < 0.99)).any() for _, yb in ds))
    assert mixed == [True, True]
    assert pipeline.label_mixer("light") is None


# ---------------------------------------------------------------- the small ResNet
def test_resnet_small_is_registered_and_checks_its_arguments():
    assert "resnet_small" in models.available_models()
    assert models.available_models()[:5] == list(models.FIVE)
    info = models.model_info("resnet_small")
    assert (info["family"], info["preprocessing"], info["pretrainable"]) == ("resnet_small", "unit", False)
    assert recipes.recipe("resnet_small", "resnet_small", False)["name"] == "resnet_small"
    with pytest.raises(UserError, match="no pretrained weights"):
        models.build("resnet_small", 3, 64, weights="imagenet")
    for size, stem_stride in ((32, 1), (64, 2)):
        net = models.build("resnet_small", 4, size, width=0.25)
        assert net.get_layer("stem_conv").strides == (stem_stride, stem_stride)
        assert net.output.shape[-1] == 4 and net.get_layer("embedding").output.shape[-1] == 512
        assert models.find_backbone(net) is None
    with pytest.raises(UserError, match="width"):
        models.build("mobilenet_v2", 3, 64, width=0.5)


@pytest.fixture(scope="module")
def ema_run(tiny, tmp_path_factory):
    """resnet_small with --ema (momentum 0.5, so the average differs from the weights), 2 epochs;
    records the weights the EMA callbacks hand to the saver and the training weights after them."""
    seen = {"ema": [], "raw": []}
    mp = pytest.MonkeyPatch()
    real_in, real_out = callbacks.EMASwapIn.on_epoch_end, callbacks.EMASwapOut.on_epoch_end

    def swap_in(self, epoch, logs=None):
        real_in(self, epoch, logs)
        seen["ema"].append([np.array(w) for w in self.model.get_weights()])

    def swap_out(self, epoch, logs=None):
        real_out(self, epoch, logs)
        seen["raw"].append([np.array(w) for w in self.model.get_weights()])

    mp.setattr(callbacks.EMASwapIn, "on_epoch_end", swap_in)
    mp.setattr(callbacks.EMASwapOut, "on_epoch_end", swap_out)
    out = tmp_path_factory.mktemp("runs") / "resnet_small_ema"
    try:
        summary = training.train(
            tiny,
            model="resnet_small",
            out=out,
            image_size=32,
            epochs=2,
            batch_size=6,
            model_kwargs=SMALL_RESNET,
            quiet=True,
            seed=0,
            ema=True,
            ema_momentum=0.5,
            early_stopping=0,
        )
    finally:
        mp.undo()
    return out, summary, seen


def test_resnet_small_trains_saves_and_reloads(ema_run, tiny):
    out, summary, _ = ema_run
    assert summary["epochs_run"] == 2 and summary["phases"] == ["train"]
    model, config, labels = training.load_run(out)
    assert (config["model"], config["family"], config["recipe"]["name"]) == (
        "resnet_small",
        "resnet_small",
        "resnet_small",
    )
    assert labels == ["red", "green", "blue"]
    x = np.stack([np.full((32, 32, 3), v, "float32") for v in (30.0, 120.0, 250.0)])
    again, _, _ = training.load_run(out)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(again(x)))


def test_train_ema_saves_the_averaged_weights(ema_run):
    out, _, seen = ema_run
    model, config, _ = training.load_run(out)
    assert config["ema_momentum"] == 0.5 and config["recipe"]["ema"] is True
    assert len(seen["ema"]) == len(seen["raw"]) == 2
    saved = model.get_weights()

    def same(a, b):
        return len(a) == len(b) and all(np.allclose(u, v, atol=1e-6) for u, v in zip(a, b))

    assert any(same(saved, ema) for ema in seen["ema"])  # model.keras: the averages of its best epoch
    assert not any(same(saved, raw) for raw in seen["raw"])  # never the training weights


def test_evaluate_with_tta_reports_the_plain_figures_of_the_same_pass(ema_run, tiny, capsys):
    out, _, _ = ema_run
    plain = evaluation.evaluate(out, tiny, split="test", write=False)
    assert plain["tta"] is None
    with_tta = evaluation.evaluate(out, tiny, split="test", tta="flip-crop")
    t = with_tta["tta"]
    assert (t["mode"], t["views"]) == ("flip-crop", 4)
    assert t["accuracy_without_tta"] == pytest.approx(plain["accuracy"])
    assert t["accuracy"] == pytest.approx(with_tta["accuracy"])
    assert t["model_seconds"] >= t["model_seconds_without_tta"] > 0
    assert with_tta["n"] == plain["n"] and with_tta["labels"] == plain["labels"]
    assert np.asarray(with_tta["confusion_matrix"]).shape == (3, 3)
    with open(with_tta["files"]["metrics.json"], encoding="utf-8") as f:
        assert json.load(f)["tta"]["mode"] == "flip-crop"
    with pytest.raises(UserError, match="--tta"):
        evaluation.evaluate(out, tiny, tta="rotate")
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--data", tiny, "--tta", "flip", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tta"]["views"] == 2 and printed["tta"]["accuracy_without_tta"] == pytest.approx(plain["accuracy"])
