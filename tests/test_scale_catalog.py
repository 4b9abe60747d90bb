"""The synthetic catalog of the scale benchmarks: 2023-format metadata the builder reads, photos
from a folder or a loopback HTTP server, deterministic, learnable classes."""

import gzip
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import synthetic_catalog as sc  # noqa: E402


def test_catalog_is_deterministic_and_served_over_loopback(tmp_path):
    paths = sc.write_catalog(str(tmp_path / "cat"), 40, classes=4, px=24, base_url="http://127.0.0.1:1")
    with gzip.open(paths["metadata"], "rt") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 40 and rows[3]["parent_asin"] == "S000000003"
    assert rows[3]["categories"] == [sc.TOP, sc.class_names(4)[sc.class_of(3, 4)]]
    assert open(paths["classes"]).read().split("\n")[:4] == sc.class_names(4)
    assert len(os.listdir(paths["images_dir"])) == 40
    np.testing.assert_array_equal(sc.image(7, 4, 24), sc.image(7, 4, 24))
    server, url = sc.serve(classes=4, px=24)
    try:
        body = urllib.request.urlopen(f"{url}/S000000007.jpg", timeout=10).read()
        assert body == open(os.path.join(paths["images_dir"], "S000000007.jpg"), "rb").read()
        try:
            urllib.request.urlopen(f"{url}/nope.png", timeout=10)
            raise AssertionError("an unknown path must be a 404")
        except urllib.error.HTTPError as e:
            assert e.code == 404
    finally:
        server.shutdown()


def test_builder_reads_the_catalog_and_downloads_its_photos(tmp_path):
    from tfrecords_builder.build import build_data

    server, url = sc.serve(classes=3, px=24)
    try:
        paths = sc.write_catalog(str(tmp_path / "cat"), 60, classes=3, px=24, images="http", base_url=url)
        report = build_data(
            paths["metadata"],
            str(tmp_path / "data"),
            download=True,
            categories_file=paths["classes"],
            image_size=24,
            workers=1,
            progress=False,
        )
    finally:
        server.shutdown()
    assert report["totals"]["all"] == 60 and report["metadata"]["formats"] == {"meta.jsonl.gz": "2023"}
    assert report["classes"] == sc.class_names(3)
    per_class = {c: sum(report["counts"][s][c] for s in report["counts"]) for c in report["classes"]}
    assert per_class == {
        name: sum(sc.class_of(i, 3) == k for i in range(60)) for k, name in enumerate(sc.class_names(3))
    }
