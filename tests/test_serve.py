"""The service's API on a tiny index: search by photo / ASIN / URL, browsing, thumbnails, metrics,
the bad-input list (each answered by a 4xx JSON, then a good query still answers) and SSRF rules."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_helpers import ImageServer, bomb_png, client_for, image_of
from test_index import retrieval_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return retrieval_world(tmp_path_factory)


@pytest.fixture(scope="module")
def client(world):
    with client_for(world["index"], max_upload_mb=1, max_wait_ms=20) as c:
        yield c


@pytest.fixture(scope="module")
def asins(client):
    return [p["asin"] for p in client.get("/v1/products", params={"per_page": 200}).json()["items"]]


def good_query_answers(client, asin):
    r = client.post("/v1/search", json={"asin": asin}, params={"k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


# ------------------------------------------------------------------ what works
def test_search_by_photo_answers_k_results_with_thumbnails(client, world, asins):
    r = client.post("/v1/search", params={"k": 5}, files={"file": ("q.jpg", image_of(world, asins[4]), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    res = body["results"]
    assert len(res) == 5 and [x["rank"] for x in res] == [1, 2, 3, 4, 5]
    sims = [x["similarity"] for x in res]
    assert sims == sorted(sims, reverse=True) and sims[0] > 0.9
    assert body["query"]["predicted_category"] in ("red", "green", "blue")  # the index comes from a trained run
    for x in res:
        assert {"asin", "title", "category", "similarity", "thumbnail"} <= set(x)
        t = client.get(x["thumbnail"])
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg" and t.content[:2] == b"\xff\xd8"


def test_search_by_asin_and_the_products_api(client, asins):
    asin = asins[0]
    body = client.post("/v1/search", json={"asin": asin}, params={"k": 4}).json()
    assert body["query"]["asin"] == asin and len(body["results"]) == 4
    assert asin not in [x["asin"] for x in body["results"]]
    same = client.get(f"/v1/products/{asin}/similar", params={"k": 4}).json()
    assert [x["asin"] for x in same["results"]] == [x["asin"] for x in body["results"]]
    p = client.get(f"/v1/products/{asin}").json()
    assert p["asin"] == asin and p["thumbnail"] == f"/thumbs/{asin}.jpg" and p["category"] in ("red", "green", "blue")
    cats = client.get("/v1/categories").json()["categories"]
    assert [c["name"] for c in cats] == ["blue", "green", "red"] and sum(c["count"] for c in cats) == len(asins)


def test_filters_and_browsing(client, asins):
    asin = asins[0]
    other = next(c for c in ("red", "green", "blue") if c != client.get(f"/v1/products/{asin}").json()["category"])
    res = client.get(f"/v1/products/{asin}/similar", params={"k": 5, "category": other}).json()["results"]
    assert res and all(x["category"] == other for x in res)
    own = client.get(f"/v1/products/{asin}").json()["category"]
    res = client.get(f"/v1/products/{asin}/similar", params={"k": 5, "same_category": "true"}).json()["results"]
    assert res and all(x["category"] == own for x in res)
    all_res = client.get(f"/v1/products/{asin}/similar", params={"k": 20}).json()["results"]
    s = all_res[5]["similarity"]
    res = client.get(f"/v1/products/{asin}/similar", params={"k": 20, "min_similarity": s}).json()["results"]
    assert res and all(x["similarity"] >= s for x in res)
    page1 = client.get("/v1/products", params={"category": "red", "per_page": 5}).json()
    page3 = client.get("/v1/products", params={"category": "red", "per_page": 5, "page": 3}).json()
    assert page1["total"] == 12 and page1["pages"] == 3 and len(page1["items"]) == 5 and len(page3["items"]) == 2
    assert all(p["category"] == "red" for p in page1["items"] + page3["items"])
    found = client.get("/v1/products", params={"q": asin.lower()}).json()
    assert [p["asin"] for p in found["items"]] == [asin]


def test_page_static_health_ready_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<link rel="stylesheet" href="/static/style.css">' in page.text and "/static/app.js" in page.text
    assert "https://" not in page.text.replace('placeholder="https://', "")  # no CDN
    assert client.get("/static/style.css").status_code == 200 and client.get("/static/app.js").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["n_items"] == 36
    assert "/v1/search" in client.get("/openapi.json").json()["paths"]


def test_concurrent_photo_queries_share_model_calls(client, world, asins):
    imgs = [image_of(world, a) for a in asins[:16]]

    def one(img):
        return client.post("/v1/search", params={"k": 3}, files={"file": ("q.jpg", img, "image/jpeg")}).status_code

    before = _metric(client, "amazon_visual_model_batch_size_count")
    calls_before = _metric(client, "amazon_visual_model_batch_size_sum")
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, imgs * 2)) == {200}
    batches = _metric(client, "amazon_visual_model_batch_size_count") - before
    images = _metric(client, "amazon_visual_model_batch_size_sum") - calls_before
    assert images == 32 and batches < 32  # some model calls served several queries


def _metric(client, name, labels=""):
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.split()[-1])
    return 0.0


def test_metrics(client, asins):
    client.get(f"/v1/products/{asins[0]}")
    client.get("/v1/products/NOPE")
    text = client.get("/metrics").text
    assert 'amazon_visual_http_requests_total{method="GET",route="/v1/products/{asin}",status="200"}' in text
    assert 'amazon_visual_http_requests_total{method="GET",route="/v1/products/{asin}",status="404"}' in text
    assert "amazon_visual_http_request_duration_seconds_bucket" in text
    assert "amazon_visual_index_items 36.0" in text
    assert "amazon_visual_model_batch_size_bucket" in text


# ------------------------------------------------------------------ bad input
def _truncated(world, asin):
    data = image_of(world, asin)
    return data[: len(data) // 2]


BAD_UPLOADS = [
    ("not an image", lambda w, a: b"hello, this is text", 400, "not a readable image"),
    ("truncated", _truncated, 400, "not a readable image"),
    ("zero bytes", lambda w, a: b"", 400, "empty"),
    ("decompression bomb", lambda w, a: bomb_png(), 413, "pixels"),
    ("over --max-upload-mb", lambda w, a: b"\xff\xd8" + b"\0" * (3 << 19), 413, "larger than"),
]


@pytest.mark.parametrize("name,make,status,words", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads(client, world, asins, name, make, status, words):
    r = client.post("/v1/search", files={"file": ("q.jpg", make(world, asins[1]), "image/jpeg")})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    good_query_answers(client, asins[0])


BAD_REQUESTS = [
    ("unknown ASIN", "post", "/v1/search", {"json": {"asin": "NOPE000000"}}, 404),
    ("unknown product", "get", "/v1/products/NOPE000000", {}, 404),
    ("unknown product similar", "get", "/v1/products/NOPE000000/similar", {}, 404),
    ("k=0", "get", "/v1/products/{asin}/similar", {"params": {"k": 0}}, 422),
    ("k negative", "post", "/v1/search", {"params": {"k": -3}, "json": {"asin": "{asin}"}}, 422),
    ("k huge", "get", "/v1/products/{asin}/similar", {"params": {"k": 10**9}}, 422),
    ("k not a number", "get", "/v1/products/{asin}/similar", {"params": {"k": "ten"}}, 422),
    ("bad float", "get", "/v1/products/{asin}/similar", {"params": {"min_similarity": "high"}}, 422),
    ("nan", "get", "/v1/products/{asin}/similar", {"params": {"min_similarity": "nan"}}, 422),
    ("similarity > 1", "get", "/v1/products/{asin}/similar", {"params": {"min_similarity": 2}}, 422),
    ("unknown category", "get", "/v1/products/{asin}/similar", {"params": {"category": "boots"}}, 422),
    ("page 0", "get", "/v1/products", {"params": {"page": 0}}, 422),
    ("url query while off", "post", "/v1/search", {"json": {"url": "http://example.com/a.jpg"}}, 403),
    ("not JSON", "post", "/v1/search", {"content": b"{asin", "headers": {"content-type": "application/json"}}, 400),
    ("neither asin nor url", "post", "/v1/search", {"json": {"photo": "x"}}, 422),
    ("asin and url", "post", "/v1/search", {"json": {"asin": "{asin}", "url": "http://x/y.jpg"}}, 422),
    ("asin not a string", "post", "/v1/search", {"json": {"asin": 12}}, 422),
    ("other content type", "post", "/v1/search", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    ("multipart without file", "post", "/v1/search", {"data": {"name": "x"}, "files": {"other": ("a", b"b")}}, 422),
    ("thumb of unknown ASIN", "get", "/thumbs/NOPE.jpg", {}, 404),
    ("thumbs dot-dot", "get", "/thumbs/..%2Fmanifest.json", {}, 404),
    ("thumbs encoded dot-dot jpg", "get", "/thumbs/%2e%2e%2f%2e%2e%2fitems.jpg", {}, 404),
    ("thumbs encoded slash", "get", "/thumbs/thumbs%2F..%2F..%2Fmanifest.jpg", {}, 404),
    ("thumbs backslash", "get", "/thumbs/..%5Cmanifest.jpg", {}, 404),
    ("thumbs absolute", "get", "/thumbs/%2Fetc%2Fpasswd.jpg", {}, 404),
]


def _fill(obj, asin):
    if isinstance(obj, str):
        return obj.replace("{asin}", asin)
    if isinstance(obj, dict):
        return {k: _fill(v, asin) for k, v in obj.items()}
    return obj


@pytest.mark.parametrize("name,method,path,kwargs,status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests(client, asins, name, method, path, kwargs, status):
    r = getattr(client, method)(_fill(path, asins[0]), **_fill(kwargs, asins[0]))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text and "root:" not in r.text
    assert r.json()["detail"]
    good_query_answers(client, asins[0])


def test_no_route_is_json_404_and_methods_are_checked(client, asins):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/search").status_code == 405
    good_query_answers(client, asins[0])


# ------------------------------------------------------------------ URL queries and SSRF
@pytest.fixture(scope="module")
def image_server(world, asins):
    srv = ImageServer(image_of(world, asins[2]))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def url_client(world):
    """URL fetching on, and the test's own loopback server allowed explicitly."""
    with client_for(
        world["index"], allow_url_fetch=True, url_allow_hosts=("127.0.0.1",), url_timeout=1.0, max_upload_mb=1
    ) as c:
        yield c


