"""The build plan on disk (tfrecords_builder/plan.py): same choices as in memory, memory that does not
grow with the catalog."""

import gzip
import json
import os
import tracemalloc
from collections import Counter

from tfrecords_builder import build
from tfrecords_builder.labels import CategoryCounts, Labeler
from tfrecords_builder.metadata import ReadStats
from tfrecords_builder.plan import PlanStore
from tfrecords_builder.splits import unit_hash


def _store(tmp_path, name="plan.sqlite"):
    return PlanStore(str(tmp_path / name))


def _add(store, asin, label, split="train", seed=0):
    store.add(
        asin,
        f"title {asin}",
        f"cat{label}",
        label,
        f"/img/{asin}.jpg",
        f"http://x/{asin}.jpg",
        [f"http://x/{asin}.jpg"],
        split,
        unit_hash(seed, asin, "cap"),
    )


def test_duplicates_image_files_and_order(tmp_path):
    s = _store(tmp_path)
    assert s.first_sight("A") and s.first_sight("B") and not s.first_sight("A")
    s.add_image_files([("A", "/d/A.png", 2), ("A", "/d/A.jpg", 0), ("A", "/d/A.webp", 3), ("B", "/d/B.gif", 4)])
    assert s.image_file("A") == "/d/A.jpg" and s.image_file("B") == "/d/B.gif" and s.image_file("C") is None
    for i, asin in enumerate(["Z9", "A1", "M5", "B2"]):
        _add(s, asin, i % 2, "train" if i < 3 else "test")
    assert [it["asin"] for it in s.items()] == ["Z9", "A1", "M5", "B2"]  # metadata order, not sorted
    assert [it["asin"] for it in s.items("train")] == ["Z9", "A1", "M5"] and s.count("test") == 1
    s.close()


def test_cap_drop_and_remap_match_the_in_memory_rules(tmp_path):
    s = _store(tmp_path)
    asins = [f"P{i:04d}" for i in range(300)]
    for i, a in enumerate(asins):
        _add(s, a, i % 3)
    assert s.per_label() == Counter({0: 100, 1: 100, 2: 100})
    s.drop_labels([1])
    s.remap = {0: 0, 2: 1}
    assert s.cap_label(2, 10) == 90
    # the in-memory rule: the first 10 by (cap hash, metadata order)
    want = sorted([a for i, a in enumerate(asins) if i % 3 == 2], key=lambda a: unit_hash(0, a, "cap"))[:10]
    got = [it for it in s.items() if it["label"] == 1]
    assert sorted(it["asin"] for it in got) == sorted(want)
    assert all(it["category"] == "cat2" for it in got) and s.count() == 110
    s.close()


def test_downloads_applied_while_the_plan_is_read(tmp_path):
    s = _store(tmp_path)
    for i in range(5000):  # more than a page: results are written between pages
        _add(s, f"A{i}", 0)
    s.load_known_urls([("A1", "http://old"), ("A1", "http://newer")])
    assert s.known_url("A1") == "http://newer" and s.known_url("A2") is None
    n = 0
    for asin, urls in s.download_tasks():
        n += 1
        ok = int(asin[1:]) % 7 != 0
        s.fetched(asin, f"/cache/{asin}" if ok else None, urls[0] + "?2" if ok else urls[0])
    assert n == 5000
    s.apply_downloads()
    items = list(s.items())
    assert len(items) == 5000 - len(range(0, 5000, 7))
    assert items[0] == {
        "asin": "A1",
        "title": "title A1",
        "category": "cat0",
        "label": 0,
        "source": "/cache/A1",
        "image_url": "http://x/A1.jpg?2",
        "brand": None,
        "price": None,
        "average_rating": None,
        "rating_number": None,
    }
    s.image_failed("A1")
    s.drop_failed()
    assert s.count() == len(items) - 1
    path = tmp_path / "train.jsonl"
    assert s.export_split("train", str(path)) == len(items) - 1
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["asin"] == "A2" and len(lines) == len(items) - 1
    s.close()


def _catalog(path, n):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(n):
            cat = ["Shirts", "Shoes", "Hats"][i % 3]
            f.write(
                json.dumps(
                    {
                        "parent_asin": f"B{i:09d}",
                        "title": f"A product with a longer title, number {i}",
                        "categories": ["Clothing", cat],
                        "main_category": "Clothing",
                        "images": [{"large": f"http://img.example/{i}/large.jpg"}],
                    }
                )
                + "\n"
            )
            if i % 50 == 0:  # a duplicate now and then
                f.write(
                    json.dumps(
                        {
                            "parent_asin": f"B{i:09d}",
                            "title": "dup",
                            "categories": ["Clothing", cat],
                            "images": [{"large": "http://img.example/dup.jpg"}],
                        }
                    )
                    + "\n"
                )


