"""Image downloads against a loopback HTTP server: retries, timeouts, caps, schemes, safe names, resume."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from builder_fixtures import ImageServer, files_under, image_bytes
from tfrecords_builder.download import cache_name, cache_path, download_all, fetch

FAST = dict(timeout=1.0, retries=2, backoff=0.01)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def test_good_image_is_cached_and_reused(server, tmp_path):
    url = server.url("img/png/good1")
    path, reason = fetch("B1", url, tmp_path, **FAST)
    assert reason is None and open(path, "rb").read() == image_bytes("png")
    assert os.path.dirname(path) == str(tmp_path)
    path2, _ = fetch("B1", url, tmp_path, **FAST)
    assert path2 == path and server.hits["/img/png/good1"] == 1  # cached, not fetched again


def test_404_is_not_retried(server, tmp_path):
    path, reason = fetch("B2", server.url("404"), tmp_path, **FAST)
    assert path is None and reason == "HTTP 404" and server.hits["/404"] == 1


def test_500_is_retried_until_it_recovers(server, tmp_path):
    path, reason = fetch("B3", server.url("flaky/2/jpeg/a"), tmp_path, **FAST)
    assert reason is None and server.hits["/flaky/2/jpeg/a"] == 3
    path, reason = fetch("B4", server.url("flaky/9/jpeg/b"), tmp_path, **FAST)
    assert path is None and reason == "HTTP 500 after 3 tries" and server.hits["/flaky/9/jpeg/b"] == 3


def test_timeout_is_retried_then_reported(server, tmp_path):
    t = time.time()
    path, reason = fetch("B5", server.url("slow/1.5/jpeg/c"), tmp_path, timeout=0.3, retries=1, backoff=0.01)
    assert path is None and reason.startswith("timeout") and "2 tries" in reason
    assert server.hits["/slow/1.5/jpeg/c"] == 2 and time.time() - t < 5


def test_html_empty_and_too_large_bodies(server, tmp_path):
    assert fetch("B6", server.url("html"), tmp_path, **FAST) == (None, "not an image (Content-Type text/html)")
    assert fetch("B7", server.url("img/empty/x"), tmp_path, **FAST) == (None, "empty body")
    path, reason = fetch("B8", server.url("img/big/x"), tmp_path, max_bytes=100, **FAST)
    assert path is None and reason.startswith("too large")
    assert files_under(tmp_path) == set()  # nothing partial is left


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "javascript:alert(1)", "", None])
def test_only_http_and_https(tmp_path, url):
    path, reason = fetch("B9", url, tmp_path, **FAST)
    assert path is None and reason.startswith("unsupported URL scheme")


def test_asin_is_never_a_path(server, tmp_path):
    cache = tmp_path / "cache"
    for asin in ["../../x", "/etc/passwd", "..", "a/b\\c", "\x00", "B" * 500]:
        name = cache_name(asin)
        assert os.sep not in name and "/" not in name and "\\" not in name and not name.startswith(".")
        assert len(name) < 80
        assert os.path.dirname(cache_path(str(cache), asin)) == str(cache)
    assert cache_name("../../x") != cache_name("__x") != cache_name("x")  # the hash keeps them apart
    paths, failures, _ = download_all([("../../x", [server.url("img/jpeg/evil")])], str(cache), **FAST)
    assert not failures and files_under(tmp_path) == {
        os.path.join("cache", cache_name("../../x")),
        os.path.join("cache", "urls.jsonl"),
    }


def test_download_all_records_every_failure(server, tmp_path):
    items = [
        ("G1", [server.url("img/jpeg/g1")]),
        ("G2", [server.url("404"), server.url("img/png/g2")]),  # falls back to the next URL
        ("F1", [server.url("404")]),
        ("F2", [server.url("html")]),
        ("F3", ["ftp://x/y.jpg"]),
    ]
    used = {}
    paths, failures, stats = download_all(items, str(tmp_path), workers=4, used_urls=used, **FAST)
    assert sorted(paths) == ["G1", "G2"]
    assert used["G2"] == server.url("img/png/g2")
    assert {f["asin"]: f["reason"] for f in failures} == {
        "F1": "HTTP 404",
        "F2": "not an image (Content-Type text/html)",
        "F3": "unsupported URL scheme 'ftp'",
    }
    assert all(f["url"] for f in failures)
    assert stats == {"cached": 0, "downloaded": 2, "failed": 3}
    # a rerun reports the URL each cached image came from, not the product's first URL
    used2 = {}
    paths2, _, stats2 = download_all(items, str(tmp_path), workers=4, used_urls=used2, **FAST)
    assert paths2 == paths and stats2["cached"] == 2 and used2 == used


def test_url_log_survives_a_record_cut_by_a_kill(tmp_path):
    from tfrecords_builder.download import UrlLog

    log = UrlLog(tmp_path)
    log.add("A1", "http://h/a1.jpg")
    with open(log.path, "ab") as f:
        f.write(b'\n["A2", "http://h/a')  # the kill came in the middle of this record
    log = UrlLog(tmp_path)
    log.add("A3", "http://h/a3.jpg")
    log.add("A1", "http://h/a1-again.jpg")
    assert UrlLog(tmp_path).urls == {"A1": "http://h/a1-again.jpg", "A3": "http://h/a3.jpg"}


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from tfrecords_builder.download import download_all
    port, cache = int(sys.argv[1]), sys.argv[2]
    items = [(f"K{i:02d}", [f"http://127.0.0.1:{port}/slow/0.15/big/{i}"]) for i in range(40)]
    download_all(items, cache, workers=2, timeout=5)
""")


