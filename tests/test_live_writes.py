"""Live writes: the SQLite write log and its overlay, the PUT / DELETE routes, several workers, kill -9.

The log and the overlay are tested on a synthetic index (random vectors, no model); the routes on a
writable index of the tiny retrieval world (``test_index.retrieval_world``), in process and with a
real ``amazon-visual serve --workers 2``.
"""

import concurrent.futures
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from serve_helpers import client_for, free_port, image_of
from test_index import retrieval_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "s3cret-write-token"


# ------------------------------------------------------------------ the log and the overlay (no model)
def synthetic_index(folder, n=2000, dim=16, seed=0):
    """A writable INDEX_DIR of random vectors: labels a/b, brands, prices (no model, no thumbnails)."""
    import pandas as pd

    from amazon_visual.retrieval import writelog
    from amazon_visual.retrieval.index import build_annoy, normalize

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = normalize(rng.standard_normal((n, dim)))
    np.save(os.path.join(folder, "embeddings.npy"), x)
    st = build_annoy(x, os.path.join(folder, "index.ann"), trees=10)
    items = pd.DataFrame(
        {
            "asin": [f"B{i:05d}" for i in range(n)],
            "title": [f"item {i}" for i in range(n)],
            "category": "",
            "label": ["a" if i % 2 else "b" for i in range(n)],
            "label_id": 0,
            "image_url": "",
            "split": "train",
            "thumb": "",
            "brand": ["Acme" if i % 3 else "Zed" for i in range(n)],
            "price": [float(i % 100) for i in range(n)],
            "average_rating": 4.0,
            "rating_number": 10,
            "image_sha256": "",
        }
    )
    items.to_csv(os.path.join(folder, "items.csv"), index=False)
    desc = {"embedding_dim": dim, "fingerprint": "synthetic"}
    manifest = {
        "n_items": n,
        "embedding_dim": dim,
        "metric": "angular",
        "index_file": "index.ann",
        "backend": "annoy",
        "search_k": 50_000,
        "index_size_bytes": st["size_bytes"],
        "index_sample_sha256": st["sample_sha256"],
        "fingerprint": "synthetic",
        **writelog.create_log(folder, desc),
    }
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return x


def _live(folder):
    from amazon_visual.retrieval.index import load_index
    from amazon_visual.retrieval.writelog import open_live

    return open_live(load_index(folder))


def _put(live, asin, vec, **attrs):
    from amazon_visual.retrieval import writelog

    full = writelog.parse_attributes(attrs, live.categories)
    return live.writer().put(asin, vec, full, b"jpeg", live.overlay.folded_seq, live.in_base)


def test_log_is_wal_and_fsynced_and_every_reader_sees_each_write(tmp_path):
    from amazon_visual.retrieval import writelog

    x = synthetic_index(tmp_path / "idx")
    a, b = _live(tmp_path / "idx"), _live(tmp_path / "idx")  # two "workers": two connections each
    conn = sqlite3.connect(writelog.log_path(tmp_path / "idx"))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert a.writer().conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    q = -x[7]  # far from every stored item ... until we put it
    seq, existed = _put(a, "NEW1", q, title="new one", category="a", brand="acme", price=5)
    assert (seq, existed) == (1, False)
    for live in (a, b):  # the writer's process and the other one, at their next query
        ids, sims = writelog.live_search(live, q, 3)
        assert live.item(ids[0])["asin"] == "NEW1" and sims[0] == pytest.approx(1.0, abs=1e-5)
        assert live.asin_to_id.get("NEW1") == 2000 and "NEW1" in live.asin_to_id
        np.testing.assert_allclose(live.vector(live.asin_to_id["NEW1"]), q, atol=1e-6)
    # replacing an item of the index hides its stored row; deleting removes it
    assert _put(b, "B00007", x[3])[1] is True
    ids, _ = writelog.live_search(a, x[7], 5)
    assert 7 not in ids.tolist() and a.asin_to_id["B00007"] >= 2000
    assert a.writer().delete("B00009", 0, a.in_base) == 3
    assert "B00009" not in b.asin_to_id and 9 not in writelog.live_search(b, x[9], 5)[0].tolist()
    assert b.writer().delete("B00009", 0, b.in_base) is None  # already gone: nothing written
    assert b.writer().delete("NOPE", 0, b.in_base) is None
    assert writelog.last_seq(tmp_path / "idx") == 3
    assert len(a.asin_to_id) == 2000 - 2 + 2


