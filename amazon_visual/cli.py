"""The ``amazon-visual`` command: argparse subcommands that only parse and call.

Each subcommand's parser lives in its own ``add_*`` function below and calls the
same library function the Python API exposes. Conventions for every command:

- results go to stdout: a readable table by default, one JSON document with ``--json``;
- progress bars and logs go to stderr;
- a :class:`amazon_visual.errors.UserError` becomes one line
  ``amazon-visual: error: ...`` and exit status 2, never a traceback.
"""

import argparse
import json
import os
import sys

from amazon_visual import __version__
from amazon_visual.errors import UserError


def print_json(obj):
    """Print one JSON document to stdout (numpy scalars and paths are converted)."""

    from amazon_visual.atomic import json_default

    json.dump(obj, sys.stdout, indent=2, default=json_default)
    sys.stdout.write("\n")


def _quiet_tensorflow(verbose=False):
    """Keeps TensorFlow's start-up lines (absl pre-init notice, CUDA probing, oneDNN and CPU
    feature notices) off the terminal unless ``--verbose``. Most are printed by native code
    before TF_CPP_MIN_LOG_LEVEL applies, so TensorFlow is imported, and the devices probed,
    with file descriptor 2 pointed at /dev/null; Python-side TF/absl logs go to ERROR."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    import logging
    import warnings

    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    except ImportError:
        return
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tf.get_logger().setLevel("ERROR")
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", module="tensorflow")


# --------------------------------------------------------------------------
# build-data  (owned by the dataset builder: tfrecords_builder/)
# --------------------------------------------------------------------------
def add_build_data(sub):
    p = sub.add_parser(
        "build-data",
        help="build a TFDS dataset of TFRecord shards from Amazon metadata and images",
        description="Turn Amazon product metadata (2014, 2018 or 2023 format, plain or gzipped) and product "
        "images into a sharded, split, labelled TFRecord dataset (tensorflow-datasets format).",
        epilog="example: amazon-visual build-data --metadata meta_Clothing.json.gz --download "
        "--preset seed20 --max-per-class 2000 --out data/seed20",
    )
    p.add_argument(
        "--metadata",
        action="append",
        required=True,
        metavar="FILE",
        help="metadata file (.json/.jsonl, optionally .gz); repeatable",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images-dir", metavar="DIR", help="folder of images named by ASIN (B000123.jpg, .png, ...)")
    src.add_argument("--download", action="store_true", help="download the images from the metadata URLs")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="download cache (default: <out>.image-cache next to --out); reruns fetch only what is missing",
    )
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="dataset folder to write")
    cls = p.add_mutually_exclusive_group()
    cls.add_argument(
        "--category",
        action="append",
        metavar="NAME",
        help="a class name, matched against the category paths (repeatable; may contain commas)",
    )
    cls.add_argument("--categories-file", metavar="FILE", help="text file with one class name per line")
    cls.add_argument(
        "--top-categories",
        type=int,
        metavar="N",
        help="the N most frequent categories at the first level of the category paths where N categories "
        "each hold a real share of the products (at least 1/(10 N)): a file of many departments "
        "gets its departments, a one-department file its level-2 categories; the level is printed "
        "and recorded as category_level in build_report.json (N >= 2)",
    )
    cls.add_argument("--preset", choices=["seed20"], help="a named class list (seed20: the course project's 20)")
    p.add_argument("--min-per-class", type=int, default=0, metavar="N", help="drop classes with fewer products")
    p.add_argument("--max-per-class", type=int, metavar="N", help="cap each class at N products (deterministic)")
    p.add_argument(
        "--image-size", type=int, default=256, metavar="PX", help="longer side of the stored JPEGs (default 256)"
    )
    p.add_argument(
        "--splits",
        default="0.8,0.1,0.1",
        metavar="TR,VA,TE",
        help="train,validation,test fractions (default 0.8,0.1,0.1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash (default 0)")
    p.add_argument("--workers", type=int, metavar="N", help="processes for the image work (default: CPU count)")
    p.add_argument("--download-workers", type=int, default=16, metavar="N", help="download threads (default 16)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per-request timeout (default 10 s)")
    p.add_argument(
        "--retries", type=int, default=3, metavar="N", help="retries on timeouts, connection errors and 5xx (default 3)"
    )
    p.add_argument(
        "--shuffle-buffer-mb",
        type=float,
        metavar="MB",
        help="memory the local writer may use to shuffle a split before it spills to disk "
        "(default 64; the dataset is the same whatever the value)",
    )
    p.add_argument("--beam", action="store_true", help="run the builder through Apache Beam (DirectRunner by default)")
    p.add_argument(
        "--beam-options",
        action="append",
        metavar="OPTS",
        help="Beam pipeline options as one string, e.g. "
        "--beam-options='--direct_num_workers=2 --direct_running_mode=multi_processing'",
    )
    p.add_argument(
        "--exclude-file",
        metavar="CSV",
        help="products to leave out: the reviewed duplicates.csv of amazon-visual audit (its rows that "
        "are not their group's representative) or any CSV with an asin column (every row)",
    )
    p.add_argument(
        "--relabel-file",
        metavar="CSV",
        help="products whose class changes: the reviewed misfiled.csv of amazon-visual audit "
        "(columns asin, suggested; suggested must be one of the classes)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the build report as JSON")
    p.set_defaults(func=_run_build_data)
    return p


def _run_build_data(args):
    from tfrecords_builder.build import SHUFFLE_BUFFER_MB, build_data
    from tfrecords_builder.report import summary_table

    report = build_data(
        args.metadata,
        args.out,
        images_dir=args.images_dir,
        download=args.download,
        cache_dir=args.cache_dir,
        categories=args.category,
        categories_file=args.categories_file,
        top_categories=args.top_categories,
        preset=args.preset,
        min_per_class=args.min_per_class,
        max_per_class=args.max_per_class,
        image_size=args.image_size,
        splits=args.splits,
        seed=args.seed,
        workers=args.workers,
        beam=args.beam,
        beam_options=args.beam_options,
        overwrite=args.overwrite,
        download_workers=args.download_workers,
        timeout=args.timeout,
        retries=args.retries,
        shuffle_buffer_mb=SHUFFLE_BUFFER_MB if args.shuffle_buffer_mb is None else args.shuffle_buffer_mb,
        progress=not args.no_progress,
        exclude_file=args.exclude_file,
        relabel_file=args.relabel_file,
    )
    if args.json:
        print_json(report)
    else:
        print(summary_table(report))
    return 0


# --------------------------------------------------------------------------
# train / evaluate / compare  (owned by training and evaluation)
# --------------------------------------------------------------------------
def add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a classifier on a dataset from build-data",
        description="Train svm, alexnet, vgg16, vgg16_bn, resnet50 or any keras.applications backbone "
        "(snake-case name) on DATA_DIR and write RUN_DIR. Rerun the same command to resume.",
    )
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="dataset folder written by build-data")
    p.add_argument(
        "--model",
        required=True,
        help="svm, alexnet, vgg16, vgg16_bn, resnet50, resnet_small (small "
        "photos from scratch), or e.g. mobilenet_v2, "
        "efficientnet_b0, convnext_tiny",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write (resumed when it exists)")
    p.add_argument(
        "--weights",
        default="none",
        help="imagenet | none | PATH to a keras.applications weights file (default none: from scratch)",
    )
    p.add_argument("--image-size", type=int, default=224, help="square input size in pixels (default 224)")
    p.add_argument("--epochs", type=int, default=10, help="total epochs over both phases (default 10)")
    p.add_argument(
        "--head-epochs",
        type=int,
        default=None,
        help="epochs of the frozen-backbone phase with pretrained weights (default a third)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size, split across replicas (default: the model family's recipe)",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="peak learning rate after warm-up, cosine decay after (default: the recipe's)",
    )
    p.add_argument(
        "--fine-tune-lr-factor",
        type=float,
        default=None,
        help="fine-tuning peak = learning rate x this (default: the recipe's, 0.1)",
    )
    p.add_argument("--label-smoothing", type=float, default=None, help="default: the recipe's")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW decoupled decay (default: the recipe's)")
    p.add_argument(
        "--fine-tune-at",
        default=None,
        metavar="LAYER_OR_BLOCK",
        help="first backbone layer unfrozen in phase 2: name, name prefix (block5, conv5_) or index",
    )
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "default", "one_device", "mirrored", "multi_worker"],
        help="tf.distribute strategy (auto: multi_worker with TF_CONFIG, mirrored with >1 GPU, "
        "one_device with 1 GPU, default on CPU)",
    )
    p.add_argument("--mixed-precision", action="store_true", help="float16 on GPU, bfloat16 on CPU")
    p.add_argument(
        "--augment",
        default=None,
        choices=["none", "light", "medium", "strong", "randaugment", "mixup", "cutmix"],
        help="random flip/zoom/rotation/contrast strength, or Keras's RandAugment (after a flip), "
        "MixUp or CutMix (on top of light) (default: the recipe's; none for svm)",
    )
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="same as --augment none")
    _add_train_schedule_options(p)
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep an exponential moving average of the weights (Keras use_ema): validation, the saved "
        "model and the weights handed to fine-tuning are the averaged ones (default: the recipe's, "
        "off)",
    )
    p.add_argument(
        "--ema-momentum",
        type=float,
        default=None,
        metavar="M",
        help="with --ema: the average's momentum, new = M x old + (1 - M) x weights (default 0.99)",
    )
    p.add_argument("--seed", type=int, default=0)
    _add_train_objective_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run_train)
    return p


def _add_train_schedule_options(p):
    """train: when to stop, the time budget, the head phase's cached features, the width of the models."""
    p.add_argument(
        "--early-stopping",
        type=int,
        default=None,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without better val accuracy (default 10; 0: off)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="time budget of the whole run: stop after the batch that passes it; the learning-rate schedule follows it",
    )
    p.add_argument(
        "--head-budget",
        type=float,
        default=None,
        metavar="SHARE",
        help="pretrained runs with --max-minutes: the largest share of it the head phase may use (default 0.35)",
    )
    p.add_argument(
        "--cache-features",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pretrained runs: train the head on backbone features computed once (default on)",
    )
    p.add_argument(
        "--width",
        type=float,
        default=None,
        metavar="W",
        help="alexnet / vgg16_bn / resnet_small: width multiplier of every layer (default 1; below "
        "160 px the recipe's: 0.5 alexnet, 0.25 vgg16_bn)",
    )
    p.add_argument(
        "--cached-views",
        type=int,
        default=2,
        metavar="N",
        help="views of each training photo in the feature cache: as it is + N-1 augmented (default 2)",
    )


