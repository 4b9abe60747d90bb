"""Annoy (as amazon-visual builds and serves it) against exact numpy cosine search.

Clustered synthetic embeddings of the real dimension, at several catalog sizes, in one
run. For each size: build the Annoy index on disk (``on_disk_build``, ``n_jobs``
threads), sweep ``search_k`` and pick the smallest value reaching the target
recall@k, then report for that setting and for exact search: recall@k, p50/p99 latency
of single queries, queries per second, build time, index size, and the resident memory
of a *fresh process* that memory-maps the index (``prefault=False``) and serves the
queries. Usage::

    python benchmarks/index_bench.py                          # 100,000 and 1,000,000 items, dim 512
    python benchmarks/index_bench.py --sizes 20000 --queries 200   # quick check
    python benchmarks/index_bench.py --dim 2048 --sizes 100000   # a resnet50 backbone's dimension

Data. ``clusters`` Gaussian clusters; a point is ``center + spread * Q_c z + noise * g``
with ``center`` ~ N(0, I/dim), ``Q_c`` a random orthonormal ``dim x intrinsic`` basis of
its cluster, ``z`` ~ N(0, I/intrinsic) and ``g`` ~ N(0, I/dim): most variance lies in a
low-dimensional subspace per cluster, as for CNN embeddings. Queries are fresh points of
the same distribution (not in the index). Vectors are generated in chunks from a seed.
Similarity is cosine (Annoy "angular"; candidates rescored from the normalised
embeddings exactly as ``amazon_visual.retrieval.index.Index.search`` does).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from amazon_visual.retrieval.index import build_annoy, normalize  # noqa: E402


def generate(n, dim, clusters, intrinsic, spread, noise, seed, chunk=8192, out=None):
    """n x dim float32 normalised clustered vectors (written into ``out`` if given)."""
    g = np.random.default_rng(1234)  # the cluster model is shared by items and queries
    centers = g.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)
    bases = np.empty((clusters, dim, intrinsic), np.float32)
    for c in range(clusters):
        q, _ = np.linalg.qr(g.standard_normal((dim, intrinsic)))
        bases[c] = q
    rng = np.random.default_rng(seed)
    x = out if out is not None else np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        lab = rng.integers(0, clusters, m)
        z = rng.standard_normal((m, intrinsic)).astype(np.float32) / np.sqrt(intrinsic)
        pts = centers[lab] + spread * np.einsum("nij,nj->ni", bases[lab], z)
        pts += noise * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        x[s:s + m] = normalize(pts)
    return x


def exact_topk(x, q, k, chunk=65536):
    """Exact cosine top-k of each query (batched matmul over database chunks)."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for s in range(0, len(x), chunk):
        sims = q @ x[s:s + chunk].T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + s], 1)
        top = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, top, 1)
        best_i = np.take_along_axis(cand_i, top, 1)
    return best_i, best_s


def annoy_query(index, emb, q, k, search_k):
    ids = np.asarray(index.get_nns_by_vector(q, k, search_k=search_k), np.int64)
    order = np.argsort(ids)
    sims = np.asarray(emb[ids[order]]) @ q  # exact rescoring, as Index.search
    return ids[order][np.argsort(-sims)]


def run_annoy(index, emb, queries, truth, k, search_k, passes=1):
    """Single sequential queries; wall-clock and thread-CPU latency (the last of ``passes`` passes is kept)."""
    for _ in range(passes):
        lat = np.empty(len(queries))
        cpu = np.empty(len(queries))
        hits = 0
        load0 = os.getloadavg()[0]
        t_all = time.perf_counter()
        for i, q in enumerate(queries):
            c0 = time.thread_time()
            t0 = time.perf_counter()
            ids = annoy_query(index, emb, q, k, search_k)
            lat[i] = time.perf_counter() - t0
            cpu[i] = time.thread_time() - c0
            hits += len(set(ids.tolist()) & set(truth[i].tolist()))
        total = time.perf_counter() - t_all
    return {"search_k": search_k, "recall": hits / (len(queries) * k), "p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p99_ms": 1e3 * float(np.percentile(lat, 99)), "qps": len(queries) / total,
            "cpu_p50_ms": 1e3 * float(np.percentile(cpu, 50)), "cpu_p99_ms": 1e3 * float(np.percentile(cpu, 99)),
            "loadavg_1min": round((load0 + os.getloadavg()[0]) / 2, 2)}


