"""Filtered search: the parser, the masks (missing never matches), the planner (right and complete, both
paths, the exact fallback), the Recommender with filters, and `recommend`'s filter options.

The index is a real INDEX_DIR of 10,000 random vectors with attributes (no model: ASIN queries only)."""

import json
import math
import os

import numpy as np
import pytest

from amazon_visual.errors import UserError

N, DIM = 10_000, 16
LABELS = ("red", "green", "blue")
BRANDS = ("Acme", "Zed", "acme", "", "Other")
UNIQUE = 4321  # the one item of brand "Solo": 1 in 10,000


def item_attributes(i):
    """The attributes of item i (deterministic; some missing)."""
    brand = "Solo" if i == UNIQUE else BRANDS[i % len(BRANDS)]
    price = None if i % 7 == 0 else float(i % 100) + 0.99
    rating = None if i % 5 == 0 else (i % 51) / 10.0
    count = None if rating is None else i % 300
    return brand, price, rating, count


def write_attribute_index(folder, n=N, dim=DIM, seed=0, thumbs=False, search_k=None):
    """A complete INDEX_DIR (manifest, items.csv with attributes, embeddings.npy, index.ann) of random vectors."""
    import pandas as pd

    from amazon_visual.retrieval.index import build_annoy, normalize

    os.makedirs(folder, exist_ok=True)
    x = normalize(np.random.default_rng(seed).standard_normal((n, dim)))
    np.save(os.path.join(folder, "embeddings.npy"), x)
    st = build_annoy(x, os.path.join(folder, "index.ann"), trees=10)
    rows = []
    for i in range(n):
        brand, price, rating, count = item_attributes(i)
        rows.append(
            {
                "asin": f"B{i:09d}",
                "title": f"product {i}",
                "category": f"Shop > {LABELS[i % 3]}",
                "label": LABELS[i % 3],
                "label_id": i % 3,
                "image_url": "",
                "split": "train",
                "thumb": f"thumbs/B{i:09d}.jpg" if thumbs else "",
                "brand": brand,
                "price": "" if price is None else price,
                "average_rating": "" if rating is None else rating,
                "rating_number": "" if count is None else count,
                "image_sha256": "",
            }
        )
    pd.DataFrame(rows).to_csv(os.path.join(folder, "items.csv"), index=False)
    if thumbs:
        from PIL import Image

        os.makedirs(os.path.join(folder, "thumbs"), exist_ok=True)
        colors = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 60, 200)}
        for i in range(n):
            Image.new("RGB", (32, 32), colors[LABELS[i % 3]]).save(os.path.join(folder, "thumbs", f"B{i:09d}.jpg"))
    manifest = {
        "format_version": 1,
        "source": "backbone",
        "model": "synthetic",
        "fingerprint": "synthetic",
        "metric": "angular",
        "backend": "annoy",
        "n_items": n,
        "embedding_dim": dim,
        "trees": 10,
        "search_k": search_k or 2000,
        "index_file": "index.ann",
        "index_size_bytes": st["size_bytes"],
        "index_sample_sha256": st["sample_sha256"],
        "embeddings_file": "embeddings.npy",
        "items_file": "items.csv",
        "image_size": 32,
        "class_names": list(LABELS),
    }
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return folder


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return write_attribute_index(str(tmp_path_factory.mktemp("filters") / "index"))


@pytest.fixture(scope="module")
def rec(index_dir):
    from amazon_visual.retrieval.recommend import Recommender

    r = Recommender.load(index_dir)
    yield r
    r.close()


def expected_mask(n=N, brands=None, min_price=None, max_price=None, min_rating=None, label=None):
    """The filter evaluated row by row in plain Python (the reference the masks must equal)."""
    out = np.zeros(n, bool)
    for i in range(n):
        brand, price, rating, _ = item_attributes(i)
        ok = label is None or LABELS[i % 3] == label
        ok &= brands is None or (brand != "" and brand.lower() in {b.lower() for b in brands})
        ok &= min_price is None or (price is not None and price >= min_price)
        ok &= max_price is None or (price is not None and price <= max_price)
        ok &= min_rating is None or (rating is not None and rating >= min_rating)
        out[i] = ok
    return out


def brute_force(rec, vec, mask, k, exclude=()):
    x = np.asarray(rec.index.embeddings)
    sims = x @ (vec / np.linalg.norm(vec))
    sims[~mask] = -np.inf
    sims[list(exclude)] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return [int(i) for i in order if np.isfinite(sims[i])]


