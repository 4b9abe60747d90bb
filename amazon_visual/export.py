"""``amazon-visual export``: a trained run's model for other servers.

- ``saved_model``: a TensorFlow SavedModel for TF Serving, written through Keras's
  :class:`keras.export.ExportArchive`, with two signatures on float32 images
  ``(n, S, S, 3)`` in [0, 255] (the model does its own preprocessing):
  ``embed`` -> ``{"embedding"}`` (the run's ``embedding`` layer, L2-normalised: what an
  INDEX_DIR stores) and ``classify`` -> ``{"probabilities", "label"}``, the label looked up in
  ``assets/labels.txt`` (a ``tf.lookup`` table initialised from the asset file). ``embed`` is
  also ``serving_default``.
- ``tflite``: the same two signatures in one ``.tflite`` file (``classify`` gives the
  probabilities; the class names go to ``<name>.labels.txt`` beside it).
- ``onnx``: Keras's ``model.export(format="onnx")`` of a model with the outputs ``embedding``
  and ``probabilities``; it needs ``tf2onnx`` and ``onnx`` (a clear error says so when they
  are missing).

Images are resized the way the index does it (:func:`amazon_visual.retrieval.embeddings.prepare_image`)
before they are given to any of these.
"""

import importlib.util
import os
import shutil
import tempfile

from amazon_visual.errors import UserError

FORMATS = ("saved_model", "tflite", "onnx")
SIGNATURES = ("embed", "classify")


def export_model(run_dir):
    """(Keras model images -> {"embedding", "probabilities"}, labels, image size) of RUN_DIR."""
    _check_run(run_dir)
    import keras

    from amazon_visual.retrieval.embeddings import Embedder

    emb = Embedder.from_run(run_dir)
    size = emb.image_size
    images = keras.Input((size, size, 3), name="images", dtype="float32")
    vec, probs = emb.model(images)
    vec = keras.layers.UnitNormalization(axis=-1, name="embedding")(vec)
    probs = keras.layers.Identity(name="probabilities")(probs)
    model = keras.Model(images, {"embedding": vec, "probabilities": probs}, name="amazon_visual_export")
    return model, list(emb.labels or []), size


def _check_run(run_dir):
    if not os.path.isfile(os.path.join(os.fspath(run_dir), "model.keras")):
        raise UserError(f"{run_dir} is not a trained run (no model.keras): give a RUN_DIR from amazon-visual train")


def export_run(run_dir, format="saved_model", out=None, overwrite=False):
    """Export RUN_DIR's model to ``out`` in ``format``; returns ``{"format", "path", "signatures", ...}``."""
    _check_run(run_dir)
    if format not in FORMATS:
        raise UserError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if not out:
        raise UserError("--out is required: the folder (saved_model) or file (.tflite, .onnx) to write")
    out = os.path.abspath(os.fspath(out))
    if format == "onnx" and importlib.util.find_spec("tf2onnx") is None:
        raise UserError(
            "ONNX export needs the packages tf2onnx and onnx (Keras's model.export uses them with "
            "TensorFlow): pip install tf2onnx onnx, or export --format saved_model / tflite"
        )
    _check_out(out, format, overwrite)
    model, labels, size = export_model(run_dir)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=os.path.dirname(out)) as tmp:
        if format == "saved_model":
            _write_saved_model(model, labels, size, os.path.join(tmp, "saved_model"), with_labels=True)
            _move_into_place(os.path.join(tmp, "saved_model"), out)
        elif format == "tflite":
            _write_tflite(model, labels, size, tmp, out)
        else:
            model.export(os.path.join(tmp, "model.onnx"), format="onnx", verbose=False)
            _move_into_place(os.path.join(tmp, "model.onnx"), out)
    return {
        "format": format,
        "path": out,
        "signatures": list(SIGNATURES) if format != "onnx" else ["embedding", "probabilities"],
        "image_size": size,
        "labels": labels,
        "run_dir": os.path.abspath(run_dir),
    }


def _check_out(out, format, overwrite):
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise UserError(f"--out {out}: the folder {folder} does not exist: create it first")
    if format in ("tflite", "onnx") and not out.endswith("." + format):
        raise UserError(f"--out {out}: a {format} export is one file ending in .{format}")
    if os.path.exists(out) and not overwrite:
        raise UserError(f"--out {out} exists: choose another path or pass --overwrite")


def _move_into_place(src, dest):
    if os.path.isdir(dest) and not os.path.islink(dest):
        old = dest + f".old-{os.getpid()}"
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)


def _write_saved_model(model, labels, size, path, with_labels):
    """The SavedModel with the ``embed`` and ``classify`` signatures (labels from an asset file if ``with_labels``)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
    archive.add_endpoint(
        "embed", lambda images: {"embedding": model(images, training=False)["embedding"]}, input_signature=spec
    )
    table = None
    if with_labels:
        labels_file = os.path.join(os.path.dirname(path), "labels.txt")
        with open(labels_file, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in labels))
        init = tf.lookup.TextFileInitializer(
            labels_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE
        )
        table = tf.lookup.StaticHashTable(init, default_value="")
        archive.track(table)

    def classify(images):
        probs = model(images, training=False)["probabilities"]
        if table is None:
            return {"probabilities": probs}
        return {"probabilities": probs, "label": table.lookup(tf.argmax(probs, axis=-1))}

    archive.add_endpoint("classify", classify, input_signature=spec)
    archive.write_out(path, verbose=False)


def _write_tflite(model, labels, size, tmp, out):
    import tensorflow as tf

    from amazon_visual.atomic import write_bytes

    saved = os.path.join(tmp, "for-tflite")
    _write_saved_model(model, labels, size, saved, with_labels=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(SIGNATURES))
    write_bytes(out, converter.convert())
    write_bytes(os.path.splitext(out)[0] + ".labels.txt", "".join(f"{n}\n" for n in labels).encode("utf-8"))