def _add_train_objective_options(p):
    """train: --objective classify | retrieval and the metric-learning options."""
    # --- the training objective (amazon_visual.training.metric_learning) ---
    g = p.add_argument_group(
        "objective",
        "classify (default): a classifier, whose penultimate layer is the "
        "embedding; retrieval: metric learning of the embedding itself (better look-alikes)",
    )
    g.add_argument(
        "--objective",
        default="classify",
        choices=["classify", "retrieval"],
        help="what the run learns (default classify)",
    )
    g.add_argument(
        "--loss", default=None, help="retrieval loss: multi_similarity (default), supcon, proxy_anchor or arcface"
    )
    g.add_argument(
        "--embedding-dim",
        type=int,
        default=None,
        metavar="D",
        help="size of the embedding (retrieval: L2-normalised, default 128; classify: the head's "
        "Dense layer, default 512)",
    )
    g.add_argument(
        "--classes-per-batch",
        type=int,
        default=None,
        metavar="P",
        help="retrieval: classes per batch (default min(16, classes)); a batch is P x K photos",
    )
    g.add_argument(
        "--per-class",
        type=int,
        default=None,
        metavar="K",
        help="retrieval: photos of each class per batch (default 4; smaller classes repeat photos)",
    )
    # --- end of the objective block ---


