"""Training: strategy, input pipeline, callbacks, the two transfer-learning phases.

``train(data_dir, model, out, ...)`` writes a RUN_DIR (see the contract):
``model.keras`` (best by validation accuracy), ``labels.json``, ``config.json``,
``history.csv``, ``logs/`` (TensorBoard), ``backup/`` (BackupAndRestore) and
``state.json`` (completed phases), and resumes a killed run when started again with
the same arguments. ``load_run(run_dir)`` returns ``(model, config, labels)``.
"""
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings

from amazon_visual.errors import UserError

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")
DEFAULT_FINE_TUNE_AT = {"resnet50": "conv5_block1", "vgg16": "block5_conv1", "vgg16_bn": "block5_conv1",
                        "vgg19": "block5_conv1", "resnet101": "conv5_block1", "resnet152": "conv5_block1"}
HISTORY_FIELDS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")


# --------------------------------------------------------------------------- small helpers
from amazon_visual.atomic import write_json as _write_json  # noqa: E402


def _read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def _log(msg, quiet=False):
    if not quiet:
        print(f"[amazon-visual train] {msg}", file=sys.stderr, flush=True)


def read_history(run_dir):
    """Rows of ``history.csv`` as dicts with float values (epoch as int)."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out = {}
            for k, v in row.items():
                if k == "phase":
                    out[k] = v
                elif k == "epoch":
                    out[k] = int(float(v))
                else:
                    try:
                        out[k] = float(v) if v not in ("", None) else None
                    except ValueError:
                        out[k] = None
            rows.append(out)
    return rows


def _write_history(run_dir, rows):
    path = os.path.join(run_dir, "history.csv")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in sorted(rows, key=lambda r: r["epoch"]):
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_FIELDS})
    os.replace(tmp, path)


# --------------------------------------------------------------------------- dataset fingerprint
def dataset_fingerprint(data_dir):
    """{"class_names", "splits": {split: n}, "sha1"}: identifies a dataset's labels and size."""
    from amazon_visual import data

    names = data.class_names(data_dir)
    splits = {s: data.num_examples(data_dir, s) for s in data.SPLITS}
    digest = hashlib.sha1(json.dumps([names, splits], sort_keys=True).encode()).hexdigest()[:16]
    return {"class_names": names, "splits": splits, "sha1": digest}


def check_same_labels(run_dir, labels, data_dir):
    """UserError when DATA_DIR's classes differ from the run's labels."""
    from amazon_visual import data

    names = data.class_names(data_dir)
    if list(names) != list(labels):
        raise UserError(f"run {run_dir} was trained on other labels ({len(labels)} classes: "
                        f"{', '.join(labels[:5])}...) than dataset {data_dir} ({len(names)} classes: "
                        f"{', '.join(names[:5])}...): evaluate it on the dataset it was trained on")


# --------------------------------------------------------------------------- strategy / precision
def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except ValueError:
        raise UserError("TF_CONFIG is not valid JSON: see the multi-worker section of the README") from None
    return cfg


def select_strategy(name="auto"):
    """Returns a ``tf.distribute.Strategy``.

    ``auto``: MultiWorkerMirroredStrategy when ``TF_CONFIG`` is set, MirroredStrategy with
    several GPUs, OneDeviceStrategy with one GPU, the default strategy otherwise.
    ``mirrored`` on a machine without GPUs mirrors over the logical CPU devices.
    """
    import tensorflow as tf

    name = (name or "auto").lower().replace("-", "_")
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if _tf_config():
            name = "multi_worker"
        else:
            gpus = tf.config.list_physical_devices("GPU")
            name = "mirrored" if len(gpus) > 1 else "one_device" if len(gpus) == 1 else "default"
    if name == "multi_worker":
        if not _tf_config():
            raise UserError("--strategy multi_worker needs TF_CONFIG (cluster and task) in the environment")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def _strategy_name(strategy):
    return type(strategy).__name__


