"""``train``: one training run, in named steps.

``train(data_dir, model, out, ...)`` writes a RUN_DIR (see :mod:`amazon_visual.training.runs`)
and resumes a killed run when started again with the same arguments. Its steps:
:func:`plan_run` (check the arguments and the dataset, choose the phases, write nothing),
:func:`build_models` (the network under the strategy's scope), :func:`make_inputs`
(tf.data pipelines), :func:`run_phases` (one :func:`run_phase` per phase, each resumable),
:func:`finish_run` (state, clean-up, learning curves).
"""

import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

from amazon_visual.atomic import write_json
from amazon_visual.errors import UserError
from amazon_visual.training import metric_learning, recipes, runs
from amazon_visual.training import phases as phases_mod
from amazon_visual.training import strategy as strategy_mod

DEFAULT_PATIENCE = 10


def _log(msg, quiet=False):
    if not quiet:
        print(f"[amazon-visual train] {msg}", file=sys.stderr, flush=True)


@dataclass
class RunPlan:
    """What a run will do, decided before anything is written."""

    name: str
    info: dict
    labels: list
    run_dir: str
    write_dir: str
    phases: list
    lr: float
    config: dict
    n_train: int
    n_val: int
    is_chief: bool = True
    task_id: int = None
    num_workers: int = 1
    old_config: dict = None
    options: dict = field(default_factory=dict)

    @property
    def state_path(self):
        return os.path.join(self.write_dir, "state.json")


