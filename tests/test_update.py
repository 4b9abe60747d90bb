"""``index --update``: the result equals a full ``index`` of the new data (same items in the same order,
attributes, embeddings, search results) with products added, re-photographed, re-priced and removed;
only new and changed photos are embedded; generations are swapped by the manifest and the one before
the previous is removed; another model means a full build; kill -9 mid-update, then the same command
finishes it; a running server reloads the new generation and serves its thumbnails."""

import json
import os
import random
import shutil
import sys
import textwrap
import time

import numpy as np
import pytest

CLASSES = ("red", "green", "blue")
PER_CLASS = 10
SIZE = 32
GONE = ["P000", "P001", "P002"]  # removed from the new catalog
NEW = ["P030", "P031", "P032", "P033"]  # added
PHOTO = ["P003", "P004", "P005"]  # re-photographed (other photo bytes)
PRICE = ["P006", "P007"]  # re-priced (same photo)
TITLE = ["P008"]  # re-titled (same photo)


def _photo(path, cls, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(SIZE, SIZE, 3)).astype(np.int32)
    img[..., cls] += 150
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=95)


def _catalog(root, name, new):
    """Metadata (2018 format, with price and brand) and photos of the old (``new=False``) or new catalog."""
    from tfrecords_builder.build import build_data

    images = os.path.join(root, f"{name}-images")
    os.makedirs(images, exist_ok=True)
    ids = [i for i in range(PER_CLASS * 3 + (len(NEW) if new else 0)) if not (new and f"P{i:03d}" in GONE)]
    lines = []
    for i in ids:
        asin, cls = f"P{i:03d}", i % 3
        _photo(os.path.join(images, f"{asin}.jpg"), cls, seed=i + (1000 if new and asin in PHOTO else 0))
        price = 10.0 + i + (5.5 if new and asin in PRICE else 0)
        title = f"{CLASSES[cls]} thing {asin}" + (" (new title)" if new and asin in TITLE else "")
        lines.append(
            json.dumps(
                {
                    "asin": asin,
                    "title": title,
                    "category": ["Top", "Clothing", CLASSES[cls]],
                    "imageURL": [f"{asin}.jpg"],
                    "price": f"${price:.2f}",
                    "brand": f"Brand{i % 4}",
                }
            )
        )
    meta = os.path.join(root, f"{name}-meta.jsonl")
    with open(meta, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    out = os.path.join(root, name)
    build_data(
        meta,
        out,
        images_dir=images,
        categories=list(CLASSES),
        image_size=SIZE,
        splits=(0.6, 0.2, 0.2),
        seed=0,
        workers=1,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from amazon_visual import data
    from amazon_visual.retrieval.index import build_index
    from test_index import make_run

    root = str(tmp_path_factory.mktemp("update"))
    old, new = _catalog(root, "old", False), _catalog(root, "new", True)
    run = make_run(os.path.join(root, "run"), data.class_names(old), image_size=SIZE, dim=16)
    w = {"root": root, "old": old, "new": new, "run": run}
    for name in ("old", "new"):
        w[f"index_{name}"] = os.path.join(root, f"index-{name}")
        build_index(w[name], w[f"index_{name}"], run_dir=run, trees=10, batch_size=8, progress=False)
    return w


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _update(world, index_dir, data="new", **kw):
    from amazon_visual.retrieval.update import update_index

    kw.setdefault("run_dir", world["run"])
    return update_index(world[data], index_dir, batch_size=8, progress=False, **kw)


def assert_same_index(a, b):
    """Two INDEX_DIRs hold the same items (thumbnail bytes too), embeddings and search results."""
    from amazon_visual.retrieval.index import load_index, read_items

    ia, ib = load_index(a), load_index(b)
    try:
        assert list(ia.items["asin"]) == list(ib.items["asin"])
        assert ia.items.drop(columns="thumb").equals(ib.items.drop(columns="thumb"))
        np.testing.assert_allclose(np.asarray(ia.embeddings), np.asarray(ib.embeddings), atol=1e-5)
        for i in range(ia.n_items):
            pa, pb = ia.thumb_path(i), ib.thumb_path(i)
            assert pa and pb and open(pa, "rb").read() == open(pb, "rb").read()
        for i in range(0, ia.n_items, 3):
            ids_a, sims_a = ia.search(ia.vector(i), 5, search_k=10_000)
            ids_b, sims_b = ib.search(ib.vector(i), 5, search_k=10_000)
            assert list(ids_a) == list(ids_b)
            np.testing.assert_allclose(sims_a, sims_b, atol=1e-5)
        assert len(read_items(a)) == ia.n_items
    finally:
        ia.close()
        ib.close()


# ------------------------------------------------------------------ equal to a full build
def test_update_equals_a_full_index_and_embeds_only_the_changes(world, tmp_path):
    from amazon_visual import data
    from amazon_visual.retrieval.index import load_index, read_items

    out = _copy(world["index_old"], tmp_path / "index")
    m = _update(world, out)
    u = m["update"]
    assert (u["added"], u["changed"], u["removed"], u["reused"]) == (
        len(NEW),
        len(PHOTO),
        len(GONE),
        PER_CLASS * 3 - len(GONE) - len(PHOTO),
    )
    assert u["embedded"] == len(NEW) + len(PHOTO) and u["full_build"] is None
    assert set(u["seconds"]) == {"read_plan", "hash", "embed", "assemble", "ann_build", "swap"}
    assert m["generation"] == 2 and m["items_file"] == "gen-000002/items.csv"
    assert_same_index(out, world["index_new"])
    items = read_items(out).set_index("asin")
    assert items.loc["P008", "title"].endswith("(new title)")
    if "price" in data.info(world["new"]).features.keys():  # datasets carry attributes (build-data >= 1.1.0)
        assert items.loc["P006", "price"] == pytest.approx(21.5) and items.loc["P009", "price"] == pytest.approx(19)
        assert items.loc["P006", "brand"] == "Brand2"
    assert all(t.startswith("gen-000002/thumbs/") for t in items["thumb"])
    # generation 1 (the top-level files) stays for a server that has not reloaded yet
    assert os.path.isfile(os.path.join(out, "items.csv")) and not os.path.exists(
        os.path.join(out, "gen-000002", ".partial")
    )
    # a second update (back to the old catalog): generation 3; generation 1 is removed, 2 stays
    m = _update(world, out, data="old")
    assert m["generation"] == 3 and m["update"]["reused"] == PER_CLASS * 3 - len(GONE) - len(PHOTO)
    assert (m["update"]["added"], m["update"]["removed"], m["update"]["changed"]) == (len(GONE), len(NEW), len(PHOTO))
    assert not os.path.exists(os.path.join(out, "items.csv")) and not os.path.exists(os.path.join(out, "thumbs"))
    assert sorted(n for n in os.listdir(out) if n.startswith("gen-")) == ["gen-000002", "gen-000003"]
    assert_same_index(out, world["index_old"])
    load_index(out, verify="full").close()


def test_cli_update_json_and_another_model_is_a_full_build(world, tmp_path, capsys):
    from amazon_visual import data
    from amazon_visual.cli import main
    from test_index import make_run

    out = _copy(world["index_old"], tmp_path / "index")
    args = ["index", world["run"], "--data", world["new"], "--out", out, "--update", "--batch-size", "8", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["added"], r["changed"], r["removed"], r["reused"], r["embedded"]) == (4, 3, 3, 24, 7)
    assert r["generation"] == 2 and r["n_items"] == 31 and r["full_build"] is None
    assert set(r["seconds"]) == {"read_plan", "hash", "embed", "assemble", "ann_build", "swap"}
    assert all(v >= 0 for v in r["seconds"].values())

    other = make_run(str(tmp_path / "run2"), data.class_names(world["old"]), image_size=SIZE, dim=16, seed=1)
    args[1] = other
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "the model differs from the index's: building all 31 items again" in cap.err
    r = json.loads(cap.out)
    assert (r["embedded"], r["reused"], r["generation"]) == (31, 0, 3)
    from amazon_visual.retrieval.embeddings import run_fingerprint
    from amazon_visual.retrieval.index import load_index

    idx = load_index(out)
    assert idx.manifest["fingerprint"] == run_fingerprint(other)
    ref = load_index(world["index_new"])
    assert list(idx.items["asin"]) == list(ref.items["asin"])
    assert np.abs(np.asarray(idx.embeddings) - np.asarray(ref.embeddings)).max() > 1e-3  # the other model's vectors
    idx.close()
    ref.close()

    assert main(args + ["--overwrite"]) == 2
    assert "--update cannot go with --overwrite" in capsys.readouterr().err


def test_an_index_without_photo_hashes_is_built_again(world, tmp_path, capsys):
    import pandas as pd

    out = _copy(world["index_old"], tmp_path / "index")
    items = pd.read_csv(os.path.join(out, "items.csv"), dtype=str, keep_default_na=False)
    items["image_sha256"] = ""
    items.to_csv(os.path.join(out, "items.csv"), index=False)
    m = _update(world, out)
    assert "no photo hashes" in capsys.readouterr().err
    assert m["update"]["embedded"] == 31 and m["update"]["reused"] == 0
    assert_same_index(out, world["index_new"])


# ------------------------------------------------------------------ kill -9, then the same command
UPDATE_SCRIPT = textwrap.dedent("""
    import sys
    from amazon_visual.retrieval import update
    update.PENDING_ITEMS = 4  # a shard per range as soon as it is scanned, so the kill lands between shards
    update.update_index(sys.argv[1], sys.argv[2], run_dir=sys.argv[3], batch_size=4, chunk_items=4, progress=False)
""")


def test_kill_during_an_update_then_the_same_command_finishes_it(world, tmp_path):
    from amazon_visual.retrieval.index import load_index, read_items
    from test_killsafe import SEED, kill_when, run_to_end

    out = _copy(world["index_old"], tmp_path / "index")
    script = tmp_path / "update.py"
    script.write_text(UPDATE_SCRIPT)
    log = str(tmp_path / "update.log")
    cmd = [sys.executable, str(script), world["new"], out, world["run"]]
    partial = os.path.join(out, "gen-000002", ".partial")

    def some_shards():
        return (
            os.path.isdir(partial) and sum(n.endswith(".json") and n != "state.json" for n in os.listdir(partial)) >= 2
        )

    assert kill_when(cmd, log, some_shards, random.Random(SEED).uniform(0, 0.05)), f"seed {SEED}: ended first"
    idx = load_index(out)  # still the old generation, whole
    assert idx.n_items == 30 and idx.manifest.get("generation", 1) == 1
    assert list(idx.items["asin"]) == list(read_items(world["index_old"])["asin"])
    idx.close()
    done = {n: os.path.getmtime(os.path.join(partial, n)) for n in os.listdir(partial) if n.endswith(".npy")}
    run_to_end(cmd, log)
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["generation"] == 2 and m["update"]["embedded"] == 7
    assert_same_index(out, world["index_new"])
    left = [os.path.join(r, n) for r, _, files in os.walk(out) for n in files if ".tmp-" in n]
    assert not left and not os.path.exists(partial)
    assert done  # shards written before the kill were there to be reused


# ------------------------------------------------------------------ a running server reloads the new generation
def test_a_running_server_reloads_the_update_and_serves_its_thumbnails(world, tmp_path):
    from serve_helpers import client_for

    out = _copy(world["index_old"], tmp_path / "index")
    with client_for(out, reload_poll_seconds=0.1) as client:
        assert client.get("/v1/products/P031").status_code == 404
        assert client.get("/v1/products/P000").status_code == 200
        before = client.get("/thumbs/P010.jpg")
        assert before.status_code == 200
        _update(world, out)
        end = time.monotonic() + 30
        while client.get("/v1/products/P031").status_code != 200 and time.monotonic() < end:
            time.sleep(0.1)
        assert client.get("/v1/products/P031").status_code == 200
        assert client.get("/v1/products/P000").status_code == 404
        thumb = client.get("/thumbs/P031.jpg")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        assert client.get("/thumbs/P010.jpg").content == before.content  # reused: the same thumbnail, linked
        similar = client.get("/v1/products/P031/similar", params={"k": 5})
        assert similar.status_code == 200 and len(similar.json()["results"]) == 5


# ------------------------------------------------------------------ a backbone with random weights
def test_a_random_weights_backbone_index_updates_with_its_own_kept_model(world, tmp_path):
    """Random weights cannot be drawn again: the update embeds with the model kept in the index, and each
    generation keeps its copy (the top-level one goes with generation 1)."""
    from amazon_visual.retrieval.index import build_index, load_index
    from amazon_visual.retrieval.recommend import Recommender

    out = str(tmp_path / "bb")
    kw = {"backbone": "mobilenet_v3_small", "weights": "none", "image_size": SIZE}
    first = build_index(world["old"], out, trees=5, batch_size=8, progress=False, **kw)
    old = load_index(out)
    old_vectors = {a: old.vector(i) for i, a in enumerate(old.items["asin"])}
    old.close()
    m = _update(world, out, run_dir=None, **kw)
    assert m["fingerprint"] == first["fingerprint"] and m["update"]["full_build"] is None
    assert m["update"]["embedded"] == 7 and m["embedder_file"] == "gen-000002/embedder.keras"
    m = _update(world, out, run_dir=None, **kw)
    assert m["generation"] == 3 and m["update"]["embedded"] == 0 and m["update"]["reused"] == 31
    assert m["embedder_file"] == "gen-000003/embedder.keras" and not os.path.exists(os.path.join(out, "embedder.keras"))
    rec = Recommender.load(out)
    for i, a in enumerate(rec.index.items["asin"]):
        if a in old_vectors and a not in PHOTO:
            np.testing.assert_allclose(rec.index.vector(i), old_vectors[a], atol=1e-6)
    asin = rec.index.items["asin"].iloc[0]
    assert rec.recommend(asin=asin, k=3)["results"]
    rec.close()