def _worker_info(strategy):
    """(is_chief, task_type, task_id, num_workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not _tf_config():
        return True, None, None, 1
    task_type, task_id = resolver.task_type, resolver.task_id
    cluster = resolver.cluster_spec().as_dict()
    num_workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    if "chief" in cluster:
        is_chief = task_type == "chief"
    else:
        is_chief = task_type in (None, "worker") and (task_id or 0) == 0
    return is_chief, task_type, task_id, num_workers


def mixed_precision_policy(enabled):
    """"mixed_float16" on GPU, "mixed_bfloat16" on CPU, "float32" when disabled."""
    if not enabled:
        return "float32"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


# --------------------------------------------------------------------------- callbacks
def _callbacks_module():
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """Writes history.csv atomically, one row per epoch (a repeated epoch after a
        resume replaces its row)."""

        def __init__(self, run_dir, phase):
            super().__init__()
            self.run_dir, self.phase = run_dir, phase
            self._t0 = None

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch, "phase": self.phase, "seconds": round(time.time() - (self._t0 or time.time()), 2)}
            for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if k in logs:
                    row[k] = float(logs[k])
            try:
                row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            except Exception:
                row["learning_rate"] = None
            rows = [r for r in read_history(self.run_dir) if r["epoch"] != epoch] + [row]
            _write_history(self.run_dir, rows)

    class BestModelSaver(keras.callbacks.Callback):
        """Saves ``export_model`` to model.keras when the monitored value improves; the
        best value so far is read back from history.csv, so it survives a restart."""

        def __init__(self, run_dir, export_model, monitor, best=None, enabled=True):
            super().__init__()
            self.run_dir, self.export_model, self.monitor = run_dir, export_model, monitor
            self.best = -math.inf if best is None else best
            self.enabled = enabled

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.monitor)
            if value is None or not self.enabled:
                return
            value = float(value)
            if value > self.best or not os.path.exists(os.path.join(self.run_dir, "model.keras")):
                self.best = max(value, self.best)
                save_model(self.export_model, os.path.join(self.run_dir, "model.keras"))

    class TimeBudget(keras.callbacks.Callback):
        """Stops training after the batch that passes the deadline (the partial epoch is
        still validated, logged and counted)."""

        def __init__(self, deadline):
            super().__init__()
            self.deadline = deadline
            self.stopped = False
            self._t0 = None

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.time()

        def on_train_batch_end(self, batch, logs=None):
            if time.time() > self.deadline:  # an epoch longer than the budget: stop after this batch
                self.stopped = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if time.time() > self.deadline:
                self.stopped = True
                self.model.stop_training = True

    return EpochLogger, BestModelSaver, TimeBudget


def _tensorboard_available():
    """TensorBoard logs need the ``tensorboard`` package (``pip install tensorboard``)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def save_model(model, path):
    """Saves a Keras model atomically (temporary ``.keras`` file, then ``os.replace``)."""
    tmp = os.path.join(os.path.dirname(path), f"model.tmp-{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- phases
def _resolve_fine_tune_at(backbone, fine_tune_at, model_name):
    layers = backbone.layers
    if fine_tune_at is None or fine_tune_at == "":
        fine_tune_at = DEFAULT_FINE_TUNE_AT.get(model_name)
        if fine_tune_at is None:
            return int(len(layers) * 0.7)
    spec = str(fine_tune_at)
    if spec.lstrip("-").isdigit():
        idx = int(spec)
        if idx < 0:
            idx += len(layers)
        if not 0 <= idx < len(layers):
            raise UserError(f"--fine-tune-at {spec} is out of range: the {model_name} backbone has {len(layers)} layers")
        return idx
    for i, layer in enumerate(layers):
        if layer.name == spec:
            return i
    for i, layer in enumerate(layers):
        if layer.name.startswith(spec):
            return i
    examples = ", ".join(sorted({l.name.split("_")[0] for l in layers if "_" in l.name})[:8])
    raise UserError(f"--fine-tune-at {spec!r} names no layer of the {model_name} backbone: give a layer "
                    f"name, a name prefix (e.g. {examples}) or an index 0..{len(layers) - 1}")


def _set_phase_trainable(model, phase, fine_tune_from):
    import keras

    from amazon_visual.models import find_backbone

    backbone = find_backbone(model)
    if backbone is None:
        return
    if phase == "head":
        backbone.trainable = False
    elif phase == "fine_tune":
        backbone.trainable = True
        for i, layer in enumerate(backbone.layers):
            frozen = i < fine_tune_from or isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = not frozen
    else:
        backbone.trainable = True


def _make_optimizer(name, lr, weight_decay):
    import keras

    if name == "svm" or not weight_decay:
        return keras.optimizers.Adam(learning_rate=lr)
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "moving"])
    return opt