@pytest.fixture(scope="module")
def strict_client(world):
    """URL fetching on, no allow-list: only public addresses."""
    with client_for(world["index"], allow_url_fetch=True, url_timeout=1.0) as c:
        yield c


def test_url_query_through_the_allow_list(url_client, image_server, asins):
    r = url_client.post("/v1/search", json={"url": image_server.base + "/img.jpg"}, params={"k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["similarity"] > 0.9
    r = url_client.post("/v1/search", json={"url": image_server.base + "/redirect?to=/img.jpg"}, params={"k": 3})
    assert r.status_code == 200, r.text


def test_loopback_is_refused_without_the_allow_list(strict_client, image_server, asins):
    for url in (
        image_server.base + "/img.jpg",
        f"http://localhost:{image_server.port}/img.jpg",
        f"http://[::1]:{image_server.port}/img.jpg",
        f"http://0.0.0.0:{image_server.port}/img.jpg",
        f"http://127.1:{image_server.port}/img.jpg",
    ):
        r = strict_client.post("/v1/search", json={"url": url})
        assert r.status_code in (400, 403), (url, r.text)
        assert r.status_code == 403 or "cannot be resolved" in r.json()["detail"], (url, r.text)
    good_query_answers(strict_client, asins[0])


URL_REFUSED = [  # "{base}" is the test's loopback image server (on the allow-list)
    ("file scheme", "file:///etc/passwd", 400, "only http and https"),
    ("ftp scheme", "ftp://example.com/a.jpg", 400, "only http and https"),
    ("gopher scheme", "gopher://127.0.0.1:70/_x", 400, "only http and https"),
    ("no host", "http:///a.jpg", 400, "no host"),
    ("bad port", "http://example.com:99999/a.jpg", 400, "not a valid URL"),
    ("private 10/8", "http://10.0.0.1/a.jpg", 403, "may not fetch"),
    ("private 192.168", "http://192.168.1.1/a.jpg", 403, "may not fetch"),
    ("link-local metadata", "http://169.254.169.254/latest/meta-data/", 403, "may not fetch"),
    ("multicast", "http://224.0.0.1/a.jpg", 403, "may not fetch"),
    ("reserved", "http://240.0.0.1/a.jpg", 403, "may not fetch"),
    ("shared 100.64", "http://100.64.0.1/a.jpg", 403, "may not fetch"),
    ("IPv4-mapped loopback", "http://[::ffff:127.0.0.1]/a.jpg", 403, "may not fetch"),
    ("IPv6 unique local", "http://[fd00::1]/a.jpg", 403, "may not fetch"),
    ("redirect to a private address", "{base}/redirect?to=http://10.255.255.1/a.jpg", 403, "may not fetch"),
    ("redirect to IPv6 loopback", "{base}/redirect?to=http://[::1]/a.jpg", 403, "may not fetch"),
    ("redirect to a file URL", "{base}/redirect?to=file:///etc/passwd", 400, "only http and https"),
    ("redirect loop", "{base}/redirect?to=/redirect?to=/redirect?to=/redirect?to=/img.jpg", 400, "redirects more than"),
    ("slow body", "{base}/slow", 400, "timed out"),
    ("huge declared body", "{base}/huge-declared", 413, "more than"),
    ("huge streamed body", "{base}/huge-streamed", 413, "larger than"),
    ("not an image", "{base}/text", 400, "not a readable image"),
    ("HTTP 404", "{base}/missing.jpg", 400, "HTTP 404"),
]


@pytest.mark.parametrize("name,url,status,words", URL_REFUSED, ids=[c[0] for c in URL_REFUSED])
def test_url_queries_refused(url_client, image_server, asins, name, url, status, words):
    r = url_client.post("/v1/search", json={"url": url.replace("{base}", image_server.base)})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    good_query_answers(url_client, asins[0])


def test_dns_answers_are_checked_and_pinned(monkeypatch):
    """A name that resolves to a private address is refused; the connection goes to the checked address."""
    import socket

    from amazon_visual.web.fetch import FetchError, UrlFetcher

    answers = {"evil.example": "10.1.2.3", "good.example": "93.184.216.34"}

    def fake_getaddrinfo(host, port, *a, **kw):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    connected = []

    def fake_connect(address, timeout=None, *a, **kw):
        connected.append(address)
        raise ConnectionRefusedError("test: no network")

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", fake_connect)
    with pytest.raises(FetchError) as e:
        UrlFetcher().fetch("http://evil.example/a.jpg")
    assert e.value.status == 403 and not connected
    with pytest.raises(FetchError) as e:
        UrlFetcher().fetch("http://good.example/a.jpg")
    assert e.value.status == 400 and connected == [("93.184.216.34", 80)]


# ------------------------------------------------------------------ micro-batcher
def test_micro_batcher_gathers_maps_and_survives_errors():
    from amazon_visual.web.batching import MicroBatcher

    sizes = []

    def double(xs):
        if "boom" in xs:
            raise ValueError("boom")
        return [2 * x for x in xs]

    b = MicroBatcher(double, max_batch=8, max_wait_ms=50, on_batch=lambda n, s: sizes.append(n))
    start = threading.Barrier(12)

    def call(x):
        start.wait()
        return b.submit(x).result(timeout=10)

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(call, range(12))) == [2 * x for x in range(12)]
    assert sum(sizes) == 12 and max(sizes) > 1 and max(sizes) <= 8
    with pytest.raises(ValueError):
        b.submit("boom").result(timeout=10)
    assert b.submit(5).result(timeout=10) == 10
    b.close()
    assert b.submit(7).result(timeout=10) == 14  # after close: answered in the caller's thread

    one = []
    b1 = MicroBatcher(double, max_batch=1, max_wait_ms=50, on_batch=lambda n, s: one.append(n))
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda x: b1.submit(x).result(timeout=10), range(6)))
    assert one == [1] * 6
    b1.close()


@pytest.mark.parametrize("no_sighup", [False, True])
def test_serves_where_sighup_reload_cannot_be_installed(world, monkeypatch, caplog, no_sighup):
    """A TestClient runs the app off the main thread (no signal handlers there), and Windows has no
    SIGHUP at all: either way the server starts, says so in one log line, and answers."""
    import logging
    import signal

    if no_sighup:
        monkeypatch.delattr(signal, "SIGHUP", raising=False)
    with caplog.at_level(logging.INFO, logger="amazon_visual.serve"):
        with client_for(world["index"]) as c:
            assert c.get("/healthz").status_code == 200
    lines = [r.getMessage() for r in caplog.records if "reload on SIGHUP is not available" in r.getMessage()]
    assert len(lines) == 1, lines
    assert ("no SIGHUP on this platform" in lines[0]) == no_sighup