def test_filters_apply_to_live_items(tmp_path):
    from amazon_visual.retrieval import filters as F
    from amazon_visual.retrieval import writelog

    x = synthetic_index(tmp_path / "idx")
    live = _live(tmp_path / "idx")
    q = x[0]
    _put(live, "CHEAP", q, category="a", brand="ACME", price=1.5, average_rating=4.5)
    _put(live, "DEAR", q, category="a", brand="Acme", price=500.0)
    _put(live, "BARE", q)  # no attributes: matches no attribute filter
    for spec, want in [
        ({"max_price": 2}, {"CHEAP"}),
        ({"brand": "acme", "min_price": 90}, {"DEAR"}),
        ({"category": "a", "min_rating": 4.0}, {"CHEAP"}),
        ({"category": "b"}, set()),
        ({}, {"CHEAP", "DEAR", "BARE"}),
    ]:
        f = F.parse_filters(spec)
        ids, _ = writelog.live_search(live, q, 10, allowed=F.columns(live).select(f), filters=f)
        rows = [live.item(i) for i in ids]
        assert {r["asin"] for r in rows if r["split"] == "live"} == want, spec
        # every result matches, index items and live items alike, and k come back
        assert len(rows) == 10
        if "max_price" in spec:
            assert all(r["price"] <= spec["max_price"] for r in rows)


def test_bad_attributes_are_refused_in_one_line():
    from amazon_visual.errors import UserError
    from amazon_visual.retrieval.writelog import parse_attributes

    cats = {"a", "b"}
    assert parse_attributes('{"price": 3, "category": "a"}', cats)["price"] == 3.0
    for bad, word in [
        ('{"price": -1}', "price"),
        ('{"price": "cheap"}', "price"),
        ('{"average_rating": 6}', "rating"),
        ('{"colour": "red"}', "colour"),
        ('{"category": "zzz"}', "category"),
        ("[1, 2]", "object"),
        ("{not json", "JSON"),
        ('{"price": NaN}', "price"),
        ('{"title": 5}', "title"),
    ]:
        with pytest.raises(UserError, match=word):
            parse_attributes(bad, cats)


# ------------------------------------------------------------------ the service, in process
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = retrieval_world(tmp_path_factory)
    from amazon_visual.retrieval.index import build_index

    w["writable"] = str(tmp_path_factory.mktemp("writable") / "index")
    build_index(w["data"], w["writable"], run_dir=w["run"], trees=10, batch_size=8, progress=False, writable=True)
    return w


def _copy(world, dest):
    import shutil

    shutil.copytree(world["writable"], dest)
    return str(dest)


def _photo(seed, color=(200, 30, 30)):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(40, 40, 3)).astype(np.int32) + np.array(color)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def _put_form(photo, **attrs):
    return {"files": {"file": ("p.jpg", photo, "image/jpeg")}, "data": {"attributes": json.dumps(attrs)}}