# ------------------------------------------------------------------ the parser
@pytest.mark.parametrize(
    "spec, words",
    [
        ({"colour": "red"}, "unknown filter 'colour'"),
        ({"min_price": "cheap"}, "min_price must be a number"),
        ({"max_price": float("nan")}, "max_price must be a finite number"),
        ({"min_rating": "inf"}, "min_rating must be a finite number"),
        ({"min_price": -1}, "must not be negative"),
        ({"min_price": 50, "max_price": 10}, "min_price 50 is above max_price 10"),
        ({"min_rating": 5.5}, "within [0, 5]"),
        ({"min_rating": -0.1}, "within [0, 5]"),
        ({"brand": ["Acme", " "]}, "non-empty brand"),
        ({"category": ""}, "non-empty category"),
        ({"min_price": True}, "must be a number"),
        ("max_price=3", "must be a mapping"),
    ],
)
def test_bad_filters_are_one_clear_line(spec, words):
    from amazon_visual.retrieval.filters import parse_filters

    with pytest.raises(UserError) as e:
        parse_filters(spec)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_parser_accepts_strings_lists_and_none():
    from amazon_visual.retrieval.filters import Filters, parse_filters

    f = parse_filters(
        {
            "brand": ["Zed", "Acme", "Zed"],
            "min_price": "10",
            "max_price": 10,
            "min_rating": "4.5",
            "category": " red ",
            "unused": None,
        }
    )
    assert f == Filters(category="red", brands=("Acme", "Zed"), min_price=10.0, max_price=10.0, min_rating=4.5)
    assert f.to_dict() == {
        "category": "red",
        "brand": ["Acme", "Zed"],
        "min_price": 10.0,
        "max_price": 10.0,
        "min_rating": 4.5,
    }
    assert parse_filters({"brand": "Acme"}).brands == ("Acme",)
    assert not parse_filters(None) and not parse_filters({}) and parse_filters({"min_rating": 0})


# ------------------------------------------------------------------ masks
@pytest.mark.parametrize(
    "spec",
    [
        {"brand": "acme"},
        {"brand": ["Zed", "Other"]},
        {"min_price": 50},
        {"max_price": 10.99},
        {"min_price": 20, "max_price": 30, "min_rating": 2.5},
        {"category": "green", "brand": "Zed", "min_rating": 4},
        {"brand": "Nobody"},
    ],
)
def test_masks_equal_the_row_by_row_reference(rec, spec):
    from amazon_visual.retrieval.filters import select

    sel = select(rec.index, spec)
    ref = expected_mask(
        brands=[spec["brand"]] if isinstance(spec.get("brand"), str) else spec.get("brand"),
        min_price=spec.get("min_price"),
        max_price=spec.get("max_price"),
        min_rating=spec.get("min_rating"),
        label=spec.get("category"),
    )
    assert sel.count == int(ref.sum())
    np.testing.assert_array_equal(sel.mask, ref)
    assert select(rec.index, dict(spec)) is sel  # the cache returns the same selection


def test_missing_never_matches_a_bound(rec):
    from amazon_visual.retrieval.filters import select

    items = rec.index.items
    no_price = items["price"].isna().to_numpy()
    no_rating = items["average_rating"].isna().to_numpy()
    no_brand = (items["brand"] == "").to_numpy()
    assert no_price.sum() > 1000 and no_rating.sum() > 1000 and no_brand.sum() > 1000
    assert not select(rec.index, {"min_price": 0}).mask[no_price].any()
    assert not select(rec.index, {"max_price": 1e9}).mask[no_price].any()
    assert not select(rec.index, {"min_rating": 0}).mask[no_rating].any()
    assert select(rec.index, {"min_price": 0}).count == int((~no_price).sum())
    with pytest.raises(UserError, match="unknown category 'purple'"):
        select(rec.index, {"category": "purple"})


# ------------------------------------------------------------------ the planner
def _queries(n=20, seed=5):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.mark.parametrize("force_ann", [False, True])
def test_planner_is_right_and_complete_on_both_paths(rec, monkeypatch, force_ann):
    from amazon_visual.retrieval import filters as F

    if force_ann:
        monkeypatch.setattr(F, "EXACT_ROWS_PER_CANDIDATE", 0)
    spec = {"brand": "Zed", "min_rating": 1}  # about 1 in 6
    sel = F.select(rec.index, spec)
    assert F.plan(rec.index, sel.count, 10) == ("ann" if force_ann else "exact")
    found = total = 0
    for q in _queries():
        ids, sims = F.filtered_search(rec.index, q, 10, allowed=sel, exclude=[int(sel.ids[0])])
        assert len(ids) == 10 and sel.mask[ids].all() and int(sel.ids[0]) not in ids.tolist()
        assert np.all(np.diff(sims) <= 1e-7)
        truth = brute_force(rec, q, sel.mask, 10, exclude=[int(sel.ids[0])])
        found += len(set(ids.tolist()) & set(truth))
        total += 10
        if not force_ann:
            assert ids.tolist() == truth
    assert found / total >= 0.95


