"""Index: cosine from Annoy's angular distance, manifest checks, corrupt files, on-disk build, resume.

``retrieval_world`` (used by the other retrieval tests too) builds once per session: a
tiny generated dataset (build_data), a tiny Keras run per the RUN_DIR contract and an
index of it.
"""

import json
import os
import shutil

import numpy as np
import pytest

from amazon_visual.errors import UserError

_WORLD = {}


def make_run(run_dir, class_names, image_size=32, seed=0, dim=16):
    """A tiny RUN_DIR per the contract: input [0,255] floats, layers ``embedding`` and ``predictions``."""
    import keras

    keras.utils.set_random_seed(seed)
    os.makedirs(run_dir, exist_ok=True)
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    e = keras.layers.Dense(dim, activation="relu", name="embedding")(x)
    out = keras.layers.Dense(len(class_names), activation="softmax", name="predictions")(e)
    model = keras.Model(inp, out, name="tiny")
    model.save(os.path.join(run_dir, "model.keras"))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(
            {
                "model": "tiny",
                "image_size": image_size,
                "preprocessing": "unit",
                "embedding_layer": "embedding",
                "embedding_dim": dim,
                "num_classes": len(class_names),
                "weights": "none",
                "resize": "pad",
            },
            f,
        )
    with open(os.path.join(run_dir, "labels.json"), "w") as f:
        json.dump(list(class_names), f)
    return run_dir


def retrieval_world(tmp_path_factory):
    """{"root", "data", "images", "run", "index"}: built once per test session."""
    if not _WORLD:
        from amazon_visual import data
        from amazon_visual.retrieval.index import build_index
        from helpers_training import tiny_dataset

        root = str(tmp_path_factory.mktemp("retrieval"))
        d = tiny_dataset(root, per_class=12, size=40)
        run = make_run(os.path.join(root, "run"), data.class_names(d))
        idx = os.path.join(root, "index")
        build_index(d, idx, run_dir=run, trees=10, batch_size=8, progress=False)
        _WORLD.update(root=root, data=d, images=os.path.join(root, "data-images"), run=run, index=idx)
    return dict(_WORLD)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return retrieval_world(tmp_path_factory)


# ------------------------------------------------------------------ similarity
def test_cosine_from_angular_matches_numpy(tmp_path):
    from annoy import AnnoyIndex

    from amazon_visual.retrieval.index import build_annoy, cosine_from_angular, normalize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 24)).astype(np.float32) * rng.uniform(0.1, 10, (300, 1)).astype(np.float32)
    path = str(tmp_path / "a.ann")
    build_annoy(x, path, trees=5)
    a = AnnoyIndex(24, "angular")
    a.load(path, prefault=False)
    xn = normalize(x).astype(np.float64)
    for i in range(0, 300, 7):
        ids, dist = a.get_nns_by_item(i, 20, search_k=10_000, include_distances=True)
        expected = xn[ids] @ xn[i]
        np.testing.assert_allclose(cosine_from_angular(dist), expected, atol=2e-5)
    # distances between arbitrary pairs too (including anti-correlated vectors)
    for i, j in [(0, 1), (5, 200), (10, 299)]:
        np.testing.assert_allclose(cosine_from_angular(a.get_distance(i, j)), xn[i] @ xn[j], atol=2e-5)
    a.unload()
    assert cosine_from_angular(0.0) == 1.0 and cosine_from_angular(2.0) == -1.0
    assert abs(cosine_from_angular(np.sqrt(2.0))) < 1e-12


def test_search_rescores_exactly_and_sorts(tmp_path):
    import pandas as pd

    from amazon_visual.retrieval.index import Index, build_annoy, normalize, open_annoy

    rng = np.random.default_rng(1)
    x = normalize(rng.standard_normal((500, 32)))
    st = build_annoy(x, str(tmp_path / "i.ann"), trees=10)
    ann = open_annoy(str(tmp_path / "i.ann"), 32, 500, st["size_bytes"], st["sample_sha256"])
    items = pd.DataFrame({"asin": [f"A{i}" for i in range(500)], "label": ["x"] * 500})
    idx = Index(str(tmp_path), {"n_items": 500, "embedding_dim": 32}, items, x, ann, search_k=50_000)
    for _ in range(20):
        q = rng.standard_normal(32).astype(np.float32) * 3
        ids, sims = idx.search(q, 10)
        exact = x @ normalize(q)
        np.testing.assert_allclose(sims, exact[ids], atol=1e-6)
        assert (np.diff(sims) <= 0).all()
        assert set(ids.tolist()) == set(np.argsort(-exact)[:10].tolist())  # search_k covers everything here
    ids, _ = idx.search(x[3], 5, exclude=[3])
    assert 3 not in ids.tolist() and len(ids) == 5
    idx.close()