def test_killed_download_resumes_without_corrupt_files(server, tmp_path):
    cache = tmp_path / "cache"
    script = tmp_path / "dl.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    proc = subprocess.Popen([sys.executable, str(script), str(server.port), str(cache)], env=env)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            done = [f for f in files_under(cache)] if cache.exists() else []
            if len([f for f in done if ".tmp-" not in f]) >= 6:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    before = {f for f in files_under(cache) if ".tmp-" not in f and f != "urls.jsonl"}
    assert 6 <= len(before) < 40
    good = image_bytes("big")
    for f in before:  # every cache file is complete
        assert (cache / f).read_bytes() == good
    hits_before = sum(v for k, v in server.hits.items() if k.startswith("/slow/0.15/big/"))
    items = [(f"K{i:02d}", [server.url(f"slow/0.15/big/{i}")]) for i in range(40)]
    paths, failures, stats = download_all(items, str(cache), workers=8, timeout=5)
    assert not failures and len(paths) == 40
    assert stats["cached"] == len(before) and stats["downloaded"] == 40 - len(before)
    hits_after = sum(v for k, v in server.hits.items() if k.startswith("/slow/0.15/big/"))
    assert hits_after - hits_before == 40 - len(before)  # only the missing ones were fetched
    assert all(".tmp-" not in f for f in files_under(cache))  # partial files of the killed run removed
    assert all((cache / f).read_bytes() == good for f in files_under(cache) if f != "urls.jsonl")


def test_download_iter_streams_and_a_slow_host_holds_nothing_back(server, tmp_path):
    """Results come as they finish, with a bounded number in flight: a product whose host answers
    late does not stall the ones behind it (a 1.5 s image first, then 60 fast ones, 2 threads)."""
    from tfrecords_builder.download import download_iter

    items = [("SLOW", [server.url("slow/1.5/jpeg/s1")])] + [
        (f"F{i}", [server.url(f"img/jpeg/f{i}")]) for i in range(60)
    ]
    seen = []
    t0 = time.monotonic()
    for asin, path, _url, reason in download_iter(iter(items), str(tmp_path), workers=2, timeout=5):
        assert path and reason is None
        seen.append((asin, time.monotonic() - t0))
    assert len(seen) == 61 and seen[-1][0] == "SLOW"  # the slow one came last, not first
    assert seen[-2][1] < 1.4  # the 60 fast ones were all done while it waited
    # cached now: a second pass fetches nothing and says so
    again = list(download_iter(iter(items), str(tmp_path), workers=2))
    assert {r[3] for r in again} == {"cached"} and len(again) == 61
