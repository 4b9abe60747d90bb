"""eval-retrieval: metric definitions, the report on a tiny index, and the clothing-small integration (slow)."""

import json
import os
import time

import numpy as np
import pytest

from amazon_visual.errors import UserError
from test_index import retrieval_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return retrieval_world(tmp_path_factory)


def test_average_precision_at_k():
    from amazon_visual.retrieval.metrics import average_precision_at_k as ap

    assert ap([1, 1, 1], 3, 3) == 1.0
    assert ap([0, 0, 0], 3, 3) == 0.0
    assert ap([1, 0, 1], 2, 3) == pytest.approx((1 + 2 / 3) / 2)
    assert ap([0, 1, 0, 0], 10, 4) == pytest.approx(0.5 / 4)  # min(k, R) = 4
    assert ap([1, 0], 0, 2) == 0.0


def test_exact_search_matches_brute_force():
    from amazon_visual.retrieval.index import normalize
    from amazon_visual.retrieval.metrics import exact_search

    rng = np.random.default_rng(0)
    g = normalize(rng.standard_normal((1000, 12)))
    q = normalize(rng.standard_normal((300, 12)))
    ids, sims = exact_search(q, g, 7, batch=64)
    full = q @ g.T
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :7])
    np.testing.assert_allclose(sims, np.sort(full, axis=1)[:, ::-1][:, :7], atol=1e-6)


def test_evaluate_on_tiny_index(world, capsys):
    from amazon_visual import data
    from amazon_visual.cli import main
    from amazon_visual.retrieval.metrics import evaluate_retrieval

    r = evaluate_retrieval(world["index"], data_dir=world["data"], queries="test", k=5, search_k=10_000, progress=False)
    n_test = data.num_examples(world["data"], "test")
    assert r["n_queries"] == n_test and r["n_indexed"] == 36 - n_test
    assert r["recall_at_k"] == pytest.approx(1.0)  # search_k covers the whole tiny index
    assert r["precision_at_k"] == pytest.approx(r["exact_precision_at_k"])
    for key in ("precision_at_k", "map_at_k", "class_prior"):
        assert 0.0 <= r[key] <= 1.0
    assert r["class_prior"] == pytest.approx(1 / 3, abs=0.05)
    for key in ("latency_ms_p50", "latency_ms_p99", "qps", "build_seconds", "index_size_bytes", "index_dir_bytes"):
        assert r[key] > 0
    assert r["latency_ms_p99"] >= r["latency_ms_p50"]
    assert set(r["per_category"]) == set(data.class_names(world["data"]))

    assert main(["eval-retrieval", world["index"], "--data", world["data"], "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 3 and out["queries"] == "test"
    assert main(["eval-retrieval", world["index"], "--queries", "validation"]) == 0
    text = capsys.readouterr().out
    assert "precision@10" in text and "recall@10" in text and "latency p99" in text


def test_evaluate_embeds_a_split_the_index_lacks(world, tmp_path):
    from amazon_visual.retrieval.index import build_index
    from amazon_visual.retrieval.metrics import evaluate_retrieval

    idx = str(tmp_path / "train-only")
    build_index(
        world["data"],
        idx,
        run_dir=world["run"],
        splits=["train"],
        trees=5,
        batch_size=8,
        thumbnails=False,
        progress=False,
    )
    r = evaluate_retrieval(idx, data_dir=world["data"], queries="test", k=3, progress=False)
    assert r["query_source"] == "data_dir" and r["n_indexed"] == 20 and r["n_queries"] == 10


def test_evaluate_errors(world, tmp_path):
    from amazon_visual.retrieval.metrics import evaluate_retrieval

    with pytest.raises(UserError, match="does not exist"):
        evaluate_retrieval(str(tmp_path / "none"))
    with pytest.raises(UserError):
        evaluate_retrieval(world["index"], data_dir=str(tmp_path), progress=False)
    with pytest.raises(UserError, match="-k"):
        evaluate_retrieval(world["index"], k=0, progress=False)


@pytest.mark.slow
def test_clothing_small_trained_run_beats_the_class_prior(tmp_path_factory):
    """Build clothing-small at 64 px, train a small CNN briefly, index it, measure precision@10."""
    from helpers_training import CLOTHING_SMALL, clothing_small

    if not os.path.isdir(CLOTHING_SMALL):
        pytest.skip(f"{CLOTHING_SMALL} is not there")
    from amazon_visual.retrieval.index import build_index
    from amazon_visual.retrieval.metrics import evaluate_retrieval
    from amazon_visual.training import train

    root = str(tmp_path_factory.mktemp("clothing"))
    t0 = time.time()
    d = clothing_small(root, image_size=64)
    t_data = time.time() - t0
    run = os.path.join(root, "run")
    train(
        d,
        model="alexnet",
        out=run,
        weights="none",
        image_size=64,
        epochs=6,
        batch_size=32,
        augment=False,
        early_stopping=0,
        quiet=True,
        learning_rate=0.003,
        model_kwargs={"width": 0.25, "fc_units": 128, "dropout": 0.1},
    )
    t_train = time.time() - t0 - t_data
    idx = os.path.join(root, "index")
    build_index(d, idx, run_dir=run, trees=20, batch_size=128, progress=False)
    r = evaluate_retrieval(idx, data_dir=d, queries="test", k=10, progress=False)
    print(
        f"\nclothing-small 64px: data {t_data:.0f}s, train {t_train:.0f}s; {r['n_queries']} test queries vs "
        f"{r['n_indexed']} items: precision@10 {r['precision_at_k']:.3f} (class prior {r['class_prior']:.3f}), "
        f"mAP@10 {r['map_at_k']:.3f}, recall@10 vs exact {r['recall_at_k']:.3f}, "
        f"p50 {r['latency_ms_p50']:.3f} ms, p99 {r['latency_ms_p99']:.3f} ms"
    )
    with open(os.path.join(root, "result.json"), "w") as f:
        json.dump(r, f, indent=2)
    assert r["n_queries"] > 100
    # measured on 2 cores, class prior 0.131: precision@10 0.32-0.35 when this test runs alone; inside the
    # full suite 0.18-0.22 in one session and 0.39 in a later one (cause of the spread not found): the
    # bound sits under the lowest figure
    assert r["precision_at_k"] > r["class_prior"] + 0.03, r
    assert r["recall_at_k"] > 0.8
