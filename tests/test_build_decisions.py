"""build-data --exclude-file / --relabel-file: the audit's reviewed CSVs applied by the next build, counted in
its report; bad files are one-line errors before any work; a changed photo URL refreshes the image cache."""

import json
import os

import pytest

from amazon_visual.cli import main
from amazon_visual.errors import UserError
from builder_fixtures import ImageServer, image_bytes, product, write_catalog
from tfrecords_builder.build import build_data
from tfrecords_builder.decisions import read_exclude_file, read_relabel_file

CLASSES = ["Shoes", "Watches", "Hats"]


@pytest.fixture
def catalog(tmp_path):
    """12 products (4 per class) with images; returns (metadata file, images dir, {asin: class})."""
    img = tmp_path / "images"
    img.mkdir()
    prods, classes = [], {}
    for i in range(12):
        asin, cls = f"A{i:03d}", CLASSES[i % 3]
        (img / f"{asin}.jpg").write_bytes(image_bytes("jpeg"))
        prods.append(product(asin, ["Clothing", cls]))
        classes[asin] = cls
    return write_catalog(tmp_path / "meta.jsonl", "2018", prods), str(img), classes


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _examples(data_dir):
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(str(data_dir))
    names = b.info.features["label"].names
    out = {}
    for split in b.info.splits.keys():
        for ex in tfds.as_numpy(b.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})):
            out[ex["asin"].decode()] = (names[ex["label"]], ex["category"].decode())
    return out


