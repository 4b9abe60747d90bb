"""Train the five course models from scratch on clothing-small at 64 px, then compare.

    python benchmarks/compare_five.py --work /tmp/av_bench --minutes 5 --epochs 40

Builds the DATA_DIR from /work/shared/datasets/clothing-small (labels.csv + images, through a
2018-format metadata file and build_data), trains svm, alexnet, vgg16, vgg16_bn and resnet50
with ``--weights none`` and a time budget per model (``max_minutes``: training stops at the
end of the epoch that would pass it; early stopping on validation accuracy may stop it
sooner), then runs ``compare`` (training accuracy evaluated on the train split without
augmentation). Runs that finished are reused, so a rerun resumes. The equivalent CLI::

    for m in svm alexnet vgg16 vgg16_bn resnet50; do
      amazon-visual train --data DATA --model $m --out runs/$m --weights none --image-size 64 \\
          --epochs 40 --batch-size 32 --max-minutes 5
    done
    amazon-visual compare runs/svm runs/alexnet runs/vgg16 runs/vgg16_bn runs/resnet50 --data DATA --out compare
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/av_bench")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=5.0, help="time budget per model (<= 15)")
    ap.add_argument("--budget", default="", help="per-model budgets in minutes, e.g. svm=3,vgg16=10")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-limit", type=int, default=None, help="compare: training accuracy on N train examples")
    ap.add_argument("--models", default="svm,alexnet,vgg16,vgg16_bn,resnet50")
    args = ap.parse_args(argv)

    import helpers_training

    from amazon_visual import evaluation, training

    t0 = time.time()
    data_dir = helpers_training.clothing_small(os.path.join(args.work, "data"), image_size=args.image_size)
    print(f"data: {data_dir} ({time.time() - t0:.0f} s)", flush=True)
    budget = {k: float(v) for k, v in (kv.split("=") for kv in args.budget.split(",") if kv)}
    runs = []
    timings = {}
    for name in args.models.split(","):
        run_dir = os.path.join(args.work, "runs", name)
        t = time.time()
        summary = training.train(data_dir, model=name, out=run_dir, weights="none", image_size=args.image_size,
                                 epochs=args.epochs, batch_size=args.batch_size, max_minutes=min(15.0, budget.get(name, args.minutes)),
                                 early_stopping=6, verbose=2)
        timings[name] = {"seconds": round(time.time() - t, 1), "epochs_run": summary["epochs_run"],
                         "best_val_accuracy": summary["best_val_accuracy"],
                         "stopped_by_time_budget": summary["stopped_by_time_budget"]}
        print(json.dumps({name: timings[name]}), flush=True)
        runs.append(run_dir)
    t = time.time()
    result = evaluation.compare(runs, data_dir, out=os.path.join(args.work, "compare"),
                                train_limit=args.train_limit)
    print(result["markdown"])
    print(json.dumps({"timings": timings, "compare_seconds": round(time.time() - t, 1),
                      "total_seconds": round(time.time() - t0, 1), "files": result["files"]}, indent=2))


if __name__ == "__main__":
    main()
