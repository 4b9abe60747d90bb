"""Filters through the service: /v1/search and /v1/products/{asin}/similar query parameters, products with
their attributes (null when missing, never NaN), bad filters answered 422 JSON while the server goes on
serving, /v1/products and /v1/attributes, and the page's filter controls in headless Chromium."""

import os

import pytest

from serve_helpers import client_for, uvicorn_server
from test_browser import BUILD, browser  # noqa: F401  (the module-scoped Chromium fixture)
from test_filters import item_attributes, write_attribute_index

ASIN = "B000000042"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return write_attribute_index(str(tmp_path_factory.mktemp("filters_serve") / "index"), n=3000, thumbs=True)


@pytest.fixture(scope="module")
def client(index_dir):
    with client_for(index_dir) as c:
        yield c


def _check_match(results, brands=None, min_price=None, max_price=None, min_rating=None):
    for r in results:
        i = int(r["asin"][1:])
        brand, price, rating, count = item_attributes(i)
        got = (r["brand"], r["price"], r["average_rating"], r["rating_number"])
        assert got == (brand or None, price, rating, count)
        assert brands is None or brand.lower() in {b.lower() for b in brands}
        assert min_price is None or price >= min_price
        assert max_price is None or price <= max_price
        assert min_rating is None or rating >= min_rating


