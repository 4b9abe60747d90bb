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


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------
# build-data  (owned by the dataset builder: tfrecords_builder/)
# --------------------------------------------------------------------------
def add_build_data(sub):
    p = sub.add_parser(
        "build-data", help="build a TFDS dataset of TFRecord shards from Amazon metadata and images",
        description="Turn Amazon product metadata (2014, 2018 or 2023 format, plain or gzipped) and product "
                    "images into a sharded, split, labelled TFRecord dataset (tensorflow-datasets format).",
        epilog="example: amazon-visual build-data --metadata meta_Clothing.json.gz --download "
               "--preset seed20 --max-per-class 2000 --out data/seed20")
    p.add_argument("--metadata", action="append", required=True, metavar="FILE",
                   help="metadata file (.json/.jsonl, optionally .gz); repeatable")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images-dir", metavar="DIR", help="folder of images named by ASIN (B000123.jpg, .png, ...)")
    src.add_argument("--download", action="store_true", help="download the images from the metadata URLs")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="download cache (default: <out>.image-cache next to --out); reruns fetch only what is missing")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="dataset folder to write")
    cls = p.add_mutually_exclusive_group()
    cls.add_argument("--category", action="append", metavar="NAME",
                     help="a class name, matched against the category paths (repeatable; may contain commas)")
    cls.add_argument("--categories-file", metavar="FILE", help="text file with one class name per line")
    cls.add_argument("--top-categories", type=int, metavar="N", help="the N most frequent top-level categories")
    cls.add_argument("--preset", choices=["seed20"], help="a named class list (seed20: the course project's 20)")
    p.add_argument("--min-per-class", type=int, default=0, metavar="N", help="drop classes with fewer products")
    p.add_argument("--max-per-class", type=int, metavar="N", help="cap each class at N products (deterministic)")
    p.add_argument("--image-size", type=int, default=256, metavar="PX",
                   help="longer side of the stored JPEGs (default 256)")
    p.add_argument("--splits", default="0.8,0.1,0.1", metavar="TR,VA,TE",
                   help="train,validation,test fractions (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash (default 0)")
    p.add_argument("--workers", type=int, metavar="N", help="processes for the image work (default: CPU count)")
    p.add_argument("--download-workers", type=int, default=16, metavar="N", help="download threads (default 16)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per-request timeout (default 10 s)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retries on timeouts, connection errors and 5xx (default 3)")
    p.add_argument("--beam", action="store_true", help="run the builder through Apache Beam (DirectRunner by default)")
    p.add_argument("--beam-options", action="append", metavar="OPTS",
                   help="Beam pipeline options as one string, e.g. "
                        "--beam-options='--direct_num_workers=2 --direct_running_mode=multi_processing'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the build report as JSON")
    p.set_defaults(func=_run_build_data)
    return p


