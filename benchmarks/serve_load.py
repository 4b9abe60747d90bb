"""Load benchmark of ``amazon-visual serve`` on loopback: QPS, p50/p99 and errors, against
the same photo work done in batches in one process and against the server with batching off.

Bounded: a fixed number of requests per phase at a fixed concurrency, then it stops.
Traffic goes only to 127.0.0.1. Phases, each against a fresh ``amazon-visual serve`` process:

1. in process (no HTTP): decode, resize, model on batches of ``--concurrency`` photos (the
   largest batch that many concurrent clients can form), then the index search and result
   rows of each: images per second;
2. server, batching on (``--max-batch``, ``--max-wait-ms``): ASIN queries only; the same from
   ``wrk`` when it is installed (a C load generator, ``--wrk-seconds`` long: the Python clients
   take a large share of the 2 cores the server needs, wrk little); photo uploads only (and
   from wrk); a mixed run (one photo in four);
3. server, batching off (``--max-batch 1``): photo uploads only (and from wrk).

It prints each phase's QPS, p50/p99 latency and errors, then the ratios and the targets of
issue 10 (0 errors; ASIN >= 500 QPS with p99 < 20 ms; photo QPS >= 0.8x in process and
>= 3x unbatched). The index: ``--index INDEX_DIR``, or one built (once, under ``--work``)
from the packaged sample catalog (1,000 photos) with ``--model`` (ImageNet MobileNetV2 at
``--image-size`` px from ``../shared/weights`` when present, random weights otherwise).

    python benchmarks/serve_load.py                      # about 3 minutes on 2 cores
    python benchmarks/serve_load.py --requests 500 --photo-requests 160   # quick
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
WEIGHTS = os.path.join(REPO, "..", "shared", "weights")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", help="INDEX_DIR to serve (default: build one from the packaged sample)")
    p.add_argument("--work", default=os.path.join(REPO, "build", "serve-bench"), help="folder for the built index")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--requests", type=int, default=2000, help="requests of the ASIN and the mixed phases")
    p.add_argument("--photo-requests", type=int, default=480, help="requests of each photo-only phase")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="server worker processes (serve --workers)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("-k", type=int, default=10)
    p.add_argument(
        "--wrk-seconds",
        type=float,
        default=5.0,
        help="also send ASIN queries from wrk (a C load generator) for this long, and photo uploads "
        "(batched and unbatched) for twice as long, when wrk is installed (0: skip)",
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON document")
    return p.parse_args(argv)


# ------------------------------------------------------------------ the index
def keras_env(work):
    """Environment whose KERAS_HOME holds the shared ImageNet MobileNetV2 weights (when present)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
    seed = os.path.join(WEIGHTS, "seed-keras-cache")
    if os.path.isfile(seed):
        home = os.path.join(work, "keras-home")
        subprocess.run(["sh", seed, home], check=True, stdout=subprocess.DEVNULL)
        env["KERAS_HOME"] = home
    return env


