"""Recommender: ASIN and image queries, filters, bad input, 8 threads, the recommend CLI."""

import http.server
import io
import json
import os
import socketserver
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from amazon_visual.errors import UserError
from test_index import retrieval_world

KEYS = {"rank", "asin", "title", "category", "label", "image_url", "similarity", "thumb"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return retrieval_world(tmp_path_factory)


@pytest.fixture(scope="module")
def rec(world):
    from amazon_visual.retrieval.recommend import Recommender

    r = Recommender.load(world["index"])
    yield r
    r.close()


def _stored_image(world, asin):
    """The uint8 image the dataset stores for ``asin`` (what was indexed)."""
    from amazon_visual import data

    for split in data.SPLITS:
        for ex in data.load(world["data"], split=split).as_numpy_iterator():
            if ex["asin"].decode() == asin:
                return ex["image"]
    raise KeyError(asin)


def test_asin_query_excludes_itself_and_is_sorted(rec):
    items = rec.index.items
    for asin in items["asin"][::5]:
        res = rec.similar_to_asin(asin, k=10)
        assert len(res) == 10
        assert asin not in [r["asin"] for r in res]
        sims = [r["similarity"] for r in res]
        assert sims == sorted(sims, reverse=True)
        assert [r["rank"] for r in res] == list(range(1, 11))
        assert KEYS <= set(res[0])
        assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in sims)
        # similarity is the exact cosine of the stored embeddings
        q = rec.index.vector(rec.index.asin_to_id[asin])
        for r in res[:3]:
            assert abs(float(rec.index.vector(r["item_id"]) @ q) - r["similarity"]) < 1e-5


def test_k_larger_than_catalog_returns_all_others(rec):
    asin = rec.index.items["asin"][0]
    res = rec.similar_to_asin(asin, k=1000)
    assert len(res) == rec.index.n_items - 1


def test_filters(rec):
    asin = rec.index.items["asin"][3]
    label = rec.index.items["label"][3]
    res = rec.similar_to_asin(asin, k=8, same_category=True)
    assert res and all(r["label"] == label for r in res)
    all_res = rec.similar_to_asin(asin, k=20)
    s = all_res[4]["similarity"]
    res = rec.similar_to_asin(asin, k=20, min_similarity=s)
    assert res and all(r["similarity"] >= s for r in res) and len(res) <= 20
    assert rec.similar_to_asin(asin, k=5, min_similarity=1.0) == [] or all(
        r["similarity"] >= 1.0 for r in rec.similar_to_asin(asin, k=5, min_similarity=1.0)
    )
    other = [lab for lab in set(rec.index.items["label"]) if lab != label][0]
    res = rec.similar_to_asin(asin, k=5, same_category=other)  # an explicit label
    assert res and all(r["label"] == other for r in res)
    with pytest.raises(UserError):
        rec.similar_to_asin(asin, k=0)
    with pytest.raises(UserError):
        rec.similar_to_asin(asin, min_similarity=2)


def test_image_query_uses_the_same_preprocessing_as_the_index(world, rec):
    from PIL import Image

    asin = rec.index.items["asin"][7]
    img = _stored_image(world, asin)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")  # lossless: the very pixels that were indexed
    path = os.path.join(world["root"], "query.png")
    open(path, "wb").write(buf.getvalue())
    for query in (path, buf.getvalue(), Image.fromarray(img), img, img.astype(np.float32)):
        res = rec.similar_to_image(query, k=5)
        assert res[0]["asin"] == asin, type(query)
        assert res[0]["similarity"] > 0.9999
    out = rec.recommend(image=path, k=3, same_category=True)
    assert out["query"]["predicted_label"] in rec.embedder.labels
    assert all(r["label"] == out["query"]["predicted_label"] for r in out["results"])
    # the original (larger, not re-encoded) photo lands on the same item or a very close one
    orig = os.path.join(world["images"], f"{asin}.jpg")
    res = rec.similar_to_image(orig, k=3)
    assert res[0]["similarity"] > 0.95