def test_token_switches_writes_on(world, tmp_path, monkeypatch):
    index_dir = _copy(world, tmp_path / "index")
    photo = _photo(1)
    monkeypatch.delenv("AMAZON_VISUAL_WRITE_TOKEN", raising=False)
    with client_for(index_dir) as client:  # no token configured: 403, nothing written
        r = client.put("/v1/products/NEW1", headers=_auth(), **_put_form(photo))
        assert r.status_code == 403 and "write-token" in r.json()["detail"]
        assert client.delete("/v1/products/NEW1", headers=_auth()).status_code == 403
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with client_for(index_dir, write_token_file=str(token_file)) as client:
        for headers in ({}, _auth("wrong"), {"Authorization": TOKEN}, _auth(TOKEN + "x")):
            r = client.put("/v1/products/NEW1", headers=headers, **_put_form(photo))
            assert r.status_code == 401 and TOKEN not in r.text, r.text
        assert client.get("/v1/products/NEW1").status_code == 404
        r = client.put("/v1/products/NEW1", headers=_auth(), **_put_form(photo, title="live one"))
        assert r.status_code == 201 and r.json()["asin"] == "NEW1" and r.json()["title"] == "live one"
        metrics = client.get("/metrics").text
        assert 'amazon_visual_writes_total{operation="put",outcome="unauthorized"} 4.0' in metrics
        assert 'amazon_visual_writes_total{operation="put",outcome="created"} 1.0' in metrics
    from amazon_visual.retrieval import writelog

    assert [e["asin"] for e in writelog.read_entries(index_dir)] == ["NEW1"]  # the 403s and 401s wrote nothing
    monkeypatch.setenv("AMAZON_VISUAL_WRITE_TOKEN", "env-token")
    with client_for(index_dir) as client:
        assert client.delete("/v1/products/NEW1", headers=_auth("env-token")).status_code == 200
        assert client.delete("/v1/products/NEW1", headers=_auth()).status_code == 401


def test_put_is_searchable_and_delete_is_gone(world, tmp_path, monkeypatch):
    monkeypatch.setenv("AMAZON_VISUAL_WRITE_TOKEN", TOKEN)
    index_dir = _copy(world, tmp_path / "index")
    from amazon_visual.retrieval.index import read_items

    items = read_items(index_dir)
    base = items["asin"].iloc[0]
    photo = image_of(world, items["asin"].iloc[1])  # a photo like an indexed product's
    with client_for(index_dir) as client:
        attrs = {"title": "Live red", "category": "red", "brand": "Acme", "price": 12.5, "average_rating": 4.5}
        r = client.put("/v1/products/LIVE1", headers=_auth(), **_put_form(photo, **attrs))
        assert r.status_code == 201, r.text
        p = client.get("/v1/products/LIVE1").json()
        assert p["title"] == "Live red" and p["category"] == "red"
        assert client.get(p["thumbnail"]).status_code == 200
        # by photo: the live product is the nearest (the photo it was put with)
        res = client.post("/v1/search", params={"k": 3}, files={"file": ("q.jpg", photo, "image/jpeg")}).json()
        assert res["results"][0]["asin"] == "LIVE1" and res["results"][0]["similarity"] > 0.999
        # by ASIN, with filters: it finds neighbours, and others find it
        sim = client.get("/v1/products/LIVE1/similar", params={"k": 3}).json()["results"]
        assert len(sim) == 3 and "LIVE1" not in [s["asin"] for s in sim]
        near = client.get(f"/v1/products/{sim[0]['asin']}/similar", params={"k": 5}).json()["results"]
        assert "LIVE1" in [s["asin"] for s in near]
        only = client.post(
            "/v1/search",
            params={"k": 5, "brand": "acme", "max_price": 20},
            files={"file": ("q.jpg", photo, "image/jpeg")},
        ).json()["results"]
        assert [s["asin"] for s in only] == ["LIVE1"]
        none = client.post(
            "/v1/search",
            params={"k": 5, "min_price": 13, "brand": "Acme"},
            files={"file": ("q.jpg", photo, "image/jpeg")},
        ).json()["results"]
        assert "LIVE1" not in [s["asin"] for s in none]
        # replace (200), then delete an indexed product and the live one
        r = client.put("/v1/products/LIVE1", headers=_auth(), **_put_form(photo, title="Live red v2"))
        assert r.status_code == 200 and r.json()["created"] is False
        assert client.get("/v1/products/LIVE1").json()["title"] == "Live red v2"
        for asin in (base, "LIVE1"):
            assert client.delete(f"/v1/products/{asin}", headers=_auth()).status_code == 200
            assert client.get(f"/v1/products/{asin}").status_code == 404
            assert client.get(f"/thumbs/{asin}.jpg").status_code == 404
            assert client.delete(f"/v1/products/{asin}", headers=_auth()).status_code == 404
        res = client.post("/v1/search", params={"k": 50}, files={"file": ("q.jpg", photo, "image/jpeg")}).json()
        assert {base, "LIVE1"}.isdisjoint(s["asin"] for s in res["results"])
        metrics = client.get("/metrics").text
        assert 'amazon_visual_writes_total{operation="delete",outcome="deleted"} 2.0' in metrics
        assert 'amazon_visual_writes_total{operation="delete",outcome="not_found"} 2.0' in metrics


