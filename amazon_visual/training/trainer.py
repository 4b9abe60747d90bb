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
from amazon_visual.training import phases as phases_mod
from amazon_visual.training import runs
from amazon_visual.training import strategy as strategy_mod


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


def train(data_dir, model="resnet50", out="runs/run", weights="none", image_size=224, epochs=10, batch_size=32,
          fine_tune_at=None, strategy="auto", mixed_precision=False, augment=None, seed=0,
          learning_rate=None, fine_tune_lr_factor=0.1, head_epochs=None, label_smoothing=0.1,
          weight_decay=1e-4, class_weights=True, early_stopping=5, max_minutes=None, steps_per_epoch=None,
          validation_steps=None, backup_freq="epoch", quiet=False, callbacks=True, model_kwargs=None,
          verbose=None):
    """Trains ``model`` on DATA_DIR and writes the run folder ``out``; returns a summary dict.

    Args:
      data_dir: folder written by ``amazon-visual build-data``.
      model: ``svm``, ``alexnet``, ``vgg16``, ``vgg16_bn``, ``resnet50`` or any
        keras.applications name (``amazon_visual.models.available_models()``).
      weights: ``"none"`` (from scratch, one phase), ``"imagenet"`` or a weights file
        (two phases: head with frozen backbone, then fine-tuning from ``fine_tune_at``).
      epochs: total epochs over both phases; ``head_epochs`` of them (default a third,
        at least 1) train the head only.
      batch_size: the global batch, split across replicas.
      strategy: auto | default | one_device | mirrored | multi_worker.
      mixed_precision: float16 on GPU, bfloat16 on CPU (the last layer stays float32).
      augment: random flip/translation/zoom/rotation/contrast in the input pipeline
        (default: on for the CNNs, off for svm, the course's linear classifier on raw pixels).
      max_minutes: time budget: stop after the batch that passes it (that last, partial
        epoch is validated and logged).
      steps_per_epoch / validation_steps: default one pass over the split.
      backup_freq: ``"epoch"`` or a number of batches for BackupAndRestore.
      quiet: no progress output. callbacks: False drops TensorBoard and BackupAndRestore
        (a quick, not resumable run; model.keras, history.csv are still written).
      model_kwargs: extra arguments of :func:`amazon_visual.models.build` (e.g. width).
    """
    if verbose is None:
        verbose = 0 if quiet else 2

    if verbose is None:
        verbose = 0 if quiet else 2
    t_start = time.time()
    # The strategy first: MultiWorkerMirroredStrategy must exist before any TF op runs.
    strat = strategy_mod.select_strategy(strategy)
    plan = plan_run(data_dir, model, out, weights, image_size, epochs, batch_size, strat, dict(
        fine_tune_at=fine_tune_at, strategy=strategy, mixed_precision=mixed_precision, augment=augment, seed=seed,
        learning_rate=learning_rate, fine_tune_lr_factor=fine_tune_lr_factor, head_epochs=head_epochs,
        label_smoothing=label_smoothing, weight_decay=weight_decay, class_weights=class_weights,
        early_stopping=early_stopping, max_minutes=max_minutes, model_kwargs=model_kwargs))
    state = _read_state(plan, quiet)
    if plan.old_config is not None:  # finished before
        return runs.summary(plan.run_dir, plan.old_config, state, time.time() - t_start)

    import keras

    policy_before = keras.mixed_precision.global_policy().name
    try:
        net, fit_model = build_models(plan, strat, mixed_precision, seed)
        inputs = make_inputs(plan, data_dir, batch_size, augment=plan.config["augment"], seed=seed,
                             steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                             class_weights=class_weights)
        deadline = t_start + float(max_minutes) * 60 if max_minutes else None
        if deadline and plan.num_workers > 1:
            _log("--max-minutes is ignored under multi-worker training (workers must agree)", quiet)
            deadline = None
        budget_hit = run_phases(plan, state, strat, net, fit_model, inputs, deadline,
                                dict(callbacks=callbacks, quiet=quiet, verbose=verbose, backup_freq=backup_freq))
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
    if options["augment"] is None:
        options["augment"] = name != "svm"
    image_size, epochs, batch_size = int(image_size), int(epochs), int(batch_size)
    _check_arguments(name, info, weights_n, image_size, epochs, batch_size)

    fingerprint = runs.dataset_fingerprint(data_dir)  # UserError when not a dataset
    labels = fingerprint["class_names"]
    n_train = fingerprint["splits"].get("train", 0)
    n_val = fingerprint["splits"].get("validation", 0)
    if n_train == 0:
        raise UserError(f"{data_dir} has no training examples: rebuild it with a train split")
    if len(labels) < 2:
        raise UserError(f"{data_dir} has {len(labels)} class: a classifier needs at least 2")

    run_dir = os.path.abspath(os.fspath(out))
    write_dir = run_dir if is_chief else tempfile.mkdtemp(prefix=f"amazon-visual-worker{task_id}-")
    phases = _choose_phases(name, weights_n, epochs, options["head_epochs"])
    two_phase = phases[0][0] == "head"
    o = options
    lr = float(o["learning_rate"]) if o["learning_rate"] else phases_mod.default_lr(name, two_phase)
    config = {
        "model": name, "family": info["family"], "image_size": image_size,
        "preprocessing": info["preprocessing"], "embedding_layer": "embedding", "embedding_dim": None,
        "num_classes": len(labels), "weights": weights_n if weights_n in (None, "imagenet") else os.path.abspath(weights_n),
        "data_dir": os.path.abspath(os.fspath(data_dir)), "dataset_fingerprint": fingerprint,
        "epochs": epochs, "batch_size": batch_size, "phases": [p for p, _ in phases],
        "head_epochs": phases[0][1] if two_phase else None, "fine_tune_at": o["fine_tune_at"],
        "learning_rate": lr, "fine_tune_learning_rate": lr * o["fine_tune_lr_factor"] if two_phase else None,
        "strategy": o["strategy"], "mixed_precision": bool(o["mixed_precision"]), "augment": bool(o["augment"]),
        "seed": o["seed"], "label_smoothing": o["label_smoothing"] if info["loss"] != "multiclass_hinge" else None,
        "loss": info["loss"], "weight_decay": o["weight_decay"], "class_weights": bool(o["class_weights"]),
        "early_stopping": o["early_stopping"], "max_minutes": o["max_minutes"], "model_kwargs": o["model_kwargs"] or {},
        "resize": "pad", "package_version": _version(),
    }
    return RunPlan(name=name, info=info, labels=labels, run_dir=run_dir, write_dir=write_dir, phases=phases, lr=lr,
                   config=config, n_train=n_train, n_val=n_val, is_chief=is_chief, task_id=task_id,
                   num_workers=num_workers, options=options)


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
        if old.get("dataset_fingerprint", {}).get("sha1") != plan.config["dataset_fingerprint"]["sha1"]:
            diff.append("dataset")
        if diff:
            raise UserError(f"{plan.run_dir} holds another run (different {', '.join(diff)}): "
                            f"use a new --out folder or delete this one")
        if state.get("finished"):
            _log(f"{plan.run_dir} is already trained; nothing to do", quiet)
            plan.old_config = old
    return state