CHILD = r"""
import json, sys, time, numpy as np, psutil
from annoy import AnnoyIndex
path, emb_path, qpath, dim, k, search_k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
p = psutil.Process()
base = p.memory_full_info()
base_st = {}
for line in open("/proc/self/status"):
    if line.startswith(("RssAnon", "RssFile")):
        base_st[line.split(":")[0]] = int(line.split(":")[1].split()[0]) * 1024
a = AnnoyIndex(dim, "angular"); a.load(path, prefault=False)
emb = np.load(emb_path, mmap_mode="r")
loaded = p.memory_full_info()
loaded_st = {}
for line in open("/proc/self/status"):
    if line.startswith(("RssAnon", "RssFile")):
        loaded_st[line.split(":")[0]] = int(line.split(":")[1].split()[0]) * 1024
q = np.load(qpath)
for v in q:
    ids = np.asarray(a.get_nns_by_vector(v, k, search_k=search_k), np.int64); _ = np.asarray(emb[np.sort(ids)]) @ v
after = p.memory_full_info()
def status():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon", "RssFile")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out
def mb(m, st):
    return {"rss_mb": round(m.rss / 2**20, 1), "uss_mb": round(m.uss / 2**20, 1), "pss_mb": round(getattr(m, "pss", 0) / 2**20, 1),
            "rss_anon_mb": round(st.get("RssAnon", 0) / 2**20, 1), "rss_file_mb": round(st.get("RssFile", 0) / 2**20, 1)}
print(json.dumps({"before_load": mb(base, base_st), "after_mmap_load": mb(loaded, loaded_st), "after_queries": mb(after, status())}))
"""


