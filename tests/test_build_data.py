"""build-data end to end: real TFDS datasets from generated catalogs, read back and checked."""

import csv
import json
import os

import pytest

from amazon_visual import data
from amazon_visual.cli import main
from amazon_visual.errors import UserError
from builder_fixtures import (
    PWNED_LINE,
    ImageServer,
    files_under,
    forged_jpeg,
    image_bytes,
    large_jpeg,
    png_bomb,
    product,
    write_catalog,
)
from tfrecords_builder.build import build_data

CLASSES = ["Shoes", "Watches", "Kitchen & Dining"]
PATHS = {
    "Shoes": ["Clothing, Shoes &amp; Jewelry", "Shoes", "Boots"],
    "Watches": ["Clothing, Shoes & Jewelry", "Watches"],
    "Kitchen & Dining": ["Home & Kitchen", "Kitchen &amp; Dining"],
}
EXT = {
    "jpeg": "jpg",
    "png": "png",
    "cmyk": "jpg",
    "palette": "png",
    "rgba": "png",
    "16bit": "png",
    "gray": "png",
    "gif": "gif",
    "webp": "webp",
    "big": "jpeg",
    "la": "png",
    "truncated": "jpg",
    "html": "jpg",
    "empty": "jpg",
}


def read_back(data_dir):
    """{split: {class name: count}} and the examples, read with tfds alone (no package code)."""
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(str(data_dir))
    names = b.info.features["label"].names
    counts, examples = {}, {}
    for split in b.info.splits.keys():
        c = {n: 0 for n in names}
        for ex in tfds.as_numpy(b.as_dataset(split=split)):
            c[names[ex["label"]]] += 1
            examples[ex["asin"].decode()] = dict(ex, split=split)
        counts[split] = c
    return names, counts, examples


def assert_report_matches(report, data_dir):
    names, counts, examples = read_back(data_dir)
    assert names == report["classes"]
    for split in ("train", "validation", "test"):
        assert counts.get(split, {n: 0 for n in names}) == report["counts"][split], split
    assert report["totals"]["all"] == len(examples)
    return examples


