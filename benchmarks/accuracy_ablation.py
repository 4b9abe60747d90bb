"""Accuracy ablations (issue 21): each option against today's recipe, same data, same seeds, same run.

    python benchmarks/accuracy_ablation.py --work /tmp/av_ablation --per-class 160 --epochs 6 \\
        --rows "base=vgg16_bn;ema=vgg16_bn,ema=1;resnet_small=resnet_small" --seeds 0,1,2 --tta flip,flip-crop

A row is ``LABEL=MODEL[,KEY=VALUE...]``; rows are separated by ``;`` and the first row is the
baseline. Keys: ``ema`` (0/1), ``ema_momentum``, ``augment``, ``learning_rate``, ``batch_size``,
``width`` (a model keyword), ``minutes`` (the row's ``--max-minutes``, else ``--minutes``). Every
row is trained once per seed with the recipe's defaults plus its keys (``train(..., seed=S)``:
the weights' initialisation, the shuffling and the augmentation change with it), then its saved
model is evaluated on train (for the train-test gap) and test, and on test with each ``--tta``
mode (one pass per mode: the accuracy without TTA and the model's seconds with and without it
come out of the same pass). Prints one line of JSON per run, then a Markdown table: the mean
test accuracy of each row over the seeds, its spread (max - min), the ratio to the baseline's
mean, and whether the difference to the baseline is larger than the larger of the two spreads
(the rule for changing a default). The equivalent CLI for one run::

    amazon-visual train --data DATA --model vgg16_bn --out runs/ema-s0 --image-size 64 --epochs 6 --ema --seed 0
    amazon-visual evaluate runs/ema-s0 --data DATA --tta flip --json
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

_TYPES = {
    "ema": lambda v: v not in ("0", "false", "no"),
    "ema_momentum": float,
    "augment": str,
    "learning_rate": float,
    "batch_size": int,
    "width": float,
    "minutes": float,
}


def parse_rows(spec):
    """ "a=vgg16_bn;b=vgg16_bn,ema=1" -> [(label, model, {key: value})]."""
    rows = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        label, _, rest = part.partition("=")
        model, *pairs = rest.split(",")
        kwargs = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key not in _TYPES:
                raise SystemExit(f"row {label}: unknown key {key!r} (one of {', '.join(_TYPES)})")
            kwargs[key] = _TYPES[key](value)
        rows.append((label.strip(), model.strip(), kwargs))
    return rows


def run_one(data, work, label, model, kwargs, seed, args):
    from amazon_visual import evaluation, training

    kw = dict(kwargs)
    minutes = kw.pop("minutes", args.minutes)
    width = kw.pop("width", None)
    run = os.path.join(work, "runs", f"{label}-s{seed}")
    load_before = os.getloadavg()[0]
    s = training.train(
        data,
        model=model,
        out=run,
        weights="none",
        image_size=args.image_size,
        epochs=args.epochs,
        max_minutes=minutes,
        seed=seed,
        model_kwargs={"width": width} if width else None,
        verbose=0,
        quiet=True,
        **kw,
    )
    row = {
        "row": label,
        "model": model,
        "seed": seed,
        "options": kwargs,
        "epochs_run": s["epochs_run"],
        "train_minutes": round(s["seconds"] / 60, 2),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    row["train"] = evaluation.evaluate(run, data, split="train", write=False)["accuracy"]
    row["test"] = evaluation.evaluate(run, data, split="test", write=False)["accuracy"]
    for mode in filter(None, args.tta.split(",")):
        t = evaluation.evaluate(run, data, split="test", write=False, tta=mode)["tta"]
        row[f"tta_{mode}"] = {
            k: t[k]
            for k in (
                "accuracy",
                "accuracy_without_tta",
                "gain",
                "time_ratio",
                "ms_per_image",
                "ms_per_image_without_tta",
            )
        }
    return row


def summarise(results, rows, tta_modes):
    base = [r["test"] for r in results if r["row"] == rows[0][0]]
    base_mean, base_spread = statistics.mean(base), max(base) - min(base)
    lines = [
        "| Row | Options | Seeds | Test acc. (mean) | Each seed | Spread | / baseline | Beyond spreads | "
        "Train-test gap | Epochs | " + " | ".join(f"TTA {m}: gain, time" for m in tta_modes) + " |",
        "|---" * (10 + len(tta_modes)) + "|",
    ]
    for label, model, kwargs in rows:
        rs = [r for r in results if r["row"] == label]
        if not rs:
            continue
        test = [r["test"] for r in rs]
        mean, spread = statistics.mean(test), max(test) - min(test)
        beyond = "-" if label == rows[0][0] else ("yes" if abs(mean - base_mean) > max(spread, base_spread) else "no")
        gap = statistics.mean(r["train"] - r["test"] for r in rs)
        tta_cells = []
        for m in tta_modes:
            gains = [r[f"tta_{m}"]["gain"] for r in rs]
            ratios = [r[f"tta_{m}"]["time_ratio"] or 0 for r in rs]
            tta_cells.append(
                f"{statistics.mean(gains):+.3f} ({min(gains):+.3f}..{max(gains):+.3f}), {statistics.mean(ratios):.1f}x"
            )
        lines.append(
            f"| {label} | {model} {kwargs or ''} | {len(rs)} | {mean:.3f} | "
            f"{', '.join(f'{t:.3f}' for t in test)} | {spread:.3f} | {mean / base_mean:.3f}x | {beyond} | "
            f"{gap:.3f} | {', '.join(str(r['epochs_run']) for r in rs)} | " + " | ".join(tta_cells) + " |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/av_ablation")
    ap.add_argument("--per-class", type=int, default=None, help="first N photos of each class (default all)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=None, help="--max-minutes of every run (default none)")
    ap.add_argument("--rows", default="base=vgg16_bn;ema=vgg16_bn,ema=1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tta", default="flip,flip-crop", help="TTA modes evaluated on every run ('' for none)")
    args = ap.parse_args(argv)

    import helpers_training

    rows = parse_rows(args.rows)
    seeds = [int(s) for s in args.seeds.split(",")]
    tta_modes = [m for m in args.tta.split(",") if m]
    t0, load_before = time.time(), os.getloadavg()
    name = f"clothing-{args.per_class or 'all'}pc-{args.image_size}"
    data = helpers_training.clothing_small(
        os.path.join(args.work, "data"), args.image_size, name=name, per_class=args.per_class
    )
    results = []
    for seed in seeds:  # seed by seed: a run cut short still has every row of its first seeds
        for label, model, kwargs in rows:
            results.append(run_one(data, args.work, label, model, kwargs, seed, args))
            print(json.dumps(results[-1]), flush=True)
    table = summarise(results, rows, tta_modes)
    out = {
        "args": vars(args),
        "data": data,
        "results": results,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "minutes": round((time.time() - t0) / 60, 2),
        "table": table,
    }
    with open(os.path.join(args.work, "accuracy_ablation.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    print(
        f"\n{data}: {args.per_class or 'all'} photos per class, {args.image_size} px, --epochs {args.epochs}"
        f"{f', --max-minutes {args.minutes}' if args.minutes else ''}, seeds {args.seeds}"
    )
    print(table)
    print(json.dumps({"load_before": load_before, "load_after": out["load_after"], "minutes": out["minutes"]}))


if __name__ == "__main__":
    main()
