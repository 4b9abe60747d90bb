"""Look-alike quality of three embeddings on clothing-small: raw backbone, classifier, retrieval objective.

    python benchmarks/retrieval_objective.py --work /tmp/av_metric_bench [--image-size 160]

One run measures, with the same backbone (MobileNetV2, ImageNet weights from ../shared/weights,
loaded through KERAS_HOME and ``weights="imagenet"``), the same image size and the same budget:

(a) ``raw``: the backbone's global-average-pooled features (1280-d; and PCA to 128 / 512,
    fitted on the gallery);
(b) ``classifier``: the classifier head of ``train`` (``heads.classification_head``: Dropout ->
    Dense(D, relu, "embedding") -> Dropout -> softmax), its ``embedding`` layer;
(c) ``retrieval``: the retrieval head of ``train --objective retrieval``
    (``retrieval_head.projection_head``: Dropout -> Dense(512, relu) -> Dense(D) -> L2 norm)
    trained with the metric loss on P x K batches (``sampler.pk_stream``), model kept by
    validation precision@10, as ``train`` does.

To fit two CPU cores, (b) and (c) are trained as the ``head`` phase of ``train`` with
pretrained weights: the backbone is frozen, so its pooled features are computed once per
photo and cached, and only the heads train on them (no augmentation: features are cached).
Both heads get the optimiser and learning-rate schedule of ``train``'s head phase (AdamW, weight
decay 1e-4, the pretrained recipe's warm-up then cosine decay from 1e-3 over ``--epochs``), at most
``--epochs`` epochs over the train split and early stopping (patience 5) on their own
validation measure (accuracy for (b), precision@10 for (c), as ``train``), at D = 128 and 512.
Each head is trained once per ``--seeds`` seed (initial weights, dropout, batch order); the
tables show the mean over the seeds and P@10 / mAP@10 per seed, and the targets are judged on
the means.

Queries: the test split; gallery: train + validation (as ``eval-retrieval --queries test``).
Reported per variant: precision@10, mAP@10, recall@1 (the top result has the query's class),
exact search; the Annoy index (50 trees) size and single-query latency. Held-out classes:
(b) and (c) trained on 8 classes (``--holdout`` left out of train and validation), queried
with the test photos of the 2 others against the full gallery.

``--e2e-epochs N`` (default 3) also runs the product path on the photos themselves:
``amazon_visual.train(..., objective="retrieval", embedding_dim=128)`` (N - 1 epochs of the
head phase, on cached features of the photos as they are and one augmented view, then 1 epoch of
fine_tune on augmented photos; ``--e2e-minutes`` budget), ``build_index``, ``evaluate_retrieval``.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared")
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODEL = "mobilenet_v2"
SEED = 0


def _log(msg):
    print(f"[retrieval_objective {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def seed_keras_home(work):
    home = os.path.join(work, "keras-home")
    subprocess.run([os.path.join(SHARED, "weights", "seed-keras-cache"), home], check=True, stdout=subprocess.DEVNULL)
    os.environ["KERAS_HOME"] = home


def backbone_features(data_dir, image_size, work):
    """{split: (pooled features (n, 1280) float32, labels (n,))}, cached in ``work``."""
    path = os.path.join(work, f"features-{image_size}.npz")
    if os.path.isfile(path):
        z = np.load(path)
        return {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "validation", "test")}, 0.0
    from amazon_visual import data, models

    embedder = models.build_embedder(MODEL, image_size, "imagenet")
    out, t0 = {}, time.time()
    for split in ("train", "validation", "test"):
        xs, ys = [], []
        for x, y in data.load(data_dir, split, image_size=image_size, batch_size=64, as_supervised=True):
            xs.append(embedder.predict_on_batch(x))
            ys.append(y.numpy())
        out[split] = (np.concatenate(xs).astype(np.float32), np.concatenate(ys))
        _log(f"features {split}: {len(out[split][1])} photos, {time.time() - t0:.0f} s")
    seconds = time.time() - t0
    np.savez(path, **{f"{s}_{k}": v for s, (x, y) in out.items() for k, v in (("x", x), ("y", y))})
    return out, seconds


def _early_stop(monitor):
    import keras

    return keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=5, restore_best_weights=True)


def _schedule(epochs, steps):
    """The learning rate of ``train``'s head phase: the pretrained recipe's warm-up then cosine decay."""
    from amazon_visual.training.callbacks import WarmupCosine
    from amazon_visual.training.recipes import RECIPES

    rec = RECIPES["pretrained"]
    return WarmupCosine(
        rec["learning_rate"], total_steps=epochs * steps, warmup=rec["warmup"], min_factor=rec["min_lr_factor"]
    )


def train_classifier(train, val, num_classes, dim, epochs, seed=SEED):
    """(b): the classifier head on cached features, compiled as ``train`` compiles it; -> feature -> embedding model."""
    import keras

    from amazon_visual.models.heads import classification_head
    from amazon_visual.training.phases import compile_model

    keras.utils.set_random_seed(seed)
    inp = keras.Input((train[0].shape[1],))
    model = keras.Model(inp, classification_head(inp, num_classes, embedding_dim=dim, pool=False))
    compile_model(model, MODEL, 1e-3)
    counts = np.bincount(train[1], minlength=num_classes)
    present = counts > 0
    weights = {int(i): float(counts.sum() / (present.sum() * c)) for i, c in enumerate(counts) if c > 0}
    hot = np.eye(num_classes, dtype=np.float32)
    model.fit(
        train[0],
        hot[train[1]],
        batch_size=32,
        epochs=epochs,
        validation_data=(val[0], hot[val[1]]),
        class_weight=weights,
        verbose=0,
        callbacks=[_schedule(epochs, math.ceil(len(train[1]) / 32)), _early_stop("val_accuracy")],
    )
    return keras.Model(inp, model.get_layer("embedding").output)


def train_retrieval(train, val, num_classes, dim, epochs, loss, seed=SEED):
    """(c): the retrieval head on cached features with P x K batches; -> feature -> embedding model."""
    import keras
    import tensorflow as tf

    from amazon_visual.models.metric_losses import make_loss
    from amazon_visual.models.retrieval_head import projection_head, training_model
    from amazon_visual.training.phases import make_optimizer
    from amazon_visual.training.retrieval_validation import RetrievalValidation
    from amazon_visual.training.sampler import pk_stream

    keras.utils.set_random_seed(seed)
    inp = keras.Input((train[0].shape[1],))
    net = keras.Model(inp, projection_head(inp, dim))
    fit_model = training_model(net, loss, num_classes)
    fit_model.compile(optimizer=make_optimizer(MODEL, 1e-3, 1e-4), loss=make_loss(loss))
    counts = np.bincount(train[1], minlength=num_classes)
    p, k = min(16, int((counts > 0).sum())), 4
    ds = pk_stream(tf.data.Dataset.from_tensor_slices(train), counts, p, k, seed=seed).batch(p * k)
    val_cb = RetrievalValidation(net, tf.data.Dataset.from_tensor_slices(val).batch(256))
    steps = math.ceil(len(train[1]) / (p * k))
    fit_model.fit(
        ds,
        epochs=epochs,
        steps_per_epoch=steps,
        shuffle=False,
        verbose=0,
        callbacks=[_schedule(epochs, steps), val_cb, _early_stop("val_precision_at_10")],
    )
    return net


def measure(queries, q_labels, gallery, g_labels, k=10, trees=50):
    """Exact-search precision@k, mAP@k, recall@1; Annoy index size and single-query latency."""
    import pandas as pd

    from amazon_visual.retrieval.index import Index, build_annoy, normalize, open_annoy
    from amazon_visual.retrieval.metrics import _ranking_metrics, exact_search

    q, g = normalize(queries), normalize(gallery)
    ids, _ = exact_search(q, g, k)
    labs, cnt = np.unique(g_labels, return_counts=True)
    prec, aps = _ranking_metrics(ids, q_labels, g_labels, dict(zip(labs, cnt)), k)
    with tempfile.TemporaryDirectory() as tmp:
        st = build_annoy(g, os.path.join(tmp, "index.ann"), trees=trees)
        ann = open_annoy(os.path.join(tmp, "index.ann"), g.shape[1], len(g), st["size_bytes"])
        index = Index(
            tmp,
            {"n_items": len(g), "embedding_dim": g.shape[1], "search_k": -1},
            pd.DataFrame({"asin": [str(i) for i in range(len(g))]}),
            g,
            ann,
            -1,
        )
        lat = []
        for v in q:
            t0 = time.perf_counter()
            index.search(v, k)
            lat.append(time.perf_counter() - t0)
        index.close()
    return {
        "dim": int(g.shape[1]),
        "precision_at_10": float(prec.mean()),
        "map_at_10": float(aps.mean()),
        "recall_at_1": float((g_labels[ids[:, 0]] == q_labels).mean()),
        "index_bytes": int(st["size_bytes"]),
        "latency_ms_p50": 1e3 * float(np.median(lat)),
        "latency_ms_p99": 1e3 * float(np.percentile(lat, 99)),
        "n_queries": int(len(q)),
        "n_gallery": int(len(g)),
    }


def _embed(model, x):
    return np.asarray(model.predict(x, batch_size=512, verbose=0), np.float32)


def seen_classes_table(feats, num_classes, dims, epochs, losses, seed=SEED):
    """Rows of the main table: every variant, test queries against train + validation."""
    from sklearn.decomposition import PCA

    train, val, test = feats["train"], feats["validation"], feats["test"]
    gallery_x = np.concatenate([train[0], val[0]])
    gallery_y = np.concatenate([train[1], val[1]])
    rows = [{"variant": "(a) raw backbone", **measure(test[0], test[1], gallery_x, gallery_y)}]
    for dim in dims:
        pca = PCA(dim, random_state=SEED).fit(gallery_x)
        rows.append(
            {
                "variant": f"(a) raw backbone, PCA {dim}",
                **measure(pca.transform(test[0]), test[1], pca.transform(gallery_x), gallery_y),
            }
        )
    for dim in dims:
        t0 = time.time()
        m = train_classifier(train, val, num_classes, dim, epochs, seed)
        rows.append(
            {
                "variant": "(b) classifier",
                "train_seconds": round(time.time() - t0, 1),
                **measure(_embed(m, test[0]), test[1], _embed(m, gallery_x), gallery_y),
            }
        )
        _log(f"(b) dim {dim}: {rows[-1]}")
        for loss in losses:
            t0 = time.time()
            m = train_retrieval(train, val, num_classes, dim, epochs, loss, seed)
            rows.append(
                {
                    "variant": f"(c) retrieval, {loss}",
                    "train_seconds": round(time.time() - t0, 1),
                    **measure(_embed(m, test[0]), test[1], _embed(m, gallery_x), gallery_y),
                }
            )
            _log(f"(c) {loss} dim {dim}: {rows[-1]}")
    return rows


def held_out_table(feats, names, holdout, dims, epochs, loss, seed=SEED):
    """(a), (b), (c) with the ``holdout`` classes kept out of training: their test photos against everything."""
    hold = [names.index(h) for h in holdout]
    train, val, test = feats["train"], feats["validation"], feats["test"]
    n_seen = len(names) - len(hold)
    compact = np.full(len(names), -1)
    compact[[c for c in range(len(names)) if c not in hold]] = np.arange(n_seen)  # as a DATA_DIR of 8 classes

    def seen(split):
        keep = ~np.isin(split[1], hold)
        return split[0][keep], compact[split[1][keep]]

    q = np.isin(test[1], hold)
    gallery_x = np.concatenate([train[0], val[0]])
    gallery_y = np.concatenate([train[1], val[1]])
    rows = [{"variant": "(a) raw backbone", **measure(test[0][q], test[1][q], gallery_x, gallery_y)}]
    for dim in dims:
        for variant, fit in (
            ("(b) classifier", lambda dim=dim: train_classifier(seen(train), seen(val), n_seen, dim, epochs, seed)),
            (
                f"(c) retrieval, {loss}",
                lambda dim=dim: train_retrieval(seen(train), seen(val), n_seen, dim, epochs, loss, seed),
            ),
        ):
            m = fit()
            rows.append(
                {"variant": variant, **measure(_embed(m, test[0][q]), test[1][q], _embed(m, gallery_x), gallery_y)}
            )
            _log(f"held-out {variant} dim {dim}: {rows[-1]}")
    return rows


def product_path(data_dir, image_size, work, epochs, minutes):
    """``train --objective retrieval`` on the photos, ``index``, ``eval-retrieval --queries test``."""
    from amazon_visual import build_index, train
    from amazon_visual.retrieval.metrics import evaluate_retrieval

    run, index = os.path.join(work, "e2e-run"), os.path.join(work, "e2e-index")
    t0 = time.time()
    summary = train(
        data_dir,
        model=MODEL,
        out=run,
        weights="imagenet",
        image_size=image_size,
        epochs=epochs,
        head_epochs=max(1, epochs - 1),
        objective="retrieval",
        embedding_dim=128,
        max_minutes=minutes,
        seed=SEED,
        verbose=2,
    )
    train_seconds = time.time() - t0
    if not os.path.isfile(os.path.join(index, "manifest.json")):
        build_index(data_dir, index, run_dir=run, trees=50, thumbnails=False, progress=False)
    r = evaluate_retrieval(index, queries="test", k=10, progress=False)
    r1 = evaluate_retrieval(index, queries="test", k=1, progress=False)
    return {
        "variant": "(c) product path: train --objective retrieval",
        "dim": 128,
        "precision_at_10": r["exact_precision_at_k"],
        "map_at_10": r["exact_map_at_k"],
        "recall_at_1": r1["exact_precision_at_k"],
        "index_bytes": r["index_size_bytes"],
        "latency_ms_p50": r["latency_ms_p50"],
        "latency_ms_p99": r["latency_ms_p99"],
        "train_seconds": round(train_seconds, 1),
        "phases": summary["phases"],
        "epochs_run": summary["epochs_run"],
        "stopped_by_time_budget": summary["stopped_by_time_budget"],
        "n_queries": r["n_queries"],
        "n_gallery": r["n_indexed"],
    }


METRICS = ("precision_at_10", "map_at_10", "recall_at_1", "index_bytes", "latency_ms_p50", "latency_ms_p99")


def mean_over_seeds(rows):
    """One row per (variant, dim): the mean of each figure over the seeds, and P@10 / mAP@10 per seed."""
    groups = {}
    for r in rows:
        groups.setdefault((r["variant"], r["dim"]), []).append(r)
    out = []
    for (variant, dim), rs in groups.items():
        row = {"variant": variant, "dim": dim, "seeds": [r["seed"] for r in rs]}
        row.update({m: float(np.mean([r[m] for r in rs])) for m in METRICS})
        row["precision_at_10_by_seed"] = [round(r["precision_at_10"], 3) for r in rs]
        row["map_at_10_by_seed"] = [round(r["map_at_10"], 3) for r in rs]
        out.append(row)
    return out


def markdown(rows, title):
    head = (
        f"\n**{title}**\n\n| variant | dim | P@10 | mAP@10 | R@1 | index (KiB) | latency p50 / p99 (ms) "
        "| P@10 by seed | mAP@10 by seed |\n|---|---:|---:|---:|---:|---:|---:|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['dim']} | {r['precision_at_10']:.3f} | {r['map_at_10']:.3f} | "
            f"{r['recall_at_1']:.3f} | {r['index_bytes'] / 1024:.0f} | "
            f"{r['latency_ms_p50']:.3f} / {r['latency_ms_p99']:.3f} | "
            f"{' / '.join(f'{v:.3f}' for v in r.get('precision_at_10_by_seed', [r['precision_at_10']]))} | "
            f"{' / '.join(f'{v:.3f}' for v in r.get('map_at_10_by_seed', [r['map_at_10']]))} |"
        )
    return "\n".join(lines)


def _find(rows, variant, dim):
    return next(r for r in rows if r["variant"] == variant and r["dim"] == dim)


def _by_seed(a, b, m):
    """`` (per seed: ...)`` of a - b on ``m`` when both rows carry per-seed figures."""
    key = f"{m}_by_seed"
    if key not in a or key not in b or len(a[key]) < 2:
        return ""
    return " (per seed: " + ", ".join(f"{x - y:+.3f}" for x, y in zip(a[key], b[key])) + ")"


def verdicts(seen, held, dims, loss):
    """The issue's targets on the means over the seeds, each with its margin (and per seed)."""
    c = f"(c) retrieval, {loss}"
    raw = next(r for r in seen if r["variant"] == "(a) raw backbone")
    out = []
    for dim in dims:
        pca = f"(a) raw backbone, PCA {dim}"
        for base, b in (
            ("(a) raw backbone", raw),
            (pca, _find(seen, pca, dim)),
            ("(b) classifier", _find(seen, "(b) classifier", dim)),
        ):
            for m in ("precision_at_10", "map_at_10"):
                d = _find(seen, c, dim)[m] - b[m]
                verdict = "met" if d >= 0.03 else "MISSED"
                out.append(
                    f"dim {dim}: (c) - {base} on {m} = {d:+.3f} (target >= +0.03: {verdict})"
                    + _by_seed(_find(seen, c, dim), b, m)
                )
    small, big = min(dims), max(dims)
    for m in ("precision_at_10", "map_at_10", "recall_at_1"):
        d = _find(seen, c, small)[m] - _find(seen, c, big)[m]
        out.append(
            f"(c) {small}-d - {big}-d on {m} = {d:+.3f} (target >= -0.01: {'met' if d >= -0.01 else 'MISSED'})"
            + _by_seed(_find(seen, c, small), _find(seen, c, big), m)
        )
    for dim in dims:
        for m in ("precision_at_10", "map_at_10", "recall_at_1"):
            d = _find(held, c, dim)[m] - _find(held, "(b) classifier", dim)[m]
            out.append(
                f"held-out, dim {dim}: (c) - (b) on {m} = {d:+.3f} (target > 0: {'met' if d > 0 else 'MISSED'})"
                + _by_seed(_find(held, c, dim), _find(held, "(b) classifier", dim), m)
            )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "av_metric_bench"))
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=30, help="most epochs of each head (early stopping, patience 5)")
    ap.add_argument("--dims", default="128,512")
    ap.add_argument("--loss", default="multi_similarity", help="the loss of the headline (c)")
    ap.add_argument("--other-losses", default="", help="also reported, not headline (e.g. supcon,proxy_anchor,arcface)")
    ap.add_argument("--seeds", default="0,1,2", help="each head is trained once per seed; tables show the mean")
    ap.add_argument("--holdout", default="outwear,shorts", help="the 2 classes kept out of training")
    ap.add_argument("--e2e-epochs", type=int, default=3, help="epochs of the product-path run (0: skip it)")
    ap.add_argument("--e2e-minutes", type=float, default=5.0)
    args = ap.parse_args(argv)

    t_start = time.time()
    load_before = os.getloadavg()
    os.makedirs(args.work, exist_ok=True)
    seed_keras_home(args.work)
    import helpers_training
    from amazon_visual import data

    data_dir = helpers_training.clothing_small(
        os.path.join(args.work, "data"),
        image_size=args.image_size,
        source=os.path.join(SHARED, "datasets", "clothing-small"),
    )
    names = data.class_names(data_dir)
    feats, feat_seconds = backbone_features(data_dir, args.image_size, args.work)
    dims = [int(d) for d in args.dims.split(",")]
    losses = [args.loss] + [x for x in args.other_losses.split(",") if x and x != args.loss]
    seeds = [int(x) for x in args.seeds.split(",")]
    seen_runs, held_runs = [], []
    for seed in seeds:
        seen_runs += [
            dict(r, seed=seed) for r in seen_classes_table(feats, len(names), dims, args.epochs, losses, seed)
        ]
        held_runs += [
            dict(r, seed=seed)
            for r in held_out_table(feats, names, args.holdout.split(","), dims, args.epochs, args.loss, seed)
        ]
    seen, held = mean_over_seeds(seen_runs), mean_over_seeds(held_runs)
    e2e = []
    if args.e2e_epochs:
        e2e.append(product_path(data_dir, args.image_size, args.work, args.e2e_epochs, args.e2e_minutes))
    result = {
        "image_size": args.image_size,
        "model": MODEL,
        "classes": names,
        "holdout": args.holdout.split(","),
        "feature_seconds": round(feat_seconds, 1),
        "seeds": seeds,
        "seen": seen,
        "held_out": held,
        "seen_by_seed": seen_runs,
        "held_out_by_seed": held_runs,
        "product_path": e2e,
        "verdicts": verdicts(seen, held, dims, args.loss),
        "total_seconds": round(time.time() - t_start, 1),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(markdown(seen + e2e, f"clothing-small, {args.image_size} px, test queries vs train+validation gallery"))
    print(markdown(held, f"held-out classes {args.holdout}: their test photos vs the full gallery"))
    print("\n" + "\n".join(result["verdicts"]))
    print(json.dumps({k: result[k] for k in ("feature_seconds", "total_seconds", "loadavg_before", "loadavg_after")}))


if __name__ == "__main__":
    main()