def _run_build_data(args):
    from tfrecords_builder.build import build_data
    from tfrecords_builder.report import summary_table

    report = build_data(
        args.metadata, args.out, images_dir=args.images_dir, download=args.download, cache_dir=args.cache_dir,
        categories=args.category, categories_file=args.categories_file, top_categories=args.top_categories,
        preset=args.preset, min_per_class=args.min_per_class, max_per_class=args.max_per_class,
        image_size=args.image_size, splits=args.splits, seed=args.seed, workers=args.workers,
        beam=args.beam, beam_options=args.beam_options, overwrite=args.overwrite,
        download_workers=args.download_workers, timeout=args.timeout, retries=args.retries,
        progress=not args.no_progress)
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
        "train", help="train a classifier on a dataset from build-data",
        description="Train svm, alexnet, vgg16, vgg16_bn, resnet50 or any keras.applications backbone "
                    "(snake-case name) on DATA_DIR and write RUN_DIR. Rerun the same command to resume.")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="dataset folder written by build-data")
    p.add_argument("--model", required=True, help="svm, alexnet, vgg16, vgg16_bn, resnet50, or e.g. mobilenet_v2, "
                                                  "efficientnet_b0, convnext_tiny")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write (resumed when it exists)")
    p.add_argument("--weights", default="none", help="imagenet | none | PATH to a keras.applications weights file "
                                                     "(default none: from scratch)")
    p.add_argument("--image-size", type=int, default=224, help="square input size in pixels (default 224)")
    p.add_argument("--epochs", type=int, default=10, help="total epochs over both phases (default 10)")
    p.add_argument("--head-epochs", type=int, default=None,
                   help="epochs of the frozen-backbone phase with pretrained weights (default a third)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size, split across replicas")
    p.add_argument("--learning-rate", type=float, default=None, help="learning rate (fine-tuning uses a tenth)")
    p.add_argument("--fine-tune-at", default=None, metavar="LAYER_OR_BLOCK",
                   help="first backbone layer unfrozen in phase 2: name, name prefix (block5, conv5_) or index")
    p.add_argument("--strategy", default="auto", choices=["auto", "default", "one_device", "mirrored", "multi_worker"],
                   help="tf.distribute strategy (auto: multi_worker with TF_CONFIG, mirrored with >1 GPU, "
                        "one_device with 1 GPU, default on CPU)")
    p.add_argument("--mixed-precision", action="store_true", help="float16 on GPU, bfloat16 on CPU")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random flip/zoom/rotation/contrast in the input pipeline (default on, off for svm)")
    p.add_argument("--early-stopping", type=int, default=5, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without better val accuracy (0: off)")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget: stop at the epoch end that would pass it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run_train)
    return p


def _run_train(args):
    import contextlib

    from amazon_visual.training import train

    with contextlib.redirect_stdout(sys.stderr):  # Keras progress lines are logs: stderr
        summary = train(args.data, model=args.model, out=args.out, weights=args.weights,
                        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
                        fine_tune_at=args.fine_tune_at, strategy=args.strategy,
                        mixed_precision=args.mixed_precision, augment=args.augment, seed=args.seed,
                        learning_rate=args.learning_rate, head_epochs=args.head_epochs,
                        early_stopping=args.early_stopping, max_minutes=args.max_minutes)
    if not summary.get("chief", True):
        return 0
    if args.json:
        print_json(summary)
        return 0
    best = summary["best_val_accuracy"]
    print(f"model               {summary['model']}")
    print(f"run folder          {summary['run_dir']}")
    print(f"epochs run          {summary['epochs_run']} / {summary['epochs']}  (phases: {', '.join(summary['phases'])})")
    print(f"best val accuracy   {'-' if best is None else f'{best:.4f}'}")
    print(f"seconds             {summary['seconds']}")
    return 0


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a trained run on a split",
                       description="Accuracy, classification report, confusion matrix and misclassified examples "
                                   "of RUN_DIR on a split; writes RUN_DIR/eval_<split>/.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="DATA_DIR")
    p.add_argument("--split", default="test", help="train, validation or test (default test)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print all figures as JSON")
    p.set_defaults(func=_run_evaluate)
    return p


def _run_evaluate(args):
    from amazon_visual.evaluation import evaluate

    result = evaluate(args.run_dir, args.data, split=args.split, batch_size=args.batch_size)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['model']} on {result['split']} ({result['n']} images): accuracy {result['accuracy']:.4f}\n")
    print(result["classification_report_text"])
    for name, path in result["files"].items():
        print(f"{name:28s}{path}")
    return 0


def add_compare(sub):
    p = sub.add_parser("compare", help="compare several runs in one table",
                       description="Model | Training accuracy | Validation accuracy | Test accuracy, one row per "
                                   "run (each measured on its split without augmentation); writes compare.md, "
                                   "compare.csv and learning_curves.png.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="DATA_DIR")
    p.add_argument("--out", default="compare", help="folder for compare.md, compare.csv, learning_curves.png")
    p.add_argument("--train-limit", type=int, default=None, metavar="N",
                   help="measure training accuracy on the first N train examples only (default all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_compare)
    return p


def _run_compare(args):
    from amazon_visual.evaluation import compare

    result = compare(args.run_dirs, args.data, out=args.out, batch_size=args.batch_size,
                     train_limit=args.train_limit)
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
        "index", help="embed a dataset and build an ANN index (Annoy, or HNSW)",
        description="Embed DATA_DIR's images with a trained run's embedding layer (RUN_DIR) or a pretrained "
                    "backbone (--backbone), locally or on Apache Beam (--beam), then build an ANN index (Annoy by "
                    "default, HNSW with --backend hnsw; cosine similarity) in --out INDEX_DIR.")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a trained run (from amazon-visual train)")
    p.add_argument("--backbone", metavar="NAME", help="embed with a pretrained keras.applications backbone instead "
                   "of a trained run (e.g. resnet50)")
    p.add_argument("--weights", default="imagenet", help="backbone weights: imagenet, none or a weights file (default imagenet)")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="dataset from amazon-visual build-data")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="folder to write the index into")
    p.add_argument("--splits", default=None, help="comma-separated splits to index (default: all the dataset holds)")
    p.add_argument("--backend", choices=["annoy", "hnsw"], default="annoy",
                   help="ANN index: annoy (default; memory-mapped) or hnsw (hnswlib, pip install 'amazon-visual[hnsw]')")
    p.add_argument("--trees", type=int, default=None, help="Annoy trees: more = better recall, bigger index "
                   "(default: the measured default, see BENCHMARKS.md)")
    p.add_argument("--search-k", type=int, default=None, help="default query effort stored in the manifest: "
                   "Annoy's search_k (-1: n*trees) or HNSW's ef (default: the measured default)")
    p.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per node (default 16)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW build effort (default 200)")
    p.add_argument("--on-disk", action="store_true", help="build the Annoy forest in the file, not in RAM "
                   "(catalogs larger than memory; always on with --beam)")
    p.add_argument("--beam", action="store_true", help="embed with Apache Beam's RunInference (DirectRunner by default)")
    p.add_argument("--beam-options", action="append", metavar="OPTS",
                   help="Beam pipeline options as one string, e.g. "
                        "--beam-options='--direct_num_workers=2 --direct_running_mode=multi_processing'")
    p.add_argument("--image-size", type=int, default=None, help="input size for --backbone (default 224; a run "
                   "uses its own)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-thumbnails", action="store_true", help="do not write INDEX_DIR/thumbs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index in --out")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_run_index)
    return p