def ensure_index(args, env):
    if args.index:
        return args.index
    index_dir = os.path.join(args.work, f"index-{args.model}-{args.image_size}")
    if os.path.isfile(os.path.join(index_dir, "manifest.json")):
        return index_dir
    weights = "imagenet" if "KERAS_HOME" in env else "none"
    code = (
        f"import amazon_visual as av; from amazon_visual import sample\n"
        f"av.build_data(sample.metadata_path(), {os.path.join(args.work, 'data')!r}, images_dir=sample.images_dir(),"
        f" categories=sample.class_names(), image_size=160, workers=1, progress=False, overwrite=True)\n"
        f"av.build_index({os.path.join(args.work, 'data')!r}, {index_dir!r}, backbone={args.model!r},"
        f" weights={weights!r}, image_size={args.image_size}, trees=20, overwrite=True, progress=False)\n"
    )
    print(
        f"building the benchmark index ({args.model}, {weights} weights, {args.image_size} px) in {index_dir}",
        file=sys.stderr,
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return index_dir


def sample_photos():
    from amazon_visual import sample

    folder = sample.images_dir()
    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out.append(f.read())
    return out


# ------------------------------------------------------------------ in process
def in_process_rate(index_dir, photos, batch, k, env, seconds=20.0):
    """Images per second of decode + resize + model (batches of ``batch``) + search + result rows, one process."""
    os.environ.update({key: env[key] for key in ("KERAS_HOME",) if key in env})
    from amazon_visual.retrieval.embeddings import load_image, prepare_image
    from amazon_visual.retrieval.recommend import Recommender

    rec = Recommender.load(index_dir)
    emb = rec.embedder
    size, resize = emb.image_size, emb.resize

    def one_batch(chunk):
        arrays = np.stack([prepare_image(load_image(b), size, resize) for b in chunk])
        vecs, _ = emb.predict(arrays)
        for v in vecs:
            ids, _ = rec.index.search(v, k)
            [rec.index.item(i) for i in ids]

    one_batch(photos[:batch])  # trace the model
    one_batch(photos[:1])
    n, t0 = 0, time.perf_counter()
    for start in itertools.cycle(range(0, len(photos) - batch + 1, batch)):
        one_batch(photos[start : start + batch])
        n += batch
        if time.perf_counter() - t0 > seconds:
            break
    rate = n / (time.perf_counter() - t0)
    rec.close()
    return rate


# ------------------------------------------------------------------ the server
class Server:
    """``amazon-visual serve`` in a subprocess on a free loopback port, ready and warmed up."""

    def __init__(self, index_dir, env, max_batch, max_wait_ms, workers=1):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "amazon_visual.cli",
                "serve",
                index_dir,
                "--port",
                str(self.port),
                "--max-batch",
                str(max_batch),
                "--max-wait-ms",
                str(max_wait_ms),
                "--reload-poll",
                "0",
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self):
        import urllib3

        self.pool = urllib3.HTTPConnectionPool("127.0.0.1", self.port, maxsize=64, retries=False)
        end = time.monotonic() + 180
        while time.monotonic() < end:
            try:
                ready = json.loads(self.pool.request("GET", "/readyz", timeout=2).data)
                if ready.get("model_loaded"):
                    return self
            except (urllib3.exceptions.HTTPError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited before it was ready")
            time.sleep(0.2)
        raise RuntimeError("the server was not ready within 180 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)

    def cpu_seconds(self):
        """CPU seconds (user + system) the server's processes (its workers included) have used so far."""
        import psutil

        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
            total = 0.0
            for p in procs:
                t = p.cpu_times()
                total += t.user + t.system
            return total
        except psutil.Error:
            return None


def _request(pool, job, k):
    kind, q = job
    if kind == "asin":
        return pool.request(
            "POST", f"/v1/search?k={k}", body=q, headers={"Content-Type": "application/json"}, timeout=30
        )
    return pool.request("POST", f"/v1/search?k={k}", fields={"file": ("q.jpg", q, "image/jpeg")}, timeout=30)


def run_load(server, jobs, concurrency, k):
    """Send ``jobs`` with ``concurrency`` client threads (keep-alive connections); latency per request."""
    lock = threading.Lock()
    it = iter(jobs)
    records = []

    def worker():
        while True:
            with lock:
                job = next(it, None)
            if job is None:
                return
            t0 = time.perf_counter()
            try:
                ok = _request(server.pool, job, k).status == 200
            except Exception:  # a refused or broken connection counts as an error
                ok = False
            records.append((job[0], ok, time.perf_counter() - t0))

    t0, cpu0 = time.perf_counter(), server.cpu_seconds()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu1 = time.perf_counter() - t0, server.cpu_seconds()
    return with_server_cpu(summarize(records, wall), cpu0, cpu1)


def with_server_cpu(out, cpu0, cpu1):
    """``out`` (a phase's result) with the server's CPU ms per request, when both readings exist."""
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000 / max(1, out["requests"]), 3)
    return out


def summarize(records, wall):
    out = {
        "requests": len(records),
        "seconds": round(wall, 3),
        "qps": round(len(records) / wall, 1),
        "errors": sum(not ok for _, ok, _ in records),
    }
    for kind in sorted({r[0] for r in records}):
        lat = np.array([s for kd, _, s in records if kd == kind]) * 1000
        out[kind] = {
            "requests": int(lat.size),
            "qps": round(lat.size / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
        }
    return out


WRK_SCRIPT = r"""
-- POST /v1/search?k=K, cycling through the request bodies whose files are listed, one per line,
-- in the file given after "--" (its second argument: the Content-Type of the bodies)
local bodies, ctype, i = {}, nil, 0
function init(args)
  ctype = args[2]
  for path in io.lines(args[1]) do
    local f = assert(io.open(path, "rb"))
    bodies[#bodies + 1] = f:read("*a")
    f:close()
  end
end
function request()
  i = i + 1
  return wrk.format("POST", "/v1/search?k=" .. K, {["Content-Type"] = ctype}, bodies[i % #bodies + 1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d, "max_us": %d}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99), latency.max))
end
"""
BOUNDARY = "avbenchboundary7d1f"


def wrk_bodies(kind, asins, photos, work):
    """Request bodies on disk for wrk: ({"asin": ...} JSON | multipart photo uploads) -> (list file, Content-Type)."""
    folder = os.path.join(work, f"wrk-{kind}")
    os.makedirs(folder, exist_ok=True)
    if kind == "asin":
        bodies, ctype = [json.dumps({"asin": a}).encode() for a in asins], "application/json"
    else:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        bodies = [head + p + f"\r\n--{BOUNDARY}--\r\n".encode() for p in photos]
        ctype = f"multipart/form-data; boundary={BOUNDARY}"
    paths = []
    for n, body in enumerate(bodies):
        paths.append(os.path.join(folder, f"{n:05d}.body"))
        with open(paths[-1], "wb") as f:
            f.write(body)
    listing = os.path.join(folder, "bodies.txt")
    with open(listing, "w") as f:
        f.write("\n".join(paths) + "\n")
    return listing, ctype


def run_wrk(server, kind, asins, photos, concurrency, k, seconds, work):
    """``kind`` ("asin" | "photo") queries from ``wrk``, a C load generator (1 thread, ``concurrency``
    keep-alive connections, ``seconds`` long), so that the client takes little of the CPU the
    server shares; None when wrk is not installed."""
    import shutil

    exe = shutil.which("wrk")
    if exe is None:
        return None
    os.makedirs(work, exist_ok=True)
    script = os.path.join(work, "search.lua")
    with open(script, "w") as f:
        f.write(f"K = {int(k)}\n" + WRK_SCRIPT)
    listing, ctype = wrk_bodies(kind, asins, photos, work)
    cpu0 = server.cpu_seconds()
    out = subprocess.run(
        [
            exe,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, int(round(seconds)))}s",
            "--timeout",
            "10s",
            "-s",
            script,
            f"http://127.0.0.1:{server.port}",
            "--",
            listing,
            ctype,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cpu1 = server.cpu_seconds()
    r = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("WRK "))[4:])
    wall = r["duration_us"] / 1e6
    res = {
        "client": "wrk",
        "requests": r["requests"],
        "seconds": round(wall, 3),
        "qps": round(r["requests"] / wall, 1),
        "errors": r["socket_errors"] + r["non_2xx"],
        kind: {
            "requests": r["requests"],
            "qps": round(r["requests"] / wall, 1),
            "p50_ms": round(r["p50_us"] / 1000, 2),
            "p99_ms": round(r["p99_us"] / 1000, 2),
        },
    }
    return with_server_cpu(res, cpu0, cpu1)