def bench_size(n, args, workdir):
    k = args.k
    print(f"\n=== {n:,} items, dim {args.dim} ===", flush=True)
    emb_path = os.path.join(workdir, f"emb_{n}_{args.dim}.npy")
    qpath = os.path.join(workdir, f"queries_{n}_{args.dim}.npy")
    t0 = time.perf_counter()
    if args.reuse and os.path.isfile(emb_path) and os.path.isfile(qpath):
        q = np.load(qpath)
        print("reusing the generated vectors", flush=True)
    else:
        x = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float32, shape=(n, args.dim))
        generate(n, args.dim, args.clusters, args.intrinsic, args.spread, args.noise, seed=1, out=x)
        x.flush()
        del x
        q = generate(args.queries, args.dim, args.clusters, args.intrinsic, args.spread, args.noise, seed=2)
        np.save(qpath, q)
        print(f"generated in {time.perf_counter() - t0:.1f}s", flush=True)
    x = np.load(emb_path, mmap_mode="r")
    xr = np.ascontiguousarray(x)  # exact search works from RAM

    # exact search: ground truth (batched) and single-query latency
    t0 = time.perf_counter()
    truth, _ = exact_topk(xr, q, k)
    exact_batch_s = time.perf_counter() - t0
    m = min(len(q), args.exact_single)
    lat = np.empty(m)
    for i in range(m):
        t1 = time.perf_counter()
        s = xr @ q[i]
        top = np.argpartition(-s, k)[:k]
        top[np.argsort(-s[top])]
        lat[i] = time.perf_counter() - t1
    exact = {"recall": 1.0, "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p99_ms": 1e3 * float(np.percentile(lat, 99)),
             "qps_single": 1.0 / float(lat.mean()), "qps_batched": len(q) / exact_batch_s}
    print(f"exact: p50 {exact['p50_ms']:.2f} ms  p99 {exact['p99_ms']:.2f} ms  QPS single {exact['qps_single']:.1f}  "
          f"QPS batched {exact['qps_batched']:.1f}", flush=True)
    del xr

    from annoy import AnnoyIndex

    trees = args.trees
    ann_path = os.path.join(workdir, f"index_{n}_{args.dim}_{trees}.ann")
    stats_path = ann_path + ".json"
    if args.reuse and os.path.isfile(ann_path) and os.path.isfile(stats_path):
        st = json.load(open(stats_path))
        print("reusing the built index (build time from its first build)", flush=True)
    else:
        st = build_annoy(x, ann_path, trees=trees, on_disk=True, n_jobs=args.n_jobs)
        json.dump(st, open(stats_path, "w"))
    print(f"annoy build: {trees} trees, {st['build_seconds']:.1f}s, {st['size_bytes'] / 2**20:.0f} MiB", flush=True)
    index = AnnoyIndex(args.dim, "angular")
    index.load(ann_path, prefault=False)
    run_annoy(index, x, q, truth, k, args.search_k[0])  # warm-up pass (not recorded): fault the pages in
    sweep = []
    chosen = None
    for sk in args.search_k:
        r = run_annoy(index, x, q, truth, k, sk)
        sweep.append(r)
        print(f"  search_k {sk:>7}: recall@{k} {r['recall']:.4f}  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
              f"(CPU p99 {r['cpu_p99_ms']:.3f} ms)  QPS {r['qps']:.0f}  load {r['loadavg_1min']}", flush=True)
        if chosen is None and r["recall"] >= args.target_recall:
            chosen = r
        if r["recall"] >= 0.999 or r["cpu_p99_ms"] > 20:
            break
    if chosen is None:
        chosen = max(sweep, key=lambda r: r["recall"])
    # the chosen setting = the smallest search_k reaching the target; measured again after a warm-up pass
    # (a serving process is warm: the pages it touches are in the page cache)
    chosen = run_annoy(index, x, q, truth, k, chosen["search_k"], passes=2)
    index.unload()
    child = subprocess.run([sys.executable, "-c", CHILD, ann_path, emb_path, qpath, str(args.dim), str(k),
                            str(chosen["search_k"])], capture_output=True, text=True, check=True)
    mem = json.loads(child.stdout)
    res = {"n_items": n, "dim": args.dim, "trees": trees, "build_seconds": st["build_seconds"],
           "index_size_mb": round(st["size_bytes"] / 2**20, 1),
           "embeddings_size_mb": round(os.path.getsize(emb_path) / 2**20, 1), "annoy": chosen, "sweep": sweep,
           "exact": exact, "memory_fresh_process": mem,
           "latency_ratio_p50_exact_over_annoy": exact["p50_ms"] / chosen["p50_ms"],
           "qps_ratio_annoy_over_exact_single": chosen["qps"] / exact["qps_single"],
           "qps_ratio_annoy_over_exact_batched": chosen["qps"] / exact["qps_batched"]}
    ok = chosen["recall"] >= args.target_recall and chosen["p99_ms"] < 5.0
    res["meets_target"] = bool(ok)
    print(f"chosen: trees {trees}, search_k {chosen['search_k']}: recall@{k} {chosen['recall']:.4f}, "
          f"p50 {chosen['p50_ms']:.3f} ms, p99 {chosen['p99_ms']:.3f} ms (thread CPU time p50 {chosen['cpu_p50_ms']:.3f}, "
          f"p99 {chosen['cpu_p99_ms']:.3f} ms), QPS {chosen['qps']:.0f}, 1-min load average {chosen['loadavg_1min']}",
          flush=True)
    print(f"annoy vs exact: p50 latency {res['latency_ratio_p50_exact_over_annoy']:.1f}x lower, "
          f"QPS {res['qps_ratio_annoy_over_exact_single']:.1f}x single-query exact, "
          f"{res['qps_ratio_annoy_over_exact_batched']:.2f}x batched exact", flush=True)
    print(f"fresh process after mmap load: {mem['after_mmap_load']}, after {len(q)} queries: {mem['after_queries']}",
          flush=True)
    print(f"target (recall@{k} >= {args.target_recall}, p99 < 5 ms): {'met' if ok else 'NOT met'}", flush=True)
    if not args.keep:
        for p in (ann_path, stats_path, emb_path, qpath):
            os.remove(p)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=512, help="embedding dim (512: the trained heads, models/heads.py; 2048: a resnet50 backbone)")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--intrinsic", type=int, default=16)
    ap.add_argument("--spread", type=float, default=0.7)
    ap.add_argument("--noise", type=float, default=0.35)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--exact-single", type=int, default=100, help="single exact queries timed")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--trees", type=int, default=50)
    ap.add_argument("--search-k", default="500,1000,2000,4000,8000,16000,32000,64000")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/amazon_visual_index_bench")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated vectors and index files")
    ap.add_argument("--reuse", action="store_true", help="reuse vectors and index files kept by --keep")
    args = ap.parse_args(argv)
    args.search_k = [int(s) for s in args.search_k.split(",")]
    os.makedirs(args.workdir, exist_ok=True)
    try:
        import psutil

        cpus = psutil.cpu_count()
        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        cpus, mem = os.cpu_count(), None
    print(f"machine: {platform.processor() or platform.machine()}, {cpus} CPUs, {mem} GiB RAM; python {platform.python_version()}; "
          f"settings: {vars(args)}", flush=True)
    results = [bench_size(int(n), args, args.workdir) for n in args.sizes.split(",")]
    print("\n| items | dim | trees | search_k | recall@%d | p50 ms | p99 ms | QPS | exact p50 ms | exact p99 ms | "
          "exact QPS (single / batched) | build s | index MiB | RSS after mmap load MiB | RSS after queries MiB | "
          "of which anonymous MiB | CPU p99 ms | load avg |" % args.k)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a, e, m = r["annoy"], r["exact"], r["memory_fresh_process"]
        print(f"| {r['n_items']:,} | {r['dim']} | {r['trees']} | {a['search_k']} | {a['recall']:.4f} | {a['p50_ms']:.3f} | "
              f"{a['p99_ms']:.3f} | {a['qps']:.0f} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | {e['qps_single']:.1f} / "
              f"{e['qps_batched']:.0f} | {r['build_seconds']:.1f} | {r['index_size_mb']:.0f} | "
              f"{m['after_mmap_load']['rss_mb']:.0f} | {m['after_queries']['rss_mb']:.0f} | "
              f"{m['after_queries']['rss_anon_mb']:.0f} | {a['cpu_p99_ms']:.3f} | "
              f"{a['loadavg_1min']} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"settings": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