def test_exclude_and_relabel_round_trip(tmp_path, catalog, capsys):
    meta, img, classes = catalog
    dup = _write(
        tmp_path / "duplicates.csv",
        "group,asin,split,similarity,representative,kind\n"
        "0,A000,train,1.0,true,exact\n0,A001,test,0.99,false,exact\n0,A002,train,0.97,0,near\n"
        "1,A003,train,0.95,True,near\n1,GONE1,validation,0.95,no,near\n\n",
    )
    mis = _write(
        tmp_path / "misfiled.csv",
        "asin,filed,suggested,confidence\nA004,Watches,hats,0.91\nA005,Hats,Hats,0.5\n"
        "A001,Watches,Shoes,0.8\nGONE2,Shoes,Watches,0.7\n",
    )
    out = tmp_path / "data"
    rc = main(
        [
            "build-data",
            "--metadata",
            meta,
            "--images-dir",
            img,
            "--out",
            str(out),
            "--category",
            "Shoes",
            "--category",
            "Watches",
            "--category",
            "Hats",
            "--image-size",
            "16",
            "--splits",
            "1,0,0",
            "--workers",
            "1",
            "--no-progress",
            "--json",
            "--exclude-file",
            dup,
            "--relabel-file",
            mis,
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    examples = _examples(out)
    assert set(examples) == set(classes) - {"A001", "A002"}  # the non-representatives; A000, A003 stay
    assert examples["A004"] == ("Hats", "Hats")  # relabelled: the suggested class, named as its category
    assert examples["A005"][0] == "Hats" and examples["A007"][0] == "Watches"
    assert report["drops"]["excluded"] == 2 and report["totals"]["all"] == 10
    dec = report["decisions"]
    assert dec["exclude_file"] == os.path.abspath(dup) and dec["exclude_form"] == "duplicates"
    got = [dec[k] for k in ("exclude_listed", "excluded", "exclude_not_found", "representatives_kept")]
    assert got == [3, 2, 1, 2]
    # A001 is excluded before its relabel is looked at: it counts as not found among the relabels
    got = [dec[k] for k in ("relabel_listed", "relabelled", "relabel_unchanged", "relabel_not_found")]
    assert got == [4, 1, 1, 2]

    # the readable summary says the same
    rc = main(
        [
            "build-data",
            "--metadata",
            meta,
            "--images-dir",
            img,
            "--out",
            str(out),
            "--category",
            "Shoes",
            "--category",
            "Watches",
            "--category",
            "Hats",
            "--image-size",
            "16",
            "--splits",
            "1,0,0",
            "--workers",
            "1",
            "--no-progress",
            "--overwrite",
            "--exclude-file",
            dup,
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert f"excluded: 2 products of 3 listed in {os.path.abspath(dup)} (1 not in the metadata)" in table
    assert "relabelled:" not in table and len(_examples(out)) == 10


def test_a_plain_asin_list_excludes_every_row(tmp_path):
    path = _write(tmp_path / "drop.csv", "\ufeffASIN,note\nB1,x\nB2,\nB1,again\n")
    assert read_exclude_file(path) == (
        ["B1", "B2"],
        {"file": path, "form": "asin list", "listed": 2, "representatives_kept": 0},
    )
    rows, info = read_relabel_file(_write(tmp_path / "m.csv", "suggested,asin\nShoes,B1\nshoes,B1\n"))
    assert rows == [(2, "B1", "Shoes")] and info["listed"] == 1  # the same decision twice is one


@pytest.mark.parametrize(
    "option, text, needle",
    [
        ("--exclude-file", None, "does not exist"),
        ("--exclude-file", "", "is empty"),
        ("--exclude-file", "group,sku\n1,B1\n", "has no column asin"),
        ("--exclude-file", "group,asin,representative\n1,A001,maybe\n", "line 2: representative is 'maybe'"),
        ("--exclude-file", "asin\nA001\n,\n", None),  # a blank row is skipped
        ("--exclude-file", "asin,x\nA001,1\n ,2\n", "line 3: the asin is empty"),
        ("--relabel-file", "asin,filed\nA001,Shoes\n", "has no column suggested"),
        (
            "--relabel-file",
            "asin,suggested\nA001,Shoes\nA002,Toys\nA003,Games\n",
            "line 3: suggested class 'Toys' is not one of this build's classes "
            "(and 1 more rows) (Shoes, Watches, Hats)",
        ),
        (
            "--relabel-file",
            "asin,suggested\nA001,Shoes\nA001,Hats\n",
            "A001 is relabelled 'Hats' here and 'Shoes' on line 2",
        ),
        ("--relabel-file", "asin,suggested\nA001,\n", "line 2: suggested is empty for A001"),
    ],
)
def test_bad_decision_files_are_one_line_errors(tmp_path, catalog, capsys, option, text, needle):
    meta, img, _ = catalog
    path = str(tmp_path / "decisions.csv") if text is None else _write(tmp_path / "decisions.csv", text)
    out = tmp_path / "data"
    args = [
        "build-data",
        "--metadata",
        meta,
        "--images-dir",
        img,
        "--out",
        str(out),
        "--category",
        "Shoes",
        "--category",
        "Watches",
        "--category",
        "Hats",
        "--image-size",
        "16",
        "--workers",
        "1",
        "--no-progress",
        option,
        path,
    ]
    if needle is None:  # a good file: the build runs (checked elsewhere); only the reading is tried here
        assert read_exclude_file(path)[0] == ["A001"]
        return
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amazon-visual: error: ") and "\n" not in err and needle in err, err
    assert path in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "data.tmp-build").exists()  # refused before any work


def test_not_utf8_decision_file(tmp_path, catalog):
    meta, img, _ = catalog
    path = tmp_path / "bad.csv"
    path.write_bytes(b"asin\n\xff\xfe\xfa\n")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        build_data(
            meta, str(tmp_path / "d"), images_dir=img, categories=CLASSES, exclude_file=str(path), progress=False
        )


def test_updated_catalog_reuses_the_cache_and_refreshes_a_changed_photo(tmp_path):
    """A rerun on an updated catalog: unchanged products reuse their cached photo, a new product is
    downloaded, a product whose photo URL changed is downloaded again; the summary says how many."""
    from tfrecords_builder.report import summary_table

    with ImageServer() as srv:
        prods = [product(f"C{i}", ["Clothing", CLASSES[i % 3]], url=srv.url(f"img/jpeg/{i}")) for i in range(6)]
        meta = write_catalog(tmp_path / "meta.jsonl", "2023", prods)
        kw = dict(
            download=True,
            cache_dir=str(tmp_path / "cache"),
            categories=CLASSES,
            image_size=16,
            splits="1,0,0",
            workers=1,
            timeout=2,
            retries=0,
            progress=False,
        )
        first = build_data(meta, str(tmp_path / "d1"), **kw)
        assert (first["image_source"]["downloaded"], first["image_source"]["cached"]) == (6, 0)

        prods[2] = product("C2", ["Clothing", "Hats"], url=srv.url("img/png/new-photo"))  # re-photographed
        prods.append(product("C6", ["Clothing", "Shoes"], url=srv.url("img/jpeg/6")))  # new
        meta = write_catalog(tmp_path / "meta.jsonl", "2023", prods)
        second = build_data(meta, str(tmp_path / "d2"), **kw)
        src = second["image_source"]
        assert (src["cached"], src["downloaded"], src["refreshed"], src["failed"]) == (5, 1, 1, 0)
        assert srv.hits["/img/png/new-photo"] == 1 and srv.hits["/img/jpeg/0"] == 1  # nothing else fetched twice
        ex = _examples_with_url(tmp_path / "d2")
        assert ex["C2"] == srv.url("img/png/new-photo")
        assert "images: 5 reused from the cache, 1 downloaded, 1 downloaded again" in summary_table(second)

        third = build_data(meta, str(tmp_path / "d3"), **kw)  # and now the new photo is the cached one
        assert third["image_source"]["cached"] == 7 and srv.hits["/img/png/new-photo"] == 1


def _examples_with_url(data_dir):
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(str(data_dir))
    return {
        ex["asin"].decode(): ex["image_url"].decode()
        for ex in tfds.as_numpy(b.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()}))
    }
