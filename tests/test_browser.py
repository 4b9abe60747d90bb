"""The report and the recommendation gallery in a real headless Chromium (Debian's ``chromium``).

Every image has loaded (non-zero natural size), every table has rows, and no request
leaves the machine (only ``file:`` and ``data:`` URLs). Screenshots go to
``build/report.png`` and ``build/gallery.png`` (repo root) for people to look at.
Skipped only when Chromium or Playwright is not installed (CI installs both).
"""

import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, "build")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--no-pings",
]


def _chromium():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, path, screenshot=None, width=1280):
    """Load ``path`` from file://; returns (page facts, requested URLs)."""
    context = browser.new_context(viewport={"width": width, "height": 900}, offline=True)
    requested = []

    def on_route(route):
        requested.append(route.request.url)
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", on_route)
    page = context.new_page()
    page.on("request", lambda r: requested.append(r.url))
    url = "file://" + os.path.abspath(path)
    page.goto(url, wait_until="load")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=20000)
    facts = page.evaluate("""() => ({
        images: Array.from(document.images).map(i => ({src: i.src.slice(0, 40), w: i.naturalWidth,
                                                        h: i.naturalHeight})),
        tables: Array.from(document.querySelectorAll('table')).map(t => t.querySelectorAll('tbody tr').length),
        title: document.title,
        links: Array.from(document.querySelectorAll('link[href], script[src]')).map(e => e.href || e.src),
    })""")
    if screenshot:
        os.makedirs(os.path.dirname(screenshot), exist_ok=True)
        page.screenshot(path=screenshot, full_page=True)
    context.close()
    return facts, requested


def check_page(facts, requested, min_images=1, min_tables=0):
    assert len(facts["images"]) >= min_images, facts["images"]
    broken = [i for i in facts["images"] if i["w"] <= 0 or i["h"] <= 0]
    assert not broken, f"images that did not load: {broken}"
    assert len(facts["tables"]) >= min_tables
    assert all(n > 0 for n in facts["tables"]), f"a table without rows: {facts['tables']}"
    assert not facts["links"], f"external stylesheets or scripts: {facts['links']}"
    outside = [u for u in requested if not u.startswith(("file:", "data:"))]
    assert not outside, f"requests that leave the machine: {outside}"


def test_fake_report_in_chromium(browser, tmp_path):
    """Fast: a report over fake stage folders renders with every image and table."""
    from amazon_visual.web.report import write_report
    from test_report import make_fake_experiment

    root = make_fake_experiment(str(tmp_path / "exp"))
    out = write_report(root)
    facts, requested = open_page(browser, out)
    check_page(facts, requested, min_images=3 + 8, min_tables=3)


@pytest.mark.slow
def test_demo_report_and_gallery_in_chromium(browser, demo_dir):
    """The real demo's report and one of its galleries; screenshots under build/."""
    report = os.path.join(demo_dir, "report.html")
    facts, requested = open_page(browser, report, screenshot=os.path.join(BUILD, "report.png"))
    # label distribution, learning curves, confusion matrix, misclassified, 4 galleries of 1 + 5 images
    check_page(facts, requested, min_images=4 + 4 * 6, min_tables=3)

    recs = os.path.join(demo_dir, "recommendations")
    galleries = sorted(f for f in os.listdir(recs) if f.endswith(".html"))
    assert galleries
    facts, requested = open_page(
        browser, os.path.join(recs, galleries[0]), screenshot=os.path.join(BUILD, "gallery.png"), width=1100
    )
    check_page(facts, requested, min_images=1 + 5)
    assert os.path.getsize(os.path.join(BUILD, "report.png")) > 10_000
    assert os.path.getsize(os.path.join(BUILD, "gallery.png")) > 5_000


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from test_demo import demo_output

    return demo_output(tmp_path_factory)