def test_bad_writes_are_4xx_and_the_server_goes_on(world, tmp_path, monkeypatch):
    monkeypatch.setenv("AMAZON_VISUAL_WRITE_TOKEN", TOKEN)
    index_dir = _copy(world, tmp_path / "index")
    photo = _photo(2)
    with client_for(index_dir) as client:
        r = client.put("/v1/products/X1", headers=_auth(), files={"file": ("p.jpg", b"<html>no</html>", "image/jpeg")})
        assert r.status_code == 422 and "not a readable image" in r.json()["detail"]
        for attrs, word in [({"price": -3}, "price"), ({"category": "purple"}, "category"), ({"size": 3}, "size")]:
            r = client.put("/v1/products/X1", headers=_auth(), **_put_form(photo, **attrs))
            assert r.status_code == 422 and word in r.json()["detail"], r.text
        r = client.put("/v1/products/X1", headers=_auth(), files={"attributes": (None, "{}")})
        assert r.status_code == 422 and "file" in r.json()["detail"]
        assert client.put("/v1/products/X1", headers=_auth(), json={"a": 1}).status_code == 415
        assert client.put("/v1/products/bad%20asin", headers=_auth(), **_put_form(photo)).status_code == 422
        assert client.get("/v1/products/X1").status_code == 404
        # the delete storm: unknown and known ASINs, 4xx where due
        asins = [a["asin"] for a in client.get("/v1/products", params={"per_page": 20}).json()["items"]]
        codes = {}
        for i in range(2000):
            asin = asins[(i // 100) % len(asins)] if i % 100 == 0 else f"UNKNOWN{i}"
            code = client.delete(f"/v1/products/{asin}", headers=_auth()).status_code
            codes[code] = codes.get(code, 0) + 1
        assert codes == {200: len(set(asins[:20])), 404: 2000 - len(set(asins[:20]))}, codes
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/search", files={"file": ("q.jpg", photo, "image/jpeg")}).status_code == 200


def test_a_read_only_index_says_so(world, monkeypatch):
    monkeypatch.setenv("AMAZON_VISUAL_WRITE_TOKEN", TOKEN)
    with client_for(world["index"]) as client:  # built without --writable
        r = client.put("/v1/products/X1", headers=_auth(), **_put_form(_photo(3)))
        assert r.status_code == 409 and "--writable" in r.json()["detail"] and "\n" not in r.json()["detail"]
        assert client.delete("/v1/products/X1", headers=_auth()).status_code == 409


# ------------------------------------------------------------------ a real server: workers, kill -9
def _serve(index_dir, port, workers, token_file=None):
    """``amazon-visual serve`` in its own process group; the token from ``token_file`` or the environment."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("AMAZON_VISUAL_WRITE_TOKEN", None)
    extra = ["--write-token-file", token_file] if token_file else []
    if not token_file:
        env["AMAZON_VISUAL_WRITE_TOKEN"] = TOKEN
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "amazon_visual.cli",
            "serve",
            index_dir,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--reload-poll",
            "0",
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_ready(base, proc, timeout=120):
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not get ready")


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_two_workers_see_every_write_within_a_second_under_load(world, tmp_path):
    import httpx

    index_dir = _copy(world, tmp_path / "index")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(index_dir, port, workers=2)
    try:
        _wait_ready(base, proc)
        photos = [_photo(100 + i, color=(30, 200, 30)) for i in range(6)]
        with httpx.Client(base_url=base, timeout=60) as c:
            for p in photos[:2]:  # load the model in both workers (either may answer)
                for _ in range(4):
                    c.post("/v1/search", files={"file": ("q.jpg", p, "image/jpeg")})
        errors, stop = [], threading.Event()

        def searches():
            with httpx.Client(base_url=base, timeout=60) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    r = (
                        c.post("/v1/search", params={"k": 5}, files={"file": ("q.jpg", photos[i % 6], "image/jpeg")})
                        if i % 2
                        else c.get("/v1/products/A000000/similar", params={"k": 5})
                    )
                    if r.status_code != 200:
                        errors.append((r.status_code, r.text[:200]))

        def writes(worker):
            seen = []
            with httpx.Client(base_url=base, timeout=60) as c:
                for j in range(4):
                    asin = f"W{worker}N{j}"
                    r = c.put(f"/v1/products/{asin}", headers=_auth(), **_put_form(photos[j], category="green"))
                    if r.status_code != 201:
                        errors.append((r.status_code, r.text[:200]))
                        continue
                    acked = time.monotonic()
                    # every worker must answer it now: ask several times (connections land on either worker)
                    for _ in range(6):
                        with httpx.Client(base_url=base, timeout=60) as fresh:
                            if fresh.get(f"/v1/products/{asin}").status_code != 200:
                                errors.append(("not visible", asin))
                    seen.append(time.monotonic() - acked)
                    if j % 2:
                        assert c.delete(f"/v1/products/{asin}", headers=_auth()).status_code == 200
                        for _ in range(6):
                            with httpx.Client(base_url=base, timeout=60) as fresh:
                                if fresh.get(f"/v1/products/{asin}").status_code != 404:
                                    errors.append(("still there", asin))
            return seen

        readers = [threading.Thread(target=searches) for _ in range(2)]
        for t in readers:
            t.start()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            seen = sum(pool.map(writes, range(2)), [])
        stop.set()
        for t in readers:
            t.join()
        assert not errors, errors[:5]
        assert len(seen) == 8 and max(seen) < 30  # 6 fresh connections each, all answered right
        with httpx.Client(base_url=base, timeout=60) as c:
            res = c.post(
                "/v1/search", params={"k": 3, "category": "green"}, files={"file": ("q.jpg", photos[0], "image/jpeg")}
            ).json()["results"]
            assert res[0]["asin"] in ("W0N0", "W1N0")
            metrics = c.get("/metrics").text
            assert 'amazon_visual_writes_total{operation="put",outcome="created"} 8.0' in metrics
    finally:
        _stop(proc)


def test_an_acknowledged_write_survives_kill_9(world, tmp_path):
    import httpx

    index_dir = _copy(world, tmp_path / "index")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proc = _serve(index_dir, port, workers=1, token_file=str(token_file))
    try:
        _wait_ready(base, proc)
        gone = httpx.get(f"{base}/v1/products", params={"per_page": 1}).json()["items"][0]["asin"]
        r = httpx.put(
            f"{base}/v1/products/KILL1",
            headers=_auth(),
            timeout=60,
            **_put_form(_photo(5), title="survives", price=3.0),
        )
        assert r.status_code == 201
        assert httpx.delete(f"{base}/v1/products/{gone}", headers=_auth()).status_code == 200
        os.killpg(proc.pid, signal.SIGKILL)  # right after the answers
        proc.wait(10)
        proc = _serve(index_dir, port, workers=1, token_file=str(token_file))
        _wait_ready(base, proc)
        p = httpx.get(f"{base}/v1/products/KILL1").json()
        assert p["title"] == "survives" and p["price"] == 3.0
        assert httpx.get(f"{base}/v1/products/{gone}").status_code == 404
        assert httpx.get(f"{base}{p['thumbnail']}").status_code == 200
    finally:
        _stop(proc)


# ------------------------------------------------------------------ index --update folds the log
def test_update_folds_the_log_and_keeps_live_writes(world, tmp_path):
    from amazon_visual.retrieval import writelog
    from amazon_visual.retrieval.index import read_items, read_manifest
    from amazon_visual.retrieval.recommend import Recommender
    from amazon_visual.retrieval.update import update_index

    index_dir = _copy(world, tmp_path / "index")
    items = read_items(index_dir)
    gone, replaced = items["asin"].iloc[0], items["asin"].iloc[1]
    rec = Recommender.load(index_dir)  # a writable index opens with its overlay
    row, seq, created = writelog.put_product(rec, "LIVE1", _photo(7), {"title": "live", "category": "red", "price": 2})
    assert created and seq == 1
    writelog.put_product(rec, replaced, _photo(8), {"title": "re-photographed"})
    assert writelog.delete_product(rec, gone) == 3
    m = update_index(world["data"], index_dir, run_dir=world["run"], batch_size=8, progress=False)
    assert m["log_folded_seq"] == 3 and m["writable"] and m["update"]["live"] == 2
    assert m["n_items"] == len(items) - 1 - 1 + 2  # the same data, less the deleted and the replaced rows, plus 2
    new = read_items(index_dir, read_manifest(index_dir))
    assert gone not in set(new["asin"]) and list(new["asin"]).count(replaced) == 1
    live_rows = new[new["split"] == "live"].set_index("asin")
    assert live_rows.loc["LIVE1", "title"] == "live" and live_rows.loc["LIVE1", "price"] == 2.0
    assert live_rows.loc[replaced, "title"] == "re-photographed"
    rec2 = Recommender.load(index_dir)
    assert rec2.index.snap().n_live == 0  # all folded: the new generation holds them
    i = rec2.index.asin_to_id["LIVE1"]
    assert i < rec2.index.n_items and os.path.isfile(rec2.index.thumb_path(i))
    np.testing.assert_allclose(rec2.index.vector(i), rec.index.vector(rec.index.asin_to_id["LIVE1"]), atol=1e-6)
    # a write after the fold lives in the overlay; the next update keeps every live write
    writelog.put_product(rec2, "LIVE1", _photo(9), {"title": "live v2"})
    assert rec2.index.snap().n_live == 1 and rec2.index.item(rec2.index.asin_to_id["LIVE1"])["title"] == "live v2"
    m = update_index(world["data"], index_dir, run_dir=world["run"], batch_size=8, progress=False)
    assert m["log_folded_seq"] == 4 and m["n_items"] == len(items)
    new = read_items(index_dir, read_manifest(index_dir))
    assert gone not in set(new["asin"]) and new.set_index("asin").loc["LIVE1", "title"] == "live v2"
    # the entries the previous generation had folded and a later one supersedes are dropped (LIVE1's first put)
    assert m["update"]["log_entries_compacted"] == 0
    m = update_index(world["data"], index_dir, run_dir=world["run"], batch_size=8, progress=False)
    assert m["update"]["log_entries_compacted"] == 1
    assert [e["seq"] for e in writelog.read_entries(index_dir)] == [2, 3, 4]


def test_a_writable_build_killed_before_its_manifest_resumes(tmp_path):
    """The empty log is written just before the manifest: a kill in between leaves it beside .partial,
    and the same command must still be allowed to resume (not asked for --overwrite)."""
    from amazon_visual.errors import UserError
    from amazon_visual.retrieval.index import _prepare_out
    from amazon_visual.retrieval.writelog import LOG_FILE

    out = tmp_path / "idx"
    (out / ".partial").mkdir(parents=True)
    for name in (LOG_FILE, f"{LOG_FILE}-wal", f"{LOG_FILE}-shm"):
        (out / name).write_bytes(b"")
    assert _prepare_out(out, overwrite=False) == str(out)
    (out / "somebody-elses.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        _prepare_out(out, overwrite=False)