def _run_train(args):
    import contextlib

    from amazon_visual.training import train

    with contextlib.redirect_stdout(sys.stderr):  # Keras progress lines are logs: stderr
        summary = train(
            args.data,
            model=args.model,
            out=args.out,
            weights=args.weights,
            image_size=args.image_size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            fine_tune_at=args.fine_tune_at,
            strategy=args.strategy,
            mixed_precision=args.mixed_precision,
            augment=args.augment,
            seed=args.seed,
            learning_rate=args.learning_rate,
            head_epochs=args.head_epochs,
            early_stopping=args.early_stopping,
            max_minutes=args.max_minutes,
            fine_tune_lr_factor=args.fine_tune_lr_factor,
            label_smoothing=args.label_smoothing,
            weight_decay=args.weight_decay,
            head_budget=args.head_budget,
            cache_features=args.cache_features,
            cached_views=args.cached_views,
            model_kwargs={"width": args.width} if args.width else None,
            objective=args.objective,
            loss=args.loss,
            embedding_dim=args.embedding_dim,
            classes_per_batch=args.classes_per_batch,
            per_class=args.per_class,
            ema=args.ema,
            ema_momentum=args.ema_momentum,
        )
    if not summary.get("chief", True):
        return 0
    if args.json:
        print_json(summary)
        return 0
    best = summary["best_val_accuracy"]
    print(f"model               {summary['model']}")
    print(f"run folder          {summary['run_dir']}")
    print(
        f"epochs run          {summary['epochs_run']} / {summary['epochs']}  (phases: {', '.join(summary['phases'])})"
    )
    if args.objective == "retrieval":
        for key, name in (("best_val_precision_at_10", "precision@10"), ("best_val_recall_at_1", "recall@1")):
            print(f"best val {name:<11}{'-' if summary[key] is None else f'{summary[key]:.4f}'}")
    else:
        print(f"best val accuracy   {'-' if best is None else f'{best:.4f}'}")
    print(f"seconds             {summary['seconds']}")
    return 0


def add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained run on a split",
        description="Accuracy, classification report, confusion matrix and misclassified examples "
        "of RUN_DIR on a split; writes RUN_DIR/eval_<split>/.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="DATA_DIR")
    p.add_argument("--split", default="test", help="train, validation or test (default test)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--tta",
        default="none",
        choices=["none", "flip", "flip-crop"],
        help="test-time augmentation: average the softmax over the photo and its mirror image (flip), "
        "plus a centre crop and its mirror (flip-crop); the output shows the accuracy without it "
        "and the time it costs (default none)",
    )
    p.add_argument("--json", action="store_true", help="print all figures as JSON")
    p.set_defaults(func=_run_evaluate)
    return p


def _run_evaluate(args):
    from amazon_visual.evaluation import evaluate

    result = evaluate(args.run_dir, args.data, split=args.split, batch_size=args.batch_size, tta=args.tta)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['model']} on {result['split']} ({result['n']} images): accuracy {result['accuracy']:.4f}")
    t = result.get("tta")
    if t:
        print(
            f"test-time augmentation {t['mode']} ({t['views']} views): without it {t['accuracy_without_tta']:.4f} "
            f"(gain {t['gain']:+.4f}); model time {t['model_seconds']:.2f} s against "
            f"{t['model_seconds_without_tta']:.2f} s ({t['time_ratio']}x)"
        )
    print()
    print(result["classification_report_text"])
    for name, path in result["files"].items():
        print(f"{name:28s}{path}")
    return 0


