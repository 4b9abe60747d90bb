"""A short load test: the benchmark's own load generator (benchmarks/serve_load.py) against a real
uvicorn server on 127.0.0.1, mixed photo and ASIN queries at concurrency 8: no error, and the
photo queries shared model calls."""

import importlib.util
import os

import pytest

from serve_helpers import uvicorn_server
from test_index import retrieval_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return retrieval_world(tmp_path_factory)


def _bench():
    spec = importlib.util.spec_from_file_location("serve_load", os.path.join(REPO, "benchmarks", "serve_load.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _InThread:
    """What run_load needs of a server: a connection pool (the server shares this process: no CPU figure)."""

    def __init__(self, pool):
        self.pool = pool

    def cpu_seconds(self):
        return None


def test_short_mixed_load_has_no_error(world):
    import urllib3

    from amazon_visual.retrieval.index import read_items

    bench = _bench()
    asins = list(read_items(world["index"])["asin"])
    photos = [open(os.path.join(world["images"], f"{a}.jpg"), "rb").read() for a in asins[:12]]
    with uvicorn_server(world["index"], max_wait_ms=10) as base:
        srv = _InThread(urllib3.HTTPConnectionPool("127.0.0.1", int(base.rsplit(":", 1)[1]), maxsize=16, retries=False))
        out = bench.run_load(srv, bench.jobs_of("mixed", 240, asins, photos, photo_every=2), 8, 5)
        metrics = srv.pool.request("GET", "/metrics").data.decode()
    assert out["requests"] == 240 and out["errors"] == 0, out
    assert out["asin"]["requests"] == 120 and out["photo"]["requests"] == 120
    count = next(
        float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("amazon_visual_model_batch_size_count")
    )
    assert count < 120  # 120 photo queries in fewer model calls


def test_wrk_client_sends_asin_and_photo_queries(world, tmp_path):
    """The benchmark's wrk phases (a C load generator, a Lua script cycling request bodies): both
    kinds of query are answered 200, and the figures are read back from wrk's summary."""
    import shutil

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt install wrk; .ci/run installs it)")
    import urllib3

    from amazon_visual.retrieval.index import read_items

    bench = _bench()
    asins = list(read_items(world["index"])["asin"])
    photos = [open(os.path.join(world["images"], f"{a}.jpg"), "rb").read() for a in asins[:6]]
    with uvicorn_server(world["index"], max_wait_ms=10) as base:
        port = int(base.rsplit(":", 1)[1])
        srv = _InThread(urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=4, retries=False))
        srv.port = port
        asin = bench.run_wrk(srv, "asin", asins, photos, 4, 5, 1, str(tmp_path))
        photo = bench.run_wrk(srv, "photo", asins, photos, 4, 5, 1, str(tmp_path))
        bad = bench.run_wrk(srv, "asin", ["NOT-AN-ASIN"], photos, 2, 5, 1, str(tmp_path / "bad"))
    assert asin["requests"] > 0 and asin["errors"] == 0 and asin["asin"]["p99_ms"] > 0, asin
    assert photo["requests"] > 0 and photo["errors"] == 0, photo
    assert bad["errors"] == bad["requests"] > 0  # 404s are counted as errors: the check can fail
