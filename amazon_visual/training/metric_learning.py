"""``train(..., objective="retrieval")``: metric learning of the ``embedding`` itself.

The trainer's named steps call one function of this module each when the run's
objective is ``retrieval`` (``classify``, the default, never reaches them):

- :func:`plan_options` (plan_run): checks the options and the train split, before
  anything is written, and returns the config entries of the objective;
- :func:`build_models` (build_models): the L2-normalised ``embedding`` on the registry
  model (:mod:`amazon_visual.models.retrieval_head`), plus the proxies of a proxy loss;
- :func:`make_inputs` (make_inputs): P x K class-balanced batches
  (:mod:`amazon_visual.training.sampler`); the monitored value (early stopping, best model)
  is ``val_precision_at_10``: on a small validation split it is steadier than recall@1,
  which is logged too;
- :func:`compile_model` (run_phase): the metric loss (:mod:`amazon_visual.models.metric_losses`);
- :func:`validation_callback` (_phase_callbacks): recall@1 / precision@10 every epoch
  (:mod:`amazon_visual.training.retrieval_validation`);
- :func:`cached_head` (run_cached_head_phase): the head phase of a pretrained run on cached
  backbone features, as the classifier's: the same P x K batches, loss and validation, on
  features computed once instead of photos.

The phases stay the trainer's: from pretrained weights, ``head`` (backbone frozen) then
``fine_tune``.
"""

import numpy as np

from amazon_visual.errors import UserError

OBJECTIVES = ("classify", "retrieval")
DEFAULT_CLASSES_PER_BATCH = 16
DEFAULT_PER_CLASS = 4
RETRIEVAL_ONLY = (("--loss", "loss"), ("--classes-per-batch", "classes_per_batch"), ("--per-class", "per_class"))


def _check_dim(dim):
    if int(dim) < 2:
        raise UserError(f"--embedding-dim {dim} is too small: use at least 2 (e.g. 128)")
    return int(dim)


def _classify_options(name, info, options):
    given = [flag for flag, key in RETRIEVAL_ONLY if options.get(key) is not None]
    if given:
        raise UserError(f"{', '.join(given)} only apply to --objective retrieval: add it or leave them out")
    if options.get("embedding_dim") is not None:
        dim = _check_dim(options["embedding_dim"])
        if info["family"] in ("svm", "alexnet"):
            raise UserError(
                f"--embedding-dim does not size {name}'s classifier (its embedding is fixed): "
                "leave it out, or use --objective retrieval"
            )
        options["model_kwargs"] = {**(options.get("model_kwargs") or {}), "embedding_dim": dim}
        return {"objective": "classify", "model_kwargs": options["model_kwargs"]}
    return {"objective": "classify"}


def plan_options(data_dir, name, info, labels, options):
    """Config entries of the run's objective; UserError for bad options, before any training."""
    from amazon_visual.models.metric_losses import DEFAULT_LOSS, check_loss, uses_proxies
    from amazon_visual.models.retrieval_head import DEFAULT_RETRIEVAL_DIM
    from amazon_visual.training import pipeline
    from amazon_visual.training.sampler import check_pk

    objective = str(options.get("objective") or "classify").strip().lower()
    if objective not in OBJECTIVES:
        raise UserError(f"unknown --objective {objective!r}: choose classify or retrieval")
    if objective == "classify":
        return _classify_options(name, info, options)
    loss = check_loss(options.get("loss") or DEFAULT_LOSS)
    dim = _check_dim(options["embedding_dim"] if options.get("embedding_dim") is not None else DEFAULT_RETRIEVAL_DIM)
    counts = pipeline.label_counts(data_dir, "train")
    p = options.get("classes_per_batch") or min(DEFAULT_CLASSES_PER_BATCH, int((counts > 0).sum()))
    k = options.get("per_class") or min(DEFAULT_PER_CLASS, int(counts.max()))
    p, k = check_pk(counts, p, k, labels, where=f"the train split of {data_dir}")
    if k < 2 and not uses_proxies(loss):
        raise UserError(
            f"--per-class {k} gives --loss {loss} no positive pairs: use at least 2, "
            "or a proxy loss (proxy_anchor, arcface)"
        )
    return {
        "objective": "retrieval",
        "loss": loss,
        "embedding_dim": dim,
        "classes_per_batch": p,
        "per_class": k,
        "batch_size": p * k,
        "label_smoothing": None,
        "class_weights": False,
        "train_class_counts": [int(c) for c in counts],
    }


