"""`amazon-visual export`: each export is reloaded and its outputs compared with model.keras on photos."""

import os

import numpy as np
import pytest

from amazon_visual.errors import UserError
from test_index import retrieval_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return retrieval_world(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(world):
    """Photos prepared as the index prepares them, and what model.keras says about them."""
    from amazon_visual.retrieval.embeddings import Embedder, load_image, prepare_image
    from amazon_visual.retrieval.layout import normalize

    emb = Embedder.from_run(world["run"])
    names = sorted(os.listdir(world["images"]))[::9][:4]
    batch = np.stack(
        [prepare_image(load_image(os.path.join(world["images"], n)), emb.image_size, emb.resize) for n in names]
    )
    vec, probs = emb.predict(batch)
    return batch, normalize(vec), probs, emb.labels


def test_saved_model_has_embed_and_classify_with_labels_in_assets(world, reference, tmp_path):
    import tensorflow as tf

    from amazon_visual.cli import main

    batch, vec, probs, labels = reference
    out = str(tmp_path / "saved" / "1")
    os.makedirs(os.path.dirname(out))
    assert main(["export", world["run"], "--format", "saved_model", "--out", out, "--json"]) == 0
    with open(os.path.join(out, "assets", "labels.txt"), encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == labels
    loaded = tf.saved_model.load(out)
    assert {"embed", "classify", "serving_default"} <= set(loaded.signatures)
    got = loaded.signatures["embed"](images=tf.constant(batch))["embedding"].numpy()
    np.testing.assert_allclose(got, vec, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    out_c = loaded.signatures["classify"](images=tf.constant(batch))
    np.testing.assert_allclose(out_c["probabilities"].numpy(), probs, atol=1e-5)
    assert [s.decode() for s in out_c["label"].numpy()] == [labels[i] for i in probs.argmax(1)]
    # an existing export is not replaced without --overwrite
    assert main(["export", world["run"], "--out", out]) == 2
    assert main(["export", world["run"], "--out", out, "--overwrite"]) == 0


def test_tflite_has_both_signatures(world, reference, tmp_path):
    import tensorflow as tf

    from amazon_visual.export import export_run

    batch, vec, probs, labels = reference
    info = export_run(world["run"], "tflite", str(tmp_path / "model.tflite"))
    assert info["signatures"] == ["embed", "classify"]
    assert open(tmp_path / "model.labels.txt", encoding="utf-8").read().split("\n")[:-1] == labels
    interp = tf.lite.Interpreter(model_path=info["path"])
    assert set(interp.get_signature_list()) == {"embed", "classify"}
    embed, classify = interp.get_signature_runner("embed"), interp.get_signature_runner("classify")
    for i in range(len(batch)):  # one image at a time, as on a device
        one = batch[i : i + 1]
        np.testing.assert_allclose(embed(images=one)["embedding"], vec[i : i + 1], atol=1e-4)
        np.testing.assert_allclose(classify(images=one)["probabilities"], probs[i : i + 1], atol=1e-4)


def test_onnx_exports_or_names_what_to_install(world, reference, tmp_path):
    import importlib.util

    from amazon_visual.export import export_run

    out = str(tmp_path / "model.onnx")
    if importlib.util.find_spec("tf2onnx") is None:
        with pytest.raises(UserError, match="pip install tf2onnx onnx"):
            export_run(world["run"], "onnx", out)
        assert not os.path.exists(out)
        return
    ort = pytest.importorskip("onnxruntime")
    batch, vec, probs, _ = reference
    export_run(world["run"], "onnx", out)
    sess = ort.InferenceSession(out)
    res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: batch})))
    np.testing.assert_allclose(res["embedding"], vec, atol=1e-4)
    np.testing.assert_allclose(res["probabilities"], probs, atol=1e-4)


def test_export_errors_are_one_line(world, tmp_path, capsys):
    from amazon_visual.cli import main

    cases = [
        (["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "x")], "not a trained run"),
        (["export", world["run"], "--format", "tflite", "--out", str(tmp_path / "x.bin")], "ending in .tflite"),
        (["export", world["run"], "--out", str(tmp_path / "missing" / "x")], "does not exist"),
    ]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("amazon-visual: error:") and words in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["export", world["run"], "--format", "pickle", "--out", str(tmp_path / "x")])
