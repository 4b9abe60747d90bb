"""Per-family training defaults ("recipes"), chosen by measurement (README, "Recipes").

A recipe holds what makes a family converge quickly from its starting point: optimizer
learning rate, warm-up and decay schedule, batch size, augmentation strength, label
smoothing and weight decay. ``train`` takes each value from the recipe unless the caller
gives it. The schedule is a linear warm-up then a cosine decay to ``min_lr_factor`` of the
peak, over the phase's epochs *or* its time budget, whichever ends first
(:class:`amazon_visual.training.callbacks.WarmupCosine`), so a run stopped by
``--max-minutes`` still ends at a small learning rate.

Keys: ``learning_rate`` (peak), ``warmup`` (fraction of the phase), ``min_lr_factor``,
``batch_size``, ``augment`` (none | light | medium | strong, or Keras 3's mixed augmentations:
randaugment | mixup | cutmix, see :mod:`amazon_visual.training.pipeline`), ``label_smoothing``,
``weight_decay`` (AdamW, decoupled), ``small_width`` (from-scratch hand-written models below
160 px: the width multiplier of every layer when the caller gives none; these nets are
sized for 224 px photos, and at 64 px on a CPU the full width trains 3-4x slower for no
gain within a short budget), ``fine_tune_lr_factor`` (pretrained runs: fine-tune
peak = learning_rate x this), ``head_budget`` (pretrained runs with a time budget: the
largest share of it the head phase may use), ``ema`` (keep an exponential moving average of
the weights, Keras ``use_ema``; validation and the saved model use it) with ``ema_momentum``.
"""

import math

from amazon_visual.errors import UserError

AUGMENT_LEVELS = ("none", "light", "medium", "strong", "randaugment", "mixup", "cutmix")

# Measured on clothing-small, 64 px, 2 CPU cores (README "Recipes" has the table).
_SCRATCH_CNN = {
    "learning_rate": 2e-3,
    "warmup": 0.05,
    "min_lr_factor": 0.01,
    "batch_size": 64,
    "augment": "light",
    "label_smoothing": 0.1,
    "weight_decay": 5e-4,
    "min_steps": 500,
}
RECIPES = {
    # the course's linear classifier on raw pixels: multiclass hinge, no augmentation
    "svm": {
        "learning_rate": 1e-3,
        "warmup": 0.0,
        "min_lr_factor": 0.1,
        "batch_size": 64,
        "augment": "none",
        "label_smoothing": 0.0,
        "weight_decay": 0.0,
    },
    "alexnet": dict(_SCRATCH_CNN, small_width=0.5, short_run_dropout=0.2),
    "vgg": dict(_SCRATCH_CNN, learning_rate=1e-3, small_width=0.25, augment="medium"),
    # the small ResNet (models/resnet_small.py): the from-scratch CNN defaults, not tuned further
    "resnet_small": dict(_SCRATCH_CNN),
    # keras.applications from scratch (no batch norm in VGG16/19: a smaller rate)
    "applications": dict(_SCRATCH_CNN, learning_rate=1e-3, batch_size=32),
    "applications_no_bn": dict(_SCRATCH_CNN, learning_rate=2e-4, batch_size=32, weight_decay=1e-4),
    # pretrained backbone: head on cached features, then fine-tune the top with BN frozen
    "pretrained": {
        "learning_rate": 1e-3,
        "warmup": 0.05,
        "min_lr_factor": 0.01,
        "batch_size": 32,
        "augment": "light",
        "label_smoothing": 0.1,
        "weight_decay": 1e-4,
        "fine_tune_lr_factor": 0.1,
        "head_budget": 0.35,
    },
}
_NO_BN = ("vgg16", "vgg19")


def recipe_name(model_name, family, pretrained):
    """Which recipe a model uses: pretrained, svm, alexnet, vgg, resnet_small, applications(_no_bn)."""
    if pretrained and family != "svm":
        return "pretrained"
    if family in ("svm", "alexnet", "vgg", "resnet_small"):
        return family
    return "applications_no_bn" if model_name in _NO_BN else "applications"


def recipe(model_name, family, pretrained):
    """The recipe dict (a copy) for a model; see the module docstring for its keys."""
    out = {"fine_tune_lr_factor": 0.1, "head_budget": 0.35, "ema": False, "ema_momentum": 0.99}
    out.update(RECIPES[recipe_name(model_name, family, pretrained)])
    out["name"] = recipe_name(model_name, family, pretrained)
    return out


SMALL_IMAGE = 160


def model_kwargs(recipe_values, image_size, given):
    """The model's keyword arguments: the caller's, plus the recipe's ``small_width`` for
    images under 160 px when the caller set no width."""
    out = dict(given or {})
    width = recipe_values.get("small_width")
    if width and int(image_size) < SMALL_IMAGE and "width" not in out:
        out["width"] = width
    return out


def resolve(recipe_values, **given):
    """The recipe with the caller's explicit (non-None) values on top; checks them."""
    out = dict(recipe_values)
    out.update({k: v for k, v in given.items() if v is not None})
    aug = out["augment"]
    if aug is True:
        out["augment"] = recipe_values["augment"] if recipe_values["augment"] != "none" else "medium"
    elif aug is False:
        out["augment"] = "none"
    if out["augment"] not in AUGMENT_LEVELS:
        raise UserError(f"--augment {aug!r} is not a level: use one of {', '.join(AUGMENT_LEVELS)}")
    out["ema"] = bool(out["ema"])
    if not 0.0 < float(out["ema_momentum"]) < 1.0:
        raise UserError(
            f"--ema-momentum {out['ema_momentum']} must be between 0 and 1 (e.g. 0.99: an average over about 100 steps)"
        )
    if not 0.0 < float(out["head_budget"]) < 1.0:
        raise UserError(f"--head-budget {out['head_budget']} must be between 0 and 1 (a share of --max-minutes)")
    return out


MIN_BATCH = 16


def fit_to_run(recipe_values, n_train, epochs, batch_given, model_kwargs_given):
    """Short runs (``epochs`` x steps per epoch under the recipe's ``min_steps``, e.g.
    ``--epochs 6`` on a small catalog): a CNN from scratch needs optimizer steps more than
    large batches, so the batch is halved (down to 16) until the run has ``min_steps`` steps,
    and AlexNet's fully connected layers drop 0.2 instead of 0.5. Values the caller set are
    kept. Returns (recipe, model kwargs); ``recipe["short_run"]`` says what changed."""
    out, kwargs = dict(recipe_values), dict(model_kwargs_given or {})
    min_steps = out.get("min_steps")
    if not min_steps:
        return out, kwargs
    steps = int(epochs) * math.ceil(int(n_train) / int(out["batch_size"]))
    if steps >= min_steps:
        return out, kwargs
    changed = {"planned_steps": steps}
    if not batch_given:
        batch = int(out["batch_size"])
        while batch > MIN_BATCH and int(epochs) * math.ceil(int(n_train) / batch) < min_steps:
            batch //= 2
        out["batch_size"] = max(batch, MIN_BATCH)
        changed["batch_size"] = out["batch_size"]
        changed["planned_steps"] = int(epochs) * math.ceil(int(n_train) / out["batch_size"])
    if out.get("short_run_dropout") is not None and "dropout" not in kwargs:
        kwargs["dropout"] = out["short_run_dropout"]
        changed["dropout"] = kwargs["dropout"]
    out["short_run"] = changed
    return out, kwargs
