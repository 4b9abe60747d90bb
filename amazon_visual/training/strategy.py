"""Where training runs: the ``tf.distribute`` strategy, the workers, the float policy.

``select_strategy(name)`` picks the default, one-device, mirrored (GPUs, or logical CPU
devices) or multi-worker (``TF_CONFIG``) strategy; ``mixed_precision_policy`` the Keras
policy. Also the Keras 3 multi-worker work-arounds that ``fit`` needs.
"""

import json
import os

from amazon_visual.errors import UserError

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")


def tf_config():
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
        if tf_config():
            name = "multi_worker"
        else:
            gpus = tf.config.list_physical_devices("GPU")
            name = "mirrored" if len(gpus) > 1 else "one_device" if len(gpus) == 1 else "default"
    if name == "multi_worker":
        if not tf_config():
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


def strategy_name(strategy):
    return type(strategy).__name__


def worker_info(strategy):
    """(is_chief, task_type, task_id, num_workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not tf_config():
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
    """ "mixed_float16" on GPU, "mixed_bfloat16" on CPU, "float32" when disabled."""
    if not enabled:
        return "float32"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def prebuild_for_multi_worker(fit_model, strat, train_ds):
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
