"""Live writes through HTTP: PUT requests per second against a real ``amazon-visual serve --workers 2``.

The index: the packaged sample catalog (1,000 photos) embedded with ``--model`` (ImageNet
MobileNetV2 at ``--image-size`` px from ``../shared/weights`` when present, random weights
otherwise), built once with ``--writable`` under ``--work`` and copied fresh for each run (an
empty write log). One server (``--workers``, the write token in its environment), phases in order:

1. search only (the baseline): ``--searches`` ASIN searches (``POST /v1/search {"asin": ...}``)
   from ``--search-clients`` client threads: QPS, p50 / p99; then ``--photo-searches`` photo
   searches (the model work of a write without the write) from 1 and from the most writing clients;
2. writes, for each client count of ``--clients`` (1 = one sequential client): ``--writes``
   ``PUT /v1/products/{asin}`` of new products (a sample photo, which the server embeds with its
   model, and attributes), while the same search clients go on: writes per second, write p50 / p99,
   and the searches' QPS and p50 / p99 measured at the same time;
3. search only again, over the overlay of every write so far;
4. ``--deletes`` ``DELETE /v1/products/{asin}`` of written products from one client.

Then checks: 0 errors (any non-2xx or broken connection counts), every write in the log
(``writelog.last_seq``) and in ``/metrics``, a sample of the written products answered by either
worker. Traffic goes only to 127.0.0.1; the client threads share the machine's cores with the server.

    python benchmarks/writes_http_bench.py                         # a few minutes on 2 cores
    python benchmarks/writes_http_bench.py --writes 100 --searches 300 --clients 1,4   # quick
"""

import argparse
import json
import os
import shutil
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from serve_load import Server, keras_env, sample_photos  # noqa: E402

TOKEN = "writes-http-bench-token"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=os.path.join(REPO, "build", "writes-http-bench"), help="folder for the indexes")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--workers", type=int, default=2, help="server worker processes (serve --workers)")
    p.add_argument("--writes", type=int, default=300, help="PUT requests per client count")
    p.add_argument("--clients", default="1,4,8", help="concurrent writing clients, one phase each")
    p.add_argument("--searches", type=int, default=1000, help="requests of each search-only phase")
    p.add_argument("--search-clients", type=int, default=2)
    p.add_argument(
        "--photo-searches",
        type=int,
        default=100,
        help="photo searches (no write) at 1 and at the most writing clients: the model's share",
    )
    p.add_argument("--deletes", type=int, default=100)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json-out", help="also write the results here")
    return p.parse_args(argv)