def build_models(plan, strat, mixed_precision, seed):
    """(net, fit_model) under the strategy's scope; writes labels.json and config.json."""
    import keras

    from amazon_visual import models
    from amazon_visual.models import svm

    policy = strategy_mod.mixed_precision_policy(mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(int(seed))
    with strat.scope():
        net = models.build(plan.name, len(plan.labels), plan.config["image_size"], weights=plan.config["weights"],
                           **(plan.options["model_kwargs"] or {}))
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

    image_size, n_classes = plan.config["image_size"], len(plan.labels)
    batch_size = int(batch_size)
    shard = plan.num_workers > 1
    train_ds = pipeline.train_dataset(data_dir, image_size, batch_size, n_classes, augment=augment,
                                      seed=seed, shard_by_data=shard)
    steps = int(steps_per_epoch) if steps_per_epoch else pipeline.steps(plan.n_train, batch_size)
    val_ds, val_steps = None, None
    if plan.n_val:
        val_steps = int(validation_steps) if validation_steps else pipeline.steps(plan.n_val, batch_size)
        val_ds = pipeline.eval_dataset(data_dir, image_size, batch_size, n_classes, split="validation",
                                       repeat=True, shard_by_data=shard)
    cw = None
    if class_weights:
        counts = pipeline.label_counts(data_dir, "train")
        present = counts > 0
        cw = {int(i): float(counts.sum() / (present.sum() * c)) for i, c in enumerate(counts) if c > 0}
    return Inputs(train_ds, steps, val_ds, val_steps, "val_accuracy" if plan.n_val else "accuracy", cw)


def run_phases(plan, state, strat, net, fit_model, inputs, deadline, opts):
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
        timer, best = run_phase(plan, strat, net, fit_model, inputs, phase, initial_epoch, phase_end, best,
                                deadline, opts)
        fit_model.save_weights(phase_weights)
        state["phases_done"].append(phase)
        write_json(plan.state_path, state)
        initial_epoch = phase_end
        if timer is not None and timer.stopped:
            return True
    return False


def _phase_callbacks(plan, net, inputs, phase, best, deadline, opts):
    import keras

    from amazon_visual.training.callbacks import (AtomicBackupAndRestore, BestModelSaver, EpochLogger, TimeBudget,
                                                  tensorboard_available)

    cbs = [EpochLogger(plan.write_dir, phase),
           BestModelSaver(plan.write_dir, net, inputs.monitor, best=best, enabled=plan.is_chief)]
    if opts["callbacks"]:  # after the logger and the saver: an epoch counts as done once its row and model are written
        backup_dir = _backup_dir(plan.run_dir, phase, plan.is_chief, plan.task_id)
        cbs.append(AtomicBackupAndRestore(backup_dir, save_freq=opts["backup_freq"], delete_checkpoint=False))
    early_stopping = plan.options["early_stopping"]
    if early_stopping:
        cbs.append(keras.callbacks.EarlyStopping(monitor=inputs.monitor, mode="max", patience=int(early_stopping),
                                                 restore_best_weights=True))
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
            phases_mod.set_phase_trainable(net, phase, phases_mod.resolve_fine_tune_at(
                models.find_backbone(net), o["fine_tune_at"], plan.name))
            phase_lr = plan.lr * o["fine_tune_lr_factor"]
        else:
            phases_mod.set_phase_trainable(net, phase, 0)
            phase_lr = plan.lr
        phases_mod.compile_model(fit_model, plan.name, phase_lr, o["weight_decay"], o["label_smoothing"])
    cbs, timer = _phase_callbacks(plan, net, inputs, phase, best, deadline, opts)
    config = plan.config
    _log(f"{plan.name}: phase {phase}, epochs {initial_epoch + 1}..{phase_end}, lr {phase_lr:g}, "
         f"{config['strategy_class']} x{config['replicas']}, policy {config['mixed_precision_policy']}", opts["quiet"])
    fit_model._initial_epoch = None
    if plan.num_workers > 1:
        strategy_mod.prebuild_for_multi_worker(fit_model, strat, inputs.train_ds)
    warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset.*")
    fit_model.fit(inputs.train_ds, epochs=phase_end, initial_epoch=initial_epoch, steps_per_epoch=inputs.steps,
                  validation_data=inputs.val_ds, validation_steps=inputs.val_steps, class_weight=inputs.class_weight,
                  callbacks=cbs, verbose=opts["verbose"])
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
    for phase, _ in plan.phases:
        shutil.rmtree(_backup_dir(plan.run_dir, phase, plan.is_chief, plan.task_id), ignore_errors=True)
    try:  # every worker removes its own folder, then the parent when it is empty
        os.rmdir(os.path.join(plan.run_dir, "backup"))
    except OSError:
        pass
    if plan.is_chief:
        from amazon_visual.evaluation import plots

        hist = runs.read_history(write_dir)
        if hist:
            plots.learning_curves({plan.name: hist}, os.path.join(write_dir, "learning_curves.png"))


def _backup_dir(run_dir, phase, is_chief, task_id):
    """BackupAndRestore folder: RUN_DIR/backup/<phase> (chief), <phase>-worker<id> (other workers)."""
    return os.path.join(run_dir, "backup", phase if is_chief else f"{phase}-worker{task_id}")


def _version():
    from amazon_visual import __version__

    return __version__