def compile_model(fit_model, name, learning_rate, weight_decay=1e-4, label_smoothing=0.1):
    """Compiles a model as ``train`` does: multiclass hinge for svm (on its scores model,
    see :func:`amazon_visual.models.svm.training_model`), else categorical cross-entropy
    with label smoothing; AdamW (Adam for svm, whose L2 decay is a kernel regularizer);
    metric ``accuracy`` on one-hot labels."""
    import keras

    from amazon_visual import models

    if models.model_info(name)["loss"] == "multiclass_hinge":
        from amazon_visual.models.losses import MulticlassHinge

        loss = MulticlassHinge()
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing or 0.0)
    fit_model.compile(optimizer=_make_optimizer(name, learning_rate, weight_decay), loss=loss,
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return fit_model


def _prebuild_for_multi_worker(fit_model, strat, train_ds):
    """Keras 3.x builds metrics/optimizer from a batch reduced across replicas, which fails
    under MultiWorkerMirroredStrategy (PerReplica -> Tensor). Build them here from one
    local batch instead, then skip that step in fit/evaluate."""
    x, y = next(iter(train_ds.take(1)))
    with strat.scope():
        fit_model._symbolic_build(data_batch=(x, y, None))
    fit_model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    _patch_keras_multi_worker_reduce()


def _patch_keras_multi_worker_reduce():
    """Keras 3.x reduces the scalar logs of a step under MultiWorkerMirroredStrategy with
    ``strategy.reduce("MEAN", v, axis=0)``, which fails on scalars; reduce them with
    ``axis=None`` (the mean over replicas) instead. Other cases are left to Keras."""
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        return
    original = tf_trainer.reduce_per_replica
    if getattr(original, "_amazon_visual_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            from keras.src import tree

            def _mean(v):
                if not tf_trainer._is_per_replica_instance(v):
                    return v
                rank = strategy.experimental_local_results(v)[0].shape.rank
                return strategy.reduce("MEAN", v, axis=None if rank == 0 else 0)

            return tree.map_structure(_mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica._amazon_visual_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def _default_lr(name, two_phase):
    if two_phase:
        return 1e-3
    return 1e-4 if name in ("vgg16", "vgg19", "alexnet") else 1e-3


# --------------------------------------------------------------------------- train
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
    t_start = time.time()
    # The strategy first: MultiWorkerMirroredStrategy must exist before any TF op runs.
    strat = select_strategy(strategy)
    is_chief, task_type, task_id, num_workers = _worker_info(strat)

    import keras

    from amazon_visual import models, pipeline
    from amazon_visual.models import applications, svm

    name = models._check_name(model)
    info = models.model_info(name)
    weights_n = applications.normalize_weights(weights)
    if weights_n is not None and not info["pretrainable"]:
        raise UserError(f"{name} has no pretrained weights: use --weights none")
    if augment is None:
        augment = name != "svm"
    image_size, epochs, batch_size = int(image_size), int(epochs), int(batch_size)
    if image_size < 16:
        raise UserError(f"--image-size {image_size} is too small: use at least 32")
    if epochs < 1 or batch_size < 1:
        raise UserError("--epochs and --batch-size must be at least 1")

    fingerprint = dataset_fingerprint(data_dir)  # UserError when not a dataset
    labels = fingerprint["class_names"]
    n_train = fingerprint["splits"].get("train", 0)
    n_val = fingerprint["splits"].get("validation", 0)
    if n_train == 0:
        raise UserError(f"{data_dir} has no training examples: rebuild it with a train split")
    if len(labels) < 2:
        raise UserError(f"{data_dir} has {len(labels)} class: a classifier needs at least 2")

    run_dir = os.path.abspath(os.fspath(out))
    write_dir = run_dir if is_chief else tempfile.mkdtemp(prefix=f"amazon-visual-worker{task_id}-")
    os.makedirs(write_dir, exist_ok=True)
    two_phase = weights_n is not None and name not in ("svm", "alexnet")
    if two_phase and epochs >= 2:
        head_epochs = int(head_epochs) if head_epochs else max(1, epochs // 3)
        head_epochs = min(head_epochs, epochs - 1)
        phases = [("head", head_epochs), ("fine_tune", epochs)]
    elif two_phase:
        phases = [("head", epochs)]
    else:
        phases = [("train", epochs)]
    lr = float(learning_rate) if learning_rate else _default_lr(name, two_phase)

    config = {
        "model": name, "family": info["family"], "image_size": image_size,
        "preprocessing": info["preprocessing"], "embedding_layer": "embedding", "embedding_dim": None,
        "num_classes": len(labels), "weights": weights_n if weights_n in (None, "imagenet") else os.path.abspath(weights_n),
        "data_dir": os.path.abspath(os.fspath(data_dir)), "dataset_fingerprint": fingerprint,
        "epochs": epochs, "batch_size": batch_size, "phases": [p for p, _ in phases],
        "head_epochs": phases[0][1] if two_phase else None, "fine_tune_at": fine_tune_at,
        "learning_rate": lr, "fine_tune_learning_rate": lr * fine_tune_lr_factor if two_phase else None,
        "strategy": strategy, "mixed_precision": bool(mixed_precision), "augment": bool(augment),
        "seed": seed, "label_smoothing": label_smoothing if info["loss"] != "multiclass_hinge" else None,
        "loss": info["loss"], "weight_decay": weight_decay, "class_weights": bool(class_weights),
        "early_stopping": early_stopping, "max_minutes": max_minutes, "model_kwargs": model_kwargs or {},
        "resize": "pad", "package_version": _version(),
    }
    state_path = os.path.join(write_dir, "state.json")
    state = _read_json(state_path, {}) if is_chief else {}
    old = _read_json(os.path.join(write_dir, "config.json")) if is_chief else None
    if old:
        keys = ("model", "image_size", "weights", "epochs", "batch_size")
        diff = [k for k in keys if old.get(k) != config.get(k)]
        if old.get("dataset_fingerprint", {}).get("sha1") != fingerprint["sha1"]:
            diff.append("dataset")
        if diff:
            raise UserError(f"{run_dir} holds another run (different {', '.join(diff)}): "
                            f"use a new --out folder or delete this one")
        if state.get("finished"):
            _log(f"{run_dir} is already trained; nothing to do", quiet)
            return _summary(run_dir, old, state, time.time() - t_start)

    policy_before = keras.mixed_precision.global_policy().name
    policy = mixed_precision_policy(mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(int(seed))
    try:
        with strat.scope():
            net = models.build(name, len(labels), image_size, weights=weights_n, **(model_kwargs or {}))
            fit_model = svm.training_model(net) if name == "svm" else net
        config["embedding_dim"] = int(net.get_layer("embedding").output.shape[-1])
        config["mixed_precision_policy"] = policy
        config["strategy_class"] = _strategy_name(strat)
        config["replicas"] = int(strat.num_replicas_in_sync)
        if is_chief:
            _write_json(os.path.join(write_dir, "labels.json"), labels)
            _write_json(os.path.join(write_dir, "config.json"), config)

        shard = num_workers > 1
        train_ds = pipeline.train_dataset(data_dir, image_size, batch_size, len(labels), augment=augment,
                                          seed=seed, shard_by_data=shard)
        steps = int(steps_per_epoch) if steps_per_epoch else pipeline.steps(n_train, batch_size)
        val_ds, val_steps = None, None
        if n_val:
            val_steps = int(validation_steps) if validation_steps else pipeline.steps(n_val, batch_size)
            val_ds = pipeline.eval_dataset(data_dir, image_size, batch_size, len(labels), split="validation",
                                           repeat=True, shard_by_data=shard)
        monitor = "val_accuracy" if n_val else "accuracy"
        cw = None
        if class_weights:
            counts = pipeline.label_counts(data_dir, "train")
            present = counts > 0
            cw = {int(i): float(counts.sum() / (present.sum() * c)) for i, c in enumerate(counts) if c > 0}

        EpochLogger, BestModelSaver, TimeBudget = _callbacks_module()
        history_rows = read_history(write_dir) if is_chief else []
        best = max((r.get(monitor) or -math.inf for r in history_rows), default=None)
        deadline = t_start + float(max_minutes) * 60 if max_minutes else None
        if deadline and num_workers > 1:
            _log("--max-minutes is ignored under multi-worker training (workers must agree)", quiet)
            deadline = None
        state.setdefault("phases_done", [])
        budget_hit = False
        initial_epoch = 0
        for phase, phase_end in phases:
            phase_weights = os.path.join(write_dir, f"phase_{phase}.weights.h5")
            if phase in state["phases_done"]:
                if os.path.isfile(phase_weights):
                    with strat.scope():
                        fit_model.load_weights(phase_weights)
                initial_epoch = phase_end
                continue
            if phase_end <= initial_epoch:
                continue
            with strat.scope():
                if phase == "fine_tune":
                    _set_phase_trainable(net, phase, _resolve_fine_tune_at(
                        models.find_backbone(net), fine_tune_at, name))
                    phase_lr = lr * fine_tune_lr_factor
                else:
                    _set_phase_trainable(net, phase, 0)
                    phase_lr = lr
                compile_model(fit_model, name, phase_lr, weight_decay, label_smoothing)
            cbs = []
            if callbacks:
                backup_dir = _backup_dir(run_dir, phase, is_chief, task_id)
                cbs.append(keras.callbacks.BackupAndRestore(backup_dir, save_freq=backup_freq,
                                                            delete_checkpoint=False))
            cbs.append(EpochLogger(write_dir, phase))
            cbs.append(BestModelSaver(write_dir, net, monitor, best=best, enabled=is_chief))
            if early_stopping:
                cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=int(early_stopping),
                                                         restore_best_weights=True))
            timer = None
            if deadline:
                timer = TimeBudget(deadline)
                cbs.append(timer)
            if callbacks and not quiet and _tensorboard_available():
                cbs.append(keras.callbacks.TensorBoard(os.path.join(write_dir, "logs"), update_freq="epoch"))
            _log(f"{name}: phase {phase}, epochs {initial_epoch + 1}..{phase_end}, lr {phase_lr:g}, "
                 f"{config['strategy_class']} x{config['replicas']}, policy {policy}", quiet)
            fit_model._initial_epoch = None
            if num_workers > 1:
                _prebuild_for_multi_worker(fit_model, strat, train_ds)
            warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset.*")
            fit_model.fit(train_ds, epochs=phase_end, initial_epoch=initial_epoch, steps_per_epoch=steps,
                          validation_data=val_ds, validation_steps=val_steps, class_weight=cw,
                          callbacks=cbs, verbose=verbose)
            best = max((r.get(monitor) or -math.inf for r in read_history(write_dir)), default=best)
            fit_model.save_weights(phase_weights)
            state["phases_done"].append(phase)
            _write_json(state_path, state)
            initial_epoch = phase_end
            if timer is not None and timer.stopped:
                budget_hit = True
                break
        if not os.path.isfile(os.path.join(write_dir, "model.keras")):
            save_model(net, os.path.join(write_dir, "model.keras"))
        state["finished"] = True
        state["stopped_by_time_budget"] = budget_hit
        state["seconds"] = round(time.time() - t_start, 1) + float(state.get("seconds", 0.0))
        _write_json(state_path, state)
        for phase, _ in phases:
            weights_file = os.path.join(write_dir, f"phase_{phase}.weights.h5")
            if os.path.isfile(weights_file):
                os.remove(weights_file)
        for phase, _ in phases:
            shutil.rmtree(_backup_dir(run_dir, phase, is_chief, task_id), ignore_errors=True)
        try:  # every worker removes its own folder, then the parent when it is empty
            os.rmdir(os.path.join(run_dir, "backup"))
        except OSError:
            pass
        if is_chief:
            from amazon_visual import plots

            hist = read_history(write_dir)
            if hist:
                plots.learning_curves({name: hist}, os.path.join(write_dir, "learning_curves.png"))
    finally:
        keras.mixed_precision.set_global_policy(policy_before)
    if not is_chief:
        shutil.rmtree(write_dir, ignore_errors=True)
        return {"run_dir": run_dir, "chief": False, "task_id": task_id}
    return _summary(run_dir, config, state, time.time() - t_start)


def _backup_dir(run_dir, phase, is_chief, task_id):
    """BackupAndRestore folder: RUN_DIR/backup/<phase> (chief), <phase>-worker<id> (other workers)."""
    return os.path.join(run_dir, "backup", phase if is_chief else f"{phase}-worker{task_id}")


def _summary(run_dir, config, state, seconds):
    hist = read_history(run_dir)
    val = [r.get("val_accuracy") for r in hist if r.get("val_accuracy") is not None]
    return {
        "run_dir": run_dir, "model": config["model"], "image_size": config["image_size"],
        "weights": config["weights"], "epochs_run": len(hist), "epochs": config["epochs"],
        "best_val_accuracy": max(val) if val else None,
        "final_accuracy": hist[-1].get("accuracy") if hist else None,
        "phases": state.get("phases_done", []), "stopped_by_time_budget": state.get("stopped_by_time_budget", False),
        "seconds": round(seconds, 1), "history": hist, "chief": True,
    }


def _version():
    from amazon_visual import __version__

    return __version__


# --------------------------------------------------------------------------- load
def load_run(run_dir):
    """Loads a RUN_DIR: returns ``(keras.Model, config dict, labels list)``."""
    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, "model.keras")
    for f in ("model.keras", "config.json", "labels.json"):
        if not os.path.isfile(os.path.join(run_dir, f)):
            raise UserError(f"{run_dir} is not a training run (no {f}): run amazon-visual train --out {run_dir} first")
    import keras

    import amazon_visual.models.layers  # noqa: F401  (registers custom objects)
    import amazon_visual.models.losses  # noqa: F401

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise UserError(f"{path} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                        f"retrain the run") from None
    config = _read_json(os.path.join(run_dir, "config.json"))
    labels = _read_json(os.path.join(run_dir, "labels.json"))
    return model, config, labels