def jobs_of(kind, n, asins, photos, photo_every=4):
    asin_bodies = [json.dumps({"asin": a}).encode() for a in asins]
    out = []
    for i in range(n):
        if kind == "photo" or (kind == "mixed" and i % photo_every == 0):
            out.append(("photo", photos[i % len(photos)]))
        else:
            out.append(("asin", asin_bodies[(i * 7) % len(asin_bodies)]))
    return out


# ------------------------------------------------------------------ main
def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    env = keras_env(args.work)
    index_dir = ensure_index(args, env)
    photos = sample_photos()
    from amazon_visual.retrieval.index import read_items

    asins = list(read_items(index_dir)["asin"])
    c, k = args.concurrency, args.k
    res = {"index": index_dir, "concurrency": c, "k": k, "load_before": os.getloadavg()}
    res["in_process_img_per_s"] = round(in_process_rate(index_dir, photos, c, k, env), 1)
    # the most batching can give: the same work one photo at a time, in one process
    res["in_process_single_img_per_s"] = round(in_process_rate(index_dir, photos, 1, k, env, seconds=10.0), 1)
    res["workers"] = args.workers
    with Server(index_dir, env, args.max_batch, args.max_wait_ms, args.workers) as srv:
        run_load(srv, jobs_of("mixed", 64, asins, photos), c, k)  # warm up
        res["asin"] = run_load(srv, jobs_of("asin", args.requests, asins, photos), c, k)
        if args.wrk_seconds:
            res["asin_wrk"] = run_wrk(srv, "asin", asins, photos, c, k, args.wrk_seconds, args.work)
            res["photo_batched_wrk"] = run_wrk(srv, "photo", asins, photos, c, k, 2 * args.wrk_seconds, args.work)
        res["photo_batched"] = run_load(srv, jobs_of("photo", args.photo_requests, asins, photos), c, k)
        res["mixed"] = run_load(srv, jobs_of("mixed", args.requests, asins, photos), c, k)
    with Server(index_dir, env, 1, 0, args.workers) as srv:
        run_load(srv, jobs_of("photo", 32, asins, photos), c, k)  # warm up
        res["photo_unbatched"] = run_load(srv, jobs_of("photo", args.photo_requests // 2, asins, photos), c, k)
        if args.wrk_seconds:
            res["photo_unbatched_wrk"] = run_wrk(srv, "photo", asins, photos, c, k, 2 * args.wrk_seconds, args.work)
    res["load_after"] = os.getloadavg()
    report(res, args)


def report(res, args):
    photo_qps = res["photo_batched"]["qps"]
    ratios = {
        "in_process_batched_vs_single": round(res["in_process_img_per_s"] / res["in_process_single_img_per_s"], 2),
        "photo_vs_in_process": round(photo_qps / res["in_process_img_per_s"], 2),
        "photo_vs_unbatched": round(photo_qps / res["photo_unbatched"]["qps"], 2),
    }
    phases = [
        p
        for p in (
            "asin",
            "asin_wrk",
            "photo_batched",
            "photo_batched_wrk",
            "mixed",
            "photo_unbatched",
            "photo_unbatched_wrk",
        )
        if res.get(p)
    ]
    errors = sum(res[p]["errors"] for p in phases)
    targets = {
        "0 errors": errors == 0,
        "ASIN >= 500 QPS": res["asin"]["qps"] >= 500,
        "ASIN p99 < 20 ms": res["asin"]["asin"]["p99_ms"] < 20,
        "photo >= 0.8x in process": ratios["photo_vs_in_process"] >= 0.8,
        "photo >= 3x unbatched": ratios["photo_vs_unbatched"] >= 3,
    }
    if res.get("asin_wrk"):
        targets["ASIN >= 500 QPS (wrk client)"] = res["asin_wrk"]["qps"] >= 500
        targets["ASIN p99 < 20 ms (wrk client)"] = res["asin_wrk"]["asin"]["p99_ms"] < 20
    if res.get("photo_batched_wrk") and res.get("photo_unbatched_wrk"):
        wrk_qps = res["photo_batched_wrk"]["qps"]
        ratios["photo_vs_in_process_wrk"] = round(wrk_qps / res["in_process_img_per_s"], 2)
        ratios["photo_vs_unbatched_wrk"] = round(wrk_qps / res["photo_unbatched_wrk"]["qps"], 2)
        targets["photo >= 0.8x in process (wrk client)"] = ratios["photo_vs_in_process_wrk"] >= 0.8
        targets["photo >= 3x unbatched (wrk client)"] = ratios["photo_vs_unbatched_wrk"] >= 3
    res.update(ratios=ratios, errors=errors, targets=targets)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(
        f"index {res['index']}; server workers {res.get('workers', 1)}; "
        f"concurrency {res['concurrency']}, k {res['k']}; "
        f"load average before {res['load_before'][0]:.2f}, after {res['load_after'][0]:.2f}"
    )
    print(
        f"in process, batches of {res['concurrency']}: {res['in_process_img_per_s']:.1f} photos/s; one at a time: "
        f"{res['in_process_single_img_per_s']:.1f} photos/s"
    )
    print(f"{'phase':<18}{'requests':>9}{'QPS':>8}{'errors':>7}{'srv CPU ms/req':>16}   per kind: QPS, p50 / p99 ms")
    for phase in phases:
        r = res[phase]
        kinds = "; ".join(
            f"{kd} {r[kd]['qps']:.1f}, {r[kd]['p50_ms']:.1f} / {r[kd]['p99_ms']:.1f}"
            for kd in ("asin", "photo")
            if kd in r
        )
        cpu = r.get("server_cpu_ms_per_request")
        cpu = "-" if cpu is None else cpu
        print(f"{phase:<18}{r['requests']:>9}{r['qps']:>8.1f}{r['errors']:>7}{cpu:>16}   {kinds}")
    print("ratios: " + ", ".join(f"{name} {value:.2f}" for name, value in ratios.items()))
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets.items()))


if __name__ == "__main__":
    main()
