"""Images/s of each model's training step on CPU and of the input pipeline alone.

    python benchmarks/train_throughput.py --image-size 64 --batch-size 32 --steps 5

The models train (``fit``, as in training) on a fixed in-memory batch repeated (no input
pipeline) for ``--warmup`` steps, then ``--steps`` timed steps. The input pipeline is the real training dataset
(read TFRecords, decode, resize, shuffle, one-hot, batch, augmentation, prefetch) of
clothing-small built at the same size, iterated without a model after a warm-up pass.
Prints a table and ``pipeline / fastest model``; the pipeline must deliver at least 3x
what the fastest model consumes so it is never the bottleneck.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def model_throughput(name, image_size, batch_size, steps, warmup, num_classes=10):
    import keras
    import numpy as np

    from amazon_visual import models, training
    from amazon_visual.models import svm

    keras.utils.set_random_seed(0)
    model = models.build(name, num_classes, image_size)
    fit_model = svm.training_model(model) if name == "svm" else model
    training.compile_model(fit_model, name, 1e-4)
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    y = np.eye(num_classes, dtype="float32")[np.arange(batch_size) % num_classes]
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensors((x, y)).repeat()  # the model alone: no input work
    fit_model.fit(ds, steps_per_epoch=max(1, warmup), epochs=1, verbose=0)  # trace + warm-up
    t = time.perf_counter()
    fit_model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - t)


def pipeline_throughput(data_dir, image_size, batch_size, batches, augment=True):
    from amazon_visual import data
    from amazon_visual.training import pipeline

    ds = pipeline.train_dataset(data_dir, image_size, batch_size, len(data.class_names(data_dir)), augment=augment)
    it = iter(ds)
    for _ in range(pipeline.steps(data.num_examples(data_dir, "train"), batch_size)):  # warm-up: fills the cache
        next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _ = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--models", default="svm,alexnet,vgg16,vgg16_bn,resnet50")
    ap.add_argument("--work", default="/tmp/av_bench/data")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import helpers_training

    data_dir = helpers_training.clothing_small(args.work, image_size=args.image_size)
    results = {"image_size": args.image_size, "batch_size": args.batch_size, "models": {}}
    results["pipeline_augment"] = pipeline_throughput(data_dir, args.image_size, args.batch_size, 60)
    results["pipeline_no_augment"] = pipeline_throughput(data_dir, args.image_size, args.batch_size, 60, augment=False)
    for name in args.models.split(","):
        results["models"][name] = model_throughput(name, args.image_size, args.batch_size, args.steps, args.warmup)
        print(f"{name:10s} {results['models'][name]:10.1f} images/s (training step)", file=sys.stderr, flush=True)
    # svm trains without augmentation by default (a linear model on raw pixels): its
    # pipeline is the one without augmentation; the CNNs use the augmented one.
    feeds = {
        name: results["pipeline_no_augment"] if name == "svm" else results["pipeline_augment"]
        for name in results["models"]
    }
    results["ratio_per_model"] = {name: feeds[name] / v for name, v in results["models"].items()}
    fastest = max(results["models"], key=results["models"].get)
    results["fastest_model"] = fastest
    results["ratio_pipeline_to_fastest"] = results["ratio_per_model"][fastest]
    cnns = [n for n in results["models"] if n != "svm"]
    if cnns:
        fastest_cnn = max(cnns, key=results["models"].get)
        results["fastest_cnn"] = fastest_cnn
        results["ratio_augmented_pipeline_to_fastest_cnn"] = results["ratio_per_model"][fastest_cnn]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"| what (CPU, {args.image_size} px, batch {args.batch_size}) | images/s |")
    print("|---|---|")
    print(f"| input pipeline with augmentation | {results['pipeline_augment']:.0f} |")
    print(f"| input pipeline without augmentation | {results['pipeline_no_augment']:.0f} |")
    for name, v in results["models"].items():
        print(f"| {name} training step | {v:.1f} |")
    for name, r in results["ratio_per_model"].items():
        feed = "without" if name == "svm" else "with"
        print(f"pipeline ({feed} augmentation) / {name}: {r:.1f}x {'OK' if r >= 3 else 'BELOW 3x'}")
    print(
        f"\npipeline / fastest model ({fastest}): {results['ratio_pipeline_to_fastest']:.1f}x "
        f"({'OK' if results['ratio_pipeline_to_fastest'] >= 3 else 'BELOW 3x'})"
    )


if __name__ == "__main__":
    main()