def add_compare(sub):
    p = sub.add_parser(
        "compare",
        help="compare several runs in one table",
        description="Model | Training accuracy | Validation accuracy | Test accuracy, one row per "
        "run (each measured on its split without augmentation); writes compare.md, "
        "compare.csv and learning_curves.png.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="DATA_DIR")
    p.add_argument("--out", default="compare", help="folder for compare.md, compare.csv, learning_curves.png")
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        metavar="N",
        help="measure training accuracy on the first N train examples only (default all)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_compare)
    return p


def _run_compare(args):
    from amazon_visual.evaluation import compare

    result = compare(args.run_dirs, args.data, out=args.out, batch_size=args.batch_size, train_limit=args.train_limit)
    if args.json:
        print_json(result)
        return 0
    print(result["markdown"])
    for name, path in result["files"].items():
        print(f"{name:22s}{path}")
    return 0


# --------------------------------------------------------------------------
# index / recommend / eval-retrieval  (owned by retrieval)
# --------------------------------------------------------------------------
def add_index(sub):
    p = sub.add_parser(
        "index",
        help="embed a dataset and build an ANN index (Annoy, or HNSW)",
        description="Embed DATA_DIR's images with a trained run's embedding layer (RUN_DIR) or a pretrained "
        "backbone (--backbone), locally or on Apache Beam (--beam), then build an ANN index (Annoy by "
        "default, HNSW with --backend hnsw; cosine similarity) in --out INDEX_DIR.",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a trained run (from amazon-visual train)")
    p.add_argument(
        "--backbone",
        metavar="NAME",
        help="embed with a pretrained keras.applications backbone instead of a trained run (e.g. resnet50)",
    )
    p.add_argument(
        "--weights", default="imagenet", help="backbone weights: imagenet, none or a weights file (default imagenet)"
    )
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="dataset from amazon-visual build-data")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="folder to write the index into")
    p.add_argument("--splits", default=None, help="comma-separated splits to index (default: all the dataset holds)")
    p.add_argument(
        "--backend",
        choices=["annoy", "hnsw"],
        default=None,
        help="ANN index: annoy (default; memory-mapped) or hnsw (hnswlib, pip install 'amazon-visual[hnsw]'); "
        "with --update: the index's unless given",
    )
    p.add_argument(
        "--trees",
        type=int,
        default=None,
        help="Annoy trees: more = better recall, bigger index (default: the measured default, see BENCHMARKS.md)",
    )
    p.add_argument(
        "--search-k",
        type=int,
        default=None,
        help="default query effort stored in the manifest: "
        "Annoy's search_k (-1: n*trees) or HNSW's ef (default: the measured default)",
    )
    p.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per node (default 16)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW build effort (default 200)")
    p.add_argument(
        "--on-disk",
        action="store_true",
        help="build the Annoy forest in the file, not in RAM (catalogs larger than memory; always on with --beam)",
    )
    p.add_argument(
        "--beam", action="store_true", help="embed with Apache Beam's RunInference (DirectRunner by default)"
    )
    p.add_argument(
        "--beam-options",
        action="append",
        metavar="OPTS",
        help="Beam pipeline options as one string, e.g. "
        "--beam-options='--direct_num_workers=2 --direct_running_mode=multi_processing'",
    )
    p.add_argument(
        "--image-size", type=int, default=None, help="input size for --backbone (default 224; a run uses its own)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-thumbnails", action="store_true", help="do not write INDEX_DIR/thumbs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index in --out")
    p.add_argument(
        "--writable",
        action="store_true",
        help="take live writes: a durable write log (INDEX_DIR/writes.sqlite) beside the read-only ANN "
        "index, for serve's PUT/DELETE /v1/products/{asin}; --update folds it into the new index",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="bring the index in --out up to DATA_DIR: embed only the new products and changed photos "
        "(same model), drop the products gone, build a fresh ANN index and swap it in atomically "
        "(a running serve reloads it); the result equals a full index of DATA_DIR",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the manifest as JSON (with --update: the counts "
        "added / changed / removed / reused and the seconds per phase)",
    )
    p.set_defaults(func=_run_index)
    return p


def _run_index(args):
    from amazon_visual import data
    from amazon_visual.retrieval.index import build_index

    if (args.run_dir is None) == (args.backbone is None):
        raise UserError("give a RUN_DIR or --backbone NAME (not both)")
    if args.update and args.writable:
        from amazon_visual.retrieval.index import read_manifest

        if not read_manifest(args.out).get("writable"):  # --update keeps what the index is
            raise UserError(
                f"{args.out} was built without --writable and --update keeps it read-only: "
                "build it again with --writable --overwrite to take live writes"
            )
    if args.update:
        return _run_index_update(args)
    if args.splits:
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    else:
        splits = [s for s in data.SPLITS if data.num_examples(args.data, s) > 0]
    m = build_index(
        args.data,
        args.out,
        run_dir=args.run_dir,
        backbone=args.backbone,
        weights=args.weights,
        splits=splits,
        trees=args.trees,
        search_k=args.search_k,
        on_disk=args.on_disk,
        image_size=args.image_size,
        batch_size=args.batch_size,
        thumbnails=not args.no_thumbnails,
        overwrite=args.overwrite,
        backend=args.backend or "annoy",
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        beam=args.beam,
        beam_options=args.beam_options,
        writable=args.writable,
    )
    if args.json:
        print_json(m)
    else:
        shape = f"{m['trees']} trees" if m["backend"] == "annoy" else f"M {m['hnsw_m']}"
        print(f"index written to {args.out}")
        print(
            f"  model       {m['model']} ({m['source']}, layer {m['embedding_layer']}, dim {m['embedding_dim']}, "
            f"image size {m['image_size']})"
        )
        print(f"  items       {m['n_items']}  " + ", ".join(f"{s}: {n}" for s, n in m["split_counts"].items()))
        print(
            f"  {m['backend']:<11} metric {m['metric']}, {shape}, search_k {m['search_k']}, "
            f"{m['index_size_bytes'] / 2**20:.1f} MiB" + (" (built on disk)" if m["on_disk_build"] else "")
        )
        print(
            f"  time        embedding {m['embed_seconds']:.1f} s ({m['embedding_engine']}), "
            f"index build {m['build_seconds']:.1f} s"
        )
    return 0


def _run_index_update(args):
    from amazon_visual.retrieval.update import update_index

    if args.overwrite or args.beam:
        raise UserError(
            f"--update cannot go with {'--overwrite' if args.overwrite else '--beam'}: "
            "--update embeds the changes locally; --overwrite builds the whole index again"
        )
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    m = update_index(
        args.data,
        args.out,
        run_dir=args.run_dir,
        backbone=args.backbone,
        weights=args.weights,
        splits=splits,
        image_size=args.image_size,
        batch_size=args.batch_size,
        thumbnails=False if args.no_thumbnails else None,
        backend=args.backend,
        trees=args.trees,
        search_k=args.search_k,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        on_disk=args.on_disk,
    )
    u = m.get("update")
    if u is None:  # there was no index yet: a full build
        u = {
            "full_build": "no index yet",
            "added": m["n_items"],
            "changed": 0,
            "removed": 0,
            "reused": 0,
            "embedded": m["n_items"],
            "seconds": {},
        }
    summary = {"index_dir": args.out, "generation": m.get("generation", 1), "n_items": m["n_items"], **u}
    if args.json:
        print_json(summary)
    else:
        print(f"index {args.out} updated to generation {summary['generation']}: {m['n_items']} items")
        print(
            f"  added {u['added']}, changed {u['changed']}, removed {u['removed']}, reused {u['reused']} "
            f"(embedded {u['embedded']})" + (f"; full build: {u['full_build']}" if u["full_build"] else "")
        )
        if u["seconds"]:
            print("  seconds     " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in u["seconds"].items()))
    return 0