def ensure_index(args, env):
    """A fresh copy (empty write log) of the writable sample index, built once under ``--work``."""
    import subprocess

    base = os.path.join(args.work, f"index-{args.model}-{args.image_size}")
    if not os.path.isfile(os.path.join(base, "manifest.json")):
        data = os.path.join(args.work, "data")
        weights = "imagenet" if "KERAS_HOME" in env else "none"
        code = (
            f"import amazon_visual as av; from amazon_visual import sample\n"
            f"av.build_data(sample.metadata_path(), {data!r}, images_dir=sample.images_dir(),"
            f" categories=sample.class_names(), image_size=160, workers=1, progress=False, overwrite=True)\n"
            f"av.build_index({data!r}, {base!r}, backbone={args.model!r}, weights={weights!r},"
            f" image_size={args.image_size}, trees=20, overwrite=True, progress=False, writable=True)\n"
        )
        print(
            f"building the writable benchmark index ({args.model}, {weights} weights, {args.image_size} px) in {base}",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
    run = os.path.join(args.work, "run-index")
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(base, run)
    return run


def _stats(lat_s, wall):
    lat = np.asarray(lat_s) * 1000
    if not lat.size:
        return {"requests": 0}
    return {
        "requests": int(lat.size),
        "per_s": round(lat.size / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }


class Load:
    """Client threads sending jobs (callables returning an HTTP status) and timing each; errors counted."""

    def __init__(self):
        self.lock = threading.Lock()
        self.errors = []

    def timed(self, job, out):
        t0 = time.perf_counter()
        try:
            status = job()
        except Exception as e:  # a refused or broken connection counts as an error
            status = repr(e)[:80]
        out.append(time.perf_counter() - t0)
        if not (isinstance(status, int) and 200 <= status < 300):
            with self.lock:
                self.errors.append(status)

    def run(self, jobs, clients):
        """Every job of ``jobs`` from ``clients`` threads; (latencies, wall seconds)."""
        it, lat = iter(jobs), []

        def worker():
            while True:
                with self.lock:
                    job = next(it, None)
                if job is None:
                    return
                self.timed(job, lat)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return lat, time.perf_counter() - t0

    def alongside(self, make_job, clients):
        """Start ``clients`` threads sending ``make_job(i)`` until stopped; returns stop() -> (latencies, wall)."""
        stop, lat, t0 = threading.Event(), [], time.perf_counter()

        def worker(c):
            i = c
            while not stop.is_set():
                self.timed(make_job(i), lat)
                i += clients

        threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()

        def finish():
            stop.set()
            for t in threads:
                t.join()
            return lat, time.perf_counter() - t0

        return finish


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    env = keras_env(args.work)
    env["AMAZON_VISUAL_WRITE_TOKEN"] = TOKEN  # the server's write token (never on its command line)
    index_dir = ensure_index(args, env)
    from amazon_visual import sample
    from amazon_visual.retrieval import writelog
    from amazon_visual.retrieval.index import read_items

    photos, asins, classes = sample_photos(), list(read_items(index_dir)["asin"]), sample.class_names()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    res = {
        "index": index_dir,
        "workers": args.workers,
        "k": args.k,
        "search_clients": args.search_clients,
        "uptime_before": os.getloadavg(),
    }
    with Server(index_dir, env, 16, 2, args.workers) as srv:
        pool, load = srv.pool, Load()

        def search(i):
            body = json.dumps({"asin": asins[(i * 7919) % len(asins)]})
            return lambda: (
                pool.request(
                    "POST",
                    f"/v1/search?k={args.k}",
                    body=body,
                    timeout=60,
                    headers={"Content-Type": "application/json"},
                ).status
            )

        def put(asin, i):
            attrs = {
                "title": f"live {asin}",
                "category": classes[i % len(classes)],
                "brand": f"Brand{i % 50}",
                "price": round(1 + (i * 37 % 5000) / 10, 2),
                "average_rating": (i % 11) / 2,
            }
            return lambda: (
                pool.request(
                    "PUT",
                    f"/v1/products/{asin}",
                    headers=auth,
                    timeout=60,
                    fields={"file": ("p.jpg", photos[i % len(photos)], "image/jpeg"), "attributes": json.dumps(attrs)},
                ).status
            )

        def photo_search(i):
            return lambda: (
                pool.request(
                    "POST",
                    f"/v1/search?k={args.k}",
                    timeout=60,
                    fields={"file": ("q.jpg", photos[i % len(photos)], "image/jpeg")},
                ).status
            )

        # warm up, writing nothing: both workers' models traced (the PUTs embed with the searches' batched
        # embedder; connections land on either worker)
        load.run([search(i) for i in range(300)] + [photo_search(i) for i in range(32)], 4)
        load.errors.clear()
        lat, wall = load.run([search(i) for i in range(args.searches)], args.search_clients)
        res["search_only"] = _stats(lat, wall)
        # the model's share of a write: photo searches embed the same photos with the same embedder
        res["photo_search_only"] = []
        for clients in sorted({1, max(int(c) for c in args.clients.split(","))}):
            lat, wall = load.run([photo_search(i) for i in range(args.photo_searches)], clients)
            res["photo_search_only"].append(dict(_stats(lat, wall), clients=clients))
        written, phases = [], []
        for clients in [int(c) for c in args.clients.split(",")]:
            names = [f"W{clients}C{i:05d}" for i in range(args.writes)]
            finish = load.alongside(search, args.search_clients)
            wlat, wwall = load.run([put(a, i + 1000 * clients) for i, a in enumerate(names)], clients)
            slat, swall = finish()
            written += names
            phases.append({"clients": clients, "writes": _stats(wlat, wwall), "searches": _stats(slat, swall)})
            print(f"{clients} writing clients: {phases[-1]}", flush=True)
        res["write_phases"] = phases
        lat, wall = load.run([search(i) for i in range(args.searches)], args.search_clients)
        res["search_only_after"] = dict(_stats(lat, wall), live_writes=len(written))
        gone = written[:: max(1, len(written) // max(1, args.deletes))][: args.deletes]
        lat, wall = load.run(
            [lambda a=a: pool.request("DELETE", f"/v1/products/{a}", headers=auth).status for a in gone], 1
        )
        res["deletes"] = _stats(lat, wall)
        res["errors"] = len(load.errors)
        res["error_samples"] = load.errors[:5]
        # checks: every acknowledged write is in the log and in /metrics, and either worker answers it
        metrics = pool.request("GET", "/metrics").data.decode()
        created = [
            line
            for line in metrics.splitlines()
            if line.startswith('amazon_visual_writes_total{operation="put",outcome="created"}')
        ]
        res["metrics_put_created"] = created[0].split()[-1] if created else None
        sample_left = [a for a in written if a not in set(gone)][::25]
        res["written_found"] = sum(pool.request("GET", f"/v1/products/{a}").status == 200 for a in sample_left)
        res["written_checked"] = len(sample_left)
    res["log_entries"] = writelog.last_seq(index_dir)
    res["expected_log_entries"] = len(written) + len(gone)
    res["uptime_after"] = os.getloadavg()
    report(res)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=2)


def report(res):
    base = res["search_only"]
    print(
        f"load average before {res['uptime_before'][0]:.2f}, after {res['uptime_after'][0]:.2f}; "
        f"server workers {res['workers']}; {res['search_clients']} search clients, k {res['k']}"
    )
    print(f"{'phase':<28}{'writes/s':>9}{'w p50':>8}{'w p99':>8}{'searches/s':>11}{'s p50':>8}{'s p99':>8}  (ms)")
    print(
        f"{'search only (baseline)':<28}{'-':>9}{'-':>8}{'-':>8}{base['per_s']:>11}{base['p50_ms']:>8}"
        f"{base['p99_ms']:>8}"
    )
    for ph in res["write_phases"]:
        w, s = ph["writes"], ph["searches"]
        print(
            f"{str(ph['clients']) + ' writing client(s)':<28}{w['per_s']:>9}{w['p50_ms']:>8}{w['p99_ms']:>8}"
            f"{s['per_s']:>11}{s['p50_ms']:>8}{s['p99_ms']:>8}"
        )
    for ph in res["photo_search_only"]:
        label = f"photo search only, {ph['clients']} cl."
        print(f"{label:<28}{'-':>9}{'-':>8}{'-':>8}{ph['per_s']:>11}{ph['p50_ms']:>8}{ph['p99_ms']:>8}")
    a = res["search_only_after"]
    print(
        f"{'search only, ' + str(a['live_writes']) + ' live':<28}{'-':>9}{'-':>8}{'-':>8}{a['per_s']:>11}"
        f"{a['p50_ms']:>8}{a['p99_ms']:>8}"
    )
    d = res["deletes"]
    print(f"{'deletes, 1 client':<28}{d['per_s']:>9}{d['p50_ms']:>8}{d['p99_ms']:>8}")
    print(
        f"errors {res['errors']} {res['error_samples']}; log entries {res['log_entries']} "
        f"(expected {res['expected_log_entries']}); /metrics put created {res['metrics_put_created']}; "
        f"written products found {res['written_found']} of {res['written_checked']} checked"
    )


if __name__ == "__main__":
    main()
