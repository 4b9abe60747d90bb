"""Metadata readers (2014 / 2018 / 2023, plain and gzipped), labels and splits. No TensorFlow here."""

import os

import pytest

from amazon_visual.errors import UserError
from builder_fixtures import PWNED_LINE, product, write_catalog
from tfrecords_builder.labels import PRESETS, Labeler, read_categories_file, top_categories, unique_names
from tfrecords_builder.metadata import ReadStats, detect_format, read_products
from tfrecords_builder.splits import SPLIT_NAMES, parse_fractions, split_of

PRODUCTS = [
    product("B001", ["Clothing, Shoes &amp; Jewelry", "Shoes", "Boots"], url="http://h/1.jpg"),
    product("B002", ["Home &amp; Kitchen", "Kitchen &amp; Dining", "Cookware"], url="http://h/2.jpg"),
    product("B003", ["Electronics", "Camera &amp; Photo"], url=None),
]


@pytest.mark.parametrize("fmt", ["2014", "2018", "2023"])
@pytest.mark.parametrize("ext", [".json", ".json.gz"])
def test_each_format_plain_and_gzipped(tmp_path, fmt, ext):
    path = write_catalog(tmp_path / f"meta{ext}", fmt, PRODUCTS)
    assert detect_format(path) == fmt
    stats = ReadStats()
    got = list(read_products(path, stats))
    assert [p.asin for p in got] == ["B001", "B002", "B003"]
    assert stats.products == 3 and stats.malformed == 0 and stats.formats == {os.path.basename(path): fmt}
    b1, b2, b3 = got
    assert b1.title == "Product B001 & co"  # HTML entities unescaped
    assert any(path[:3] == ["Clothing, Shoes & Jewelry", "Shoes", "Boots"] for path in b1.paths)
    assert any("Kitchen & Dining" in path for path in b2.paths)
    assert b1.image_urls[0] == "http://h/1.jpg"
    assert b3.image_urls == []


def test_gzip_detected_by_content_not_name(tmp_path):
    path = write_catalog(tmp_path / "meta.jsonl", "2023", PRODUCTS, gz=True)
    assert [p.asin for p in read_products(path)] == ["B001", "B002", "B003"]


def test_malformed_lines_are_counted_with_line_numbers(tmp_path):
    extra = [
        "{'asin': 'B9', 'title': ",
        "not a record at all",
        "[1, 2, 3]",
        "{'title': 'no asin'}",
        "{'asin': 'B010', 'categories': [['Beauty']], 'imUrl': 'http://h/x.jpg'}",
    ]
    path = write_catalog(tmp_path / "meta.json", "2014", PRODUCTS, extra_lines=extra)
    stats = ReadStats()
    got = [p.asin for p in read_products(path, stats)]
    assert got == ["B001", "B002", "B003", "B010"]
    assert stats.malformed == 4
    assert [m["line"] for m in stats.malformed_lines] == [4, 5, 6, 7]


def test_python_literal_is_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = [
        PWNED_LINE,
        "{'asin': __import__('os').system('touch PWNED'), 'title': 'x'}",
        "{'asin': 'B7', 'title': (lambda: open('PWNED', 'w'))}",
    ]
    path = write_catalog(tmp_path / "meta.json", "2014", PRODUCTS, extra_lines=evil)
    stats = ReadStats()
    assert [p.asin for p in read_products(path, stats)] == ["B001", "B002", "B003"]
    assert stats.malformed == 3
    assert not (tmp_path / "PWNED").exists()


def test_reading_is_streamed(tmp_path):
    # a generator: the first product comes before the (huge) rest of the file is parsed
    path = write_catalog(tmp_path / "meta.json", "2018", PRODUCTS * 2000)
    it = read_products(path)
    assert next(it).asin == "B001"
    it.close()