def add_recommend(sub):
    p = sub.add_parser(
        "recommend",
        help="recommend look-alike products for an image or an ASIN",
        description="Find the indexed products that look most like an image or an indexed product (cosine similarity).",
    )
    p.add_argument("index_dir", metavar="INDEX_DIR")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", metavar="PATH_OR_URL", help="query image: a file or an http(s) URL")
    q.add_argument("--asin", help="query by an indexed product (never returned itself)")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--min-similarity", type=float, default=None, metavar="S", help="keep results with cosine >= S")
    p.add_argument(
        "--same-category",
        action="store_true",
        help="keep results of the query's category "
        "(ASIN: its label; image: the run's predicted class, or the majority of its 10 nearest items)",
    )
    f = p.add_argument_group("filters", "keep results that match all of these (a missing attribute never matches)")
    f.add_argument("--category", default=None, help="the products' category (the dataset class, their label)")
    f.add_argument(
        "--brand",
        action="append",
        default=None,
        metavar="BRAND",
        help="keep this brand (repeat for several; case does not matter)",
    )
    f.add_argument("--min-price", type=float, default=None, metavar="P", help="price >= P")
    f.add_argument("--max-price", type=float, default=None, metavar="P", help="price <= P")
    f.add_argument("--min-rating", type=float, default=None, metavar="R", help="average rating >= R (0 to 5)")
    p.add_argument("--search-k", type=int, default=None, help="Annoy search_k (default: the manifest's)")
    p.add_argument("--run", metavar="RUN_DIR", default=None, help="the run the index was built from, if it moved")
    p.add_argument(
        "--weights",
        metavar="PATH",
        default=None,
        help="a backbone index built from a weights file: that file, if it moved (checked by checksum)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--html", metavar="PAGE.html", help="also write an HTML gallery (query and results with images)")
    p.set_defaults(func=_run_recommend)
    return p


