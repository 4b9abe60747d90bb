"""Keras callbacks of a training run: the history log, the best-model saver, the time budget."""

import math
import os
import time

import keras

from amazon_visual.atomic import write_json
from amazon_visual.training.runs import RETRIEVAL_FIELDS, read_history, save_model, write_history


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
        for k in ("loss", "accuracy", "val_loss", "val_accuracy", *RETRIEVAL_FIELDS):
            if k in logs:
                row[k] = float(logs[k])
        try:
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:
            row["learning_rate"] = None
        rows = [r for r in read_history(self.run_dir) if r["epoch"] != epoch] + [row]
        write_history(self.run_dir, rows)


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


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup files are replaced atomically. Keras writes
    ``latest.weights.h5`` in place: a kill during that write left a truncated file that made
    every rerun fail. Here the weights go to a temporary file moved into place, then the
    epoch counter (a kill in between redoes one epoch, never skips one)."""

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = os.path.join(self.backup_dir, f"latest.tmp-{os.getpid()}.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, self._weights_path)
        write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen})


class TimeBudget(keras.callbacks.Callback):
    """Stops training after the batch that passes the deadline (the partial epoch is
    still validated, logged and counted)."""

    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline
        self.stopped = False

    def on_train_batch_end(self, batch, logs=None):
        if time.time() > self.deadline:  # an epoch longer than the budget: stop after this batch
            self.stopped = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if time.time() > self.deadline:
            self.stopped = True
            self.model.stop_training = True


def tensorboard_available():
    """TensorBoard logs need the ``tensorboard`` package (``pip install tensorboard``)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class WarmupCosine(keras.callbacks.Callback):
    """Sets the learning rate before every batch: a linear warm-up over the first
    ``warmup`` share of the phase, then a cosine decay from ``peak`` to ``peak x
    min_factor``. The phase's progress is its share of steps done or, with a
    ``deadline`` (time budget), its share of the time used, whichever is larger: a run
    cut by ``--max-minutes`` still ends at a small rate."""

    def __init__(
        self,
        peak,
        total_steps,
        warmup=0.05,
        min_factor=0.01,
        initial_step=0,
        deadline=None,
        steps_per_epoch=None,
        first_epoch=0,
    ):
        super().__init__()
        self.peak, self.total_steps = float(peak), max(1, int(total_steps))
        self.warmup, self.min_factor = float(warmup), float(min_factor)
        self.step = int(initial_step)
        self.deadline = deadline
        self.steps_per_epoch, self.first_epoch = steps_per_epoch, int(first_epoch)
        self._t0 = None

    def progress(self):
        p = self.step / self.total_steps
        if self.deadline is not None and self._t0 is not None and self.deadline > self._t0:
            p = max(p, (time.time() - self._t0) / (self.deadline - self._t0))
        return min(1.0, p)

    def rate(self, progress):
        if self.warmup > 0 and progress < self.warmup:
            return self.peak * max(progress / self.warmup, 0.01)
        t = (progress - self.warmup) / max(1e-9, 1.0 - self.warmup)
        low = self.peak * self.min_factor
        return low + (self.peak - low) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    def on_train_begin(self, logs=None):
        self._t0 = time.time()
        # BackupAndRestore (an earlier callback) sets the epoch a killed phase resumes at: the
        # schedule goes on from there instead of warming up again
        restored = getattr(self.model, "_initial_epoch", None)
        if restored is not None and self.steps_per_epoch:
            self.step = max(self.step, (int(restored) - self.first_epoch) * int(self.steps_per_epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = self.rate(self.progress())

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1


class EMASwapIn(keras.callbacks.SwapEMAWeights):
    """With an optimizer that keeps an EMA of the weights (``use_ema``): the EMA weights are in
    the model during validation (Keras's :class:`keras.callbacks.SwapEMAWeights`) and from the
    start of ``on_epoch_end`` until :class:`EMASwapOut`, so the callbacks between the two (the
    history, the best-model saver, early stopping's best weights) see and save the EMA weights.
    Keras's own ``swap_on_epoch`` keeps them in the model until the next epoch begins: a run
    stopped early (time budget, early stopping) then ends with ``finalize_variable_values``
    copying the training weights over them, and the backup would hold swapped weights."""

    def __init__(self):
        super().__init__(swap_on_epoch=False)

    def swap_in(self):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True

    def swap_out(self):
        if self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = False

    def on_epoch_begin(self, epoch, logs=None):
        self.swap_out()

    def on_epoch_end(self, epoch, logs=None):
        self.swap_in()


class EMASwapOut(keras.callbacks.Callback):
    """Puts the training weights back (after the callbacks that save the EMA ones and before the
    backup, which keeps the training weights and the optimizer's averages for a resume)."""

    def __init__(self, swap_in):
        super().__init__()
        self.swap_in = swap_in

    def on_epoch_end(self, epoch, logs=None):
        self.swap_in.swap_out()


def ema_callbacks():
    """(first, after_saving): the pair of callbacks of a run with an EMA of the weights; ``first``
    goes at the head of the list, ``after_saving`` after the saver and early stopping, before the
    backup. At the end of ``fit`` Keras's ``finalize_variable_values`` leaves the EMA weights in the model."""
    first = EMASwapIn()
    return first, EMASwapOut(first)