def train(
    data_dir,
    model="resnet50",
    out="runs/run",
    weights="none",
    image_size=224,
    epochs=10,
    batch_size=None,
    fine_tune_at=None,
    strategy="auto",
    mixed_precision=False,
    augment=None,
    seed=0,
    learning_rate=None,
    fine_tune_lr_factor=None,
    head_epochs=None,
    label_smoothing=None,
    weight_decay=None,
    class_weights=True,
    early_stopping=None,
    max_minutes=None,
    steps_per_epoch=None,
    validation_steps=None,
    backup_freq="epoch",
    quiet=False,
    callbacks=True,
    model_kwargs=None,
    verbose=None,
    head_budget=None,
    cache_features=None,
    cached_views=2,
    objective="classify",
    loss=None,
    embedding_dim=None,
    classes_per_batch=None,
    per_class=None,
    ema=None,
    ema_momentum=None,
):
    """Trains ``model`` on DATA_DIR and writes the run folder ``out``; returns a summary dict.

    Every value left ``None`` comes from the model family's recipe
    (:mod:`amazon_visual.training.recipes`): learning rate with warm-up and cosine decay,
    batch size, augmentation strength, label smoothing, weight decay.

    Args:
      data_dir: folder written by ``amazon-visual build-data``.
      model: ``svm``, ``alexnet``, ``vgg16``, ``vgg16_bn``, ``resnet50`` or any
        keras.applications name (``amazon_visual.models.available_models()``).
      weights: ``"none"`` (from scratch, one phase), ``"imagenet"`` or a weights file
        (two phases: head with frozen backbone, then fine-tuning from ``fine_tune_at``
        with batch norm frozen).
      epochs: total epochs over both phases; ``head_epochs`` of them (default a third,
        at least 1) train the head only.
      batch_size: the global batch, split across replicas.
      strategy: auto | default | one_device | mirrored | multi_worker.
      mixed_precision: float16 on GPU, bfloat16 on CPU (the last layer stays float32).
      augment: None (the recipe's), False/"none", True, or light | medium | strong.
      learning_rate: the peak rate (after warm-up); ``fine_tune_lr_factor`` scales it for
        the fine-tuning phase.
      max_minutes: time budget for the whole run: stop after the batch that passes it
        (that last, partial epoch is validated and logged); the learning-rate schedule
        follows the budget. With two phases the head phase may use at most
        ``head_budget`` of it (default the recipe's, 0.35); config.json records the split.
      cache_features: train the head phase on backbone features computed once
        (``cached_views`` views, default 2: the photos as they are plus augmented copies) instead of
        running the frozen backbone every epoch; default on whenever the model allows it
        (single worker, the standard head).
      early_stopping: patience in epochs on validation accuracy (default 10; 0 = off).
      steps_per_epoch / validation_steps: default one pass over the split.
      backup_freq: ``"epoch"`` or a number of batches for BackupAndRestore.
      quiet: no progress output. callbacks: False drops TensorBoard and BackupAndRestore
        (a quick, not resumable run; model.keras, history.csv are still written).
      model_kwargs: extra arguments of :func:`amazon_visual.models.build` (e.g. width).
      objective: ``"classify"`` (a classifier; its penultimate layer is the embedding) or
        ``"retrieval"`` (metric learning of an L2-normalised embedding of ``embedding_dim``
        with ``loss`` on ``classes_per_batch`` x ``per_class`` batches; see
        :mod:`amazon_visual.training.metric_learning`).
      ema: keep an exponential moving average of the weights (Keras ``use_ema``) with
        ``ema_momentum`` (default the recipe's, 0.99); validation, ``model.keras`` and the
        weights a phase hands on are the averaged ones (default the recipe's: off).
    """
    if verbose is None:
        verbose = 0 if quiet else 2

    if verbose is None:
        verbose = 0 if quiet else 2
    t_start = time.time()
    # The strategy first: MultiWorkerMirroredStrategy must exist before any TF op runs.
    strat = strategy_mod.select_strategy(strategy)
    plan = plan_run(
        data_dir,
        model,
        out,
        weights,
        image_size,
        epochs,
        batch_size,
        strat,
        dict(
            fine_tune_at=fine_tune_at,
            strategy=strategy,
            mixed_precision=mixed_precision,
            augment=augment,
            seed=seed,
            learning_rate=learning_rate,
            fine_tune_lr_factor=fine_tune_lr_factor,
            head_epochs=head_epochs,
            label_smoothing=label_smoothing,
            weight_decay=weight_decay,
            class_weights=class_weights,
            early_stopping=early_stopping,
            max_minutes=max_minutes,
            model_kwargs=model_kwargs,
            head_budget=head_budget,
            cache_features=cache_features,
            cached_views=cached_views,
            objective=objective,
            loss=loss,
            embedding_dim=embedding_dim,
            classes_per_batch=classes_per_batch,
            per_class=per_class,
            ema=ema,
            ema_momentum=ema_momentum,
        ),
    )
    state = _read_state(plan, quiet)
    if plan.old_config is not None:  # finished before
        return runs.summary(plan.run_dir, plan.old_config, state, time.time() - t_start)

    import keras

    policy_before = keras.mixed_precision.global_policy().name
    try:
        net, fit_model = build_models(plan, strat, mixed_precision, seed)
        inputs = make_inputs(
            plan,
            data_dir,
            plan.config["batch_size"],
            augment=plan.config["augment"],
            seed=seed,
            steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps,
            class_weights=class_weights,
        )
        deadline = t_start + float(max_minutes) * 60 if max_minutes else None
        if deadline and plan.num_workers > 1:
            _log("--max-minutes is ignored under multi-worker training (workers must agree)", quiet)
            deadline = None
        budget_hit = run_phases(
            plan,
            state,
            strat,
            net,
            fit_model,
            inputs,
            _phase_deadlines(plan, t_start, deadline),
            dict(callbacks=callbacks, quiet=quiet, verbose=verbose, backup_freq=backup_freq, data_dir=data_dir),
        )
        finish_run(plan, state, net, budget_hit, t_start)
    finally:
        keras.mixed_precision.set_global_policy(policy_before)
    if not plan.is_chief:
        shutil.rmtree(plan.write_dir, ignore_errors=True)
        return {"run_dir": plan.run_dir, "chief": False, "task_id": plan.task_id}
    return runs.summary(plan.run_dir, plan.config, state, time.time() - t_start)


def _check_arguments(name, info, weights_n, image_size, epochs, batch_size):
    if weights_n is not None and not info["pretrainable"]:
        raise UserError(f"{name} has no pretrained weights: use --weights none")
    if image_size < 16:
        raise UserError(f"--image-size {image_size} is too small: use at least 32")
    if epochs < 1 or batch_size < 1:
        raise UserError("--epochs and --batch-size must be at least 1")


