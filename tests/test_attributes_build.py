"""Product attributes (brand, price, average_rating, rating_number) from each metadata format into the
dataset, the build report and an index's items table; missing stays missing (NaN / "" / empty cell)."""

import csv
import json
import math
import os

import pytest
from PIL import Image

from tfrecords_builder.attributes import parse_brand, parse_count, parse_price, parse_rating
from tfrecords_builder.build import build_data
from tfrecords_builder.metadata import read_products

CSS = ".a-box-inner{background-color:#fff;}#alohaBuyBoxWidget .selected{background-color:#fffbf3;}"


@pytest.mark.parametrize(
    "value, want",
    [
        ("$12.99", 12.99),
        ("$10.00 - $20.00", 10.0),
        ("$1,299.00", 1299.0),
        ("12.5", 12.5),
        (" $7 ", 7.0),
        (3.5, 3.5),
        (20, 20.0),
        (0, 0.0),
        ("", None),
        (None, None),
        ("N/A", None),
        ("Currently unavailable.", None),
        (CSS, None),
        ("$", None),
        ("-3", None),
        (-3.0, None),
        (float("nan"), None),
        (float("inf"), None),
        (True, None),
        ([12.99], None),
        ("€12.99", None),
        ("$10.00 - ", None),
        (10**400, None),
        ("$" + "9" * 400, None),
    ],
)
def test_price_parsing(value, want):
    got = parse_price(value)
    assert got == pytest.approx(want) if want is not None else got is None, (value, got)


def test_rating_count_and_brand_parsing():
    assert parse_rating(4.5) == 4.5 and parse_rating("3.9") == 3.9 and parse_rating(0) == 0.0
    assert parse_rating(5.5) is None and parse_rating("N/A") is None and parse_rating(None) is None
    assert parse_count(12) == 12.0 and parse_count("1,234") == 1234.0 and parse_count(0) == 0.0
    assert parse_count(2.5) is None and parse_count(-1) is None and parse_count("") is None
    assert parse_count(10**400) is None and parse_rating(10**400) is None and parse_rating("nan") is None
    assert parse_brand("  Acme&amp;Sons \n Ltd ") == "Acme&Sons Ltd"
    assert parse_brand("") is None and parse_brand("N/A") is None and parse_brand(None) is None
    assert parse_brand(7) is None and parse_brand("Unknown") is None


# --------------------------------------------------------------------------- a catalog of every case
# asin -> (format, record fields beyond asin/title/category/images, expected attributes)
def _cases():
    none = {"brand": None, "price": None, "average_rating": None, "rating_number": None}
    return {
        "P14A": ("2014", {"brand": "Old Brand", "price": 3.5}, dict(none, brand="Old Brand", price=3.5)),
        "P14B": ("2014", {}, dict(none)),
        "P18A": ("2018", {"brand": "Acme", "price": "$12.99"}, dict(none, brand="Acme", price=12.99)),
        "P18B": ("2018", {"brand": "", "price": "$10.00 - $20.00"}, dict(none, price=10.0)),
        "P18C": ("2018", {"brand": "N/A", "price": ""}, dict(none)),
        "P18D": ("2018", {"price": CSS}, dict(none)),
        "P23A": (
            "2023",
            {"store": "Zed", "price": 5, "average_rating": 4.5, "rating_number": 12, "details": {"Brand": "Not this"}},
            {"brand": "Zed", "price": 5.0, "average_rating": 4.5, "rating_number": 12.0},
        ),
        "P23B": (
            "2023",
            {"store": "", "details": {"Brand": "Dee"}, "price": "N/A", "average_rating": 3.0, "rating_number": 0},
            dict(none, brand="Dee", average_rating=3.0, rating_number=0.0),
        ),
        "P23C": ("2023", {"store": None, "price": None, "average_rating": None, "rating_number": None}, dict(none)),
        "P23D": ("2023", {"price": "$8.00"}, dict(none, price=8.0)),  # no store, details, ratings keys at all
    }


def _line(fmt, asin, cls, fields):
    if fmt == "2014":
        return repr(
            {"asin": asin, "title": f"t {asin}", "categories": [[cls]], "imUrl": f"http://x/{asin}.jpg", **fields}
        )
    if fmt == "2018":
        return json.dumps(
            {
                "asin": asin,
                "title": f"t {asin}",
                "category": [cls],
                "main_cat": cls,
                "imageURL": [f"http://x/{asin}.jpg"],
                **fields,
            }
        )
    return json.dumps(
        {
            "parent_asin": asin,
            "title": f"t {asin}",
            "main_category": "AMAZON STORE",
            "categories": [cls],
            "images": [{"large": f"http://x/{asin}.jpg", "variant": "MAIN"}],
            **fields,
        }
    )