def test_repeated_filters_scan_kept_rows_within_the_budget(rec, monkeypatch):
    from amazon_visual.retrieval import filters as F

    cols = F.columns(rec.index)
    a, b = F.select(rec.index, {"min_price": 97}), F.select(rec.index, {"min_price": 98})
    block_a = cols.rows(rec.index.embeddings, a)
    assert block_a.flags.c_contiguous and cols.rows(rec.index.embeddings, a) is block_a  # kept
    np.testing.assert_array_equal(block_a, np.asarray(rec.index.embeddings)[a.ids])
    monkeypatch.setattr(F, "ROWS_CACHE_BYTES", block_a.nbytes + 1)
    cols.rows(rec.index.embeddings, b)  # over the budget: the older block goes
    assert cols.rows(rec.index.embeddings, a) is not block_a and cols._rows_bytes <= block_a.nbytes + 1
    q = _queries(1)[0]
    for sel in (a, b, a & np.ones(N, bool)):  # a mask of no filter (key None) is gathered each time
        exclude = [int(sel.ids[1])]
        ids, _ = F.filtered_search(rec.index, q, 10, allowed=sel, exclude=exclude)
        assert ids.tolist() == brute_force(rec, q, sel.mask, 10, exclude=exclude)


def test_ann_that_runs_out_is_finished_exactly(rec, monkeypatch):
    """An ANN that returns fewer candidates than asked (e.g. a tiny search_k) still gives k matching results."""
    from amazon_visual.retrieval import filters as F

    monkeypatch.setattr(F, "EXACT_ROWS_PER_CANDIDATE", 0)
    sel = F.select(rec.index, {"min_price": 90})
    calls = []

    class Stingy:
        def search(self, q, n, effort):
            calls.append(n)
            return list(range(5))  # never enough

    monkeypatch.setattr(rec.index, "ann", Stingy())
    q = _queries(1)[0]
    ids, _ = F.filtered_search(rec.index, q, 10, allowed=sel)
    assert ids.tolist() == brute_force(rec, q, sel.mask, 10) and calls


@pytest.mark.parametrize("force_ann", [False, True])
def test_planner_on_an_hnsw_index(rec, tmp_path, monkeypatch, force_ann):
    """The same guarantees on the HNSW backend (its ef is the effort; the list still grows)."""
    pytest.importorskip("hnswlib")
    from amazon_visual.retrieval import backends
    from amazon_visual.retrieval import filters as F
    from amazon_visual.retrieval.index import Index

    x = np.asarray(rec.index.embeddings)
    B = backends.HnswBackend
    params = B.params()
    st = B.build(backends.iter_blocks(x), N, DIM, str(tmp_path / "index.hnsw"), params, n_jobs=1)
    manifest = {"n_items": N, "embedding_dim": DIM, "backend": "hnsw", **params}
    searcher = B.open(str(tmp_path / "index.hnsw"), DIM, N, {**manifest, "index_size_bytes": st["size_bytes"]})
    index = Index(str(tmp_path), manifest, rec.index.items, x, searcher)
    if force_ann:
        monkeypatch.setattr(F, "EXACT_ROWS_PER_CANDIDATE", 0)
    sel = F.select(index, {"min_price": 50, "min_rating": 2})
    found = 0
    for q in _queries(10):
        ids, _ = F.filtered_search(index, q, 10, allowed=sel)
        assert len(ids) == 10 and sel.mask[ids].all()
        found += len(set(ids.tolist()) & set(brute_force(rec, q, sel.mask, 10)))
    assert found >= 95
    solo = F.select(index, {"brand": "Solo"})
    assert F.filtered_search(index, _queries(1)[0], 10, allowed=solo)[0].tolist() == [UNIQUE]
    index.close()


def test_one_in_ten_thousand_and_one_in_a_thousand(rec):
    from amazon_visual.retrieval.filters import filtered_search, select

    solo = select(rec.index, {"brand": "solo"})
    assert solo.count == 1 and solo.ids.tolist() == [UNIQUE]
    for q in _queries(5):
        ids, sims = filtered_search(rec.index, q, 10, allowed=solo)
        assert ids.tolist() == [UNIQUE]  # every item that matches, and only it
        assert abs(float(sims[0]) - float(rec.index.vector(UNIQUE) @ (q / np.linalg.norm(q)))) < 1e-5
    # 10 in 10,000 (the "1 in 1,000"): k = 10 results, exactly those
    sel = select(rec.index, {"category": "red", "brand": "Zed", "min_price": 85, "min_rating": 4.3})
    assert sel.count == 10
    for q in _queries(5):
        ids, _ = filtered_search(rec.index, q, 10, allowed=sel)
        assert len(ids) == 10 and ids.tolist() == brute_force(rec, q, sel.mask, 10)


