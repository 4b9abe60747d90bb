"""Live writes: the write log's throughput and size, and search over an index with live writes on top.

An INDEX_DIR of ``--n`` synthetic clustered vectors (the data of ``benchmarks/index_bench.py``; its
cached vectors and Annoy file are reused with ``--vectors`` / ``--annoy``), made writable
(``writes.sqlite``, :mod:`amazon_visual.retrieval.writelog`). Measured in one run:

1. writes per second of the log (``WriteLog.put``: one fsynced SQLite transaction each, a
   128-d vector, attributes and a 6 KB thumbnail), sequential and from several processes at once;
   the log's bytes per write;
2. how long a second reader (another worker) takes to see a committed write (``PRAGMA data_version``
   then the new rows);
3. search (``writelog.live_search``, the Recommender's path on a writable index) with an overlay of
   0 / 1,000 / 10,000 live writes (60% new products, 30% replaced ones, 10% deletes): p50 / p99 and
   recall@10 against exact search over the catalog as it stands (the index's visible items plus the
   live ones), unfiltered and with a 1% filter; the baseline in the same run is the read-only
   index's own filtered search (``filters.filtered_search``);
4. the resident memory of a fresh worker process that opens the index with its overlay and serves
   the queries.

Usage::

    python benchmarks/writes_bench.py --n 1000000 --workdir /tmp/wbench \
        --vectors /tmp/fbench/emb_1000000_128.npy --annoy /tmp/fbench/index_1000000_128_t50.annoy
    python benchmarks/writes_bench.py --n 20000 --overlays 0,1000 --queries 100   # quick check
"""

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from amazon_visual.retrieval import filters as F  # noqa: E402
from amazon_visual.retrieval import writelog  # noqa: E402
from amazon_visual.retrieval.layout import normalize  # noqa: E402

