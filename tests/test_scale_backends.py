"""Index backends: HNSW beside Annoy, with everything above the index (Index, Recommender,
eval-retrieval) working on either; block-wise builds; the streamed assembly of shards."""

import json
import os
import shutil

import numpy as np
import pytest

from amazon_visual.errors import UserError

pytest.importorskip("hnswlib")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from test_index import retrieval_world

    return retrieval_world(tmp_path_factory)


@pytest.mark.parametrize("name", ["annoy", "hnsw"])
def test_backend_builds_from_blocks_and_finds_exact_neighbours(tmp_path, name):
    from amazon_visual.retrieval import backends
    from amazon_visual.retrieval.layout import normalize

    x = normalize(np.random.default_rng(0).standard_normal((3000, 24)))
    B = backends.get(name)
    params = B.params(search_k=400) if name == "hnsw" else B.params(trees=10, search_k=20000)
    path = str(tmp_path / B.index_file)
    blocks = (x[s : s + 700] for s in range(0, 3000, 700))  # a generator: the builder never sees the whole array
    st = B.build(blocks, 3000, 24, path, params, n_jobs=1)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    searcher = B.open(
        path,
        24,
        3000,
        {
            "index_size_bytes": st["size_bytes"],
            "index_sample_sha256": st["sample_sha256"],
            "search_k": params["search_k"],
        },
    )
    hits = 0
    for i in range(0, 3000, 100):
        exact = np.argsort(-(x @ x[i]))[:10]
        hits += len(set(searcher.search(x[i], 10, params["search_k"])) & set(exact.tolist()))
    assert hits / 300 > 0.97
    searcher.close()
    with pytest.raises(UserError, match="expected 3000"):
        B.build(iter([x[:10]]), 3000, 24, str(tmp_path / "short"), params)


def test_hnsw_index_works_for_recommender_and_eval_retrieval(world, tmp_path, capsys):
    from amazon_visual.cli import main
    from amazon_visual.retrieval.index import load_index
    from amazon_visual.retrieval.metrics import evaluate_retrieval
    from amazon_visual.retrieval.recommend import Recommender

    out = str(tmp_path / "hnsw")
    assert (
        main(
            [
                "index",
                world["run"],
                "--data",
                world["data"],
                "--out",
                out,
                "--backend",
                "hnsw",
                "--hnsw-m",
                "8",
                "--ef-construction",
                "50",
                "--search-k",
                "40",
                "--json",
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out)
    assert m["backend"] == "hnsw" and m["index_file"] == "index.hnsw" and m["hnsw_m"] == 8
    assert m["search_k"] == 40 and "trees" not in m
    assert os.path.isfile(os.path.join(out, "index.hnsw")) and not os.path.exists(os.path.join(out, "index.ann"))
    idx = load_index(out)
    emb = np.load(os.path.join(out, "embeddings.npy"))
    ids, sims = idx.search(emb[5], 5)
    exact = emb @ emb[5]
    np.testing.assert_allclose(sims, exact[ids], atol=1e-6)
    assert ids[0] == 5 or sims[0] >= exact[5] - 1e-6
    idx.close()
    with Recommender.load(out) as rec:
        asin = rec.index.items["asin"][3]
        res = rec.similar_to_asin(asin, k=4, same_category=True)
        assert res and all(r["label"] == rec.index.items["label"][3] for r in res)
        assert asin not in [r["asin"] for r in res]
    r = evaluate_retrieval(out, queries="test", k=5, progress=False)
    assert r["backend"] == "hnsw" and r["recall_at_k"] > 0.9 and r["hnsw_m"] == 8
    # the annoy index of the same world, for comparison: same precision from exact search
    a = evaluate_retrieval(world["index"], queries="test", k=5, progress=False)
    assert a["backend"] == "annoy" and abs(a["exact_precision_at_k"] - r["exact_precision_at_k"]) < 1e-9


def test_damaged_hnsw_file_is_a_clear_error(world, tmp_path):
    from amazon_visual.retrieval.index import build_index, load_index

    out = str(tmp_path / "h")
    build_index(world["data"], out, run_dir=world["run"], backend="hnsw", progress=False, thumbnails=False)
    path = os.path.join(out, "index.hnsw")
    keep = open(path, "rb").read()
    for damage in (
        lambda: open(path, "r+b").truncate(len(keep) // 2),
        lambda: open(path, "wb").write(np.random.default_rng(0).bytes(len(keep))),
        lambda: os.remove(path),
    ):
        damage()
        with pytest.raises(UserError, match="index file"):
            load_index(out)
        open(path, "wb").write(keep)
    load_index(out).close()
    with pytest.raises(UserError, match="unknown index backend"):
        build_index(world["data"], str(tmp_path / "x"), run_dir=world["run"], backend="faiss")


def test_assemble_streams_shards_in_order(tmp_path):
    from amazon_visual.retrieval import shards
    from amazon_visual.retrieval.layout import ITEM_COLUMNS

    rng = np.random.default_rng(1)
    bases, want, rows = [], [], []
    for i, n in enumerate([5, 0, 7, 3]):
        e = rng.standard_normal((n, 6)).astype(np.float32)
        r = [{c: f"{c}-{i}-{j}" if c != "label_id" else j for c in ITEM_COLUMNS} for j in range(n)]
        r[0:1] = [dict(r[0], title='a "quoted", multi\nline title')] if n else []
        base = str(tmp_path / f"s{i}")
        shards.write_shard(base, e.reshape(n, 6), r)
        bases.append(base)
        want.append(e)
        rows.extend(r)
    out = str(tmp_path / "out")
    os.makedirs(out)
    assert shards.assemble(bases, out, 6, 15) == 15
    np.testing.assert_array_equal(np.load(os.path.join(out, "embeddings.npy")), np.concatenate(want))
    blocks = list(shards.iter_npy_blocks(os.path.join(out, "embeddings.npy"), rows=4))
    assert [len(b) for b in blocks] == [4, 4, 4, 3]
    from amazon_visual.retrieval.index import read_items

    items = read_items(out)
    assert items["title"].tolist() == [r["title"] for r in rows] and items["label_id"].tolist() == list(
        [r["label_id"] for r in rows]
    )
    with pytest.raises(UserError, match="expected 16"):
        shards.assemble(bases, out, 6, 16)
    assert sorted(os.listdir(out)) == ["embeddings.npy", "items.csv"]  # no temporary file left
    shutil.rmtree(out)