def _run_index(args):
    from amazon_visual import data
    from amazon_visual.retrieval.index import build_index

    if (args.run_dir is None) == (args.backbone is None):
        raise UserError("give a RUN_DIR or --backbone NAME (not both)")
    if args.splits:
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    else:
        splits = [s for s in data.SPLITS if data.num_examples(args.data, s) > 0]
    m = build_index(args.data, args.out, run_dir=args.run_dir, backbone=args.backbone, weights=args.weights,
                    splits=splits, trees=args.trees, search_k=args.search_k, on_disk=args.on_disk,
                    image_size=args.image_size, batch_size=args.batch_size, thumbnails=not args.no_thumbnails,
                    overwrite=args.overwrite, backend=args.backend, hnsw_m=args.hnsw_m,
                    ef_construction=args.ef_construction, beam=args.beam, beam_options=args.beam_options)
    if args.json:
        print_json(m)
    else:
        shape = f"{m['trees']} trees" if m["backend"] == "annoy" else f"M {m['hnsw_m']}"
        print(f"index written to {args.out}")
        print(f"  model       {m['model']} ({m['source']}, layer {m['embedding_layer']}, dim {m['embedding_dim']}, "
              f"image size {m['image_size']})")
        print(f"  items       {m['n_items']}  " + ", ".join(f"{s}: {n}" for s, n in m["split_counts"].items()))
        print(f"  {m['backend']:<11} metric {m['metric']}, {shape}, search_k {m['search_k']}, "
              f"{m['index_size_bytes'] / 2**20:.1f} MiB" + (" (built on disk)" if m["on_disk_build"] else ""))
        print(f"  time        embedding {m['embed_seconds']:.1f} s ({m['embedding_engine']}), "
              f"index build {m['build_seconds']:.1f} s")
    return 0


def add_recommend(sub):
    p = sub.add_parser(
        "recommend", help="recommend look-alike products for an image or an ASIN",
        description="Find the indexed products that look most like an image or an indexed product (cosine similarity).")
    p.add_argument("index_dir", metavar="INDEX_DIR")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", metavar="PATH_OR_URL", help="query image: a file or an http(s) URL")
    q.add_argument("--asin", help="query by an indexed product (never returned itself)")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--min-similarity", type=float, default=None, metavar="S", help="keep results with cosine >= S")
    p.add_argument("--same-category", action="store_true", help="keep results of the query's category "
                   "(ASIN: its label; image: the run's predicted class, or the majority of its 10 nearest items)")
    p.add_argument("--search-k", type=int, default=None, help="Annoy search_k (default: the manifest's)")
    p.add_argument("--run", metavar="RUN_DIR", default=None, help="the run the index was built from, if it moved")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--html", metavar="PAGE.html", help="also write an HTML gallery (query and results with images)")
    p.set_defaults(func=_run_recommend)
    return p