def write_attribute_catalog(root, with_images=True):
    """Metadata files of every format holding every attribute case, and (optionally) an images folder.
    Returns ``(files, images_dir, expected {asin: attributes}, classes {asin: class})``."""
    root = str(root)
    lines = {"2014": [], "2018": [], "2023": []}
    classes = {}
    img = os.path.join(root, "images")
    os.makedirs(img, exist_ok=True)
    for i, (asin, (fmt, fields, _)) in enumerate(_cases().items()):
        cls = ("Hats", "Shoes")[i % 2]
        classes[asin] = cls
        lines[fmt].append(_line(fmt, asin, cls, fields))
        if with_images:
            Image.new("RGB", (20, 14), (20 * i, 200 - 15 * i, 90)).save(os.path.join(img, f"{asin}.jpg"))
    files = []
    for fmt, ls in lines.items():
        path = os.path.join(root, f"meta_{fmt}.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(ls) + "\n")
        files.append(path)
    return files, img, {a: c[2] for a, c in _cases().items()}, classes


def _same(got, want):
    for name, w in want.items():
        g = got[name]
        if w is None:
            assert g is None or (isinstance(g, float) and math.isnan(g)) or g == "", (name, got)
        elif isinstance(w, float):
            assert g == pytest.approx(w), (name, got)
        else:
            assert g == w, (name, got)


def test_each_metadata_format_reads_its_attributes(tmp_path):
    files, _, want, _ = write_attribute_catalog(tmp_path, with_images=False)
    products = {p.asin: p for p in read_products(files)}
    assert set(products) == set(want)
    for asin, w in want.items():
        p = products[asin]
        _same({name: getattr(p, name) for name in w}, w)
        assert all(getattr(p, name) is None for name, v in w.items() if v is None), asin  # never 0 or ""
    assert products["P18A"].store in ("Hats", "Shoes")  # main_cat: still the store, used as a category


def _read_examples(data_dir):
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(str(data_dir))
    out = {}
    for split in b.info.splits.keys():
        for ex in tfds.as_numpy(b.as_dataset(split=split)):
            out[ex["asin"].decode()] = ex
    return b, out


def test_dataset_report_and_index_carry_the_attributes(tmp_path):
    files, img, want, classes = write_attribute_catalog(tmp_path)
    out = tmp_path / "data"
    report = build_data(
        files,
        str(out),
        images_dir=img,
        categories=["Hats", "Shoes"],
        image_size=16,
        splits="0.5,0.25,0.25",
        seed=3,
        workers=1,
        progress=False,
    )
    b, examples = _read_examples(out)
    assert str(b.info.version) == "1.1.0"
    assert set(examples) == set(want)
    for asin, w in want.items():
        ex = examples[asin]
        assert ex["brand"].decode() == (w["brand"] or "")
        for name in ("price", "average_rating", "rating_number"):
            v = float(ex[name])
            assert math.isnan(v) if w[name] is None else v == pytest.approx(w[name]), (asin, name, v)

    n = len(want)
    have = {name: sum(w[name] is not None for w in want.values()) for name in report["attributes"]}
    assert have == {"brand": 4, "price": 5, "average_rating": 2, "rating_number": 2}
    assert report["attributes"] == {k: {"count": v, "share": round(v / n, 4)} for k, v in have.items()}
    assert json.loads((out / "build_report.json").read_text())["attributes"] == report["attributes"]
    from tfrecords_builder.report import summary_table

    assert "attributes: brand 4 (40.0%), price 5 (50.0%), average_rating 2 (20.0%)" in summary_table(report)

    # an index built from the dataset: items.csv has the attributes, empty cells where missing
    from amazon_visual.retrieval.index import build_index, read_items
    from test_index import make_run

    run = make_run(str(tmp_path / "run"), ["Hats", "Shoes"], image_size=16, dim=8)
    idx = tmp_path / "index"
    build_index(str(out), str(idx), run_dir=run, trees=2, batch_size=8, progress=False)
    with open(idx / "items.csv", encoding="utf-8", newline="") as f:
        rows = {r["asin"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(want)
    assert rows["P18A"]["brand"] == "Acme" and float(rows["P18A"]["price"]) == pytest.approx(12.99)
    assert rows["P18B"]["brand"] == "" and float(rows["P18B"]["price"]) == 10.0
    assert rows["P23A"]["average_rating"] == "4.5" and rows["P23A"]["rating_number"] == "12"
    assert rows["P23C"]["price"] == "" and rows["P23C"]["average_rating"] == "" and rows["P23C"]["brand"] == ""
    items = read_items(str(idx)).set_index("asin")
    assert math.isnan(items.loc["P14B", "price"]) and items.loc["P14A", "price"] == pytest.approx(3.5)


def test_beam_build_carries_the_attributes(tmp_path):
    pytest.importorskip("apache_beam")
    files, img, want, _ = write_attribute_catalog(tmp_path)
    report = build_data(
        files,
        str(tmp_path / "beam"),
        images_dir=img,
        categories=["Hats", "Shoes"],
        image_size=16,
        splits="1,0,0",
        beam=True,
        progress=False,
        beam_options="--direct_num_workers=1 --direct_running_mode=in_memory",
    )
    _, examples = _read_examples(tmp_path / "beam")
    assert examples["P23A"]["brand"].decode() == "Zed" and float(examples["P23A"]["rating_number"]) == 12.0
    assert examples["P18B"]["brand"].decode() == "" and float(examples["P18B"]["price"]) == 10.0
    assert math.isnan(float(examples["P14B"]["price"]))
    assert report["attributes"]["price"] == {"count": 5, "share": 0.5}


def test_attribute_fields_of_any_json_shape_never_break_a_record():
    """Whatever a record holds in its attribute keys (hypothesis: any JSON value), the product is read
    and each attribute is a valid value or None."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tfrecords_builder.attributes import attributes

    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=12)
        | st.sampled_from(["$1.00", "$2 - $1", "1,000", "4.5", "N/A", ""])
    )
    values = st.recursive(
        scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6
    )
    keys = ("brand", "store", "price", "average_rating", "rating_number", "details")

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.fixed_dictionaries({}, optional={k: values for k in keys}), st.sampled_from(["2014", "2018", "2023"]))
    def check(rec, fmt):
        got = attributes(rec, fmt)
        assert got["brand"] is None or (isinstance(got["brand"], str) and got["brand"])
        for name in ("price", "average_rating", "rating_number"):
            v = got[name]
            assert v is None or (isinstance(v, float) and math.isfinite(v) and v >= 0), (name, v)

    check()
