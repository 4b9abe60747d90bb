"""Transfer learning from ImageNet MobileNetV2 on clothing-small: accuracy per image size within a
time budget, and the cached head phase against the plain one.

    python benchmarks/transfer.py --work /tmp/av_transfer --sizes 224,160 --minutes 12
    python benchmarks/transfer.py --work /tmp/av_transfer --head-speed 160

The weights are ../shared/weights' real ImageNet MobileNetV2, loaded through Keras's own
``weights="imagenet"`` path from a seeded KERAS_HOME. Each run is the CLI's
``amazon-visual train --model mobilenet_v2 --weights imagenet --image-size S --epochs 200
--max-minutes M`` (the recipe: head on cached features, 2 views, then fine-tuning of the top
30 % of the backbone with batch norm frozen), then ``compare`` on train/validation/test.

``--head-speed S``: one run with the cached head phase (4 head epochs) and one with the frozen
backbone run every epoch (``cache_features=False``, 2 head epochs), each followed by the one
fine-tuning epoch a two-phase run needs; prints the seconds per head epoch of each
(history.csv), the one-time cost of caching, the ratio, and after how many head epochs caching
has paid for itself.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def accuracy_runs(work, sizes, minutes):
    import helpers_training
    from amazon_visual import evaluation, training

    rows = []
    for size in sizes:
        data = helpers_training.clothing_small(os.path.join(work, "data"), size)
        run = os.path.join(work, "runs", f"mobilenet_v2-{size}")
        t = time.time()
        s = training.train(
            data,
            model="mobilenet_v2",
            weights="imagenet",
            out=run,
            image_size=size,
            epochs=200,
            max_minutes=minutes,
            verbose=2,
        )
        r = evaluation.compare([run], data, out=os.path.join(work, "compare", str(size)))["rows"][0]
        config = json.load(open(os.path.join(run, "config.json"), encoding="utf-8"))
        hist = training.read_history(run)
        row = {
            "image_size": size,
            "train": r["training_accuracy"],
            "validation": r["validation_accuracy"],
            "test": r["test_accuracy"],
            "epochs": s["epochs_run"],
            "train_minutes": round(s["seconds"] / 60, 2),
            "wall_minutes_with_eval": round((time.time() - t) / 60, 2),
            "head_epochs": sum(h["phase"] == "head" for h in hist),
            "fine_tune_epochs": sum(h["phase"] == "fine_tune" for h in hist),
            "time_budget": config["time_budget"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def head_speed(work, size, epochs=4):
    import helpers_training
    from amazon_visual import training

    data = helpers_training.clothing_small(os.path.join(work, "data"), size)
    out = {}
    for cached in (True, False):
        run = os.path.join(work, "runs", f"head-{'cached' if cached else 'plain'}-{size}")
        t = time.time()
        n = epochs if cached else 2  # head epochs; one fine-tuning epoch follows (a run has at least one)
        training.train(
            data,
            model="mobilenet_v2",
            weights="imagenet",
            out=run,
            image_size=size,
            epochs=n + 1,
            head_epochs=n,
            cache_features=cached,
            verbose=2,
            callbacks=False,
            early_stopping=0,
        )
        hist = training.read_history(run)
        secs = [h["seconds"] for h in hist if h["phase"] == "head"]
        out["cached" if cached else "plain"] = {
            "head_epoch_seconds": secs,
            "median": statistics.median(secs),
            "total_seconds": round(time.time() - t, 1),
            "outside_epochs_seconds": round(time.time() - t - sum(h["seconds"] for h in hist), 1),
        }
    c, p = out["cached"], out["plain"]
    # the one-time cost of caching: what the cached run spends outside its epochs beyond the plain run
    c["caching_seconds"] = round(c["outside_epochs_seconds"] - p["outside_epochs_seconds"], 1)
    out["break_even_head_epochs"] = round(c["caching_seconds"] / max(p["median"] - c["median"], 1e-9), 2)
    out["ratio_plain_over_cached_per_epoch"] = round(p["median"] / c["median"], 1)
    print(json.dumps(out, indent=2), flush=True)
    return out


def main(argv=None):
    import benchmark_env

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/av_transfer")
    ap.add_argument("--sizes", default="", help="image sizes for accuracy runs, e.g. 224,160")
    ap.add_argument("--minutes", type=float, default=12.0, help="time budget per run")
    ap.add_argument("--head-speed", type=int, default=None, metavar="SIZE")
    args = ap.parse_args(argv)
    benchmark_env.seed_keras_home(args.work)
    print(json.dumps({"load_before": os.getloadavg()}))
    result = {}
    if args.sizes:
        result["accuracy"] = accuracy_runs(args.work, [int(s) for s in args.sizes.split(",")], args.minutes)
    if args.head_speed:
        result["head_speed"] = head_speed(args.work, args.head_speed)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
