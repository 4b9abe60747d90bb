"""``index --update`` against a full ``index`` of the same new catalog, in the same run.

A synthetic catalog (``synthetic_catalog.py``: 2023-format metadata, small generated photos)
of ``--n`` products is built into a dataset and indexed; then it changes by ``--change`` (1 %
by default: a third new products, a third new photos of known products, a third removed)
and, on top, ``--repriced`` products get a price (same photo: their vectors are reused).
The new catalog is built into a second dataset. Timed, each an ``amazon-visual`` process as a
user runs it, measured the way ``growth.py`` measures a stage (wall time, peak RSS of the process
tree, load):

    index NEW_DATA --out FULL            the baseline: every product embedded
    index NEW_DATA --out OLD --update    the update of the old index

The model is growth.py's (alexnet width 0.25, 32 px, embedding dim 16), trained for a few
steps only (the cost of embedding does not depend on the training). At the end it checks that
the updated index equals the full one (same items in the same order with the same attributes,
embeddings within 1e-5) and prints the update's counts and seconds per phase. Usage::

    python benchmarks/update_bench.py --n 100000 --work /tmp/av_update --json-out update.json
    python benchmarks/update_bench.py --n 2000 --work /tmp/av_update_quick      # a smoke run
"""

import argparse
import gzip
import io
import json
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import growth  # noqa: E402
import synthetic_catalog as sc  # noqa: E402

TRAIN = (
    "import sys; from amazon_visual import training; "
    "training.train(sys.argv[1], model='alexnet', out=sys.argv[2], image_size=32, epochs=1, batch_size=64, "
    "steps_per_epoch=5, validation_steps=1, model_kwargs={'width': 0.25, 'fc_units': 64}, augment=False, "
    "early_stopping=0, quiet=True)"
)


