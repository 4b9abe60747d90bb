"""The course's table: every model from scratch, plus MobileNetV2 from ImageNet, equal budgets.

    python benchmarks/compare_five.py --work /tmp/av_compare --minutes 8

Builds DATA_DIRs from ../shared/datasets/clothing-small (at 64 px for the from-scratch models,
at ``--pretrained-size`` for the pretrained one), trains svm, alexnet, vgg16, vgg16_bn and
resnet50 with ``--weights none`` and mobilenet_v2 with ``--weights imagenet`` (a KERAS_HOME seeded
from ../shared/weights, the real Keras loading path), each with the same time budget
(``--max-minutes``) and the recipes' defaults, then evaluates every saved model on the train
(no augmentation), validation and test splits. Finished runs are reused, so a rerun resumes.
The equivalent CLI for one row::

    amazon-visual train --data DATA64 --model alexnet --out runs/alexnet --image-size 64 \\
        --epochs 200 --max-minutes 8
    amazon-visual compare runs/svm runs/alexnet ... --data DATA64 --out compare

Prints the table (Markdown) and JSON with each run's epochs, minutes and phases.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SCRATCH = ("svm", "alexnet", "vgg16", "vgg16_bn", "resnet50")


def train_one(name, data_dir, work, size, weights, minutes, epochs):
    from amazon_visual import training

    run_dir = os.path.join(work, "runs", f"{name}-{size}")
    t = time.time()
    s = training.train(
        data_dir,
        model=name,
        out=run_dir,
        weights=weights,
        image_size=size,
        epochs=epochs,
        max_minutes=minutes,
        verbose=2,
    )
    info = {
        "model": name,
        "image_size": size,
        "weights": weights,
        "epochs_run": s["epochs_run"],
        "phases": s["phases"],
        "minutes": round(s["seconds"] / 60, 2),
        "wall_minutes": round((time.time() - t) / 60, 2),
        "stopped_by_time_budget": s["stopped_by_time_budget"],
    }
    print(json.dumps(info), flush=True)
    return run_dir, info


def table(rows):
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [
        "| Model | Weights | Image size | Training acc. | Validation acc. | Test acc. | Train-test gap | "
        "Epochs | Minutes | Load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = (
            None
            if r["training_accuracy"] is None or r["test_accuracy"] is None
            else r["training_accuracy"] - r["test_accuracy"]
        )
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['image_size']} | {f(r['training_accuracy'])} | "
            f"{f(r['validation_accuracy'])} | {f(r['test_accuracy'])} | {f(gap)} | {r['epochs_run']} | "
            f"{r['minutes']} | {' / '.join(str(x) for x in r.get('load_1min') or [])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/av_compare")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--pretrained-size", type=int, default=160)
    ap.add_argument("--minutes", type=float, default=8.0, help="time budget per model")
    ap.add_argument("--epochs", type=int, default=200, help="upper bound; the budget ends runs first")
    ap.add_argument("--models", default=",".join(SCRATCH) + ",mobilenet_v2")
    ap.add_argument("--train-limit", type=int, default=None)
    args = ap.parse_args(argv)

    import helpers_training
    from amazon_visual import evaluation

    t0 = time.time()
    models = args.models.split(",")
    data = {args.image_size: helpers_training.clothing_small(os.path.join(args.work, "data"), args.image_size)}
    if "mobilenet_v2" in models:
        import benchmark_env

        benchmark_env.seed_keras_home(args.work)
        data[args.pretrained_size] = helpers_training.clothing_small(
            os.path.join(args.work, "data"), args.pretrained_size
        )
    rows = []
    for name in models:
        pretrained = name not in SCRATCH
        size = args.pretrained_size if pretrained else args.image_size
        load_before = os.getloadavg()[0]
        run_dir, info = train_one(
            name, data[size], args.work, size, "imagenet" if pretrained else "none", args.minutes, args.epochs
        )
        info["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before / after training
        result = evaluation.compare(
            [run_dir], data[size], out=os.path.join(args.work, "compare", name), train_limit=args.train_limit
        )
        row = dict(result["rows"][0], **info)
        rows.append(row)
        print(
            json.dumps(
                {k: row[k] for k in ("model", "training_accuracy", "validation_accuracy", "test_accuracy", "load_1min")}
            ),
            flush=True,
        )
    md = table(rows)
    print(md)
    out = os.path.join(args.work, "compare_five.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "markdown": md, "total_minutes": round((time.time() - t0) / 60, 1)}, f, indent=2)
    print(f"total {round((time.time() - t0) / 60, 1)} min; {out}")


if __name__ == "__main__":
    main()
