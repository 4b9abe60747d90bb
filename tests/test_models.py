"""Models: registry, preprocessing, embedding layer, hinge loss, weights loading."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

from amazon_visual import models  # noqa: E402
from amazon_visual.errors import UserError  # noqa: E402
from amazon_visual.models import losses  # noqa: E402
from amazon_visual.models.layers import Preprocess  # noqa: E402

SMALL = {"alexnet": {"width": 0.25, "fc_units": 64}, "vgg16_bn": {"width": 0.125}}


def _images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype("float32")


def test_hinge_loss_matches_hand_computation():
    # CS231n's example: scores of 3 images over 3 classes, true classes 0, 1, 2.
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]], dtype="float32")
    y = np.eye(3, dtype="float32")
    # by hand: max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1) = 2.9; 0 + 0 = 0; (2.2+3.1+1) + (2.5+3.1+1) = 12.9
    per_example = keras.ops.convert_to_numpy(losses.multiclass_hinge(y, scores))
    np.testing.assert_allclose(per_example, [2.9, 0.0, 12.9], rtol=1e-5)
    mean = float(losses.MulticlassHinge()(y, scores))
    assert mean == pytest.approx((2.9 + 0 + 12.9) / 3, rel=1e-5)
    # integer labels give the same
    assert float(losses.MulticlassHinge()(np.array([0, 1, 2]), scores)) == pytest.approx(mean, rel=1e-5)


def test_svm_loss_adds_l2_weight_decay():
    from amazon_visual import training
    from amazon_visual.models import svm

    model = models.build("svm", 3, image_size=8, pixels=4, l2=0.01)
    fit = training.compile_model(svm.training_model(model), "svm", 1e-3)
    x = _images(3, 8)
    y = np.eye(3, dtype="float32")
    scores = keras.ops.convert_to_numpy(fit(x))
    w = model.get_layer("predictions").kernel.numpy()
    by_hand = np.mean([sum(max(0.0, s[j] - s[i] + 1) for j in range(3) if j != i) for i, s in enumerate(scores)])
    by_hand += 0.01 * np.sum(w**2)
    result = fit.evaluate(x, y, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(by_hand, rel=1e-4)


@pytest.mark.parametrize("name", ["svm", "alexnet", "vgg16_bn", "vgg16", "resnet50", "mobilenet_v2"])
def test_models_build_with_embedding_and_probabilities(name):
    model = models.build(name, 5, image_size=32, **SMALL.get(name, {}))
    x = _images()
    p = keras.ops.convert_to_numpy(model(x))
    assert p.shape == (4, 5)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert model.get_layer("predictions") is not None
    emb = models.embedding_model(model)
    e = keras.ops.convert_to_numpy(emb(x))
    assert e.shape[0] == 4 and e.ndim == 2
    # embedding is the input of predictions
    assert model.get_layer("predictions").input.shape[-1] == e.shape[-1]
    info = models.model_info(name)
    assert info["preprocessing"]


def test_alexnet_has_five_convs_three_fc_at_several_sizes():
    for size in (32, 64, 128, 224):
        m = models.build("alexnet", 10, image_size=size, width=0.125, fc_units=64)
        convs = [la for la in m.layers if isinstance(la, keras.layers.Conv2D)]
        dense = [la for la in m.layers if isinstance(la, keras.layers.Dense)]
        assert len(convs) == 5 and len(dense) == 3, size
        assert m.output.shape[-1] == 10


def test_unknown_model_lists_available():
    with pytest.raises(UserError, match="unknown model 'nope'.*svm, alexnet, vgg16, vgg16_bn, resnet50"):
        models.build("nope", 3)


def test_preprocess_caffe_matches_keras_applications():
    x = _images(2, 16)
    ours = keras.ops.convert_to_numpy(Preprocess("caffe")(x))
    theirs = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)
    tf_mode = keras.ops.convert_to_numpy(Preprocess("tf")(x))
    np.testing.assert_allclose(tf_mode, keras.applications.mobilenet_v2.preprocess_input(x.copy()), atol=1e-5)


def _save_legacy_h5(model, path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize("fmt", ["legacy_h5", "weights_h5"])
def test_vgg16_bn_loads_vgg16_conv_weights(tmp_path, fmt):
    from amazon_visual.models.vgg import VGG16_CONV_NAMES, load_vgg16_conv_weights

    keras.utils.set_random_seed(1)
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    if fmt == "legacy_h5":  # the layout of vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
        path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
        _save_legacy_h5(vgg, path)
    else:
        path = str(tmp_path / "vgg16_notop.weights.h5")
        vgg.save_weights(path)
    model = models.build("vgg16_bn", 4, image_size=32, weights=path)
    backbone = models.find_backbone(model)
    for name in VGG16_CONV_NAMES:
        k_src, b_src = vgg.get_layer(name).get_weights()
        k_dst, b_dst = backbone.get_layer(name).get_weights()
        np.testing.assert_array_equal(k_src, k_dst)
        np.testing.assert_array_equal(b_src, b_dst)
    assert len(VGG16_CONV_NAMES) == 13
    # from a model object too
    fresh = models.build("vgg16_bn", 4, image_size=32)
    assert load_vgg16_conv_weights(fresh, vgg) == 13
    np.testing.assert_array_equal(
        models.find_backbone(fresh).get_layer("block5_conv3").get_weights()[0],
        vgg.get_layer("block5_conv3").get_weights()[0],
    )


def test_weights_file_with_top_loads_into_backbone(tmp_path):
    keras.utils.set_random_seed(2)
    full = keras.applications.MobileNetV2(weights=None, include_top=True)
    path = str(tmp_path / "mobilenet_v2_full.weights.h5")
    full.save_weights(path)
    model = models.build("mobilenet_v2", 3, image_size=32, weights=path)
    backbone = models.find_backbone(model)
    np.testing.assert_array_equal(
        backbone.get_layer("Conv1").get_weights()[0], full.get_layer("Conv1").get_weights()[0]
    )
    np.testing.assert_array_equal(
        backbone.get_layer("Conv_1").get_weights()[0], full.get_layer("Conv_1").get_weights()[0]
    )


def test_weights_file_that_does_not_fit_is_a_user_error(tmp_path):
    path = str(tmp_path / "vgg_notop.weights.h5")
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(path)
    with pytest.raises(UserError, match="vgg_notop.weights.h5 does not fit model mobilenet_v2"):
        models.build("mobilenet_v2", 3, image_size=32, weights=path)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="junk.h5"):
        models.build("vgg16_bn", 3, image_size=32, weights=str(junk))
    with pytest.raises(UserError, match="does not exist"):
        models.build("resnet50", 3, image_size=32, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(UserError, match="no pretrained weights"):
        models.build("alexnet", 3, image_size=32, weights="imagenet")


def test_build_embedder_and_saved_model_roundtrip(tmp_path):
    emb = models.build_embedder("mobilenet_v2", image_size=32, weights="none")
    assert emb.get_layer("embedding").output.shape[-1] == 1280
    model = models.build("vgg16_bn", 3, image_size=32, width=0.125)
    x = _images(3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(models.embedding_model(loaded)(x)),
        keras.ops.convert_to_numpy(models.embedding_model(model)(x)),
        rtol=1e-5,
        atol=1e-5,
    )
