"""amazon-visual audit: a small generated catalog with one injected duplicate (a re-encoded, resized
copy under another ASIN) and one moved label; the audit finds both, its CSVs have the issue's
headers, build-data reads them back, bad inputs are one line each, and the page renders in
Chromium (screenshot build/audit.png)."""

import csv
import io
import json
import os

import numpy as np
import pytest

from test_index import make_run

CLASSES = ("red", "green", "blue")
PER_CLASS = 14
ORIGINAL, COPY, MOVED = "A000003", "ZCOPY01", "A010005"  # a red photo, its copy, a green product filed as blue


def _photo(rng, c, size=48):
    """Colour of class ``c`` plus a few random rectangles: each photo distinct, its class plain."""
    from PIL import Image, ImageDraw

    img = rng.integers(0, 40, size=(size, size, 3)).astype(np.int32)
    img[..., c] += 170
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(4):
        x, y = rng.integers(0, size - 12, 2)
        draw.rectangle(
            [int(x), int(y), int(x) + int(rng.integers(6, 12)), int(y) + int(rng.integers(6, 12))],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    return pil


def _catalog(root):
    """DATA_DIR of the generated catalog (and its metadata), with the duplicate and the moved label."""
    from PIL import Image

    from tfrecords_builder.build import build_data

    images = os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    rng = np.random.default_rng(7)
    rows = []
    for c, label in enumerate(CLASSES):
        for i in range(PER_CLASS):
            asin = f"A{c:02d}{i:04d}"
            _photo(rng, c).save(os.path.join(images, f"{asin}.jpg"), quality=95)
            rows.append((asin, "blue" if asin == MOVED else label))
    with Image.open(os.path.join(images, f"{ORIGINAL}.jpg")) as img:
        buf = io.BytesIO()
        img.resize((40, 40)).save(buf, format="JPEG", quality=70)  # re-encoded and resized
    with open(os.path.join(images, f"{COPY}.jpg"), "wb") as f:
        f.write(buf.getvalue())
    rows.append((COPY, "red"))
    meta = os.path.join(root, "meta.jsonl")
    with open(meta, "w", encoding="utf-8") as f:
        for asin, label in rows:
            f.write(
                json.dumps(
                    {
                        "asin": asin,
                        "title": f"{label} product {asin}",
                        "category": ["Clothing, Shoes & Jewelry", "Clothing", label],
                        "imageURL": [f"{asin}.jpg"],
                    }
                )
                + "\n"
            )
    out = os.path.join(root, "data")
    build_data(
        meta,
        out,
        images_dir=images,
        categories=list(CLASSES),
        image_size=48,
        splits=(0.6, 0.2, 0.2),
        seed=1,
        workers=1,
        progress=False,
    )
    return out, meta, images


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from amazon_visual import data
    from amazon_visual.audit.run import audit
    from amazon_visual.retrieval.index import build_index

    root = str(tmp_path_factory.mktemp("audit"))
    data_dir, meta, images = _catalog(root)
    run = make_run(os.path.join(root, "run"), data.class_names(data_dir), dim=32)
    index = os.path.join(root, "index")
    build_index(data_dir, index, run_dir=run, trees=10, batch_size=16, progress=False)
    out = os.path.join(root, "audit")
    summary = audit(index, out, data_dir=data_dir, run_dir=run, progress=False)
    return {
        "root": root,
        "data": data_dir,
        "meta": meta,
        "images": images,
        "run": run,
        "index": index,
        "out": out,
        "summary": summary,
    }


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_finds_the_injected_duplicate_and_the_moved_label(world):
    from amazon_visual.audit.duplicates import DEFAULTS

    out = world["out"]
    dup = _read(os.path.join(out, "duplicates.csv"))
    assert dup[0] == ["group", "asin", "split", "similarity", "representative", "kind"]
    groups = {}
    for g, asin, _split, sim, rep, kind in dup[1:]:
        groups.setdefault(g, []).append((asin, rep, kind, float(sim)))
    assert len(groups) == 1, groups  # the one injected copy, and no other product
    members = next(iter(groups.values()))
    assert sorted(m[0] for m in members) == sorted([ORIGINAL, COPY])
    assert sorted(m[1] for m in members) == ["false", "true"]
    assert {m[2] for m in members} == {"exact"}  # a re-encode: pHash within a few bits
    assert all(0.9 < m[3] <= 1.0001 for m in members)

    mis = _read(os.path.join(out, "misfiled.csv"))
    assert mis[0] == ["asin", "filed", "suggested", "confidence"]
    assert mis[1][:3] == [MOVED, "blue", "green"], mis  # ranked first
    assert len(mis) - 1 <= 3 and 0.5 < float(mis[1][3]) <= 1.0

    leaks = _read(os.path.join(out, "leaks.csv"))
    assert leaks[0] == ["group", "asin", "split"]
    splits = {m[2] for m in dup[1:]}
    assert (len(leaks) == 3) == (len(splits) == 2)

    s = json.load(open(os.path.join(out, "audit.json")))
    assert s["duplicates"]["groups"] == 1 and s["duplicates"]["to_exclude"] == 1
    assert s["misfiled"]["flagged"] == len(mis) - 1
    assert s["thresholds"]["near_aligned"] == DEFAULTS["near_aligned"] and s["photos"] == "dataset"
    assert set(s["timings"]) >= {"candidates", "photos", "second_look", "misfiled", "total"}
    run = s["leaks"]["run"]
    assert (
        run["test_items"] == sum(1 for _ in open(os.path.join(world["index"], "items.csv")) if ",test," in _)
        and 0 <= run["accuracy"] <= 1
    )


def test_build_data_applies_the_reviewed_csvs(world, tmp_path):
    """The round trip: duplicates.csv as --exclude-file drops the copy, misfiled.csv as --relabel-file moves
    the label."""
    from amazon_visual import data
    from tfrecords_builder.build import build_data

    out = str(tmp_path / "data2")
    report = build_data(
        world["meta"],
        out,
        images_dir=world["images"],
        categories=list(CLASSES),
        image_size=48,
        splits=(0.6, 0.2, 0.2),
        seed=1,
        workers=1,
        progress=False,
        exclude_file=os.path.join(world["out"], "duplicates.csv"),
        relabel_file=os.path.join(world["out"], "misfiled.csv"),
    )
    assert report["totals"]["all"] == 3 * PER_CLASS
    names = data.class_names(out)
    labels = {}
    for split in ("train", "validation", "test"):
        for ex in data.load(out, split=split).as_numpy_iterator():
            labels[ex["asin"].decode()] = names[int(ex["label"])]
    dup = _read(os.path.join(world["out"], "duplicates.csv"))
    dropped = [r[1] for r in dup[1:] if r[4] == "false"]
    assert len(dropped) == 1 and dropped[0] not in labels and len(labels) == 3 * PER_CLASS
    assert labels[MOVED] == "green"


def test_cli_json_and_thumbnails_without_data(world, tmp_path, capsys):
    from amazon_visual.cli import main

    assert main(["audit", world["index"], "--out", str(tmp_path / "a"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["photos"] == "thumbnails" and s["duplicates"]["groups"] == 1
    assert s["misfiled"]["flagged"] >= 1 and "run" not in s["leaks"]


def _one_line_error(capsys, argv):
    from amazon_visual.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amazon-visual: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line(world, tmp_path, capsys):
    import shutil

    from amazon_visual import data
    from helpers_training import tiny_dataset

    other = os.path.join(world["root"], "other")
    other_data = tiny_dataset(other, classes=("cyan", "magenta"), per_class=6, size=40)
    other_run = make_run(os.path.join(other, "run"), data.class_names(other_data))
    capsys.readouterr()
    no_emb = str(tmp_path / "no-emb")
    shutil.copytree(world["index"], no_emb)
    os.remove(os.path.join(no_emb, "embeddings.npy"))
    assert "no embeddings" in _one_line_error(capsys, ["audit", no_emb, "--out", str(tmp_path / "o1")])

    err = _one_line_error(capsys, ["audit", world["index"], "--data", other_data, "--out", str(tmp_path / "o2")])
    assert "is not the dataset" in err
    err = _one_line_error(
        capsys, ["audit", world["index"], "--data", world["data"], "--run", other_run, "--out", str(tmp_path / "o3")]
    )
    assert "another dataset" in err
    assert "no manifest.json" in _one_line_error(capsys, ["audit", str(tmp_path), "--out", str(tmp_path / "o4")])
    (tmp_path / "file").write_text("x")
    assert "is a file" in _one_line_error(capsys, ["audit", world["index"], "--out", str(tmp_path / "file")])


def test_search_collapses_duplicate_groups(world, tmp_path):
    """collapse_duplicates: one product per group (none of the query's own), k results still; 400 without groups."""
    import shutil

    from amazon_visual.errors import UserError
    from amazon_visual.retrieval.recommend import Recommender
    from serve_helpers import client_for

    index = str(tmp_path / "index")
    shutil.copytree(world["index"], index)
    shutil.copyfile(os.path.join(world["out"], "duplicates.csv"), os.path.join(index, "duplicates.csv"))
    n = 3 * PER_CLASS + 1
    with Recommender.load(index) as rec:
        plain = [r["asin"] for r in rec.similar_to_asin(ORIGINAL, k=n)]
        assert COPY in plain and len(plain) == n - 1
        own = [r["asin"] for r in rec.recommend(asin=ORIGINAL, k=n, collapse_duplicates=True)["results"]]
        assert COPY not in own and len(own) == n - 2
        other = "A020001"
        both = [r["asin"] for r in rec.recommend(asin=other, k=n, collapse_duplicates=True)["results"]]
        assert len(both) == n - 2 and len({ORIGINAL, COPY} & set(both)) == 1
        top = rec.recommend(asin=other, k=3, collapse_duplicates=True)
        assert len(top["results"]) == 3 and top["query"]["collapse_duplicates"] is True
    with client_for(index) as client:
        r = client.get(f"/v1/products/{ORIGINAL}/similar", params={"k": n, "collapse_duplicates": "true"})
        assert r.status_code == 200 and COPY not in [x["asin"] for x in r.json()["results"]]
        assert r.json()["query"]["collapse_duplicates"] is True
    with client_for(world["index"]) as client:
        r = client.get(f"/v1/products/{ORIGINAL}/similar", params={"collapse_duplicates": "true"})
        assert r.status_code == 400 and "duplicates.csv" in r.json()["detail"]
    with Recommender.load(world["index"]) as rec, pytest.raises(UserError, match="no duplicates.csv"):
        rec.recommend(asin=ORIGINAL, collapse_duplicates=True)


def test_page_renders_in_chromium(world, browser):  # noqa: F811
    from test_browser import BUILD

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("file://" + os.path.join(world["out"], "audit.html"))
    page.wait_for_function(
        """() => { const imgs = Array.from(document.querySelectorAll('img'));
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        timeout=20000,
    )
    assert page.locator(".audit-group").count() == 1
    assert page.locator(".audit-group figure").count() == 2
    text = page.inner_text("#misfiled")
    assert MOVED in text and "suggested: green" in text
    assert "duplicate groups\n1\n2 products, 1 to exclude" in page.inner_text(".cards").lower()
    os.makedirs(BUILD, exist_ok=True)
    page.screenshot(path=os.path.join(BUILD, "audit.png"), full_page=True)
    page.close()
    assert not errors


from test_browser import browser  # noqa: E402,F401  (the module-scoped Chromium fixture)
