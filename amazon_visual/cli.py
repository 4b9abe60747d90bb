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

    def default(o):
        if hasattr(o, "item"):
            return o.item()
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    json.dump(obj, sys.stdout, indent=2, default=default)
    sys.stdout.write("\n")


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------
# build-data  (owned by the dataset builder: tfrecords_builder/)
# --------------------------------------------------------------------------
def add_build_data(sub):
    p = sub.add_parser("build-data", help="build a TFDS dataset of TFRecord shards from Amazon metadata and images")
    p.set_defaults(func=_not_ready)
    return p


# --------------------------------------------------------------------------
# train / evaluate / compare  (owned by training and evaluation)
# --------------------------------------------------------------------------
def add_train(sub):
    p = sub.add_parser("train", help="train a classifier on a dataset from build-data")
    p.set_defaults(func=_not_ready)
    return p


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a trained run on a split")
    p.set_defaults(func=_not_ready)
    return p


def add_compare(sub):
    p = sub.add_parser("compare", help="compare several runs in one table")
    p.set_defaults(func=_not_ready)
    return p


# --------------------------------------------------------------------------
# index / recommend / eval-retrieval  (owned by retrieval)
# --------------------------------------------------------------------------
def add_index(sub):
    p = sub.add_parser("index", help="embed a dataset and build an Annoy index")
    p.set_defaults(func=_not_ready)
    return p


def add_recommend(sub):
    p = sub.add_parser("recommend", help="recommend look-alike products for an image or an ASIN")
    p.set_defaults(func=_not_ready)
    return p


def add_eval_retrieval(sub):
    p = sub.add_parser("eval-retrieval", help="measure retrieval quality and speed of an index")
    p.set_defaults(func=_not_ready)
    return p


# --------------------------------------------------------------------------
# demo / report  (owned by the newcomer's path)
# --------------------------------------------------------------------------
def add_demo(sub):
    p = sub.add_parser("demo", help="run the whole chain on the embedded sample catalog")
    p.set_defaults(func=_not_ready)
    return p


def add_report(sub):
    p = sub.add_parser("report", help="write one HTML page that shows a whole experiment")
    p.set_defaults(func=_not_ready)
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
