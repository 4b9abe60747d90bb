"""Live writes reach the service's page, in a real headless Chromium against a real uvicorn server.

A product is PUT through the API (a photo, a distinctive brand and price) on a writable index with a
write token; the page then finds it by its ASIN (``#asin=...``: the query panel shows it, with its
thumbnail) and by its photo (the first card, with its price and brand, its thumbnail loaded), and the
category filter keeps or drops it. After a DELETE through the API the page's next search no longer
shows it and a search by its ASIN says it is unknown. Screenshot: build/serve-live-writes.png.
Skipped only when Chromium or Playwright is not installed."""

import os

from serve_helpers import uvicorn_server
from test_browser import BUILD, browser  # noqa: F401  (the module-scoped Chromium fixture)
from test_live_writes import TOKEN, _auth, _photo, _put_form, world  # noqa: F401  (the writable-index fixture)

ASIN = "LIVEB0RWSR"
BRAND = "Quillfeather & Sons"
PRICE = 123.45

GRID = """() => Array.from(document.querySelectorAll('#results a.result')).map(a => ({
    asin: a.dataset.asin, attrs: (a.querySelector('.attrs') || {}).textContent || '',
    cat: a.querySelector('.cat').textContent,
    img: a.querySelector('img') ? a.querySelector('img').naturalWidth : 0}))"""
FIRST_IMAGE_LOADED = """() => { const i = document.querySelector('#results a.result img');
    return i !== null && i.complete && i.naturalWidth > 0; }"""


def _copy(world, dest):  # noqa: F811
    import shutil

    shutil.copytree(world["writable"], dest)
    return str(dest)


def test_a_live_write_shows_in_the_page_and_a_delete_leaves_it(browser, world, tmp_path):  # noqa: F811
    import httpx

    index_dir = _copy(world, tmp_path / "index")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    photo = _photo(42, color=(200, 40, 40))
    photo_file = tmp_path / "query.jpg"
    photo_file.write_bytes(photo)
    attrs = {
        "title": "Live browser lamp",
        "category": "red",
        "brand": BRAND,
        "price": PRICE,
        "average_rating": 4.5,
        "rating_number": 7,
    }
    with uvicorn_server(index_dir, write_token_file=str(token_file)) as base:
        r = httpx.put(f"{base}/v1/products/{ASIN}", headers=_auth(), timeout=60, **_put_form(photo, **attrs))
        assert r.status_code == 201, r.text
        assert (r.json()["brand"], r.json()["price"]) == (BRAND, PRICE)

        context = browser.new_context(viewport={"width": 1200, "height": 900})
        outside = []
        context.on("request", lambda q: None if q.url.startswith((base, "blob:", "data:")) else outside.append(q.url))
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # by its ASIN: the page's product search answers with the live product as the query
        page.goto(f"{base}/#asin={ASIN}")
        page.wait_for_function(
            "a => document.querySelector('#query').textContent.includes('product ' + a)", arg=ASIN, timeout=30000
        )
        assert "Live browser lamp" in page.inner_text("#query")
        page.wait_for_function(
            "() => { const i = document.querySelector('#query img');"
            " return i !== null && i.complete && i.naturalWidth > 0; }",
            timeout=20000,
        )
        assert page.get_attribute("#query img", "src") == f"/thumbs/{ASIN}.jpg"
        assert ASIN not in [c["asin"] for c in page.evaluate(GRID)]  # a product is not its own look-alike

        # by its photo: the first card, with its price and brand, and its thumbnail
        page.set_input_files("#file", str(photo_file))
        page.wait_for_function(
            "a => { const r = document.querySelector('#results a.result');"
            " return r !== null && r.dataset.asin === a; }",
            arg=ASIN,
            timeout=30000,
        )
        page.wait_for_function(FIRST_IMAGE_LOADED, timeout=20000)
        first = page.evaluate(GRID)[0]
        assert first["asin"] == ASIN and first["cat"] == "red" and first["img"] > 0
        assert first["attrs"] == f"${PRICE:.2f} \u00b7 {BRAND} \u00b7 4.5\u2605 (7)"
        assert page.inner_text("#results a.result >> nth=0").count("Live browser lamp") == 1
        os.makedirs(BUILD, exist_ok=True)
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=os.path.join(BUILD, "serve-live-writes.png"), full_page=False)

        # the category filter applies to it: kept under its own category, gone under another
        page.select_option("#category", "green")
        page.wait_for_function(
            "() => { const c = Array.from(document.querySelectorAll('#results .cat'));"
            " return c.length > 0 && c.every(x => x.textContent === 'green'); }",
            timeout=20000,
        )
        assert ASIN not in [c["asin"] for c in page.evaluate(GRID)]
        page.select_option("#category", "red")
        page.wait_for_function(
            "a => { const r = document.querySelector('#results a.result');"
            " return r !== null && r.dataset.asin === a; }",
            arg=ASIN,
            timeout=20000,
        )

        # DELETE through the API: the page's next search (the same query, rerun) no longer shows it
        assert httpx.delete(f"{base}/v1/products/{ASIN}", headers=_auth(), timeout=60).status_code == 200
        page.select_option("#category", "")
        page.wait_for_function(
            "a => { const c = Array.from(document.querySelectorAll('#results a.result'));"
            " return c.length === 12 && c.every(x => x.dataset.asin !== a) &&"
            " /look-alike/.test(document.querySelector('#status').textContent); }",
            arg=ASIN,
            timeout=20000,
        )
        grid = page.evaluate(GRID)
        assert len(grid) == 12 and all(BRAND not in c["attrs"] for c in grid)
        # and a search by its ASIN says the product is unknown (the API's one line as the page's status)
        assert page.url.endswith(f"#asin={ASIN}")  # the page keeps the product query in its address
        page.reload()
        page.wait_for_function("() => /Error 404/.test(document.querySelector('#status').textContent)", timeout=20000)
        assert ASIN in page.inner_text("#status")
        assert not errors and not outside, (errors, outside)
        context.close()
        assert httpx.get(f"{base}/v1/products/{ASIN}").status_code == 404
        metrics = httpx.get(f"{base}/metrics").text
        assert 'amazon_visual_writes_total{operation="put",outcome="created"} 1.0' in metrics
        assert 'amazon_visual_writes_total{operation="delete",outcome="deleted"} 1.0' in metrics
