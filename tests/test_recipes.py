"""Per-family recipes, the warm-up + cosine schedule, the time-budget split."""

import json
import math
import os
import time

import pytest

from amazon_visual.errors import UserError
from amazon_visual.training import recipes


def test_every_family_has_a_recipe_with_every_key():
    keys = {
        "learning_rate",
        "warmup",
        "min_lr_factor",
        "batch_size",
        "augment",
        "label_smoothing",
        "weight_decay",
        "fine_tune_lr_factor",
        "head_budget",
        "name",
    }
    for model, family, pretrained in (
        ("svm", "svm", False),
        ("alexnet", "alexnet", False),
        ("vgg16_bn", "vgg", False),
        ("vgg16", "applications", False),
        ("resnet50", "applications", False),
        ("mobilenet_v2", "applications", True),
        ("vgg16_bn", "vgg", True),
    ):
        r = recipes.recipe(model, family, pretrained)
        assert keys <= set(r), (model, keys - set(r))
        assert r["augment"] in recipes.AUGMENT_LEVELS
    assert recipes.recipe("vgg16", "applications", False)["name"] == "applications_no_bn"
    assert recipes.recipe("mobilenet_v2", "applications", True)["name"] == "pretrained"
    assert recipes.recipe("svm", "svm", False)["augment"] == "none"


def test_explicit_values_win_and_bad_values_are_user_errors():
    base = recipes.recipe("alexnet", "alexnet", False)
    r = recipes.resolve(base, learning_rate=0.05, batch_size=8, augment=None, label_smoothing=0.0)
    assert (r["learning_rate"], r["batch_size"], r["label_smoothing"]) == (0.05, 8, 0.0)
    assert r["augment"] == base["augment"]
    assert recipes.resolve(base, augment=False)["augment"] == "none"
    assert recipes.resolve(base, augment="strong")["augment"] == "strong"
    with pytest.raises(UserError, match="augment"):
        recipes.resolve(base, augment="huge")
    with pytest.raises(UserError, match="head-budget"):
        recipes.resolve(base, head_budget=1.5)


def test_small_images_get_the_recipe_width_unless_given():
    r = recipes.recipe("alexnet", "alexnet", False)
    assert recipes.model_kwargs(r, 64, None) == {"width": 0.5}
    assert recipes.model_kwargs(r, 224, None) == {}
    assert recipes.model_kwargs(r, 64, {"width": 1.0}) == {"width": 1.0}
    assert recipes.model_kwargs(recipes.recipe("resnet50", "applications", False), 64, None) == {}


def test_warmup_cosine_shape():
    from amazon_visual.training.callbacks import WarmupCosine

    s = WarmupCosine(1.0, total_steps=100, warmup=0.1, min_factor=0.01)
    rates = [s.rate(i / 100) for i in range(101)]
    assert rates[0] < 0.05 and rates[5] == pytest.approx(0.5) and rates[10] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(rates[:10], rates[1:11]))  # rising during warm-up
    assert all(a >= b - 1e-12 for a, b in zip(rates[10:], rates[11:]))  # falling after it
    assert rates[-1] == pytest.approx(0.01)
    assert rates[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_schedule_follows_the_time_budget():
    from amazon_visual.training.callbacks import WarmupCosine

    s = WarmupCosine(1.0, total_steps=10_000, warmup=0.0, min_factor=0.0, deadline=time.time())
    s._t0 = time.time() - 10  # the whole budget used, few steps done
    assert s.progress() == pytest.approx(1.0)
    assert s.rate(s.progress()) == pytest.approx(0.0, abs=1e-9)
    s = WarmupCosine(1.0, total_steps=10, warmup=0.0, min_factor=0.0, initial_step=5)
    assert s.progress() == pytest.approx(0.5)  # resumed half way: steps count


def test_schedule_goes_on_from_the_epoch_a_backup_restores():
    import types

    from amazon_visual.training.callbacks import WarmupCosine

    # a phase of epochs 2..6 (10 steps each) that BackupAndRestore resumes at epoch 5
    s = WarmupCosine(1.0, total_steps=40, warmup=0.1, min_factor=0.0, steps_per_epoch=10, first_epoch=2)
    s.set_model(types.SimpleNamespace(_initial_epoch=5))
    s.on_train_begin()
    assert s.step == 30 and s.progress() == pytest.approx(0.75)
    s = WarmupCosine(1.0, total_steps=40, warmup=0.1, min_factor=0.0, steps_per_epoch=10, first_epoch=2)
    s.set_model(types.SimpleNamespace(_initial_epoch=None))  # nothing restored: from the start
    s.on_train_begin()
    assert s.step == 0


def test_training_records_recipe_schedule_and_learning_rates(tmp_path):
    from amazon_visual import training
    from helpers_training import tiny_dataset

    data = tiny_dataset(tmp_path, per_class=8, size=32)
    out = tmp_path / "run"
    training.train(
        data,
        model="alexnet",
        out=str(out),
        image_size=32,
        epochs=3,
        quiet=True,
        model_kwargs={"width": 0.125, "fc_units": 32},
        callbacks=False,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["name"] == "alexnet" and config["batch_size"] == config["recipe"]["batch_size"]
    assert config["schedule"]["kind"] == "warmup_cosine" and config["augment"] == "light"
    rows = training.read_history(str(out))
    lrs = [r["learning_rate"] for r in rows]
    assert len(lrs) == 3 and max(lrs) <= config["learning_rate"]
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs)  # warm-up, then decay


def test_unknown_width_user_error(tmp_path):
    from amazon_visual import models

    with pytest.raises(UserError, match="width"):
        models.build("svm", 3, 32, width=0.5)
    assert os.path.isdir(tmp_path)


def test_short_runs_get_smaller_batches_and_alexnet_less_dropout():
    from amazon_visual.training import recipes

    alex = recipes.recipe("alexnet", "alexnet", False)
    # --epochs 6 on 1,280 training photos: 6 x 20 = 120 steps at batch 64 -> batch 16 (480 steps)
    rec, kw = recipes.fit_to_run(alex, 1280, 6, batch_given=False, model_kwargs_given={"width": 0.5})
    assert rec["batch_size"] == 16 and kw == {"width": 0.5, "dropout": 0.2}
    assert rec["short_run"] == {"planned_steps": 480, "batch_size": 16, "dropout": 0.2}
    # what the caller set stays
    rec, kw = recipes.fit_to_run(alex, 1280, 6, batch_given=True, model_kwargs_given={"dropout": 0.5})
    assert rec["batch_size"] == 64 and kw == {"dropout": 0.5} and rec["short_run"] == {"planned_steps": 120}
    # long runs (and the time-budgeted ones, epochs 200) are untouched; so are the svm and pretrained recipes
    for r, n, e in (
        (alex, 3002, 200),
        (alex, 30000, 6),
        (recipes.recipe("svm", "svm", False), 100, 1),
        (recipes.recipe("mobilenet_v2", "applications", True), 100, 1),
    ):
        out, kw = recipes.fit_to_run(r, n, e, batch_given=False, model_kwargs_given=None)
        assert out == r and kw == {}
    vgg, kw = recipes.fit_to_run(recipes.recipe("vgg16_bn", "vgg", False), 1000, 2, False, None)
    assert vgg["batch_size"] == 16 and kw == {}  # 2 x 63 = 126 steps: as small as it goes