@pytest.fixture
def images_catalog(tmp_path):
    """Three metadata files (2014 gz, 2018, 2023) and an images folder; returns (files, images_dir, expect)."""
    img = tmp_path / "images"
    img.mkdir()
    kinds = ["jpeg", "png", "cmyk", "palette", "rgba", "16bit", "gray", "gif", "webp", "big"]
    by_fmt = {"2014": [], "2018": [], "2023": []}
    good = {}
    for i in range(30):
        cls = CLASSES[i % 3]
        fmt = ("2014", "2018", "2023")[i // 10]
        asin = f"A{i:03d}"
        kind = kinds[i % len(kinds)]
        (img / f"{asin}.{EXT[kind]}").write_bytes(image_bytes(kind))
        by_fmt[fmt].append(product(asin, PATHS[cls]))
        good[asin] = cls
    # drops: duplicate ASIN, no class, no image file, undecodable images
    by_fmt["2018"].append(product("A000", PATHS["Watches"]))
    by_fmt["2018"].append(product("N001", ["Toys & Games", "Puzzles"]))
    (img / "N001.jpg").write_bytes(image_bytes("jpeg"))
    by_fmt["2023"].append(product("M001", PATHS["Shoes"]))
    for asin, kind in [("T001", "truncated"), ("H001", "html"), ("E001", "empty")]:
        (img / f"{asin}.{EXT[kind]}").write_bytes(image_bytes(kind))
        by_fmt["2023"].append(product(asin, PATHS["Watches"]))
    files = [
        write_catalog(tmp_path / "meta_2014.json.gz", "2014", by_fmt["2014"], extra_lines=[PWNED_LINE]),
        write_catalog(tmp_path / "meta_2018.json", "2018", by_fmt["2018"], extra_lines=["{not json"]),
        write_catalog(tmp_path / "meta_2023.jsonl", "2023", by_fmt["2023"]),
    ]
    return files, str(img), good


def test_build_from_images_dir_all_formats(tmp_path, images_catalog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files, img, good = images_catalog
    out = tmp_path / "data"
    report = build_data(
        files,
        str(out),
        images_dir=img,
        categories=CLASSES,
        image_size=32,
        splits="0.6,0.2,0.2",
        workers=1,
        progress=False,
    )
    assert not (tmp_path / "PWNED").exists()
    assert {"dataset_info.json", "features.json", "build_report.json", "label_distribution.png"} <= set(os.listdir(out))
    assert not any(n.endswith(".tmp-build") for n in os.listdir(tmp_path))
    assert json.loads((out / "build_report.json").read_text())["counts"] == report["counts"]

    examples = assert_report_matches(report, out)
    assert set(examples) == set(good)
    assert report["drops"]["malformed_line"] == 2
    assert {(m["file"], m["line"]) for m in report["metadata"]["malformed_lines"]} == {
        ("meta_2014.json.gz", 11),
        ("meta_2018.json", 13),
    }
    assert report["metadata"]["formats"] == {
        "meta_2014.json.gz": "2014",
        "meta_2018.json": "2018",
        "meta_2023.jsonl": "2023",
    }
    assert report["drops"]["duplicate_asin"] == 1 and report["drops"]["no_class"] == 1
    assert report["drops"]["no_image_file"] == 1 and report["drops"]["image_failed"] == 3
    assert {f["asin"]: f["stage"] for f in report["failures"]} == {"T001": "image", "H001": "image", "E001": "image"}
    assert all(report["totals"][s] > 0 for s in ("train", "validation", "test"))

    import numpy as np

    for asin, ex in examples.items():
        names = report["classes"]
        assert names[ex["label"]] == good[asin]
        assert ex["image"].ndim == 3 and ex["image"].shape[2] == 3 and max(ex["image"].shape[:2]) <= 32
        assert ex["title"].decode() == f"Product {asin} & co"
        assert ex["image_url"].decode().startswith(asin + ".")
    shoes = next(ex for a, ex in examples.items() if good[a] == "Shoes")
    assert shoes["category"].decode() == "Clothing, Shoes & Jewelry > Shoes > Boots"
    big = examples["A009"]["image"]  # 300 x 150 -> 32 x 16
    assert big.shape[:2] == (16, 32)
    rgba = examples["A004"]["image"]
    assert np.median(rgba) > 240  # transparent composed over white

    # the package reading API
    assert data.class_names(out) == CLASSES
    assert data.num_examples(out, "train") == report["totals"]["train"]
    batch = next(iter(data.load(out, "train", image_size=24, batch_size=4, as_supervised=True)))
    assert tuple(batch[0].shape) == (4, 24, 24, 3) and batch[0].dtype.name == "float32"


def test_splits_are_stable_when_products_are_added(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    prods = []
    for i in range(40):
        prods.append(product(f"S{i:03d}", PATHS[CLASSES[i % 2]]))
        (img / f"S{i:03d}.png").write_bytes(image_bytes("png"))
    meta1 = write_catalog(tmp_path / "m1.json", "2018", prods[:25])
    meta2 = write_catalog(tmp_path / "m2.json", "2018", prods)
    kw = dict(
        images_dir=str(img),
        categories=CLASSES[:2],
        image_size=16,
        workers=1,
        progress=False,
        splits="0.5,0.25,0.25",
        seed=3,
    )
    build_data(meta1, str(tmp_path / "d1"), **kw)
    build_data(meta2, str(tmp_path / "d2"), **kw)
    _, _, ex1 = read_back(tmp_path / "d1")
    _, _, ex2 = read_back(tmp_path / "d2")
    assert len(ex1) == 25 and len(ex2) == 40
    assert all(ex2[a]["split"] == ex1[a]["split"] for a in ex1)


def test_download_build_with_every_kind_of_response(tmp_path):
    with ImageServer() as srv:
        plan = {  # asin -> (url path, expected failure reason prefix or None)
            "G-jpeg": ("img/jpeg/1", None),
            "G-png": ("img/png/1", None),
            "G-cmyk": ("img/cmyk/1", None),
            "G-pal": ("img/palette/1", None),
            "G-rgba": ("img/rgba/1", None),
            "G-16": ("img/16bit/1", None),
            "G-gray": ("img/gray/1", None),
            "G-gif": ("img/gif/1", None),
            "G-webp": ("img/webp/1", None),
            "G-flaky": ("flaky/1/jpeg/1", None),
            "../../x": ("img/jpeg/evil", None),
            "F-404": ("404", "HTTP 404"),
            "F-html": ("html", "not an image"),
            "F-empty": ("img/empty/1", "empty body"),
            "F-trunc": ("img/truncated/1", "undecodable image"),
            "F-bomb": ("img/bomb/1", "decompression bomb"),
            "F-slow": ("slow/4/jpeg/1", "timeout"),
            "F-octet-html": ("octet-html", "not an image"),
        }
        prods = [product(a, PATHS[CLASSES[i % 3]], url=srv.url(p)) for i, (a, (p, _)) in enumerate(plan.items())]
        prods.append(product("F-nourl", PATHS["Shoes"], url=None))
        meta = write_catalog(tmp_path / "meta.jsonl", "2023", prods)
        before = files_under(tmp_path)
        out, cache = tmp_path / "out", tmp_path / "cache"
        report = build_data(
            meta,
            str(out),
            download=True,
            cache_dir=str(cache),
            categories=CLASSES,
            image_size=32,
            splits="1,0,0",
            workers=2,
            timeout=1.5,
            retries=1,
            backoff=0.01,
            progress=False,
        )
        new = files_under(tmp_path) - before
        assert all(f.startswith(("out" + os.sep, "cache" + os.sep)) for f in new), new

        examples = assert_report_matches(report, out)
        good = {a for a, (_, why) in plan.items() if why is None}
        assert set(examples) == good
        assert examples["G-png"]["image_url"].decode() == srv.url("img/png/1")
        reasons = {f["asin"]: f["reason"] for f in report["failures"]}
        for asin, (_, why) in plan.items():
            if why:
                assert reasons[asin].startswith(why), (asin, reasons[asin])
        assert report["drops"]["no_image_url"] == 1
        assert srv.hits["/404"] == 1 and srv.hits["/flaky/1/jpeg/1"] == 2
        assert data.splits(out) == ["train"] and data.num_examples(out, "test") == 0
        assert report["image_source"]["downloaded"] == len(good) + 3  # truncated, bomb, octet-html download fine

        # a rerun reuses the cache: nothing good is fetched again
        good_paths = {"/" + p for a, (p, why) in plan.items() if why is None}
        hits = {k: v for k, v in srv.hits.items() if k in good_paths}
        report2 = build_data(
            meta,
            str(out),
            download=True,
            cache_dir=str(cache),
            categories=CLASSES,
            image_size=32,
            splits="1,0,0",
            workers=1,
            timeout=1.5,
            retries=0,
            overwrite=True,
            progress=False,
        )
        assert report2["image_source"]["cached"] == len(good) + 3
        assert report2["counts"] == report["counts"]
        assert {k: v for k, v in srv.hits.items() if k in good_paths} == hits  # nothing good fetched again
        assert srv.hits["/404"] == 2 and srv.hits["/html"] == 2  # the failed downloads are tried again


def test_out_folder_guards(tmp_path, images_catalog, capsys):
    files, img, _ = images_catalog
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        build_data(files, str(out), images_dir=img, categories=CLASSES, progress=False)
    with pytest.raises(UserError, match="holds no dataset"):
        build_data(files, str(out), images_dir=img, categories=CLASSES, overwrite=True, progress=False)
    assert (out / "mine.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="exactly one image source"):
        build_data(files, str(tmp_path / "o"), categories=CLASSES, progress=False)
    with pytest.raises(UserError, match="name the classes"):
        build_data(files, str(tmp_path / "o"), images_dir=img, progress=False)
    assert (
        main(["build-data", "--metadata", files[0], "--images-dir", img, "--out", str(out), "--category", "Shoes"]) == 2
    )
    err = capsys.readouterr().err
    assert "amazon-visual: error: --out" in err and "Traceback" not in err
    # the reading API on a folder that is no dataset
    for call in (lambda: data.load(out), lambda: data.class_names(out), lambda: data.num_examples(out, "train")):
        with pytest.raises(UserError, match="is not an amazon-visual dataset: run amazon-visual build-data first"):
            call()
    (out / "dataset_info.json").write_text('{"name": "mnist"}')
    with pytest.raises(UserError, match="not an amazon-visual dataset"):
        data.class_names(out)


def test_cli_json_categories_file_and_class_limits(tmp_path, images_catalog, capsys):
    files, img, good = images_catalog
    cats = tmp_path / "classes.txt"
    cats.write_text("Shoes\nWatches\nKitchen & Dining\nPatio, Lawn & Garden\n")
    out = tmp_path / "d"
    rc = main(
        [
            "build-data",
            "--metadata",
            files[0],
            "--metadata",
            files[1],
            "--metadata",
            files[2],
            "--images-dir",
            img,
            "--out",
            str(out),
            "--categories-file",
            str(cats),
            "--min-per-class",
            "1",
            "--max-per-class",
            "6",
            "--image-size",
            "16",
            "--workers",
            "1",
            "--no-progress",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON document
    assert report["classes"] == CLASSES  # Patio, Lawn & Garden has no product: dropped
    assert report["dropped_classes"] == {"Patio, Lawn & Garden": 0}
    per_class = {c: sum(report["counts"][s][c] for s in report["counts"]) for c in CLASSES}
    assert all(n <= 6 for n in per_class.values())
    assert report["drops"]["over_max_per_class"] == 33 - 18  # 10 + 10 + 13 usable products
    assert_report_matches(report, out)

    # the seed20 preset, a readable table without --json, --overwrite of a dataset
    rc = main(
        [
            "build-data",
            "--metadata",
            files[1],
            "--metadata",
            files[2],
            "--images-dir",
            img,
            "--out",
            str(out),
            "--preset",
            "seed20",
            "--min-per-class",
            "1",
            "--image-size",
            "16",
            "--workers",
            "1",
            "--no-progress",
            "--overwrite",
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "total" in table and "Kitchen & Dining" in table and "{" not in table
    assert data.class_names(out) == ["Kitchen & Dining", "Watches", "Shoes"]  # seed20 order, deepest match


def test_beam_builds_the_same_dataset(tmp_path, images_catalog):
    pytest.importorskip("apache_beam")
    files, img, good = images_catalog
    kw = dict(images_dir=img, categories=CLASSES, image_size=16, splits="0.6,0.2,0.2", progress=False)
    local = build_data(files, str(tmp_path / "local"), workers=1, **kw)
    beam = build_data(
        files,
        str(tmp_path / "beam"),
        beam=True,
        beam_options="--direct_num_workers=2 --direct_running_mode=multi_threading",
        **kw,
    )
    assert beam["beam"] and beam["counts"] == local["counts"]
    assert sorted(f["asin"] for f in beam["failures"]) == ["E001", "H001", "T001"]
    examples = assert_report_matches(beam, tmp_path / "beam")
    assert set(examples) == set(good)


@pytest.mark.slow
def test_integration_clothing_small(tmp_path):
    from helpers_training import CLOTHING_SMALL as root

    if not os.path.isdir(root):
        pytest.skip("clothing-small is not available")
    with open(os.path.join(root, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[::3]  # ~1260 photos keep the test short
    img = tmp_path / "images"
    img.mkdir()
    prods = []
    for r in rows:
        asin = os.path.splitext(r["image"])[0]
        os.symlink(os.path.join(root, "images", r["image"]), img / r["image"])
        prods.append(product(asin, ["Clothing, Shoes & Jewelry", "Clothing", r["label"]]))
    meta = write_catalog(tmp_path / "meta_Clothing.json.gz", "2014", prods)
    classes = sorted({r["label"] for r in rows})
    out = tmp_path / "clothing"
    report = build_data(
        meta, str(out), images_dir=str(img), categories=classes, image_size=64, workers=2, progress=False
    )
    assert report["totals"]["all"] == len(rows) and not report["failures"]
    assert_report_matches(report, out)
    for split in ("train", "validation", "test"):
        n = sum(1 for _ in data.load(out, split, image_size=64))
        assert n == data.num_examples(out, split) == report["totals"][split] > 0
    frac = report["totals"]["train"] / len(rows)
    assert 0.7 < frac < 0.9


def test_split_whose_images_all_fail_and_top_categories(tmp_path):
    from tfrecords_builder.splits import split_of

    img = tmp_path / "images"
    img.mkdir()
    prods, bad = [], []
    for i in range(16):
        asin = f"R{i:03d}"
        prods.append(product(asin, [["Sports", "Toys", "Sports"][i % 3], "Things"]))
        if split_of(asin, 0, (0.5, 0.5, 0.0)) == "validation":
            bad.append(asin)
            (img / f"{asin}.jpg").write_bytes(image_bytes("truncated"))
        else:
            (img / f"{asin}.jpg").write_bytes(image_bytes("jpeg"))
    assert 0 < len(bad) < 16
    prods.append(product("R999", ["Books"]))
    (img / "R999.jpg").write_bytes(image_bytes("jpeg"))
    meta = write_catalog(tmp_path / "meta.json", "2018", prods)
    out = tmp_path / "d"
    report = build_data(
        meta,
        str(out),
        images_dir=str(img),
        top_categories=2,
        image_size=16,
        splits="0.5,0.5,0",
        workers=1,
        progress=False,
    )
    assert report["classes"] == ["Sports", "Toys"] and report["category_level"] == 1
    assert sorted(f["asin"] for f in report["failures"]) == sorted(bad)
    assert report["totals"]["validation"] == 0 and report["totals"]["train"] == 16 - len(bad)
    assert any("validation has no example" in w for w in report["warnings"])
    assert data.splits(out) == ["train"]
    assert_report_matches(report, out)


def _one_department(tmp_path, n=36):
    """A meta_Clothing-like file: every product under Clothing, Shoes & Jewelry, then Women/Men/Girls."""
    img = tmp_path / "images"
    img.mkdir()
    prods = []
    for i in range(n):
        asin = f"C{i:03d}"
        sub = ["Women", "Women", "Men", "Girls"][i % 4]
        prods.append(product(asin, ["Clothing, Shoes &amp; Jewelry", sub, ["Tops", "Shoes"][i % 2]]))
        (img / f"{asin}.jpg").write_bytes(image_bytes("jpeg"))
    return write_catalog(tmp_path / "meta_Clothing.json.gz", "2018", prods), str(img)


def test_top_categories_of_a_one_department_file(tmp_path, capsys):
    meta, img = _one_department(tmp_path)
    out = tmp_path / "d"
    rc = main(
        [
            "build-data",
            "--metadata",
            meta,
            "--images-dir",
            img,
            "--out",
            str(out),
            "--top-categories",
            "3",
            "--image-size",
            "16",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "classes: the most frequent categories at level 2 of the category paths" in capsys.readouterr().out
    report = json.loads((out / "build_report.json").read_text())
    assert report["classes"] == ["Women", "Girls", "Men"] and report["category_level"] == 2  # ties by name
    assert report["class_source"] == "top 3"
    names, counts, _ = read_back(out)
    assert {n: sum(c[n] for c in counts.values()) for n in names} == {"Women": 18, "Men": 9, "Girls": 9}


def test_top_categories_below_two_is_a_user_error(tmp_path):
    meta, img = _one_department(tmp_path)
    for n in (1, 0, -3):
        with pytest.raises(UserError, match=f"--top-categories {n}: a dataset needs at least 2 classes, give N >= 2"):
            build_data(
                meta, str(tmp_path / "d"), images_dir=img, top_categories=n, image_size=16, workers=1, progress=False
            )
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "how,needle",
    [
        (
            dict(top_categories=4),
            "--top-categories 4: no level of the category paths has 4 categories (level 1: "
            "Clothing, Shoes & Jewelry (36); level 2: Women (18), Girls (9), Men (9)): pass a "
            "smaller N",
        ),
        (dict(categories=["Women", "Boys"]), "--category: fewer than 2 classes have products (Women (18), Boys (0))"),
        (
            dict(categories_file="cats.txt"),
            "--categories-file cats.txt: fewer than 2 classes have products (Men (9), Luggage (0))",
        ),
        (dict(categories=["Women", "Girls"], min_per_class=10), "(Women (18); dropped by --min-per-class: Girls (9))"),
    ],
)
def test_fewer_than_two_classes_is_a_user_error(tmp_path, monkeypatch, how, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cats.txt").write_text("Men\nLuggage\n")
    meta, img = _one_department(tmp_path)
    with pytest.raises(UserError) as e:
        build_data(meta, str(tmp_path / "d"), images_dir=img, image_size=16, workers=1, progress=False, **how)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    assert "--category NAME" in msg and "--categories-file FILE" in msg
    if "fewer than 2" in msg:
        assert "level 2: Women (18), Girls (9), Men (9)" in msg  # the categories found, to choose from
    assert sorted(os.listdir(tmp_path)) == ["cats.txt", "images", "meta_Clothing.json.gz"]  # nothing written


def test_two_classes_that_lose_their_images_is_a_user_error(tmp_path):
    meta, img = _one_department(tmp_path, n=12)
    for name in os.listdir(img):
        if int(name[1:4]) % 4 == 2:  # every Men photo is broken
            (tmp_path / "images" / name).write_bytes(image_bytes("truncated"))
    with pytest.raises(
        UserError,
        match=r"fewer than 2 classes have products with a usable image \(Women \(6\), "
        r"Men \(0\)\)",
    ):
        build_data(
            meta,
            str(tmp_path / "d"),
            images_dir=img,
            categories=["Women", "Men"],
            image_size=16,
            workers=1,
            progress=False,
        )
    assert sorted(os.listdir(tmp_path)) == ["images", "meta_Clothing.json.gz"]


def test_every_bad_record_and_image_is_counted_in_the_report(tmp_path, monkeypatch):
    from tfrecords_builder import metadata

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(metadata, "MAX_LINE_CHARS", 10_000)
    img = tmp_path / "images"
    img.mkdir()
    good = {f"G{i}": CLASSES[i % 2] for i in range(10)}
    prods = [product(a, PATHS[c]) for a, c in good.items()]
    prods[0]["title"] = "odd \ud800 title \x00 ok"  # a lone surrogate (from a JSON escape) and a NUL
    for a in good:
        (img / f"{a}.png").write_bytes(image_bytes("png"))
    (img / "G1.png").unlink()
    (img / "G1.jpg").write_bytes(large_jpeg(10954, 8216))  # 90 MP: decoded at 1/8, kept
    bad_images = {
        "B1": png_bomb(9_000, 9_000),
        "B2": forged_jpeg(65_000, 65_000),
        "B3": b"\x89PNG\r\n\x1a\nrandom",
        "B4": bytes(range(256)) * 4,
    }
    for a, payload in bad_images.items():
        (img / f"{a}.png").write_bytes(payload)
        prods.append(product(a, PATHS["Watches"]))
    bad_lines = [
        PWNED_LINE,
        '{"asin": ["B0"], "category": ["Shoes"]}',
        '{"asin": "Z1", "category": ["Shoes"]',
        "\x00\x01\x02 binary junk",
        "[1, 2, 3]",
        '{"title": "no asin"}',
        "{" + "x" * 20_000 + "}",
        '{"asin": {"nested": 1}}',
        '\ufeff{"asin": "Z2"' + ', "x": ' * 3,
    ]
    meta = write_catalog(tmp_path / "meta.json", "2018", prods, extra_lines=bad_lines)
    text = open(meta, encoding="utf-8", errors="surrogatepass").read()
    with open(meta, "wb") as f:  # json.dumps escaped the surrogate; keep it as a JSON escape
        f.write(text.encode("utf-8", "surrogatepass"))
    out = tmp_path / "d"
    report = build_data(
        meta,
        str(out),
        images_dir=str(img),
        categories=CLASSES[:2],
        image_size=32,
        splits="1,0,0",
        workers=1,
        progress=False,
    )
    assert not (tmp_path / "PWNED").exists()
    assert report["drops"]["malformed_line"] == report["metadata"]["malformed"] == len(bad_lines)
    assert [m["line"] for m in report["metadata"]["malformed_lines"]] == list(range(15, 15 + len(bad_lines)))
    assert report["drops"]["image_failed"] == len(bad_images)
    reasons = {f["asin"]: f["reason"] for f in report["failures"]}
    assert reasons["B1"] == reasons["B2"] == "decompression bomb (too many pixels)"
    assert set(reasons) == set(bad_images)
    assert sum(report["failure_reasons"].values()) == len(bad_images)
    examples = assert_report_matches(report, out)
    assert set(examples) == set(good)
    assert examples["G0"]["title"].decode() == "odd ? title \x00 ok"
    assert examples["G1"]["image"].shape == (24, 32, 3)
