"""Reloading the index without downtime: queries run in threads while `amazon-visual index
--overwrite` rebuilds the served INDEX_DIR; none fails, and the server ends on the new index.
Also: a failed reload keeps the old index; a server killed (SIGKILL) during a reload restarts
on the complete new index."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from serve_helpers import client_for, free_port, image_of
from test_index import retrieval_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return retrieval_world(tmp_path_factory)


def _copy_index(world, dest):
    shutil.copytree(world["index"], dest)
    return str(dest)


def _rebuild(world, index_dir, splits):
    from amazon_visual.retrieval.index import build_index

    return build_index(
        world["data"],
        index_dir,
        run_dir=world["run"],
        splits=splits,
        trees=5,
        batch_size=8,
        overwrite=True,
        progress=False,
    )


def _wait(predicate, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_queries_during_a_rebuild_never_fail(world, tmp_path):
    from amazon_visual.retrieval.index import read_items

    index_dir = _copy_index(world, tmp_path / "index")
    items = read_items(index_dir)
    train = list(items[items["split"] == "train"]["asin"])  # in the old and the new index
    photo = image_of(world, train[0])
    failures, counts = [], {"asin": 0, "photo": 0, "browse": 0}
    stop = threading.Event()
    with client_for(index_dir, reload_poll_seconds=0.1) as client:
        client.post("/v1/search", files={"file": ("q.jpg", photo, "image/jpeg")})  # load the model first

        def hammer(kind):
            i = 0
            while not stop.is_set():
                i += 1
                if kind == "asin":
                    r = client.post("/v1/search", json={"asin": train[i % len(train)]}, params={"k": 3})
                elif kind == "photo":
                    r = client.post("/v1/search", params={"k": 3}, files={"file": ("q.jpg", photo, "image/jpeg")})
                else:
                    r = client.get("/v1/products", params={"category": "red"})
                if r.status_code != 200:
                    failures.append((kind, r.status_code, r.text[:200]))
                counts[kind] += 1

        threads = [threading.Thread(target=hammer, args=(k,)) for k in ("asin", "asin", "photo", "browse")]
        for t in threads:
            t.start()
        manifest = _rebuild(world, index_dir, splits=("train",))
        assert _wait(lambda: client.get("/readyz").json()["generation"] == 2)
        time.sleep(0.3)  # queries keep running on the new index
        stop.set()
        for t in threads:
            t.join()
        ready = client.get("/readyz").json()
        assert ready["n_items"] == manifest["n_items"] == len(train)
        assert not failures, failures[:5]
        assert min(counts.values()) > 0, counts
        # the new index answers, thumbnails included; the model was kept (same run)
        r = client.post("/v1/search", params={"k": 3}, files={"file": ("q.jpg", photo, "image/jpeg")}).json()
        assert r["index"]["generation"] == 2 and client.get(r["results"][0]["thumbnail"]).status_code == 200
        assert 'amazon_visual_index_reloads_total{result="ok"} 1.0' in client.get("/metrics").text


def test_a_broken_rebuild_keeps_the_old_index(world, tmp_path):
    index_dir = _copy_index(world, tmp_path / "index")
    with client_for(index_dir, reload_poll_seconds=0.1) as client:
        asin = client.get("/v1/products").json()["items"][0]["asin"]
        with open(os.path.join(index_dir, "manifest.json"), "w") as f:
            f.write("{ half a manifest")
        assert _wait(lambda: 'result="failed"} 1.0' in client.get("/metrics").text, 10)
        assert client.get("/readyz").json()["generation"] == 1
        assert client.get(f"/v1/products/{asin}/similar").status_code == 200
        assert client.app.state.holder.reload("test") is False  # as on SIGHUP: still the old one
        assert client.get(f"/v1/products/{asin}/similar").status_code == 200


def _start_server(index_dir, port):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "amazon_visual.cli",
            "serve",
            index_dir,
            "--port",
            str(port),
            "--reload-poll",
            "0",
            "--no-warm-up",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _ready(port):
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return None


def test_sigkill_during_a_reload_then_restart_serves_the_complete_index(world, tmp_path):
    """The server never writes INDEX_DIR: killed in the middle of a SIGHUP reload, a restart
    serves the rebuilt index whole (its item count, every ASIN's look-alikes)."""
    import httpx

    index_dir = _copy_index(world, tmp_path / "index")
    port = free_port()
    proc = _start_server(index_dir, port)
    try:
        assert _wait(lambda: _ready(port) is not None, 90), proc.stderr.read1().decode() if proc.poll() else "no answer"
        manifest = _rebuild(world, index_dir, splits=("train", "test"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)  # the reload is under way (or just done): kill -9 either way
        proc.kill()
        proc.wait(10)
        proc = _start_server(index_dir, port)
        assert _wait(lambda: _ready(port) is not None, 90)
        assert _ready(port)["n_items"] == manifest["n_items"]
        cats = httpx.get(f"http://127.0.0.1:{port}/v1/categories").json()["categories"]
        assert sum(c["count"] for c in cats) == manifest["n_items"]
        items = httpx.get(f"http://127.0.0.1:{port}/v1/products", params={"per_page": 200}).json()["items"]
        for it in items:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/products/{it['asin']}/similar", params={"k": 2})
            assert r.status_code == 200 and len(r.json()["results"]) == 2
    finally:
        proc.kill()
        proc.wait(10)