def build_models(plan):
    """(net: image -> L2-normalised embedding, fit_model: what ``fit`` trains); call it in the strategy's scope."""
    from amazon_visual.models.retrieval_head import build_retrieval_model, training_model

    c = plan.config
    net = build_retrieval_model(
        plan.name,
        c["image_size"],
        weights=c["weights"],
        embedding_dim=c["embedding_dim"],
        **(plan.options.get("model_kwargs") or {}),
    )
    return net, training_model(net, c["loss"], len(plan.labels))


def make_inputs(plan, data_dir, augment, seed, steps_per_epoch):
    """The keyword arguments of the trainer's ``Inputs``: P x K batches, no Keras validation
    (the validation callback measures retrieval instead)."""
    from amazon_visual.training import pipeline, sampler

    c = plan.config
    batch = c["classes_per_batch"] * c["per_class"]
    steps = int(steps_per_epoch) if steps_per_epoch else pipeline.steps(plan.n_train, batch)
    worker_seed = int(seed) + int(plan.task_id or 0)  # each worker draws its own batches
    train_ds = sampler.train_dataset(
        data_dir,
        c["image_size"],
        np.asarray(c["train_class_counts"]),
        c["classes_per_batch"],
        c["per_class"],
        augment=augment,
        seed=worker_seed,
        n_batches=steps * c["epochs"],
    )
    return dict(
        train_ds=train_ds, steps=steps, val_ds=None, val_steps=None, monitor=monitor_name(plan), class_weight=None
    )


def cached_head(plan, head, fit_model, cached):
    """The head phase on cached backbone features (:mod:`amazon_visual.training.feature_cache`):
    ``head`` (features -> embedding, ``net``'s own layers) compiled with the metric loss (with the
    run's proxies on top for a proxy loss, the very layer the fine-tuning phase goes on with), P x K
    batches over the cached views, and the validation callback on cached validation features (a
    sample of the train photos as they are when the dataset has no validation split).
    Returns (the model to fit, the keyword arguments of the trainer's ``Inputs``, the callback)."""
    import keras
    import tensorflow as tf

    from amazon_visual.models.metric_losses import uses_proxies
    from amazon_visual.training import pipeline, sampler
    from amazon_visual.training.retrieval_validation import DEFAULT_MAX_ITEMS, RetrievalValidation

    c = plan.config
    x, y = cached["train"]
    head_fit = head
    if uses_proxies(c["loss"]):
        head_fit = keras.Model(head.input, fit_model.get_layer("proxies")(head.output), name=f"{head.name}_proxies")
    compile_model(head_fit, plan, plan.lr)
    p, k = c["classes_per_batch"], c["per_class"]
    steps = pipeline.steps(len(x), p * k)
    seed = int(plan.options["seed"])

    def batches():  # the features are in memory: batches gathered by index (a tf.data filter per class
        for idx in sampler.pk_batches(y, p, k, seed=seed):  # would copy them once per class)
            yield x[idx], y[idx]

    train_ds = tf.data.Dataset.from_generator(
        batches, output_signature=(tf.TensorSpec((p * k, x.shape[1]), tf.float32), tf.TensorSpec((p * k,), tf.int64))
    )
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    if plan.n_val:
        (vx, vy), prefix = cached["validation"], "val_"
    else:  # view 0 comes first: the train photos as they are, in file order (as validation_dataset takes them)
        (vx, vy), prefix = (x[: plan.n_train], y[: plan.n_train]), ""
    val = tf.data.Dataset.from_tensor_slices((vx[:DEFAULT_MAX_ITEMS], vy[:DEFAULT_MAX_ITEMS])).batch(256)
    inputs = dict(
        train_ds=train_ds, steps=steps, val_ds=None, val_steps=None, monitor=monitor_name(plan), class_weight=None
    )
    return head_fit, inputs, RetrievalValidation(head, val, prefix=prefix)


def monitor_name(plan):
    return "val_precision_at_10" if plan.n_val else "precision_at_10"


def compile_model(fit_model, plan, learning_rate):
    from amazon_visual.models.metric_losses import make_loss
    from amazon_visual.training.phases import make_optimizer

    fit_model.compile(
        optimizer=make_optimizer(
            plan.name, learning_rate, plan.config["weight_decay"], plan.config.get("ema_momentum")
        ),
        loss=make_loss(plan.config["loss"]),
    )
    return fit_model


def validation_callback(plan, net):
    """recall@1 / precision@10 of the validation split (else a sample of the train split) each epoch."""
    from amazon_visual.training.retrieval_validation import RetrievalValidation, validation_dataset

    c = plan.config
    split, prefix = ("validation", "val_") if plan.n_val else ("train", "")
    ds = validation_dataset(c["data_dir"], c["image_size"], c["batch_size"], split=split)
    return RetrievalValidation(net, ds, prefix=prefix)