def _choose_phases(name, weights_n, epochs, head_epochs):
    """[(phase, last epoch)]: ``train`` from scratch; ``head`` then ``fine_tune`` from weights."""
    two_phase = weights_n is not None and name not in ("svm", "alexnet")
    if two_phase and epochs >= 2:
        head_epochs = int(head_epochs) if head_epochs else max(1, epochs // 3)
        head_epochs = min(head_epochs, epochs - 1)
        return [("head", head_epochs), ("fine_tune", epochs)]
    if two_phase:
        return [("head", epochs)]
    return [("train", epochs)]


def plan_run(data_dir, model, out, weights, image_size, epochs, batch_size, strat, options):
    """Checks the arguments and the dataset and decides the run: a :class:`RunPlan`."""
    from amazon_visual import models
    from amazon_visual.models import applications

    is_chief, task_type, task_id, num_workers = strategy_mod.worker_info(strat)
    name = models._check_name(model)
    info = models.model_info(name)
    weights_n = applications.normalize_weights(weights)
    o = options
    rec = recipes.resolve(
        recipes.recipe(name, info["family"], weights_n is not None),
        batch_size=batch_size,
        **{
            k: o[k]
            for k in (
                "learning_rate",
                "augment",
                "label_smoothing",
                "weight_decay",
                "fine_tune_lr_factor",
                "head_budget",
                "ema",
                "ema_momentum",
            )
        },
    )
    batch_size_given = batch_size is not None
    image_size, epochs, batch_size = int(image_size), int(epochs), int(rec["batch_size"])
    _check_arguments(name, info, weights_n, image_size, epochs, batch_size)
    o.update({k: rec[k] for k in ("augment", "label_smoothing", "weight_decay", "fine_tune_lr_factor", "head_budget")})
    o["ema_momentum"] = float(rec["ema_momentum"]) if rec["ema"] else None
    o["model_kwargs"] = recipes.model_kwargs(rec, image_size, o["model_kwargs"])
    if o["early_stopping"] is None:
        o["early_stopping"] = DEFAULT_PATIENCE
    if int(o["cached_views"]) < 1:
        raise UserError(f"--cached-views {o['cached_views']}: give at least 1 (the photos as they are)")

    fingerprint = runs.dataset_fingerprint(data_dir)  # UserError when not a dataset
    labels = fingerprint["class_names"]
    n_train = fingerprint["splits"].get("train", 0)
    n_val = fingerprint["splits"].get("validation", 0)
    if n_train == 0:
        raise UserError(f"{data_dir} has no training examples: rebuild it with a train split")
    rec, o["model_kwargs"] = recipes.fit_to_run(rec, n_train, epochs, batch_size_given, o["model_kwargs"])
    batch_size = int(rec["batch_size"])
    objective = metric_learning.plan_options(data_dir, name, info, labels, options)  # classify | retrieval
    if len(labels) < 2:
        raise UserError(f"{data_dir} has {len(labels)} class: a classifier needs at least 2")

    run_dir = os.path.abspath(os.fspath(out))
    write_dir = run_dir if is_chief else tempfile.mkdtemp(prefix=f"amazon-visual-worker{task_id}-")
    phases = _choose_phases(name, weights_n, epochs, options["head_epochs"])
    two_phase = phases[0][0] == "head"
    lr = float(rec["learning_rate"])
    config = {
        "model": name,
        "family": info["family"],
        "image_size": image_size,
        "preprocessing": info["preprocessing"],
        "embedding_layer": "embedding",
        "embedding_dim": None,
        "num_classes": len(labels),
        "weights": weights_n if weights_n in (None, "imagenet") else os.path.abspath(weights_n),
        "data_dir": os.path.abspath(os.fspath(data_dir)),
        "dataset_fingerprint": fingerprint,
        "epochs": epochs,
        "batch_size": batch_size,
        "phases": [p for p, _ in phases],
        "head_epochs": phases[0][1] if two_phase else None,
        "fine_tune_at": o["fine_tune_at"],
        "learning_rate": lr,
        "fine_tune_learning_rate": lr * o["fine_tune_lr_factor"] if two_phase else None,
        "strategy": o["strategy"],
        "mixed_precision": bool(o["mixed_precision"]),
        "augment": o["augment"],
        "seed": o["seed"],
        "label_smoothing": o["label_smoothing"] if info["loss"] != "multiclass_hinge" else None,
        "loss": info["loss"],
        "weight_decay": o["weight_decay"],
        "class_weights": bool(o["class_weights"]),
        "early_stopping": o["early_stopping"],
        "max_minutes": o["max_minutes"],
        "model_kwargs": o["model_kwargs"] or {},
        "resize": "pad",
        "package_version": _version(),
        "recipe": rec,
        "schedule": {"kind": "warmup_cosine", "warmup": rec["warmup"], "min_lr_factor": rec["min_lr_factor"]},
        "cached_head": None,
        "time_budget": None,
        "ema_momentum": o["ema_momentum"],
    }
    config.update(objective)
    return RunPlan(
        name=name,
        info=info,
        labels=labels,
        run_dir=run_dir,
        write_dir=write_dir,
        phases=phases,
        lr=lr,
        config=config,
        n_train=n_train,
        n_val=n_val,
        is_chief=is_chief,
        task_id=task_id,
        num_workers=num_workers,
        options=options,
    )


def _read_state(plan, quiet):
    """state.json of a run started before (empty for a new run); refuses a folder that holds
    another run."""
    os.makedirs(plan.write_dir, exist_ok=True)
    if not plan.is_chief:
        return {}
    state = runs.read_json(plan.state_path, {})
    old = runs.read_json(os.path.join(plan.write_dir, "config.json"))
    if old:
        keys = ("model", "image_size", "weights", "epochs", "batch_size")
        diff = [k for k in keys if old.get(k) != plan.config.get(k)]
        if old.get("objective", "classify") != plan.config["objective"]:
            diff.append("objective")
        if old.get("dataset_fingerprint", {}).get("sha1") != plan.config["dataset_fingerprint"]["sha1"]:
            diff.append("dataset")
        if diff:
            raise UserError(
                f"{plan.run_dir} holds another run (different {', '.join(diff)}): "
                f"use a new --out folder or delete this one"
            )
        if state.get("finished"):
            _log(f"{plan.run_dir} is already trained; nothing to do", quiet)
            plan.old_config = old
    return state


def _phase_deadlines(plan, t_start, deadline):
    """{phase: deadline or None}; records the split of the time budget in config.json.
    The head phase may use at most ``head_budget`` of a budget; fine-tuning gets the rest
    (and whatever the head phase did not use)."""
    names = [p for p, _ in plan.phases]
    if deadline is None:
        return {p: None for p in names}
    total = deadline - t_start
    out = {p: deadline for p in names}
    split = {"total_minutes": round(total / 60, 3)}
    if "head" in names and "fine_tune" in names:
        out["head"] = t_start + total * float(plan.options["head_budget"])
        split["head_minutes_max"] = round(total * float(plan.options["head_budget"]) / 60, 3)
        split["fine_tune_minutes_min"] = round(total * (1 - float(plan.options["head_budget"])) / 60, 3)
    plan.config["time_budget"] = split
    if plan.is_chief:
        write_json(os.path.join(plan.write_dir, "config.json"), plan.config)
    return out


def build_models(plan, strat, mixed_precision, seed):
    """(net, fit_model) under the strategy's scope; writes labels.json and config.json."""
    import keras

    from amazon_visual import models
    from amazon_visual.models import svm

    policy = strategy_mod.mixed_precision_policy(mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(int(seed))
    with strat.scope():
        if plan.config["objective"] == "retrieval":
            net, fit_model = metric_learning.build_models(plan)
        else:
            net = models.build(
                plan.name,
                len(plan.labels),
                plan.config["image_size"],
                weights=plan.config["weights"],
                **(plan.options["model_kwargs"] or {}),
            )
            fit_model = svm.training_model(net) if plan.name == "svm" else net
    config = plan.config
    config["embedding_dim"] = int(net.get_layer("embedding").output.shape[-1])
    config["mixed_precision_policy"] = policy
    config["strategy_class"] = strategy_mod.strategy_name(strat)
    config["replicas"] = int(strat.num_replicas_in_sync)
    if plan.is_chief:
        write_json(os.path.join(plan.write_dir, "labels.json"), plan.labels)
        write_json(os.path.join(plan.write_dir, "config.json"), config)
    return net, fit_model


@dataclass
class Inputs:
    train_ds: object
    steps: int
    val_ds: object
    val_steps: int
    monitor: str
    class_weight: dict


def make_inputs(plan, data_dir, batch_size, augment, seed, steps_per_epoch, validation_steps, class_weights):
    """The tf.data pipelines, steps per epoch, the monitored metric and class weights."""
    from amazon_visual.training import pipeline

    if plan.config["objective"] == "retrieval":
        return Inputs(**metric_learning.make_inputs(plan, data_dir, augment, seed, steps_per_epoch))
    image_size, n_classes = plan.config["image_size"], len(plan.labels)
    batch_size = int(batch_size)
    shard = plan.num_workers > 1
    train_ds = pipeline.train_dataset(
        data_dir, image_size, batch_size, n_classes, augment=augment, seed=seed, shard_by_data=shard
    )
    steps = int(steps_per_epoch) if steps_per_epoch else pipeline.steps(plan.n_train, batch_size)
    val_ds, val_steps = None, None
    if plan.n_val:
        val_steps = int(validation_steps) if validation_steps else pipeline.steps(plan.n_val, batch_size)
        val_ds = pipeline.eval_dataset(
            data_dir, image_size, batch_size, n_classes, split="validation", repeat=True, shard_by_data=shard
        )
    cw = None
    if class_weights:
        counts = pipeline.label_counts(data_dir, "train")
        present = counts > 0
        cw = {int(i): float(counts.sum() / (present.sum() * c)) for i, c in enumerate(counts) if c > 0}
    return Inputs(train_ds, steps, val_ds, val_steps, "val_accuracy" if plan.n_val else "accuracy", cw)


def run_phases(plan, state, strat, net, fit_model, inputs, deadlines, opts):
    """Runs the phases not done yet, in order; returns True when the time budget stopped them."""
    history_rows = runs.read_history(plan.write_dir) if plan.is_chief else []
    best = max((r.get(inputs.monitor) or -math.inf for r in history_rows), default=None)
    state.setdefault("phases_done", [])
    initial_epoch = 0
    for phase, phase_end in plan.phases:
        phase_weights = os.path.join(plan.write_dir, f"phase_{phase}.weights.h5")
        if phase in state["phases_done"]:
            if os.path.isfile(phase_weights):
                with strat.scope():
                    fit_model.load_weights(phase_weights)
            initial_epoch = phase_end
            continue
        if phase_end <= initial_epoch:
            continue
        if phase == "head" and _use_cached_head(plan, net):
            timer, best = run_cached_head_phase(
                plan, strat, net, fit_model, initial_epoch, phase_end, best, deadlines[phase], opts
            )
        else:
            timer, best = run_phase(
                plan, strat, net, fit_model, inputs, phase, initial_epoch, phase_end, best, deadlines[phase], opts
            )
        fit_model.save_weights(phase_weights)
        state["phases_done"].append(phase)
        write_json(plan.state_path, state)
        initial_epoch = phase_end
        last = deadlines[plan.phases[-1][0]]
        if timer is not None and timer.stopped and (last is None or time.time() > last):
            return True
    return False


def _use_cached_head(plan, net):
    from amazon_visual.training import feature_cache

    wanted = plan.options["cache_features"]
    able = plan.num_workers == 1 and feature_cache.supports_cached_head(net)
    if wanted and not able:
        raise UserError(
            f"--cache-features needs a single worker and the standard head; "
            f"this {plan.name} run lacks one of them: drop --cache-features"
        )
    use = able if wanted is None else bool(wanted)
    plan.config["cached_head"] = (
        {
            "views": int(plan.options["cached_views"]),
            "augmentation": f"views 2..{int(plan.options['cached_views'])}: {plan.options['augment']}",
        }
        if use
        else None
    )
    if plan.is_chief:
        write_json(os.path.join(plan.write_dir, "config.json"), plan.config)
    return use


def _schedule(plan, phase_lr, steps, first_epoch, initial_epoch, phase_end, deadline):
    from amazon_visual.training.callbacks import WarmupCosine

    rec = plan.config["recipe"]
    return WarmupCosine(
        phase_lr,
        total_steps=(phase_end - first_epoch) * steps,
        warmup=rec["warmup"],
        min_factor=rec["min_lr_factor"],
        initial_step=(initial_epoch - first_epoch) * steps,
        deadline=deadline,
        steps_per_epoch=steps,
        first_epoch=first_epoch,
    )


def _phase_first_epoch(plan, phase):
    first = 0
    for name, end in plan.phases:
        if name == phase:
            return first
        first = end
    return first


def run_cached_head_phase(plan, strat, net, fit_model, initial_epoch, phase_end, best, deadline, opts):
    """The head phase on cached backbone features (:mod:`.feature_cache`): one-hot batches for a
    classifier, P x K batches and retrieval validation on cached features for ``--objective retrieval``."""
    from amazon_visual.training import feature_cache, pipeline

    o, config = plan.options, plan.config
    splits = ("train", "validation") if plan.n_val else ("train",)
    cached = feature_cache.cache_views(
        net,
        plan.write_dir,
        opts["data_dir"],
        config["image_size"],
        o["cached_views"],
        o["augment"],
        seed=int(o["seed"]),
        splits=splits,
        log=lambda m: _log(m, opts["quiet"]),
    )
    x, y = cached["train"]
    validation = None
    with strat.scope():
        head = feature_cache.head_model(net)
        phases_mod.set_phase_trainable(net, "head", 0)
        if config["objective"] == "retrieval":
            head_fit, kwargs, validation = metric_learning.cached_head(plan, head, fit_model, cached)
            inputs = Inputs(**kwargs)
        else:
            n_classes, batch = len(plan.labels), config["batch_size"]
            val_ds = val_steps = None
            if plan.n_val:
                vx, vy = cached["validation"]
                val_ds = feature_cache.feature_dataset(vx, vy, n_classes, batch, shuffle=False)
                val_steps = pipeline.steps(len(vx), batch)
            inputs = Inputs(
                feature_cache.feature_dataset(x, y, n_classes, batch, seed=int(o["seed"])),
                pipeline.steps(len(x), batch),
                val_ds,
                val_steps,
                "val_accuracy" if plan.n_val else "accuracy",
                _class_weight(plan, y),
            )
            head_fit = phases_mod.compile_model(
                head, plan.name, plan.lr, o["weight_decay"], o["label_smoothing"], o["ema_momentum"]
            )
    # its own backup folder: the model it fits (features -> head) is not the photo model of a plain head phase
    cbs, timer = _phase_callbacks(
        plan, net, inputs, "head", best, deadline, opts, validation=validation, backup=CACHED_HEAD_BACKUP
    )
    cbs.append(_schedule(plan, plan.lr, inputs.steps, 0, initial_epoch, phase_end, deadline))
    _log(
        f"{plan.name}: phase head on cached features ({len(x)} examples, {o['cached_views']} views), "
        f"epochs {initial_epoch + 1}..{phase_end}, peak lr {plan.lr:g}",
        opts["quiet"],
    )
    head_fit.fit(
        inputs.train_ds,
        epochs=phase_end,
        initial_epoch=initial_epoch,
        steps_per_epoch=inputs.steps,
        validation_data=inputs.val_ds,
        validation_steps=inputs.val_steps,
        class_weight=inputs.class_weight,
        callbacks=cbs,
        verbose=opts["verbose"],
    )
    best = max((r.get(inputs.monitor) or -math.inf for r in runs.read_history(plan.write_dir)), default=best)
    return timer, best


def _class_weight(plan, labels):
    if not plan.options["class_weights"]:
        return None
    import numpy as np

    counts = np.bincount(labels, minlength=len(plan.labels))
    present = counts > 0
    return {int(i): float(counts.sum() / (present.sum() * c)) for i, c in enumerate(counts) if c > 0}


def _phase_callbacks(plan, net, inputs, phase, best, deadline, opts, validation=None, backup=None):
    import keras

    from amazon_visual.training.callbacks import (
        AtomicBackupAndRestore,
        BestModelSaver,
        EpochLogger,
        TimeBudget,
        ema_callbacks,
        tensorboard_available,
    )

    cbs, ema_out = [], None
    if plan.options["ema_momentum"]:  # the EMA weights in the model for validation and the callbacks up to ema_out
        ema_in, ema_out = ema_callbacks()
        cbs.append(ema_in)
    if plan.config["objective"] == "retrieval":  # first: it writes the monitored value into the logs
        cbs.append(validation or metric_learning.validation_callback(plan, net))
    cbs += [
        EpochLogger(plan.write_dir, phase),
        BestModelSaver(plan.write_dir, net, inputs.monitor, best=best, enabled=plan.is_chief),
    ]
    early_stopping = plan.options["early_stopping"]
    if early_stopping:  # before ema_out: its best weights are the EMA ones
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor=inputs.monitor, mode="max", patience=int(early_stopping), restore_best_weights=True
            )
        )
    if ema_out is not None:
        cbs.append(ema_out)
    if opts["callbacks"]:  # after the logger and the saver: an epoch counts as done once its row and model are written
        backup_dir = _backup_dir(plan.run_dir, backup or phase, plan.is_chief, plan.task_id)
        cbs.append(AtomicBackupAndRestore(backup_dir, save_freq=opts["backup_freq"], delete_checkpoint=False))
    timer = None
    if deadline:
        timer = TimeBudget(deadline)
        cbs.append(timer)
    if opts["callbacks"] and not opts["quiet"] and tensorboard_available():
        cbs.append(keras.callbacks.TensorBoard(os.path.join(plan.write_dir, "logs"), update_freq="epoch"))
    return cbs, timer


