"""How the cost of each stage grows with the catalog: synthetic catalogs end to end.

For each size (default 10,000, 30,000 and 100,000 products) a synthetic catalog
(``synthetic_catalog.py``: 2023-format metadata, small generated photos with a learnable
class signal) goes through the whole chain, each stage a separate ``amazon-visual``
process as a user would run it:

    build-data (local, --workers 2)           build-data --beam (DirectRunner, 2 processes)
    build-data --download (loopback HTTP)     [--download-stage]
    build-data (1 GB buffer): TFDS's own shuffle memory, the baseline of --shuffle-buffer-mb  [only in --stages]
    train, one epoch (alexnet width 0.25, 32 px)
    index (local)                             index --beam (DirectRunner, 2 processes)
    eval-retrieval (test split against the rest)
    serve: a short load on ``amazon-visual serve INDEX`` (1,000 requests, 8 clients, 1 photo in 4)

Per stage and size: wall time, items per second, peak RSS of the stage's whole process tree
(sampled every 0.2 s, Beam's worker processes included) and of its largest single process,
and the 1-minute load average. At the end: the ratio of items/s at the largest size to the
smallest (the target: within 20 %), and the RSS growth. It also checks, at every size, that
``index --beam`` wrote the same items in the same order as the local index, with equal
embeddings. Usage::

    python benchmarks/growth.py --sizes 10000,30000,100000 --work /tmp/av_growth --json-out growth.json
    python benchmarks/growth.py --sizes 1000 --work /tmp/av_growth_quick          # a smoke run
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import synthetic_catalog as sc  # noqa: E402

SERVE_REQUESTS, SERVE_CLIENTS = 1000, 8
OPT_IN = {"build-data (1 GB buffer)"}  # run only when named in --stages: the baseline of the shuffle buffer

BEAM = "--direct_num_workers=2 --direct_running_mode=multi_processing"
TRAIN = (
    "import sys; from amazon_visual import training; "
    "training.train(sys.argv[1], model='alexnet', out=sys.argv[2], image_size=32, epochs=1, batch_size=64, "
    "model_kwargs={'width': 0.25, 'fc_units': 64}, augment=False, early_stopping=0, quiet=True)"
)


def measure(cmd, log, interval=0.2):
    """Run ``cmd``; (wall seconds, peak RSS of its process tree MiB, peak RSS of one process MiB, load)."""
    import psutil

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        top = psutil.Process(proc.pid)
        peak_tree = peak_one = 0
        while proc.poll() is None:
            try:
                procs = [top] + top.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            peak_tree, peak_one = max(peak_tree, sum(rss)), max(peak_one, max(rss, default=0))
            time.sleep(interval)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {rc}); see {log}")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_tree_mb": round(peak_tree / 2**20, 1),
        "peak_rss_one_mb": round(peak_one / 2**20, 1),
        "load_1min": round((load0 + os.getloadavg()[0]) / 2, 2),
    }


def du(path):
    return (
        sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
        if os.path.exists(path)
        else 0
    )


def cli(*args):
    return [sys.executable, "-m", "amazon_visual.cli", *args]


def same_index(a, b):
    """True when two INDEX_DIRs hold the same items in the same order and equal embeddings (1e-5)."""
    if open(os.path.join(a, "items.csv"), "rb").read() != open(os.path.join(b, "items.csv"), "rb").read():
        return False
    from amazon_visual.retrieval.shards import iter_npy_blocks

    for x, y in zip(
        iter_npy_blocks(os.path.join(a, "embeddings.npy")), iter_npy_blocks(os.path.join(b, "embeddings.npy"))
    ):
        if x.shape != y.shape or not np.allclose(x, y, atol=1e-5):
            return False
    return True


def same_shards(a, b):
    """Whether two DATA_DIRs hold the same examples in the same order in the same shard files (compared
    as parsed ``tf.train.Example``s: the bytes of a proto map's entries may come in another order from
    another process)."""
    import tensorflow as tf

    names = sorted(f for f in os.listdir(a) if ".tfrecord" in f)
    if names != sorted(f for f in os.listdir(b) if ".tfrecord" in f):
        return False
    for f in names:
        left = tf.data.TFRecordDataset(os.path.join(a, f)).as_numpy_iterator()
        right = tf.data.TFRecordDataset(os.path.join(b, f)).as_numpy_iterator()
        for x, y in itertools.zip_longest(left, right):
            if x is None or y is None:
                return False
            if x != y and tf.train.Example.FromString(x) != tf.train.Example.FromString(y):
                return False
    return True


def stages(n, d, args):
    """The stages of one size, in order: (name, command, items it processes, output folder)."""
    meta, classes, images = d["metadata"], d["classes"], d["images_dir"]
    common = ["--metadata", meta, "--categories-file", classes, "--image-size", str(args.px), "--no-progress"]
    out = []
    out.append(
        (
            "build-data",
            cli("build-data", *common, "--images-dir", images, "--workers", "2", "--out", d["data"]),
            n,
            d["data"],
        )
    )
    out.append(
        (
            "build-data (1 GB buffer)",
            cli(
                "build-data",
                *common,
                "--images-dir",
                images,
                "--workers",
                "2",
                "--shuffle-buffer-mb",
                "1000",
                "--out",
                d["data_1gb"],
            ),
            n,
            d["data_1gb"],
        )
    )
    out.append(
        (
            "build-data --beam",
            cli(
                "build-data",
                *common,
                "--images-dir",
                images,
                "--beam",
                f"--beam-options={BEAM}",
                "--out",
                d["data_beam"],
            ),
            n,
            d["data_beam"],
        )
    )
    if args.download_stage:
        out.append(
            (
                "build-data --download",
                cli(
                    "build-data",
                    *common,
                    "--download",
                    "--workers",
                    "2",
                    "--cache-dir",
                    d["cache"],
                    "--out",
                    d["data_dl"],
                ),
                n,
                d["data_dl"],
            )
        )
    out.append(("train (1 epoch)", [sys.executable, "-c", TRAIN, d["data"], d["run"]], None, d["run"]))
    out.append(("index", cli("index", d["run"], "--data", d["data"], "--out", d["index"]), n, d["index"]))
    out.append(
        (
            "index --beam",
            cli("index", d["run"], "--data", d["data"], "--out", d["index_beam"], "--beam", f"--beam-options={BEAM}"),
            n,
            d["index_beam"],
        )
    )
    out.append(
        ("eval-retrieval", cli("eval-retrieval", d["index"], "--queries", "test", "-k", "10", "--json"), None, None)
    )
    return out


def serve_stage(n, d):
    """A short load on ``amazon-visual serve`` over the local index (serve_load.py's server and clients):
    QPS, p50/p99 per kind, errors, and the server's RSS once loaded and after the load."""
    import pandas as pd
    import psutil

    import serve_load as sl

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
    asins = pd.read_csv(os.path.join(d["index"], "items.csv"), usecols=["asin"], nrows=5000)["asin"].tolist()
    names = sorted(os.listdir(d["images_dir"]))[:64]
    photos = [open(os.path.join(d["images_dir"], f), "rb").read() for f in names]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with sl.Server(d["index"], env, max_batch=32, max_wait_ms=5) as server:
        ready_s = time.perf_counter() - t0
        proc = psutil.Process(server.proc.pid)
        rss_loaded = proc.memory_info().rss
        res = sl.run_load(server, sl.jobs_of("mixed", SERVE_REQUESTS, asins, photos), SERVE_CLIENTS, 10)
        rss_after = proc.memory_info().rss
    peak_mb = round(max(rss_loaded, rss_after) / 2**20, 1)  # one process: the tree is the process
    return {
        "stage": "serve (short load)",
        "n": n,
        "items": res["requests"],
        "wall_s": res["seconds"],
        "items_per_s": res["qps"],
        "errors": res["errors"],
        "ready_s": round(ready_s, 1),
        "asin_p50_ms": res.get("asin", {}).get("p50_ms"),
        "asin_p99_ms": res.get("asin", {}).get("p99_ms"),
        "photo_p50_ms": res.get("photo", {}).get("p50_ms"),
        "photo_p99_ms": res.get("photo", {}).get("p99_ms"),
        "peak_rss_tree_mb": peak_mb,
        "peak_rss_one_mb": peak_mb,
        "rss_loaded_mb": round(rss_loaded / 2**20, 1),
        "load_1min": round((load0 + os.getloadavg()[0]) / 2, 2),
    }


def run_size(n, args):
    from amazon_visual import data as avdata

    root = os.path.join(args.work, f"n{n}")
    if os.path.isdir(root):
        shutil.rmtree(root)
    d = {
        k: os.path.join(root, v)
        for k, v in {
            "catalog": "catalog",
            "data": "data",
            "data_beam": "data-beam",
            "data_dl": "data-download",
            "data_1gb": "data-1gb",
            "cache": "image-cache",
            "run": "run",
            "index": "index",
            "index_beam": "index-beam",
        }.items()
    }
    log = os.path.join(root, "stages.log")
    os.makedirs(root)
    server, url = sc.serve(args.classes, args.px)
    t0 = time.perf_counter()
    d.update(sc.write_catalog(d["catalog"], n, args.classes, args.px, base_url=url))
    rows = [{"stage": "catalog (generator)", "n": n, "wall_s": round(time.perf_counter() - t0, 2), "items": n}]
    wanted = [x.strip() for x in args.stages.split(",")] if args.stages else None
    try:
        for name, cmd, items, folder in stages(n, d, args):
            if (name not in wanted) if wanted is not None else name in OPT_IN:
                continue
            if items is None and name.startswith("train"):
                items = avdata.num_examples(d["data"], "train")
            if items is None:
                items = avdata.num_examples(d["data"], "test")
            m = measure(cmd, log)
            row = {
                "stage": name,
                "n": n,
                "items": items,
                **m,
                "items_per_s": round(items / m["wall_s"], 1),
                "disk_mb": round(du(folder) / 2**20, 1) if folder else None,
            }
            if name.startswith("build-data"):  # what TFDS's writer holds in memory to shuffle (up to 1 GB)
                row["train_split_mb"] = round(
                    sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if "-train.tfrecord" in f)
                    / 2**20,
                    1,
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
        if (wanted is None or "serve (short load)" in wanted) and os.path.isdir(d["index"]):
            rows.append(serve_stage(n, d))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.shutdown()
    if os.path.isdir(d["index"]) and os.path.isdir(d["index_beam"]):
        rows.append({"stage": "check", "n": n, "beam_index_equals_local": same_index(d["index"], d["index_beam"])})
        print(json.dumps(rows[-1]), flush=True)
    if os.path.isdir(d["data"]) and os.path.isdir(d["data_1gb"]):
        rows.append(
            {"stage": "check", "n": n, "same_dataset_whatever_the_buffer": same_shards(d["data"], d["data_1gb"])}
        )
        print(json.dumps(rows[-1]), flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def fit(points):
    """Least squares ``wall = fixed + items / rate`` over (items, wall) points: (fixed s, marginal items/s)."""
    if len(points) < 2:
        return None, None
    x, y = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    slope, fixed = np.polyfit(x, y, 1)
    return float(fixed), (float(1 / slope) if slope > 0 else None)


def summary(rows, sizes):
    """The table of BENCHMARKS.md, and per stage: items/s ratio (largest/smallest size), the fitted fixed
    cost and marginal rate, and the growth of peak RSS per 1,000 more items."""
    lo, hi = min(sizes), max(sizes)
    by = {(r["stage"], r["n"]): r for r in rows if "wall_s" in r}
    names = [r["stage"] for r in rows if r["n"] == lo and "wall_s" in r]
    print(
        "\n| stage | size | items | wall s | items/s | peak RSS, process tree MiB | largest process MiB | "
        "output on disk MiB | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in names:
        for n in sizes:
            r = by.get((s, n))
            if r:
                print(
                    f"| {s} | {n:,} | {r['items']:,} | {r['wall_s']:.1f} | {r.get('items_per_s', 0):.0f} | "
                    f"{r.get('peak_rss_tree_mb', 0):.0f} | {r.get('peak_rss_one_mb', 0):.0f} | "
                    f"{'-' if r.get('disk_mb') is None else round(r['disk_mb'])} | {r.get('load_1min', '-')} |"
                )
    print(
        f"\n| stage | items/s {hi:,} / {lo:,} | fitted fixed cost s | fitted marginal items/s | "
        f"peak RSS {hi:,} / {lo:,} | RSS growth MiB per 1,000 items |"
    )
    print("|---|---|---|---|---|---|")
    out = {}
    for s in names:
        a, b = by.get((s, lo)), by.get((s, hi))
        if not (a and b and "items_per_s" in a and "peak_rss_tree_mb" in a) or s.startswith("catalog"):
            continue
        if a["items"] == b["items"]:  # a fixed load (serve): no growth to fit; its rows are in the table above
            continue
        fixed, rate = fit([(by[(s, n)]["items"], by[(s, n)]["wall_s"]) for n in sizes if (s, n) in by])
        ratio = b["items_per_s"] / a["items_per_s"]
        grow = (b["peak_rss_tree_mb"] - a["peak_rss_tree_mb"]) / max(1, b["items"] - a["items"]) * 1000
        out[s] = {
            "items_per_s_ratio": ratio,
            "fixed_s": fixed,
            "marginal_items_per_s": rate,
            "peak_rss_ratio": b["peak_rss_tree_mb"] / a["peak_rss_tree_mb"],
            "rss_mb_per_1000_items": grow,
        }
        print(
            f"| {s} | {ratio:.2f} | {'-' if fixed is None else f'{fixed:.1f}'} | "
            f"{'-' if rate is None else f'{rate:.0f}'} | {out[s]['peak_rss_ratio']:.2f} | {grow:.2f} |"
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--work", default="/tmp/av_growth")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--px", type=int, default=32, help="photo size, stored and trained at this size")
    ap.add_argument("--download-stage", action="store_true", help="also build-data --download from the loopback server")
    ap.add_argument("--keep", action="store_true", help="keep each size's folders")
    ap.add_argument("--json-out", default=None)
    ap.add_argument(
        "--stages",
        default=None,
        help="only these stages, comma-separated names as printed (e.g. 'build-data,build-data --beam')",
    )
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    os.makedirs(args.work, exist_ok=True)
    print(f"sizes {sizes}, load {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    rows = []
    for n in sizes:
        rows.extend(run_size(n, args))
    ratios = summary(rows, sizes)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"settings": vars(args), "rows": rows, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