def _run_recommend(args):
    from amazon_visual.retrieval.filters import parse_filters
    from amazon_visual.retrieval.recommend import Recommender, format_table

    filters = parse_filters(
        {
            "category": args.category,
            "brand": args.brand,
            "min_price": args.min_price,
            "max_price": args.max_price,
            "min_rating": args.min_rating,
        }
    )
    rec = Recommender.load(args.index_dir, search_k=args.search_k, run_dir=args.run, backbone_weights=args.weights)
    try:
        out = rec.recommend(
            image=args.image,
            asin=args.asin,
            k=args.k,
            min_similarity=args.min_similarity,
            same_category=args.same_category,
            filters=filters,
        )
    finally:
        rec.close()
    query_image = out.pop("query_image", None)
    if args.html:
        from amazon_visual.web.gallery import write_gallery

        q = dict(out["query"])
        if query_image is not None:
            q["image_array"] = query_image
        title = f"Look-alikes of {args.asin}" if args.asin else f"Look-alikes of {os.path.basename(args.image)}"
        write_gallery(args.html, q, out["results"], title=title)
        out["html"] = os.path.abspath(args.html)
    if args.json:
        print_json(out)
    else:
        print(format_table(out["results"], out["query"]))
        if args.html:
            print(f"gallery written to {args.html}")
    return 0


def add_eval_retrieval(sub):
    p = sub.add_parser(
        "eval-retrieval",
        help="measure retrieval quality and speed of an index",
        description="Search every item of the query split against an index of the other items: category "
        "precision@k and mAP@k, the index's recall@k against exact search, latency, QPS, build time, size.",
    )
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument(
        "--data",
        metavar="DATA_DIR",
        default=None,
        help="the dataset the index was built from "
        "(default: the one its manifest records; needed when the index lacks the query split)",
    )
    p.add_argument("--queries", default="test", help="query split (default test)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument(
        "--search-k", type=int, default=None, help="query effort: Annoy search_k or HNSW ef (default: the manifest's)"
    )
    p.add_argument("--trees", type=int, default=None, help="trees of the evaluation index (default: the manifest's)")
    p.add_argument(
        "--max-queries",
        type=int,
        default=None,
        metavar="N",
        help="a random sample of N queries (the exact baseline costs queries x items)",
    )
    p.add_argument("--run", metavar="RUN_DIR", default=None, help="the run the index was built from, if it moved")
    p.add_argument(
        "--weights",
        metavar="PATH",
        default=None,
        help="a backbone index built from a weights file: that file, if it moved (checked by checksum)",
    )
    p.add_argument(
        "--exclude-train-classes",
        action="store_true",
        help="query only items of classes the run was not trained on (held-out classes), "
        "against every other indexed item",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_run_eval_retrieval)
    return p


def _run_eval_retrieval(args):
    from amazon_visual.retrieval.metrics import evaluate_retrieval, format_report

    r = evaluate_retrieval(
        args.index_dir,
        data_dir=args.data,
        queries=args.queries,
        k=args.k,
        search_k=args.search_k,
        trees=args.trees,
        max_queries=args.max_queries,
        run_dir=args.run,
        backbone_weights=args.weights,
        exclude_train_classes=args.exclude_train_classes,
    )
    if args.json:
        print_json(r)
    else:
        print(format_report(r))
    return 0


# --------------------------------------------------------------------------
# demo / report  (owned by the newcomer's path)
# --------------------------------------------------------------------------
def add_demo(sub):
    p = sub.add_parser(
        "demo",
        help="run the whole chain on the embedded sample catalog",
        description="Build a dataset from the embedded sample catalog (1,000 clothing photos, 10 classes), train a "
        "model, evaluate it, index the products, recommend look-alikes for a few of them and write "
        "one HTML report. By default MobileNetV2 starts from ImageNet weights when Keras can get them "
        "(its cache or a download); offline it says so and trains VGG16-BN from scratch. A fixed number "
        "of epochs: about two minutes on a 2-core laptop CPU, the same result on a slower one.",
    )
    p.add_argument(
        "--out",
        default="amazon-visual-demo",
        metavar="DIR",
        help="output folder (default ./amazon-visual-demo); an existing demo folder is reused",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="model to train (default: mobilenet_v2 from ImageNet weights, vgg16_bn from scratch)",
    )
    p.add_argument(
        "--weights",
        default="auto",
        metavar="auto|imagenet|none|PATH",
        help="initial weights: auto (default) = imagenet when Keras can get them, else from scratch; "
        "imagenet insists on Keras's pretrained weights (downloaded once, or from its cache); "
        "none trains from scratch; or a weights file",
    )
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="training epochs (default: the demo's)")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        metavar="M",
        help="also stop training after M minutes (default: no budget, the fixed epochs)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="image size in pixels (default 224 pretrained, 64 from scratch)",
    )
    p.add_argument("--queries", type=int, default=4, metavar="N", help="query products to recommend for (default 4)")
    p.add_argument("-k", type=int, default=5, help="recommendations per query (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document (paths and metrics)")

    def run(args):
        from amazon_visual.demo import run_demo

        summary = run_demo(
            args.out,
            model=args.model,
            weights=args.weights,
            epochs=args.epochs,
            image_size=args.image_size,
            queries=args.queries,
            k=args.k,
            minutes=args.minutes,
        )
        if args.json:
            print_json(summary)
        else:
            how = "from scratch" if summary["trained_from_scratch"] else f"from {summary['weights']} weights"
            print(
                f"test accuracy {summary['test_accuracy']:.3f} (chance {summary['chance_accuracy']:.3f}), "
                f"{summary['model']} trained {how} in {summary['seconds']:.0f} s"
            )
            if summary.get("precision_at_k") is not None:
                print(f"precision@{summary['k']} of the demo's look-alikes: {summary['precision_at_k']:.2f}")
            print(f"report: {summary['report']}")
            print(f"serve it: amazon-visual serve {summary['index_dir']}   (then open http://127.0.0.1:8000/)")
        return 0

    p.set_defaults(func=run)
    return p