def test_image_query_by_url(world, rec):
    asin = rec.index.items["asin"][2]
    folder = world["images"]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=folder, **kw)

        def log_message(self, *a):
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Quiet) as srv:
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            port = srv.server_address[1]
            res = rec.similar_to_image(f"http://127.0.0.1:{port}/{asin}.jpg", k=3)
            local = rec.similar_to_image(os.path.join(folder, f"{asin}.jpg"), k=3)
            assert [r["asin"] for r in res] == [r["asin"] for r in local]
            with pytest.raises(UserError, match="cannot be downloaded"):
                rec.similar_to_image(f"http://127.0.0.1:{port}/missing.jpg")
        finally:
            srv.shutdown()


def test_bad_queries_are_clear_errors_and_the_recommender_stays_usable(world, rec, tmp_path):
    bad_file = tmp_path / "notes.jpg"
    bad_file.write_text("this is not an image")
    cases = [
        (lambda: rec.similar_to_asin("NOPE000000"), "not in the index"),
        (lambda: rec.similar_to_image(str(tmp_path / "missing.jpg")), "does not exist"),
        (lambda: rec.similar_to_image(str(bad_file)), "not a readable image"),
        (lambda: rec.similar_to_image(b"\x89PNG\r\n\x1a\n garbage"), "not a readable image"),
        (lambda: rec.similar_to_image(b""), "not a readable image"),
        (lambda: rec.similar_to_image("http://127.0.0.1:9/x.jpg"), "cannot be downloaded"),
        (lambda: rec.similar_to_image("ftp://example.com/x.jpg"), "only local files"),
        (lambda: rec.similar_to_image(np.zeros((4, 4, 7))), "shape"),
        (lambda: rec.similar_to_image(12345), "not supported"),
        (lambda: rec.recommend(), "either"),
    ]
    for call, msg in cases:
        with pytest.raises(UserError, match=msg):
            call()
    asin = rec.index.items["asin"][0]
    assert len(rec.similar_to_asin(asin, k=4)) == 4
    assert len(rec.similar_to_image(os.path.join(world["images"], f"{asin}.jpg"), k=4)) == 4


def test_eight_threads_share_one_recommender(world, rec):
    items = rec.index.items
    asins = list(items["asin"])
    images = [os.path.join(world["images"], f"{a}.jpg") for a in asins[:12]]
    jobs = [("asin", a) for a in asins] + [("image", p) for p in images]
    jobs = jobs * 3

    def run(job):
        kind, q = job
        res = rec.similar_to_asin(q, k=5) if kind == "asin" else rec.similar_to_image(q, k=5)
        return [(r["asin"], round(r["similarity"], 5)) for r in res]

    expected = {job: run(job) for job in set(jobs)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(run, jobs))
    for job, res in zip(jobs, got):
        assert res == expected[job], job


def test_recommend_cli(world, tmp_path, capsys):
    from html.parser import HTMLParser

    from amazon_visual.cli import main
    from amazon_visual.retrieval.index import read_items

    asin = read_items(world["index"])["asin"][1]
    assert main(["recommend", world["index"], "--asin", asin, "-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"]["asin"] == asin and len(out["results"]) == 4
    assert asin not in [r["asin"] for r in out["results"]]

    page = str(tmp_path / "results.html")
    img = os.path.join(world["images"], f"{asin}.jpg")
    assert main(["recommend", world["index"], "--image", img, "-k", "3", "--same-category", "--html", page]) == 0
    text = capsys.readouterr().out
    assert "rank" in text and "similarity" in text and "gallery written" in text

    class Srcs(HTMLParser):
        srcs = []

        def handle_starttag(self, tag, attrs):
            self.srcs += [v for k, v in attrs if k in ("src", "href")]

    p = Srcs()
    p.feed(open(page, encoding="utf-8").read())
    assert len(p.srcs) == 4  # the query and 3 results, all embedded
    assert all(s.startswith("data:image/jpeg;base64,") for s in p.srcs)

    assert main(["recommend", world["index"], "--asin", "NOPE"]) == 2
    assert "not in the index" in capsys.readouterr().err
    assert main(["recommend", str(tmp_path / "none"), "--asin", asin]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["recommend", world["index"], "--image", str(tmp_path / "nope.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err
