"""The service's page in a real headless Chromium (Debian's ``chromium``) against a real uvicorn
server on 127.0.0.1: upload a photo, see k results whose images all load, click a result (and
press Enter on one) to get a new grid, filter by category, browse the catalog, read it at
phone width. Screenshots: build/serve.png, build/serve-phone.png. Skipped only when Chromium or
Playwright is not installed."""

import os

import pytest

from serve_helpers import uvicorn_server
from test_browser import BUILD, browser  # noqa: F401  (the module-scoped Chromium fixture)
from test_index import retrieval_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return retrieval_world(tmp_path_factory)


@pytest.fixture(scope="module")
def server(world):
    with uvicorn_server(world["index"]) as base:
        yield base


ALL_IMAGES_LOADED = """sel => { const imgs = Array.from(document.querySelectorAll(sel));
    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"""


def _grid(page):
    return page.evaluate("""() => Array.from(document.querySelectorAll('#results a.result')).map(a => ({
        asin: a.dataset.asin, cat: a.querySelector('.cat').textContent,
        img: a.querySelector('img') ? a.querySelector('img').naturalWidth : 0}))""")


def test_upload_click_filter_browse(browser, server, world):  # noqa: F811
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    outside = []
    context.on("request", lambda r: None if r.url.startswith((server, "blob:", "data:")) else outside.append(r.url))
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_function(ALL_IMAGES_LOADED, arg="#catalog img", timeout=20000)
    assert page.locator("#catalog li").count() == 12

    asin = page.locator("#catalog a.result").first.get_attribute("data-asin")
    page.set_input_files("#file", os.path.join(world["images"], f"{asin}.jpg"))
    page.wait_for_function("() => document.querySelectorAll('#results li').length === 12", timeout=30000)
    page.wait_for_function(ALL_IMAGES_LOADED, arg="#results img", timeout=20000)
    first = _grid(page)
    assert len(first) == 12 and all(r["img"] > 0 for r in first)
    assert "predicted:" in page.inner_text("#query")

    target = first[1]["asin"]
    page.locator("#results a.result").nth(1).click()
    page.wait_for_function("a => document.querySelector('#query').textContent.includes('product ' + a)", arg=target)
    page.wait_for_function(ALL_IMAGES_LOADED, arg="#results img", timeout=20000)
    second = _grid(page)
    assert len(second) == 12 and target not in [r["asin"] for r in second]
    os.makedirs(BUILD, exist_ok=True)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=os.path.join(BUILD, "serve.png"), full_page=True)

    page.select_option("#category", "green")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#results .cat')).every(c => c.textContent === 'green')"
    )
    assert {r["cat"] for r in _grid(page)} == {"green"}

    # keyboard: focus a result and press Enter
    nxt = page.locator("#results a.result").nth(2)
    nxt_asin = nxt.get_attribute("data-asin")
    nxt.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("a => document.querySelector('#query').textContent.includes('product ' + a)", arg=nxt_asin)

    page.select_option("#browse-category", "blue")
    page.wait_for_function("() => document.querySelector('#page-info').textContent.includes('12 products')")
    assert not errors and not outside, (errors, outside)
    context.close()


def test_phone_width(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_function(ALL_IMAGES_LOADED, arg="#catalog img", timeout=20000)
    asin = page.locator("#catalog a.result").first.get_attribute("data-asin")
    page.locator("#catalog a.result").first.click()
    page.wait_for_function("a => document.querySelector('#query').textContent.includes('product ' + a)", arg=asin)
    page.wait_for_function(ALL_IMAGES_LOADED, arg="#results img", timeout=20000)
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=os.path.join(BUILD, "serve-phone.png"), full_page=False)
    context.close()
