"""Short runs: ``train --epochs 6`` (no time budget) for the CNNs against the linear svm, same data.

    python benchmarks/short_runs.py --work /tmp/av_short --per-class 160 --epochs 6

The recipes' schedule (warm-up, cosine decay) follows ``--epochs``, so a 6-epoch run should
already give a CNN well above a linear model on pixels. Builds a DATA_DIR of the first
``--per-class`` photos of each class of ../shared/datasets/clothing-small at ``--image-size``,
trains svm (the baseline), alexnet and vgg16_bn from scratch with the recipes' defaults and
``--epochs``, evaluates every saved model on train/validation/test, and prints each CNN's test
accuracy over the svm's. The equivalent CLI for one row::

    amazon-visual train --data DATA --model alexnet --out runs/alexnet --image-size 64 --epochs 6
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/av_short")
    ap.add_argument("--per-class", type=int, default=160)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--models", default="svm,alexnet,vgg16_bn", help="the first one is the baseline")
    args = ap.parse_args(argv)

    import helpers_training
    from amazon_visual import evaluation, training

    load_before = os.getloadavg()
    data = helpers_training.clothing_small(
        os.path.join(args.work, "data"),
        args.image_size,
        name=f"clothing-{args.per_class}pc-{args.image_size}",
        per_class=args.per_class,
    )
    rows = []
    for name in args.models.split(","):
        run = os.path.join(args.work, "runs", f"{name}-{args.epochs}ep")
        t = time.time()
        s = training.train(
            data, model=name, out=run, weights="none", image_size=args.image_size, epochs=args.epochs, verbose=2
        )
        r = evaluation.compare([run], data, out=os.path.join(args.work, "compare", name))["rows"][0]
        rows.append(
            {
                "model": name,
                "train": r["training_accuracy"],
                "validation": r["validation_accuracy"],
                "test": r["test_accuracy"],
                "epochs": s["epochs_run"],
                "train_minutes": round(s["seconds"] / 60, 2),
                "wall_minutes": round((time.time() - t) / 60, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["test"]
    print(f"\n{data}: {args.per_class} photos per class, {args.image_size} px, --epochs {args.epochs}")
    print("| Model | Training acc. | Validation acc. | Test acc. | Test / " + rows[0]["model"] + " | Minutes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['train']:.3f} | {r['validation']:.3f} | {r['test']:.3f} | "
            f"{r['test'] / base:.2f}x | {r['train_minutes']} |"
        )
    out = {"rows": rows, "load_before": load_before, "load_after": os.getloadavg(), "args": vars(args)}
    with open(os.path.join(args.work, "short_runs.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    print(json.dumps({"load_before": load_before, "load_after": out["load_after"]}))


if __name__ == "__main__":
    main()
