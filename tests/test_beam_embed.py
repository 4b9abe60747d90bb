"""``amazon-visual index --beam``: the embeddings computed by Beam's RunInference equal the local ones.

The dataset is tiny but has several TFRecord shards in its train split (tfds writes one
shard below 128 MB, so the test re-shards it), so ranges run on both Beam workers and the
item order across shards is checked against the records' own order.
"""

import os

import numpy as np
import pytest

from amazon_visual.errors import UserError

pytest.importorskip("apache_beam")

MULTI = ["--direct_num_workers=2 --direct_running_mode=multi_processing"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from amazon_visual import data
    from helpers_training import tiny_dataset
    from scale_fixtures import reshard
    from test_index import make_run

    root = str(tmp_path_factory.mktemp("beam"))
    d = tiny_dataset(root, per_class=14, size=40)
    reshard(d, "train", 3)
    run = make_run(os.path.join(root, "run"), data.class_names(d))
    return {"root": root, "data": d, "run": run}


def _records_order(data_dir, split):
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(data_dir)
    ds = b.as_dataset(
        split=split,
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    return [a.decode() for a in ds.map(lambda ex: ex["asin"]).as_numpy_iterator()]


def test_beam_index_equals_the_local_index(world, tmp_path):
    from amazon_visual import data
    from amazon_visual.retrieval.index import build_index, read_items
    from amazon_visual.retrieval.recommend import Recommender

    assert len(data.info(world["data"]).splits["train"].shard_lengths) == 3
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    m1 = build_index(world["data"], local, run_dir=world["run"], trees=5, batch_size=4, progress=False)
    m2 = build_index(
        world["data"], beam, run_dir=world["run"], trees=5, batch_size=4, progress=False, beam=True, beam_options=MULTI
    )
    assert (m1["embedding_engine"], m2["embedding_engine"]) == ("local", "beam")
    assert m2["on_disk_build"] and m1["n_items"] == m2["n_items"] == 42
    a, b = read_items(local), read_items(beam)
    assert a.equals(b)  # same items, same order, same thumbnail names
    for split in data.splits(world["data"]):
        assert a[a["split"] == split]["asin"].tolist() == _records_order(world["data"], split)
    np.testing.assert_allclose(
        np.load(os.path.join(beam, "embeddings.npy")), np.load(os.path.join(local, "embeddings.npy")), atol=1e-5
    )
    assert all(os.path.isfile(os.path.join(beam, t)) for t in b["thumb"])
    assert not os.path.exists(os.path.join(beam, ".partial"))
    with Recommender.load(beam) as rec:
        res = rec.similar_to_asin(b["asin"][0], k=3)
        assert len(res) == 3 and b["asin"][0] not in [r["asin"] for r in res]


def test_bad_beam_options_are_a_clear_error(world, tmp_path, capsys):
    from amazon_visual.cli import main

    out = str(tmp_path / "idx")
    assert (
        main(
            [
                "index",
                world["run"],
                "--data",
                world["data"],
                "--out",
                out,
                "--beam",
                "--beam-options=--runner=NoSuchRunner",
            ]
        )
        == 2
    )
    assert "--beam-options" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                world["run"],
                "--data",
                world["data"],
                "--out",
                str(tmp_path / "x"),
                "--beam-options=--direct_num_workers=2",
            ]
        )
        == 2
    )
    assert "needs --beam" in capsys.readouterr().err


def test_handler_loads_a_keras_file_and_embeds_serialized_examples(world, tmp_path):
    """The ModelHandler alone, as RunInference calls it: load_model once, run_inference per batch."""
    from amazon_visual import data
    from amazon_visual.retrieval import records
    from amazon_visual.retrieval.beam_embed import KerasEmbeddingHandler
    from amazon_visual.retrieval.embeddings import Embedder, keep_model

    emb = Embedder.from_run(world["run"])
    path = keep_model(emb, str(tmp_path), "fp")
    ranges, _ = records.plan(world["data"], ["test"], 64)
    serialized = records.read_range(ranges[0])
    h = KerasEmbeddingHandler(path, world["data"], emb.image_size, emb.resize, False, 4, True)
    out = h.run_inference([serialized], h.load_model())
    assert len(out) == 1 and out[0].example == len(serialized)
    got = out[0].inference["embeddings"]
    want, _ = records.embed_records(
        lambda b: emb.predict(b)[0], serialized, data.info(world["data"]).features, emb.image_size, emb.resize, False, 4
    )
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert h.get_num_bytes([serialized]) == sum(map(len, serialized))
    with pytest.raises(UserError):
        records.plan(world["data"], ["nope"], 64)


def test_beam_resumes_the_shards_a_killed_run_left(world, tmp_path, monkeypatch):
    """A local run interrupted after two shards, then --beam on the same folder: Beam embeds only the
    ranges without a shard, and the index equals an uninterrupted one."""
    from amazon_visual.retrieval import records
    from amazon_visual.retrieval.embeddings import Embedder
    from amazon_visual.retrieval.index import build_index, read_items

    ref = str(tmp_path / "ref")
    build_index(world["data"], ref, run_dir=world["run"], trees=5, batch_size=4, chunk_items=8, progress=False)
    calls = {"n": 0}
    real_predict, real_embed = Embedder.predict, records.embed_records

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # chunks hold 2 batches: two shards are written, then the "kill"
            raise KeyboardInterrupt
        return real_predict(self, batch)

    out = str(tmp_path / "out")
    monkeypatch.setattr(Embedder, "predict", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_index(world["data"], out, run_dir=world["run"], trees=5, batch_size=4, chunk_items=8, progress=False)
    monkeypatch.setattr(Embedder, "predict", real_predict)
    embedded = []
    monkeypatch.setattr(records, "embed_records", lambda *a, **k: embedded.append(len(a[1])) or real_embed(*a, **k))
    m = build_index(
        world["data"], out, run_dir=world["run"], trees=5, batch_size=4, chunk_items=8, progress=False, beam=True
    )  # the in-process DirectRunner: the monkeypatched function is the one it calls
    assert sum(embedded) == m["n_items"] - 16  # the two shards of the killed run were kept
    assert read_items(out).equals(read_items(ref))
    np.testing.assert_allclose(
        np.load(os.path.join(out, "embeddings.npy")), np.load(os.path.join(ref, "embeddings.npy")), atol=1e-5
    )