# ------------------------------------------------------------------ the Recommender
def test_recommender_filters_results_and_attributes(rec):
    asin = "B000000042"
    res = rec.similar_to_asin(asin, k=10, filters={"brand": ["Acme"], "max_price": 40, "min_rating": 3})
    assert len(res) == 10 and asin not in [r["asin"] for r in res]
    for r in res:
        brand, price, rating, count = item_attributes(r["item_id"])
        assert brand.lower() == "acme" and price <= 40 and rating >= 3
        assert (r["brand"], r["price"], r["average_rating"], r["rating_number"]) == (brand, price, rating, count)
        assert isinstance(r["rating_number"], int)
    unfiltered = rec.similar_to_asin(asin, k=50)
    missing = [r for r in unfiltered if r["price"] is None or r["brand"] is None or r["average_rating"] is None]
    assert missing and all(
        r[key] is None or not (isinstance(r[key], float) and math.isnan(r[key]))
        for r in unfiltered
        for key in ("price", "average_rating", "rating_number")
    )


def test_filters_and_same_category_and_min_similarity_combine(rec):
    asin = "B000000007"  # label green (7 % 3 == 1)
    out = rec.recommend(asin=asin, k=10, same_category=True, filters={"min_rating": 2}, min_similarity=0.1)
    assert out["query"]["filters"] == {"min_rating": 2.0} and out["query"]["same_category"] == "green"
    assert out["results"] and all(
        r["label"] == "green" and r["average_rating"] >= 2 and r["similarity"] >= 0.1 for r in out["results"]
    )
    # a category filter that differs from same_category's: nothing can match
    assert rec.similar_to_asin(asin, k=10, same_category=True, filters={"category": "red"}) == []
    assert all(r["label"] == "red" for r in rec.similar_to_asin(asin, k=10, filters={"category": "red"}))
    with pytest.raises(UserError, match="above max_price"):
        rec.similar_to_asin(asin, filters={"min_price": 5, "max_price": 1})


# ------------------------------------------------------------------ the CLI
def test_recommend_cli_filters_table_and_json(index_dir, capsys):
    from amazon_visual.cli import main

    argv = [
        "recommend",
        index_dir,
        "--asin",
        "B000000042",
        "-k",
        "5",
        "--brand",
        "Zed",
        "--brand",
        "Other",
        "--min-price",
        "10",
        "--max-price",
        "60",
        "--min-rating",
        "2",
    ]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["results"]) == 5 and out["query"]["filters"]["brand"] == ["Other", "Zed"]
    for r in out["results"]:
        assert r["brand"] in ("Zed", "Other") and 10 <= r["price"] <= 60 and r["average_rating"] >= 2
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "price" in table and "brand" in table and "rating" in table
    first = out["results"][0]
    assert f"{first['price']:.2f}" in table and first["brand"] in table


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--min-price", "9", "--max-price", "3"], "min_price 9 is above max_price 3"),
        (["--min-rating", "7"], "within [0, 5]"),
        (["--max-price", "nan"], "finite number"),
        (["--category", "purple"], "unknown category 'purple'"),
    ],
)
def test_recommend_cli_bad_filters_one_line_exit_2(index_dir, capsys, extra, words):
    from amazon_visual.cli import main

    assert main(["recommend", index_dir, "--asin", "B000000042"] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.startswith("amazon-visual: error:") and len(err.splitlines()) == 1


def test_recommend_cli_non_number_is_an_argparse_error(index_dir, capsys):
    from amazon_visual.cli import main

    with pytest.raises(SystemExit) as e:
        main(["recommend", index_dir, "--asin", "B000000042", "--min-price", "cheap"])
    assert e.value.code == 2 and "--min-price" in capsys.readouterr().err


@pytest.mark.parametrize("n, dim", [(1, 128), (1023, 128), (1024, 128), (1025, 128), (2500, 1280), (3, 131073)])
def test_dot_rows_is_the_product_at_every_block_boundary(n, dim):
    from amazon_visual.retrieval.layout import dot_rows

    rng = np.random.default_rng(n + dim)
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal(dim).astype(np.float32)
    got = dot_rows(rows, q)
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, rows.astype(np.float64) @ q.astype(np.float64), rtol=1e-4, atol=1e-3)