def _select_peak(tmp_path, n):
    meta = str(tmp_path / f"meta{n}.jsonl.gz")
    _catalog(meta, n)
    store = _store(tmp_path, f"plan{n}.sqlite")
    drops = Counter()
    tracemalloc.start()
    try:
        build._select(
            [meta],
            Labeler(["Shirts", "Shoes", "Hats"]),
            store,
            None,
            0,
            (0.8, 0.1, 0.1),
            ReadStats(),
            drops,
            False,
            CategoryCounts(),
        )
        assert store.count() == n and drops["duplicate_asin"] == len(range(0, n, 50))
        assert sum(1 for _ in store.items("train")) == store.count("train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()
    return peak


def test_selection_memory_does_not_grow_with_the_catalog(tmp_path):
    """Selecting 4x the products must not take 4x the Python memory: the plan is on disk. (Kept in
    memory, as before, the plan took about 660 bytes per product: 26 MB for 40,000 products.)
    Measured here: about 1.6 MB at 20,000, 40,000 and 60,000 products alike."""
    _select_peak(tmp_path, 500)  # first use: imports and caches
    small, large = _select_peak(tmp_path, 10_000), _select_peak(tmp_path, 40_000)
    assert large < small + 2 * 1024 * 1024, (small, large)
    assert large < 5 * 1024 * 1024, large


def _written_files(data_dir):
    """{file name: bytes} of the dataset's TFRecord shards."""
    out = {}
    for name in sorted(os.listdir(data_dir)):
        if ".tfrecord" in name:
            with open(os.path.join(data_dir, name), "rb") as f:
                out[name] = f.read()
    return out


def test_shuffle_buffer_spills_to_disk_and_writes_the_same_dataset(tmp_path, monkeypatch):
    """With no shuffle memory TFDS's writer spills every example to its bucket files; the shards it
    writes are byte for byte those of a build that shuffled in memory, and TFDS's constant is put back."""
    from PIL import Image
    from tensorflow_datasets.core import shuffle

    img = tmp_path / "images"
    img.mkdir()
    lines = []
    for i in range(40):
        asin = f"B{i:04d}"
        Image.new("RGB", (24, 18), (i * 6, 255 - i * 6, (i * 37) % 256)).save(img / f"{asin}.jpg")
        lines.append(
            json.dumps(
                {
                    "parent_asin": asin,
                    "title": f"t{i}",
                    "main_category": ("Shoes", "Hats")[i % 2],
                    "categories": [("Shoes", "Hats")[i % 2]],
                    "images": [{"large": f"http://x/{asin}.jpg"}],
                }
            )
        )
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join(lines) + "\n")
    spilled = Counter()
    add = shuffle._Bucket.add

    def counting_add(self, key, data):
        spilled["examples"] += 1
        return add(self, key, data)

    monkeypatch.setattr(shuffle._Bucket, "add", counting_add)
    default = shuffle.MAX_MEM_BUFFER_SIZE
    kw = dict(images_dir=str(img), categories=["Shoes", "Hats"], image_size=16, workers=1, progress=False)
    build.build_data(str(meta), str(tmp_path / "in_memory"), **kw)
    assert spilled["examples"] == 0
    build.build_data(str(meta), str(tmp_path / "spilled"), shuffle_buffer_mb=0, **kw)
    assert spilled["examples"] == 40  # every example went through a bucket file
    assert shuffle.MAX_MEM_BUFFER_SIZE == default
    a, b = _written_files(tmp_path / "in_memory"), _written_files(tmp_path / "spilled")
    assert a and a == b


def test_negative_shuffle_buffer_is_a_user_error(tmp_path):
    import pytest

    from amazon_visual.errors import UserError

    meta = tmp_path / "meta.jsonl"
    meta.write_text("")
    (tmp_path / "img").mkdir()
    for bad in (-1, float("nan"), float("inf"), "lots", None):
        with pytest.raises(UserError, match="--shuffle-buffer-mb"):
            build.build_data(
                str(meta),
                str(tmp_path / "out"),
                images_dir=str(tmp_path / "img"),
                categories=["a", "b"],
                shuffle_buffer_mb=bad,
                progress=False,
            )


def test_shuffle_buffer_of_overlapping_builds_comes_back_to_tfds_default():
    from tensorflow_datasets.core import shuffle

    default = shuffle.MAX_MEM_BUFFER_SIZE
    first, second = build.tfds_shuffle_buffer(1), build.tfds_shuffle_buffer(2)
    first.__enter__()
    second.__enter__()
    assert shuffle.MAX_MEM_BUFFER_SIZE == 2 << 20
    first.__exit__(None, None, None)  # the first build ends while the second runs: its value stays
    assert shuffle.MAX_MEM_BUFFER_SIZE == 2 << 20
    second.__exit__(None, None, None)
    assert shuffle.MAX_MEM_BUFFER_SIZE == default