def add_report(sub):
    p = sub.add_parser(
        "report",
        help="write one HTML page that shows a whole experiment",
        description="Write one self-contained HTML page (images embedded, no network needed) for a RUN_DIR, a "
        "folder of runs or a demo folder: label distribution, compare table, per-class classification "
        "report, confusion matrix, learning curves and recommendation galleries.",
    )
    p.add_argument("path", metavar="RUN_DIR_OR_DEMO_DIR", help="a RUN_DIR, a folder of runs, or a demo folder")
    p.add_argument(
        "--out", default=None, metavar="FILE", help="HTML file to write (default RUN_DIR_OR_DEMO_DIR/report.html)"
    )
    p.add_argument("--title", default=None, help="page title")
    p.add_argument(
        "--index",
        default=None,
        metavar="INDEX_DIR",
        help="index to show recommendations from (default: one beside the runs, if any)",
    )
    p.add_argument("--queries", type=int, default=4, metavar="N", help="query products in the galleries (default 4)")
    p.add_argument("-k", type=int, default=5, help="look-alikes per query (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    def run(args):
        from amazon_visual.web.report import write_report

        out = write_report(
            args.path, out=args.out, title=args.title, index_dir=args.index, queries=args.queries, k=args.k
        )
        if args.json:
            print_json({"report": out})
        else:
            print(f"report: {out}")
        return 0

    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------
# serve / export  (the service and model export for other servers)
# --------------------------------------------------------------------------
def add_serve(sub):
    p = sub.add_parser(
        "serve",
        help="serve visual search over an index: HTTP API and web page",
        description="Serve INDEX_DIR over HTTP (FastAPI on uvicorn): POST /v1/search by photo, URL or ASIN, "
        "product and category browsing, thumbnails, a web page at /, OpenAPI at /docs, Prometheus "
        "metrics at /metrics. The index is reloaded without downtime when 'amazon-visual index' "
        "rewrites it, or on SIGHUP.",
        epilog="example: amazon-visual serve demo-out/index --port 8000   then open http://127.0.0.1:8000/",
    )
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="uvicorn worker processes (default 1)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=32,
        metavar="N",
        help="photo queries per model call (micro-batching; 1 turns it off; default 32)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="how long a photo query waits for others to share its model call (default 5)",
    )
    p.add_argument(
        "--allow-url-fetch",
        action="store_true",
        help="let clients query by image URL (public http(s) addresses only; off by default)",
    )
    p.add_argument(
        "--url-allow-hosts",
        default="",
        metavar="HOSTS",
        help="comma-separated hosts/IPs a URL query may reach even if not public (e.g. a test server)",
    )
    p.add_argument("--url-timeout", type=float, default=5.0, metavar="S", help="deadline of one URL fetch (default 5)")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, metavar="MB", help="largest upload or fetched image (default 10)"
    )
    p.add_argument(
        "--reload-poll",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between checks of INDEX_DIR/manifest.json for a rebuilt index (0: only SIGHUP)",
    )
    p.add_argument("--run", metavar="RUN_DIR", default=None, help="the run the index was built from, if it moved")
    p.add_argument(
        "--no-warm-up", action="store_true", help="load the model at the first photo query instead of at start"
    )
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.add_argument(
        "--write-token-file",
        metavar="FILE",
        default=None,
        help="switch on live writes (PUT/DELETE /v1/products/{asin}, index built with --writable): "
        "requests send 'Authorization: Bearer <the token in FILE>' (or set AMAZON_VISUAL_WRITE_TOKEN)",
    )
    p.set_defaults(func=_run_serve)
    return p


def _run_serve(args):
    from amazon_visual.web.app import Settings
    from amazon_visual.web.serve import serve

    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive, not {args.max_upload_mb}")
    hosts = tuple(h.strip() for h in args.url_allow_hosts.split(",") if h.strip())
    settings = Settings(
        index_dir=args.index_dir,
        run_dir=args.run,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        allow_url_fetch=args.allow_url_fetch,
        url_allow_hosts=hosts,
        url_timeout=args.url_timeout,
        max_upload_mb=args.max_upload_mb,
        reload_poll_seconds=args.reload_poll,
        warm_up=not args.no_warm_up,
        write_token_file=args.write_token_file,
    )
    serve(settings, host=args.host, port=args.port, workers=args.workers, access_log=args.access_log)
    return 0