THUMB = bytes(6000)  # a thumbnail's size (the log stores the JPEG as it is)
N_LABELS, N_BRANDS = 100, 1000


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_index(args):
    """INDEX_DIR with the vectors, an Annoy index, items.csv (label, brand 1 of 1000, price) and a new log."""
    import pandas as pd

    from amazon_visual.retrieval import backends
    from amazon_visual.retrieval.shards import iter_npy_blocks
    from index_bench import generate

    out = os.path.join(args.workdir, f"index_{args.n}_{args.dim}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    emb = os.path.join(out, "embeddings.npy")
    if args.vectors:
        _link_or_copy(args.vectors, emb)
    else:
        x = np.lib.format.open_memmap(emb, "w+", np.float32, (args.n, args.dim))
        generate(args.n, args.dim, 1000, 16, 0.7, 0.35, seed=0, out=x)
        x.flush()
        del x
    ann = os.path.join(out, "index.ann")
    if args.annoy:
        _link_or_copy(args.annoy, ann)
        size = os.path.getsize(ann)
    else:
        t0 = time.perf_counter()
        st = backends.AnnoyBackend.build(
            iter_npy_blocks(emb), args.n, args.dim, ann, {"trees": args.trees}, on_disk=True, n_jobs=2
        )
        size = st["size_bytes"]
        print(f"annoy build: {time.perf_counter() - t0:.1f} s", flush=True)
    rng = np.random.default_rng(0)
    n = args.n
    items = pd.DataFrame(
        {
            "asin": [f"B{i:09d}" for i in range(n)],
            "title": "",
            "category": "",
            "label": np.char.add("c", (np.arange(n) % N_LABELS).astype(str)),
            "label_id": 0,
            "image_url": "",
            "split": "train",
            "thumb": "",
            "brand": np.char.add("brand", rng.integers(0, N_BRANDS, n).astype(str)),
            "price": rng.uniform(1, 100, n).round(2),
            "average_rating": "",
            "rating_number": "",
            "image_sha256": "",
        }
    )
    items.to_csv(os.path.join(out, "items.csv"), index=False)
    manifest = {
        "n_items": n,
        "embedding_dim": args.dim,
        "metric": "angular",
        "index_file": "index.ann",
        "backend": "annoy",
        "trees": args.trees,
        "search_k": args.search_k,
        "index_size_bytes": size,
        "fingerprint": "synthetic",
        "source": "backbone",
        "model": "synthetic",
        **writelog.create_log(out, {"embedding_dim": args.dim, "fingerprint": "synthetic"}),
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return out


def fresh_vectors(args, m, seed):
    from index_bench import generate

    return generate(m, args.dim, 1000, 16, 0.7, 0.35, seed=seed)


# ------------------------------------------------------------------ 1. write throughput
def _writer(index_dir, m, seed, conn_out):
    from amazon_visual.retrieval.index import read_manifest

    log = writelog.WriteLog(index_dir, read_manifest(index_dir))
    rng = np.random.default_rng(seed)
    vecs = normalize(rng.standard_normal((m, log.dim)))
    attrs = writelog.parse_attributes({"title": "a live product", "brand": "brand7", "price": 9.5})
    lat = []
    start = time.time()
    for j in range(m):
        t0 = time.perf_counter()
        log.put(f"T{seed}-{j}", vecs[j], attrs, THUMB, 0, lambda a: False)
        lat.append(time.perf_counter() - t0)
    conn_out.send((lat, start, time.time()))


def write_throughput(index_dir, writes, procs):
    """writes/s with ``procs`` processes writing ``writes`` in all at the same time; per-write latency."""
    ctx = multiprocessing.get_context("spawn")
    pipes, ps = [], []
    for p in range(procs):
        a, b = ctx.Pipe(False)
        ps.append(ctx.Process(target=_writer, args=(index_dir, writes // procs, 1000 + p + 10 * procs, b)))
        pipes.append(a)
    for p in ps:
        p.start()
    got = [a.recv() for a in pipes]
    for p in ps:
        p.join()
    lat = np.array(sum((g[0] for g in got), []))
    wall = max(g[2] for g in got) - min(g[1] for g in got)  # first write of any process to the last one
    return {
        "processes": procs,
        "writes": len(lat),
        "wall_s": round(wall, 2),
        "writes_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(1e3 * float(np.percentile(lat, 50)), 2),
        "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 2),
    }


def visibility(index_dir):
    """Seconds from a committed write to the moment another reader's snapshot holds it."""
    from amazon_visual.retrieval.index import load_index

    reader = writelog.open_live(load_index(index_dir))
    writer = writelog.open_live(load_index(index_dir))
    attrs = writelog.parse_attributes({})
    times, checks = [], []
    for j in range(50):
        t = time.perf_counter()
        reader.snap()
        checks.append(time.perf_counter() - t)  # nothing new: the cheap check
        writer.writer().put(f"V{j}", np.ones(reader.dim, np.float32), attrs, THUMB, 0, writer.in_base)
        t0 = time.perf_counter()
        assert f"V{j}" in reader.asin_to_id
        times.append(time.perf_counter() - t0)
    return {
        "check_us_p50": round(1e6 * float(np.median(checks)), 1),
        "commit_to_visible_ms_p50": round(1e3 * float(np.median(times)), 3),
        "commit_to_visible_ms_max": round(1e3 * float(np.max(times)), 3),
    }


# ------------------------------------------------------------------ 3. search with an overlay
def fill(index_dir, args, total, done, rng):
    """Bring the log to ``total`` overlay writes (60% new, 30% replace, 10% delete), in one transaction
    per 1,000 (a benchmark shortcut: the entries are what single writes would leave)."""
    import sqlite3

    conn = sqlite3.connect(writelog.log_path(index_dir), isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    m = total - done
    vecs = fresh_vectors(args, m, seed=500 + done)
    rows = []
    for j in range(m):
        r = rng.random()
        if r < 0.6:
            op, asin = "put", f"NEW{done + j}"
        else:
            op, asin = ("put" if r < 0.9 else "delete"), f"B{int(rng.integers(0, args.n)):09d}"
        attrs = {
            "title": "",
            "category": f"c{int(rng.integers(0, N_LABELS))}",
            "brand": f"brand{int(rng.integers(0, N_BRANDS))}",
            "price": round(float(rng.uniform(1, 100)), 2),
        }
        rows.append(
            (
                op,
                asin,
                vecs[j].astype("<f4").tobytes() if op == "put" else None,
                json.dumps(attrs) if op == "put" else None,
                THUMB if op == "put" else None,
                time.time(),
            )
        )
    for s in range(0, m, 1000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO writes (op, asin, embedding, attributes, thumbnail, written_at) VALUES (?, ?, ?, ?, ?, ?)",
            rows[s : s + 1000],
        )
        conn.execute("COMMIT")
    conn.close()


def truth(live, x, q, k, filt):
    """Exact top-k over the catalog as it stands: visible index items (allowed by ``filt``) and live ones."""
    snap = live.snap()
    allowed = np.ones(live.n_items, bool) if snap.n_hidden == 0 else ~snap.hidden
    sel = F.columns(live).select(filt)
    if sel is not None:
        allowed &= sel.mask
    out = []
    ids = np.flatnonzero(allowed)
    rows = np.asarray(x[ids]) if ids.size < len(allowed) else np.asarray(x)
    slots = np.flatnonzero(snap.alive & writelog.filter_mask(snap, filt))
    for b in range(0, len(q), 50):
        sims_all = q[b : b + 50] @ rows.T
        for i in range(sims_all.shape[0]):
            top = np.argpartition(-sims_all[i], k)[:k]
            c_ids = np.concatenate([ids[top], slots + live.n_items])
            c_s = np.concatenate([sims_all[i, top], snap.vecs[slots] @ q[b + i]])
            out.append(set(c_ids[np.argsort(-c_s)[:k]].tolist()))
    return out


def search_pair(live, base, q, k, filt, exact):
    """p50 / p99 of the live search and of the read-only index's own search (the baseline), query by query
    in turn after a warm-up pass of both (the same page cache for both); recall@k of each against ``exact``."""
    sel_live, sel_base = F.columns(live).select(filt), F.columns(base).select(filt)

    def live_q(v):
        return writelog.live_search(live, v, k, allowed=sel_live)[0]

    def base_q(v):
        return F.filtered_search(base, v, k, allowed=sel_base)[0]

    for v in q:  # warm-up
        live_q(v), base_q(v)
    lat = {"live": [], "base": []}
    hits = {"live": 0, "base": 0}
    for i, v in enumerate(q):
        for name, fn in (("base", base_q), ("live", live_q)):
            t0 = time.perf_counter()
            ids = fn(v)
            lat[name].append(time.perf_counter() - t0)
            hits[name] += len(set(ids.tolist()) & exact[i])
    out = {
        name: {
            "recall": round(hits[name] / (len(q) * k), 4),
            "p50_ms": round(1e3 * float(np.percentile(lat[name], 50)), 3),
            "p99_ms": round(1e3 * float(np.percentile(lat[name], 99)), 3),
        }
        for name in lat
    }
    return out["live"], out["base"]


CHILD = r"""
import json, sys, time, numpy as np, psutil
sys.path.insert(0, sys.argv[3])
from amazon_visual.retrieval.index import load_index
from amazon_visual.retrieval import writelog
p = psutil.Process()
def mem():
    m = p.memory_full_info()
    return {"rss_mb": round(m.rss / 2**20, 1), "uss_mb": round(m.uss / 2**20, 1)}
before = mem()
t = time.perf_counter(); index = load_index(sys.argv[1]); t1 = time.perf_counter()
live = writelog.open_live(index); t2 = time.perf_counter()
for v in np.load(sys.argv[2]):
    writelog.live_search(live, v, 10)
print(json.dumps({"before": before, "after_queries": mem(), "load_index_s": round(t1 - t, 3),
                  "overlay_replay_s": round(t2 - t1, 3)}))
"""


def worker_memory(index_dir, qpath):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, index_dir, qpath, ROOT], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--trees", type=int, default=50)
    ap.add_argument("--search-k", type=int, default=2000)
    ap.add_argument("--workdir", default="/tmp/wbench")
    ap.add_argument("--vectors", help="reuse index_bench's cached vectors (.npy) of the same n and dim")
    ap.add_argument("--annoy", help="reuse index_bench's Annoy file built over --vectors")
    ap.add_argument("--writes", type=int, default=1000, help="writes per throughput measurement")
    ap.add_argument("--overlays", default="0,1000,10000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    from amazon_visual.retrieval.index import load_index

    report = {"settings": vars(args), "load_before": os.getloadavg()}
    print(f"settings: {vars(args)}; load {os.getloadavg()}", flush=True)
    index_dir = make_index(args)
    # 1. throughput (then a fresh log for the search part)
    report["throughput"] = [write_throughput(index_dir, args.writes, p) for p in (1, 2, 4)]
    for r in report["throughput"]:
        print(f"writes: {r}", flush=True)
    log = writelog.log_path(index_dir)
    size = sum(os.path.getsize(log + s) for s in ("", "-wal") if os.path.exists(log + s))
    n_writes = writelog.last_seq(index_dir)
    report["log_bytes_per_write"] = round(size / n_writes)
    report["visibility"] = visibility(index_dir)
    print(
        f"log: {n_writes} writes, {size / 2**20:.1f} MiB, {report['log_bytes_per_write']} bytes per write "
        f"(6,000 of them the thumbnail); {report['visibility']}",
        flush=True,
    )
    with open(os.path.join(index_dir, "manifest.json")) as f:
        manifest = json.load(f)
    manifest.update(writelog.create_log(index_dir, {"embedding_dim": args.dim, "fingerprint": "synthetic"}))
    with open(os.path.join(index_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    # 3. search with overlays
    q = fresh_vectors(args, args.queries, seed=99)
    qpath = os.path.join(args.workdir, "queries.npy")
    np.save(qpath, q)
    x = np.load(os.path.join(index_dir, "embeddings.npy"), mmap_mode="r")
    base = load_index(index_dir)
    one_pct = F.parse_filters({"brand": [f"brand{i}" for i in range(N_BRANDS // 100)]})  # 10 of 1,000 brands
    rng = np.random.default_rng(7)
    done, rows = 0, []
    for total in [int(s) for s in args.overlays.split(",")]:
        fill(index_dir, args, total, done, rng)
        done = total
        t0 = time.perf_counter()
        live = writelog.open_live(load_index(index_dir))
        snap = live.snap()
        opened = time.perf_counter() - t0
        for name, filt in (("unfiltered", F.Filters()), ("1% filter", one_pct)):
            exact = truth(live, x, q, args.k, filt)
            got, base_got = search_pair(live, base, q, args.k, filt, exact)
            if total:  # the read-only index answers another catalog: its recall against this one means nothing
                base_got.pop("recall")
            r = {
                "overlay_writes": total,
                "live_items": snap.n_live,
                "hidden": snap.n_hidden,
                "filter": name,
                **got,
                "baseline": base_got,
            }
            r["p50_ratio"] = round(r["p50_ms"] / max(r["baseline"]["p50_ms"], 1e-9), 2)
            r["p99_ratio"] = round(r["p99_ms"] / max(r["baseline"]["p99_ms"], 1e-9), 2)
            rows.append(r)
            print(f"search: {r}", flush=True)
        r["worker_memory"] = worker_memory(index_dir, qpath)
        r["open_with_overlay_s"] = round(opened, 3)
        print(f"  index opened with its overlay in {opened:.2f} s; a fresh worker: {r['worker_memory']}", flush=True)
    report["search"] = rows
    report["load_after"] = os.getloadavg()
    print(f"load {os.getloadavg()}", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