def run_phase(plan, strat, net, fit_model, inputs, phase, initial_epoch, phase_end, best, deadline, opts):
    """One phase: set what trains, compile, fit from ``initial_epoch`` to ``phase_end``.
    Returns (the time-budget callback or None, the best monitored value so far)."""
    from amazon_visual import models

    o = plan.options
    with strat.scope():
        if phase == "fine_tune":
            phases_mod.set_phase_trainable(
                net, phase, phases_mod.resolve_fine_tune_at(models.find_backbone(net), o["fine_tune_at"], plan.name)
            )
            phase_lr = plan.lr * o["fine_tune_lr_factor"]
        else:
            phases_mod.set_phase_trainable(net, phase, 0)
            phase_lr = plan.lr
        if plan.config["objective"] == "retrieval":
            metric_learning.compile_model(fit_model, plan, phase_lr)
        else:
            phases_mod.compile_model(
                fit_model, plan.name, phase_lr, o["weight_decay"], o["label_smoothing"], o["ema_momentum"]
            )
    cbs, timer = _phase_callbacks(plan, net, inputs, phase, best, deadline, opts)
    cbs.append(
        _schedule(plan, phase_lr, inputs.steps, _phase_first_epoch(plan, phase), initial_epoch, phase_end, deadline)
    )
    config = plan.config
    _log(
        f"{plan.name}: phase {phase}, epochs {initial_epoch + 1}..{phase_end}, peak lr {phase_lr:g}, "
        f"{config['strategy_class']} x{config['replicas']}, policy {config['mixed_precision_policy']}",
        opts["quiet"],
    )
    fit_model._initial_epoch = None
    if plan.num_workers > 1:
        strategy_mod.prebuild_for_multi_worker(fit_model, strat, inputs.train_ds)
    warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset.*")
    fit_model.fit(
        inputs.train_ds,
        epochs=phase_end,
        initial_epoch=initial_epoch,
        steps_per_epoch=inputs.steps,
        validation_data=inputs.val_ds,
        validation_steps=inputs.val_steps,
        class_weight=inputs.class_weight,
        callbacks=cbs,
        verbose=opts["verbose"],
    )
    best = max((r.get(inputs.monitor) or -math.inf for r in runs.read_history(plan.write_dir)), default=best)
    return timer, best