def _run_recommend(args):
    from amazon_visual.retrieval.recommend import Recommender, format_table

    rec = Recommender.load(args.index_dir, search_k=args.search_k, run_dir=args.run)
    try:
        out = rec.recommend(image=args.image, asin=args.asin, k=args.k, min_similarity=args.min_similarity,
                            same_category=args.same_category)
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
        "eval-retrieval", help="measure retrieval quality and speed of an index",
        description="Search every item of the query split against an index of the other items: category "
                    "precision@k and mAP@k, the index's recall@k against exact search, latency, QPS, build time, size.")
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument("--data", metavar="DATA_DIR", default=None, help="the dataset the index was built from "
                   "(default: the one its manifest records; needed when the index lacks the query split)")
    p.add_argument("--queries", default="test", help="query split (default test)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--search-k", type=int, default=None, help="query effort: Annoy search_k or HNSW ef "
                   "(default: the manifest's)")
    p.add_argument("--trees", type=int, default=None, help="trees of the evaluation index (default: the manifest's)")
    p.add_argument("--max-queries", type=int, default=None, metavar="N",
                   help="a random sample of N queries (the exact baseline costs queries x items)")
    p.add_argument("--run", metavar="RUN_DIR", default=None, help="the run the index was built from, if it moved")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_run_eval_retrieval)
    return p


def _run_eval_retrieval(args):
    from amazon_visual.retrieval.metrics import evaluate_retrieval, format_report

    r = evaluate_retrieval(args.index_dir, data_dir=args.data, queries=args.queries, k=args.k,
                           search_k=args.search_k, trees=args.trees, max_queries=args.max_queries, run_dir=args.run)
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
        "demo", help="run the whole chain on the embedded sample catalog",
        description="Build a dataset from the embedded sample catalog (400 clothing photos, 10 classes), train a "
                    "model, evaluate it, index the products, recommend look-alikes for a few of them and write "
                    "one HTML report. By default the model is trained from scratch at 64 px (a few minutes on a "
                    "laptop CPU).")
    p.add_argument("--out", default="amazon-visual-demo", metavar="DIR",
                   help="output folder (default ./amazon-visual-demo); an existing demo folder is reused")
    p.add_argument("--model", default=None, metavar="NAME", help="model to train (default: the demo's small CNN)")
    p.add_argument("--weights", default="none", metavar="none|imagenet|PATH",
                   help="initial weights: none trains from scratch (default); imagenet uses Keras's pretrained "
                        "weights (downloaded once, or from the Keras cache); or a weights file")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="training epochs (default: the demo's)")
    p.add_argument("--image-size", type=int, default=None, metavar="N", help="image size in pixels (default 64)")
    p.add_argument("--queries", type=int, default=4, metavar="N", help="query products to recommend for (default 4)")
    p.add_argument("-k", type=int, default=5, help="recommendations per query (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document (paths and metrics)")

    def run(args):
        _quiet_tensorflow()
        from amazon_visual.demo import run_demo

        summary = run_demo(args.out, model=args.model, weights=args.weights, epochs=args.epochs,
                           image_size=args.image_size, queries=args.queries, k=args.k)
        if args.json:
            print_json(summary)
        else:
            print(f"test accuracy {summary['test_accuracy']:.3f} (chance {summary['chance_accuracy']:.3f}), "
                  f"{summary['model']} trained {'from scratch' if summary['trained_from_scratch'] else 'from ' + str(summary['weights']) + ' weights'}"
                  f" in {summary['seconds']:.0f} s")
            print(f"report: {summary['report']}")
        return 0

    p.set_defaults(func=run)
    return p


def add_report(sub):
    p = sub.add_parser(
        "report", help="write one HTML page that shows a whole experiment",
        description="Write one self-contained HTML page (images embedded, no network needed) for a RUN_DIR, a "
                    "folder of runs or a demo folder: label distribution, compare table, per-class classification "
                    "report, confusion matrix, learning curves and recommendation galleries.")
    p.add_argument("path", metavar="RUN_DIR_OR_DEMO_DIR", help="a RUN_DIR, a folder of runs, or a demo folder")
    p.add_argument("--out", default=None, metavar="FILE", help="HTML file to write (default RUN_DIR_OR_DEMO_DIR/report.html)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--index", default=None, metavar="INDEX_DIR",
                   help="index to show recommendations from (default: one beside the runs, if any)")
    p.add_argument("--queries", type=int, default=4, metavar="N", help="query products in the galleries (default 4)")
    p.add_argument("-k", type=int, default=5, help="look-alikes per query (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    def run(args):
        from amazon_visual.web.report import write_report

        out = write_report(args.path, out=args.out, title=args.title, index_dir=args.index,
                           queries=args.queries, k=args.k)
        if args.json:
            print_json({"report": out})
        else:
            print(f"report: {out}")
        return 0

    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------
def _not_ready(args):
    raise UserError(f"'{args.command}' is not available in this build")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="amazon-visual",
        description="Visual product search: build a dataset, train CNNs, index embeddings, recommend look-alikes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (add_build_data, add_train, add_evaluate, add_compare, add_index,
                add_recommend, add_eval_retrieval, add_demo, add_report):
        add(sub)
    return parser


def main(argv=None):
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