def test_similar_and_search_filter_and_show_attributes(client):
    params = [("brand", "Zed"), ("brand", "other"), ("max_price", "60"), ("min_rating", "2.5"), ("k", "8")]
    r = client.get(f"/v1/products/{ASIN}/similar", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 8 and body["query"]["filters"]["brand"] == ["other", "Zed"]
    _check_match(body["results"], brands=["Zed", "Other"], max_price=60, min_rating=2.5)
    r2 = client.post("/v1/search", params=params, json={"asin": ASIN})
    assert r2.status_code == 200 and [x["asin"] for x in r2.json()["results"]] == [x["asin"] for x in body["results"]]
    # unfiltered: some products lack a price, a brand or a rating: null, and never NaN in the JSON text
    r3 = client.get(f"/v1/products/{ASIN}/similar", params={"k": 60})
    assert "NaN" not in r3.text
    res = r3.json()["results"]
    assert any(x["price"] is None for x in res) and any(x["brand"] is None for x in res)
    _check_match(res)
    one = client.get("/v1/products/B000000007").json()
    assert (one["brand"], one["price"], one["average_rating"]) == ("acme", None, 0.7)  # 7 % 7 == 0: no price


def test_one_in_thousands_through_the_api(client):
    r = client.get(
        f"/v1/products/{ASIN}/similar",
        params={"brand": "zed", "min_price": 80, "min_rating": 4, "category": "blue", "k": 50},
    )
    assert r.status_code == 200
    got = [x["asin"] for x in r.json()["results"]]
    expect = [
        f"B{i:09d}"
        for i in range(3000)
        if i % 3 == 2
        and item_attributes(i)[0] == "Zed"
        and (item_attributes(i)[1] or 0) >= 80
        and (item_attributes(i)[2] or 0) >= 4
        and i != 42
    ]
    assert 0 < len(expect) < 50 and sorted(got) == sorted(expect)  # every match, and nothing else


@pytest.mark.parametrize(
    "method, path, params, words",
    [
        ("get", "similar", {"max_prcie": "10"}, "unknown query parameter 'max_prcie'"),
        ("post", "search", {"colour": "red"}, "unknown query parameter 'colour'"),
        ("get", "similar", {"min_price": "50", "max_price": "10"}, "min_price 50 is above max_price 10"),
        ("post", "search", {"min_price": "50", "max_price": "10"}, "min_price 50 is above max_price 10"),
        ("get", "similar", {"min_price": "nan"}, "finite number"),
        ("get", "similar", {"min_price": "-3"}, "must not be negative"),
        ("get", "similar", {"min_rating": "6"}, "within [0, 5]"),
        ("get", "products", {"min_rating": "6"}, "within [0, 5]"),
        ("get", "products", {"brnad": "Zed"}, "unknown query parameter 'brnad'"),
    ],
)
def test_bad_filters_are_422_json_and_the_server_goes_on(client, method, path, params, words):
    url = {"similar": f"/v1/products/{ASIN}/similar", "search": "/v1/search", "products": "/v1/products"}[path]
    kw = {"json": {"asin": ASIN}} if method == "post" else {}
    r = getattr(client, method)(url, params=params, **kw)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
    assert words in r.json()["detail"]
    assert client.get(f"/v1/products/{ASIN}/similar", params={"k": 3}).status_code == 200


def test_not_a_number_is_fastapi_422(client):
    r = client.get(f"/v1/products/{ASIN}/similar", params={"max_price": "cheap"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"] == ["query", "max_price"]


def test_browse_and_attributes(client):
    from amazon_visual.retrieval.filters import parse_filters

    r = client.get("/v1/products", params={"brand": "acme", "max_price": 20, "per_page": 200})
    assert r.status_code == 200
    body = r.json()
    expect = [
        i for i in range(3000) if item_attributes(i)[0].lower() == "acme" and (item_attributes(i)[1] or 1e9) <= 20
    ]
    assert body["total"] == len(expect) and [int(x["asin"][1:]) for x in body["items"]] == expect[:200]
    a = client.get("/v1/attributes").json()
    names = {b["name"]: b["count"] for b in a["brand"]["top"]}
    # "Acme" and "acme" are one brand (shown as its first spelling)
    assert names == {"Acme": 1200, "Zed": 600, "Other": 600} and a["brand"]["distinct"] == 3
    prices = [item_attributes(i)[1] for i in range(3000) if item_attributes(i)[1] is not None]
    assert a["price"] == {"count": len(prices), "min": min(prices), "max": max(prices)}
    assert a["average_rating"]["count"] == 2400 and a["average_rating"]["max"] == 5.0
    assert parse_filters({"min_price": a["price"]["min"]})  # a usable bound


def test_page_shows_controls_only_for_attributes_the_index_has(client, tmp_path):
    html = client.get("/").text
    assert 'id="brand"' in html and 'id="min-price"' in html and 'id="min-rating"' in html
    bare = write_attribute_index(str(tmp_path / "bare"), n=200)
    import pandas as pd

    items = pd.read_csv(os.path.join(bare, "items.csv"), dtype=str, keep_default_na=False)
    items.drop(columns=["brand", "price", "average_rating", "rating_number"]).to_csv(
        os.path.join(bare, "items.csv"), index=False
    )
    with client_for(bare) as c:
        page = c.get("/").text
        assert 'id="brand"' not in page and 'id="min-price"' not in page and 'id="min-rating"' not in page
        res = c.get("/v1/products/B000000042/similar", params={"k": 3}).json()["results"]
        assert all(x["brand"] is None and x["price"] is None for x in res)
        assert c.get("/v1/attributes").json()["brand"]["count"] == 0


# ------------------------------------------------------------------ the page in Chromium
def _grid_asins(page):
    return page.evaluate("() => Array.from(document.querySelectorAll('#results a.result')).map(a => a.dataset.asin)")


def test_page_filter_controls_in_chromium(browser, index_dir):  # noqa: F811
    with uvicorn_server(index_dir) as base:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + f"/#asin={ASIN}")
        page.wait_for_function("() => document.querySelectorAll('#results li').length === 12", timeout=20000)
        assert page.locator("#results .attrs").count() > 0
        page.select_option("#brand", ["Zed", "Other"])
        page.fill("#max-price", "40")
        page.dispatch_event("#max-price", "change")
        page.select_option("#min-rating", "4")
        # the grid of the last query (brand, price and rating), not of one still on its way
        page.wait_for_function(
            """() => { const t = Array.from(document.querySelectorAll('#results .attrs'))
            .map(a => a.textContent.split(' \u00b7 ')); return t.length === 12 && t.every(p => p.length === 3 &&
            parseFloat(p[0].slice(1)) <= 40 && ['Zed', 'Other'].includes(p[1]) && parseFloat(p[2]) >= 4); }""",
            timeout=20000,
        )
        lines = page.evaluate("() => Array.from(document.querySelectorAll('#results .attrs')).map(a => a.textContent)")
        for line in lines:
            price, brand, rating = line.split(" \u00b7 ")
            assert float(price[1:]) <= 40 and brand in ("Zed", "Other") and float(rating.split("\u2605")[0]) >= 4
        for asin in _grid_asins(page):
            b, p, r, _ = item_attributes(int(asin[1:]))
            assert b in ("Zed", "Other") and p <= 40 and r >= 4
        os.makedirs(BUILD, exist_ok=True)
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=os.path.join(BUILD, "serve-filters.png"), full_page=False)
        # min > max: the API's one line shows as the page's error status, and the next good query works
        page.fill("#min-price", "50")
        page.dispatch_event("#min-price", "change")
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('above max_price')")
        page.fill("#min-price", "")
        page.dispatch_event("#min-price", "change")
        page.wait_for_function("() => /look-alike/.test(document.querySelector('#status').textContent)")
        assert not errors, errors
        context.close()