def add_export(sub):
    p = sub.add_parser(
        "export",
        help="export a trained run for other servers: SavedModel, TFLite or ONNX",
        description="Export RUN_DIR's model: a TensorFlow SavedModel for TF Serving with the signatures 'embed' "
        "(images -> L2-normalised embedding) and 'classify' (images -> class probabilities and label; "
        "labels.txt in the assets), a TFLite file with the same two signatures, or ONNX.",
        epilog="example: amazon-visual export runs/resnet50 --format saved_model --out export/resnet50/1",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=["saved_model", "tflite", "onnx"], default="saved_model")
    p.add_argument("--out", required=True, metavar="PATH", help="folder (saved_model) or file (.tflite, .onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PATH")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_run_export)
    return p


def _run_export(args):
    _quiet_tensorflow()
    from amazon_visual.export import export_run

    info = export_run(args.run_dir, args.format, args.out, overwrite=args.overwrite)
    if args.json:
        print_json(info)
    else:
        print(
            f"{info['format']} written to {info['path']} ({', '.join(info['signatures'])}; "
            f"{info['image_size']} px images in [0, 255])"
        )
    return 0


# --------------------------------------------------------------------------
# audit
# --------------------------------------------------------------------------
def add_audit(sub):
    from amazon_visual.audit.duplicates import DEFAULTS

    p = sub.add_parser(
        "audit",
        help="find duplicate listings, misfiled products and split leaks in an index",
        description="Audit a catalog: duplicate listings (candidate pairs from the index's ANN, then a second look "
        "at their photos: perceptual hash, colour, aligned correlation), misfiled products (out-of-fold "
        "logistic regression on the embeddings, ranked by cleanlab) and duplicate groups that span "
        "splits. Writes AUDIT_DIR: audit.json, duplicates.csv, misfiled.csv, leaks.csv and audit.html; "
        "build-data --exclude-file / --relabel-file read the reviewed CSVs back.",
    )
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument("--out", required=True, metavar="AUDIT_DIR", help="folder to write the findings to")
    p.add_argument(
        "--data",
        metavar="DATA_DIR",
        help="the dataset the index was built from: its stored photos for the second look "
        "(default: the index's 160 px thumbnails)",
    )
    p.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="a classifier run of this dataset: its test accuracy with and without the leaked test items",
    )
    p.add_argument(
        "-k",
        type=int,
        default=None,
        metavar="N",
        help=f"ANN neighbours per item for candidate pairs (default {DEFAULTS['k']})",
    )
    p.add_argument(
        "--cosine-gate",
        type=float,
        default=None,
        metavar="C",
        help=f"candidate pairs need this cosine or more (default {DEFAULTS['cosine_gate']})",
    )
    p.add_argument(
        "--near-aligned",
        type=float,
        default=None,
        metavar="R",
        help=f"aligned photo correlation that makes a near copy (default {DEFAULTS['near_aligned']})",
    )
    p.add_argument("--folds", type=int, default=5, metavar="N", help="folds of the out-of-fold model (default 5)")
    p.add_argument(
        "--misfiled-cut",
        default="confidence",
        choices=["confidence", "count", "filter"],
        help="confidence (default): the filed class's out-of-fold probability under 0.02; count: as "
        "many of the worst ranked as cleanlab estimates; filter: cleanlab's default find_label_issues",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print audit.json")
    p.set_defaults(func=_run_audit)
    return p


def _run_audit(args):
    from amazon_visual.audit.run import audit, format_summary

    if args.folds < 2:
        raise UserError(f"--folds {args.folds} must be at least 2")
    s = audit(
        args.index_dir,
        args.out,
        data_dir=args.data,
        run_dir=args.run,
        folds=args.folds,
        cut=args.misfiled_cut,
        progress=not args.no_progress and not args.json,
        k=args.k,
        cosine_gate=args.cosine_gate,
        near_aligned=args.near_aligned,
    )
    if args.json:
        print_json(s)
    else:
        print(format_summary(s))
    return 0


# --------------------------------------------------------------------------
def _not_ready(args):
    raise UserError(f"'{args.command}' is not available in this build")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="amazon-visual",
        description="Visual product search: build a dataset, train CNNs, index embeddings, recommend look-alikes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's start-up and log lines (hidden by default); also accepted after the subcommand",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (
        add_build_data,
        add_train,
        add_evaluate,
        add_compare,
        add_index,
        add_recommend,
        add_eval_retrieval,
        add_demo,
        add_report,
        add_serve,
        add_export,
        add_audit,
    ):
        add(sub)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = verbose
    try:
        if args.command != "report":
            _quiet_tensorflow(verbose)
        result = args.func(args)
    except UserError as e:
        print(f"amazon-visual: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amazon-visual: interrupted; partial work is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