def test_unknown_file_is_a_user_error(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\nworld\n")
    with pytest.raises(UserError, match="no Amazon product record"):
        detect_format(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        list(read_products(str(tmp_path / "missing.json")))


def test_2023_uses_main_category_and_main_image(tmp_path):
    import json

    rec = {
        "parent_asin": "P1",
        "title": "t",
        "main_category": "All Beauty",
        "categories": [],
        "images": [
            {"large": "http://h/side.jpg", "variant": "PT01"},
            {"large": "http://h/main.jpg", "hi_res": "http://h/main_hi.jpg", "variant": "MAIN"},
        ],
    }
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (p,) = read_products(str(path))
    assert p.paths == [["All Beauty"]]
    assert p.image_urls[:2] == ["http://h/main.jpg", "http://h/main_hi.jpg"]


# ------------------------------------------------------------------------------ labels
def test_labels_pick_the_most_specific_match():
    lab = Labeler(PRESETS["seed20"])
    names = PRESETS["seed20"]
    idx, path = lab.match([["Clothing, Shoes & Jewelry", "Shoes", "Boots"]])
    assert names[idx] == "Shoes" and path == "Clothing, Shoes & Jewelry > Shoes > Boots"
    idx, _ = lab.match([["Home & Kitchen"], ["Home &amp; Kitchen", "kitchen & dining", "Pans"]])
    assert names[idx] == "Kitchen & Dining"  # deeper than Home & Kitchen, case-insensitive
    idx, _ = lab.match([["Home & Kitchen", "Bedding"]])
    assert names[idx] == "Home & Kitchen"
    assert lab.match([["Toys & Games", "Puzzles"]]) == (None, "")
    # a class name holding commas matches the whole element only
    idx, _ = lab.match([["Patio, Lawn & Garden", "Grills"]])
    assert names[idx] == "Patio, Lawn & Garden"
    assert lab.match([["Patio", "Lawn & Garden"]]) == (None, "")


def test_seed20_preset_and_categories_file(tmp_path):
    assert len(PRESETS["seed20"]) == 20 and len(set(PRESETS["seed20"])) == 20
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\nArts, Crafts & Sewing\n\nBeauty\n")
    assert read_categories_file(str(f)) == ["Arts, Crafts & Sewing", "Beauty"]
    with pytest.raises(UserError, match="twice"):
        unique_names(["Beauty", "beauty"])


def test_top_categories_counts_top_levels():
    from tfrecords_builder.metadata import Product

    ps = [
        Product("a", paths=[["A", "x"], ["A", "y"]]),
        Product("b", paths=[["B"]]),
        Product("c", paths=[["B"]]),
        Product("d", paths=[["C"]]),
    ]
    names, level, _ = top_categories(ps, 2)
    assert (names, level) == (["B", "A"], 1)


def _dept(i, sub, n=1):
    from tfrecords_builder.metadata import Product

    return [Product(f"{sub}{i}-{k}", paths=[["Clothing, Shoes & Jewelry", sub, "Things"]]) for k in range(n)]


def test_top_categories_of_a_one_department_file_go_one_level_down():
    from tfrecords_builder.metadata import Product

    ps = _dept(0, "Women", 50) + _dept(1, "Men", 30) + _dept(2, "Girls", 12) + _dept(3, "Luggage", 8)
    ps.append(Product("stray", paths=[["Sports & Outdoors", "Golf"]]))  # 1 of 101: not a department
    names, level, counts = top_categories(ps, 3)
    assert (names, level) == (["Women", "Men", "Girls"], 2)
    assert top_categories(ps, 1)[:2] == (["Clothing, Shoes & Jewelry"], 1)
    assert top_categories(ps, 5)[:2] == ([], None)  # no level has 5 categories with a real share
    assert counts.describe(k=2) == (
        "level 1: Clothing, Shoes & Jewelry (100), Sports & Outdoors (1); level 2: Women (50), Men (30), ... (3 more)"
    )


def test_the_store_is_no_level_of_the_category_tree(tmp_path):
    import json

    lines = [
        {
            "parent_asin": f"P{i}",
            "main_category": "AMAZON FASHION",
            "categories": [] if i % 3 == 0 else ["Clothing, Shoes & Jewelry", ["Women", "Men"][i % 2]],
        }
        for i in range(30)
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    ps = list(read_products(str(path)))
    assert ps[0].store == "AMAZON FASHION" and ps[0].paths == [["AMAZON FASHION"]]  # still a class to match
    names, level, _ = top_categories(ps, 2)
    assert (names, level) == (["Men", "Women"], 2)


# ------------------------------------------------------------------------------ splits
def test_splits_are_deterministic_stable_and_proportional():
    fr = parse_fractions("0.8,0.1,0.1")
    asins = [f"B{i:07d}" for i in range(5000)]
    first = {a: split_of(a, 0, fr) for a in asins}
    assert first == {a: split_of(a, 0, fr) for a in asins}
    counts = {s: sum(v == s for v in first.values()) for s in SPLIT_NAMES}
    assert abs(counts["train"] / 5000 - 0.8) < 0.03 and abs(counts["test"] / 5000 - 0.1) < 0.02
    # adding products never moves old ones: the split is a function of (seed, asin) only
    more = asins + [f"X{i}" for i in range(1000)]
    assert all(split_of(a, 0, fr) == first[a] for a in more[:5000])
    assert sum(split_of(a, 1, fr) != first[a] for a in asins) > 500  # the seed matters
    assert {split_of(a, 0, (1.0, 0.0, 0.0)) for a in asins[:200]} == {"train"}


@pytest.mark.parametrize("bad", ["0.8,0.1", "a,b,c", "0.5,0.5,0.5", "-0.1,0.6,0.5"])
def test_bad_split_fractions(bad):
    with pytest.raises(UserError, match="--splits"):
        parse_fractions(bad)