def finish_run(plan, state, net, budget_hit, t_start):
    """Marks the run finished, removes phase weights and backups, draws the learning curves."""
    write_dir = plan.write_dir
    if not os.path.isfile(os.path.join(write_dir, "model.keras")):
        runs.save_model(net, os.path.join(write_dir, "model.keras"))
    state["finished"] = True
    state["stopped_by_time_budget"] = budget_hit
    state["seconds"] = round(time.time() - t_start, 1) + float(state.get("seconds", 0.0))
    write_json(plan.state_path, state)
    for phase, _ in plan.phases:
        weights_file = os.path.join(write_dir, f"phase_{phase}.weights.h5")
        if os.path.isfile(weights_file):
            os.remove(weights_file)
    for phase in [p for p, _ in plan.phases] + [CACHED_HEAD_BACKUP]:
        shutil.rmtree(_backup_dir(plan.run_dir, phase, plan.is_chief, plan.task_id), ignore_errors=True)
    from amazon_visual.training import feature_cache

    feature_cache.remove(write_dir)
    try:  # every worker removes its own folder, then the parent when it is empty
        os.rmdir(os.path.join(plan.run_dir, "backup"))
    except OSError:
        pass
    if plan.is_chief:
        from amazon_visual.evaluation import plots

        hist = runs.read_history(write_dir)
        if hist:
            plots.learning_curves({plan.name: hist}, os.path.join(write_dir, "learning_curves.png"))


CACHED_HEAD_BACKUP = "head_cached"  # RUN_DIR/backup/head_cached: the head phase on cached features


def _backup_dir(run_dir, phase, is_chief, task_id):
    """BackupAndRestore folder: RUN_DIR/backup/<phase> (chief), <phase>-worker<id> (other workers)."""
    return os.path.join(run_dir, "backup", phase if is_chief else f"{phase}-worker{task_id}")


def _version():
    from amazon_visual import __version__

    return __version__