def test_on_disk_build_gives_a_working_index(tmp_path):
    from amazon_visual.retrieval.index import build_annoy, normalize, open_annoy

    x = normalize(np.random.default_rng(2).standard_normal((2000, 16)))
    a = build_annoy(x, str(tmp_path / "mem.ann"), trees=8)
    b = build_annoy(x, str(tmp_path / "disk.ann"), trees=8, on_disk=True)
    assert b["on_disk"] and b["size_bytes"] > 0
    assert not any(n.startswith("disk.ann.tmp") for n in os.listdir(tmp_path))
    for path, st in (("mem.ann", a), ("disk.ann", b)):
        ann = open_annoy(str(tmp_path / path), 16, 2000, st["size_bytes"], st["sample_sha256"], verify="full")
        assert ann.get_n_items() == 2000
        assert ann.get_nns_by_vector(x[7], 1, search_k=20000) == [7]
        ann.unload()


# ------------------------------------------------------------------ the built index
def test_index_dir_layout_and_manifest(world):
    from amazon_visual import data
    from amazon_visual.retrieval.index import load_index

    idx_dir = world["index"]
    m = json.load(open(os.path.join(idx_dir, "manifest.json")))
    n = sum(data.num_examples(world["data"], s) for s in data.SPLITS)
    assert m["n_items"] == n and m["metric"] == "angular" and m["embedding_dim"] == 16
    assert m["source"] == "run" and m["embedding_layer"] == "embedding" and m["trees"] == 10
    for key in ("model", "fingerprint", "image_size", "created", "package_version", "search_k", "index_size_bytes"):
        assert key in m
    emb = np.load(os.path.join(idx_dir, "embeddings.npy"))
    assert emb.dtype == np.float32 and emb.shape == (n, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    idx = load_index(idx_dir)
    assert isinstance(idx.embeddings, np.memmap)  # memory-mapped, shareable
    assert list(idx.items.columns[:7]) == ["asin", "title", "category", "label", "label_id", "image_url", "split"]
    assert set(idx.items["split"]) == {"train", "validation", "test"}
    for t in idx.items["thumb"]:
        assert os.path.isfile(os.path.join(idx_dir, t))
    assert not os.path.exists(os.path.join(idx_dir, ".partial"))
    idx.close()


def test_manifest_check_refuses_another_model(world, tmp_path):
    from amazon_visual import data
    from amazon_visual.retrieval.index import load_index
    from amazon_visual.retrieval.recommend import Recommender

    with pytest.raises(UserError, match="embedding_dim"):
        load_index(world["index"], expect={"embedding_dim": 99})
    with pytest.raises(UserError, match="fingerprint"):
        load_index(world["index"], expect={"fingerprint": "0123456789abcdef", "model": "tiny"})
    other = make_run(str(tmp_path / "other"), data.class_names(world["data"]), seed=7)
    with pytest.raises(UserError, match="built with"):
        Recommender.load(world["index"], run_dir=other)
    # the recorded run retrained in place (same folder, other weights): refused too
    moved = str(tmp_path / "index-copy")
    shutil.copytree(world["index"], moved)
    run_copy = str(tmp_path / "run-copy")
    shutil.copytree(world["run"], run_copy)
    m = json.load(open(os.path.join(moved, "manifest.json")))
    m["run_dir"] = run_copy
    json.dump(m, open(os.path.join(moved, "manifest.json"), "w"))
    Recommender.load(moved).close()  # same model: fine
    make_run(run_copy, data.class_names(world["data"]), seed=8)
    with pytest.raises(UserError, match="fingerprint"):
        Recommender.load(moved)


def _copy_index(world, tmp_path, name):
    dst = str(tmp_path / name)
    shutil.copytree(world["index"], dst)
    return dst


def test_corrupt_or_missing_index_file_is_a_clear_error(world, tmp_path):
    from amazon_visual.retrieval.index import load_index
    from amazon_visual.retrieval.recommend import Recommender

    size = os.path.getsize(os.path.join(world["index"], "index.ann"))
    cases = {
        "truncated": lambda p: open(p, "r+b").truncate(size // 2),
        "empty": lambda p: open(p, "wb").close(),
        "garbage": lambda p: open(p, "wb").write(np.random.default_rng(0).bytes(size)),
        "missing": os.remove,
        "text": lambda p: open(p, "w").write("not an index\n" * 10),
    }
    for name, damage in cases.items():
        d = _copy_index(world, tmp_path, name)
        damage(os.path.join(d, "index.ann"))
        with pytest.raises(UserError, match="index file"):
            load_index(d)
        with pytest.raises(UserError):
            Recommender.load(d)
    # the undamaged index stays usable in the same process
    rec = Recommender.load(world["index"])
    asin = rec.index.items["asin"][0]
    assert len(rec.similar_to_asin(asin, k=3)) == 3
    rec.close()


def test_structural_check_catches_bad_pointers_without_checksum(tmp_path):
    from amazon_visual.retrieval.index import build_annoy, check_annoy_file, node_size, normalize

    dim, n = 8, 3000
    path = str(tmp_path / "i.ann")
    st = build_annoy(normalize(np.random.default_rng(3).standard_normal((n, dim))), path, trees=20)
    check_annoy_file(path, dim, n, st["size_bytes"], st["sample_sha256"], verify="full")
    s = node_size(dim)
    raw = bytearray(open(path, "rb").read())
    n_nodes = len(raw) // s
    assert n_nodes > n + 200
    # an internal node far from the end (the roots) gets a child pointer outside the file
    node = n + 50
    raw[node * s + 4 : node * s + 8] = np.int32(10**8).tobytes()
    open(path, "wb").write(bytes(raw))
    check_annoy_file(path, dim, n, len(raw))  # the quick check reads only the roots at the end
    with pytest.raises(UserError, match="outside"):
        check_annoy_file(path, dim, n, len(raw), verify="full")
    with pytest.raises(UserError, match="checksum"):
        check_annoy_file(path, dim, n, len(raw), st["sample_sha256"])


def test_manifest_or_items_damaged(world, tmp_path):
    from amazon_visual.retrieval.index import load_index

    d = _copy_index(world, tmp_path, "manifest")
    open(os.path.join(d, "manifest.json"), "w").write("{not json")
    with pytest.raises(UserError, match="manifest.json"):
        load_index(d)
    d = _copy_index(world, tmp_path, "items")
    lines = open(os.path.join(d, "items.csv")).read().splitlines()
    open(os.path.join(d, "items.csv"), "w").write("\n".join(lines[:-3]) + "\n")
    with pytest.raises(UserError, match="items.csv"):
        load_index(d)
    with pytest.raises(UserError, match="does not exist"):
        load_index(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="not an amazon-visual index"):
        load_index(str(tmp_path))


def test_index_cli_refuses_non_empty_out_and_prints_json(world, tmp_path, capsys):
    from amazon_visual.cli import main

    out = str(tmp_path / "idx")
    os.makedirs(out)
    open(os.path.join(out, "keep.txt"), "w").write("x")
    assert main(["index", world["run"], "--data", world["data"], "--out", out, "--json"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["index", "--data", world["data"], "--out", str(tmp_path / "x")]) == 2
    assert "RUN_DIR" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                world["run"],
                "--data",
                world["data"],
                "--out",
                out,
                "--overwrite",
                "--splits",
                "train",
                "--trees",
                "3",
                "--on-disk",
                "--no-thumbnails",
                "--json",
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out)
    assert m["splits"] == ["train"] and m["trees"] == 3 and m["on_disk_build"] and not m["thumbnails"]
    assert os.path.isfile(os.path.join(out, "keep.txt"))  # --overwrite replaces only the index's files
    assert main(["index", world["run"], "--data", world["data"], "--out", str(tmp_path / "y"), "--splits", "nope"]) == 2
    assert "no split" in capsys.readouterr().err


def test_embedding_resumes_after_an_interruption(world, tmp_path, monkeypatch):
    from amazon_visual.retrieval.embeddings import Embedder, embed_dataset

    emb = Embedder.from_run(world["run"])
    full = str(tmp_path / "full")
    embed_dataset(emb, world["data"], full, batch_size=4, chunk_items=8, progress=False, thumbnails=False)
    calls = {"n": 0}
    real = Embedder.predict

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, batch)

    out = str(tmp_path / "resumed")
    monkeypatch.setattr(Embedder, "predict", flaky)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(emb, world["data"], out, batch_size=4, chunk_items=8, progress=False, thumbnails=False)
    assert len([f for f in os.listdir(os.path.join(out, ".partial")) if f.endswith(".json")]) == 3  # state + 2 chunks
    calls["n"] = 100
    embed_dataset(emb, world["data"], out, batch_size=4, chunk_items=8, progress=False, thumbnails=False)
    n_batches = -(-36 // 4)
    assert calls["n"] - 100 < n_batches  # the first two chunks (4 batches) were not embedded again
    np.testing.assert_allclose(
        np.load(os.path.join(out, "embeddings.npy")), np.load(os.path.join(full, "embeddings.npy")), atol=1e-6
    )
    assert open(os.path.join(out, "items.csv")).read() == open(os.path.join(full, "items.csv")).read()


def test_backbone_index_without_training(world, tmp_path, capsys):
    """--backbone: a keras.applications backbone embeds directly; random weights are kept beside the index."""
    from PIL import Image

    from amazon_visual.cli import main
    from amazon_visual.retrieval.recommend import Recommender

    out = str(tmp_path / "bb")
    assert (
        main(
            [
                "index",
                "--backbone",
                "mobilenet_v3_small",
                "--weights",
                "none",
                "--image-size",
                "32",
                "--data",
                world["data"],
                "--out",
                out,
                "--splits",
                "train,test",
                "--trees",
                "5",
                "--json",
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out)
    assert m["source"] == "backbone" and m["model"] == "mobilenet_v3_small" and m["embedding_dim"] == 576
    assert m["embedder_file"] == "embedder.keras" and os.path.isfile(os.path.join(out, "embedder.keras"))
    rec = Recommender.load(out)
    thumb_item = rec.index.items.iloc[4]
    # the stored image, exactly as indexed: the query must find the item itself
    from amazon_visual import data

    for ex in data.load(world["data"], split=thumb_item["split"]).as_numpy_iterator():
        if ex["asin"].decode() == thumb_item["asin"]:
            img = Image.fromarray(ex["image"])
            break
    res = rec.recommend(image=img, k=3, same_category=True)
    assert res["results"][0]["asin"] == thumb_item["asin"] and res["results"][0]["similarity"] > 0.999
    assert res["query"]["category_source"].startswith("majority")
    assert all(r["label"] == res["query"]["same_category"] for r in res["results"])
    rec.close()
    assert (
        main(
            [
                "index",
                "--backbone",
                "resnet50",
                "--weights",
                str(tmp_path / "no.h5"),
                "--data",
                world["data"],
                "--out",
                str(tmp_path / "bb2"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_resume_redoes_a_chunk_whose_thumbnails_are_gone(world, tmp_path, monkeypatch):
    from amazon_visual.retrieval.embeddings import Embedder, embed_dataset

    emb = Embedder.from_run(world["run"])
    calls = {"n": 0}
    real = Embedder.predict

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, batch)

    out = str(tmp_path / "idx")
    monkeypatch.setattr(Embedder, "predict", flaky)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(emb, world["data"], out, batch_size=4, chunk_items=8, progress=False)
    rows = json.load(open(os.path.join(out, ".partial", "train-00001.json")))
    os.remove(os.path.join(out, rows[0]["thumb"]))  # chunk 1 is no longer complete
    calls["n"] = 100
    embed_dataset(emb, world["data"], out, batch_size=4, chunk_items=8, progress=False)
    assert calls["n"] - 100 == 8  # chunk 0 kept; chunk 1 onwards: 3 + 2 + 3 batches
    import pandas as pd

    items = pd.read_csv(os.path.join(out, "items.csv"), keep_default_na=False)
    assert len(items) == 36 and all(os.path.isfile(os.path.join(out, t)) for t in items["thumb"])