def changed_photo(i, classes, px):
    """Another photo of product ``i`` (mirrored: other bytes, the same class signal)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(sc.image(i, classes, px)[:, ::-1]).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def catalogs(root, n, change, repriced, classes, px):
    """The old and the new catalog (metadata + images folder each; photos shared by hard links) and what changed."""
    k = max(3, int(round(n * change)))
    added = list(range(n, n + k // 3))
    rng = np.random.default_rng(0)
    pick = rng.permutation(n)
    removed = set(int(i) for i in pick[: k // 3])
    photo = set(int(i) for i in pick[k // 3 : k // 3 + (k - 2 * (k // 3))])
    priced = set(int(i) for i in pick[k : k + repriced])
    cat = sc.write_catalog(os.path.join(root, "catalog"), n + len(added), classes, px)
    old_meta, new_meta = os.path.join(root, "old-meta.jsonl.gz"), os.path.join(root, "new-meta.jsonl.gz")
    with (
        gzip.open(cat["metadata"], "rt", encoding="utf-8") as f,
        gzip.open(old_meta, "wt", encoding="utf-8") as fo,
        gzip.open(new_meta, "wt", encoding="utf-8") as fn,
    ):
        for i, line in enumerate(f):
            if i < n:
                fo.write(line)
            if i not in removed:
                if i in priced:
                    line = json.dumps(dict(json.loads(line), price=9.99 + i % 50)) + "\n"
                fn.write(line)
    new_images = os.path.join(root, "new-images")
    os.makedirs(new_images)
    for name in os.listdir(cat["images_dir"]):
        os.link(os.path.join(cat["images_dir"], name), os.path.join(new_images, name))
    for i in photo:
        p = os.path.join(new_images, sc.asin_of(i) + ".jpg")
        os.remove(p)
        with open(p, "wb") as f:
            f.write(changed_photo(i, classes, px))
    return {
        "old": (old_meta, cat["images_dir"]),
        "new": (new_meta, new_images),
        "classes": cat["classes"],
        "added": len(added),
        "changed": len(photo),
        "removed": len(removed),
        "repriced": len(priced),
    }


def backbone_run(run_dir, name, image_size, data_dir):
    """A RUN_DIR whose embedding is a keras.applications backbone with random weights (the cost of a real model's
    embedding without downloading its weights): its ``embedding`` layer is the pooled features."""
    from amazon_visual import data, models

    model = models.build_embedder(name, image_size=image_size, weights=None)
    os.makedirs(run_dir, exist_ok=True)
    model.save(os.path.join(run_dir, "model.keras"))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(
            {
                "model": name,
                "image_size": image_size,
                "embedding_layer": "embedding",
                "objective": "retrieval",
                "embedding_dim": int(model.outputs[0].shape[-1]),
                "weights": "none",
                "resize": "pad",
            },
            f,
        )
    with open(os.path.join(run_dir, "labels.json"), "w") as f:
        json.dump(data.class_names(data_dir), f)


def same_index(a, b):
    """(equal, detail): the two INDEX_DIRs hold the same items and attributes in the same order, embeddings 1e-5."""
    from amazon_visual.retrieval.index import load_index

    ia, ib = load_index(a), load_index(b)
    try:
        if list(ia.items["asin"]) != list(ib.items["asin"]):
            return False, "items differ"
        if not ia.items.drop(columns="thumb").equals(ib.items.drop(columns="thumb")):
            return False, "attributes differ"
        diff = float(np.abs(np.asarray(ia.embeddings) - np.asarray(ib.embeddings)).max())
        return diff <= 1e-5, f"max embedding difference {diff:.2e}"
    finally:
        ia.close()
        ib.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--change", type=float, default=0.01, help="fraction added + re-photographed + removed")
    ap.add_argument("--repriced", type=int, default=1000, help="products that get a price (photo unchanged)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--px", type=int, default=32)
    ap.add_argument("--work", default="/tmp/av_update")
    ap.add_argument(
        "--backbone",
        default=None,
        help="embed with this keras.applications backbone (random "
        "weights, --image-size) instead of growth.py's small trained model",
    )
    ap.add_argument("--image-size", type=int, default=96, help="the backbone's input size")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    root = os.path.join(args.work, f"n{args.n}" + (f"-{args.backbone}" if args.backbone else ""))
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    log = os.path.join(root, "stages.log")
    print(f"n {args.n}, change {args.change}, load {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    t0 = time.perf_counter()
    c = catalogs(root, args.n, args.change, args.repriced, args.classes, args.px)
    rows = [
        {
            "stage": "catalogs (generator)",
            "wall_s": round(time.perf_counter() - t0, 2),
            **{k: c[k] for k in ("added", "changed", "removed", "repriced")},
        }
    ]
    print(json.dumps(rows[-1]), flush=True)
    d = {k: os.path.join(root, k) for k in ("old-data", "new-data", "run", "index", "full")}
    for name, (meta, images) in (("old-data", c["old"]), ("new-data", c["new"])):
        cmd = growth.cli(
            "build-data",
            "--metadata",
            meta,
            "--categories-file",
            c["classes"],
            "--images-dir",
            images,
            "--image-size",
            str(args.px),
            "--workers",
            "2",
            "--no-progress",
            "--out",
            d[name],
        )
        rows.append({"stage": f"build-data ({name})", **growth.measure(cmd, log)})
        print(json.dumps(rows[-1]), flush=True)
    if args.backbone:
        t0 = time.perf_counter()
        backbone_run(d["run"], args.backbone, args.image_size, d["old-data"])
        rows.append(
            {
                "stage": f"run of {args.backbone} at {args.image_size} px (random weights)",
                "wall_s": round(time.perf_counter() - t0, 2),
            }
        )
    else:
        rows.append(
            {"stage": "train (5 steps)", **growth.measure([sys.executable, "-c", TRAIN, d["old-data"], d["run"]], log)}
        )
    rows.append(
        {
            "stage": "index (old catalog)",
            **growth.measure(growth.cli("index", d["run"], "--data", d["old-data"], "--out", d["index"]), log),
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    full = {
        "stage": "index (new catalog, full: the baseline)",
        **growth.measure(growth.cli("index", d["run"], "--data", d["new-data"], "--out", d["full"]), log),
    }
    rows.append(full)
    print(json.dumps(full), flush=True)
    out = os.path.join(root, "update.json")
    cmd = growth.cli("index", d["run"], "--data", d["new-data"], "--out", d["index"], "--update", "--json")
    with open(out, "w") as f:  # the --json summary, measured like the other stages
        upd = {
            "stage": "index --update (old index -> new catalog)",
            **growth.measure(["sh", "-c", " ".join(f"'{a}'" for a in cmd) + f" > '{out}'"], log),
        }
    summary = json.load(open(out))
    upd.update({k: summary[k] for k in ("added", "changed", "removed", "reused", "embedded", "seconds")})
    rows.append(upd)
    print(json.dumps(upd), flush=True)
    equal, detail = same_index(d["index"], d["full"])
    ratio = upd["wall_s"] / full["wall_s"]
    rows.append(
        {
            "stage": "check",
            "update_equals_full": equal,
            "detail": detail,
            "update_over_full": round(ratio, 4),
            "goal": "<= 0.05",
            "met": ratio <= 0.05,
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    print(f"\nload at the end {os.getloadavg()}")
    print("\n| stage | wall s | peak RSS, process tree MiB | load |\n|---|---|---|---|")
    for r in rows:
        if "peak_rss_tree_mb" in r:
            print(f"| {r['stage']} | {r['wall_s']:.1f} | {r['peak_rss_tree_mb']:.0f} | {r['load_1min']} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"settings": vars(args), "rows": rows}, f, indent=2)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
