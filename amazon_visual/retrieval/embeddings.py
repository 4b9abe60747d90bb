"""Image embeddings: from a trained run's ``embedding`` layer or a pretrained backbone.

One preprocessing path for everything that gets embedded. An image -- a stored dataset
image or a user's query -- is decoded to uint8 RGB (Pillow for queries, TFDS for the
dataset), then :func:`amazon_visual.data.resize_image` brings it to the model's
``image_size`` with the resize method the model was trained with (``"pad"``: keep the
aspect ratio, pad white) -- the same function ``amazon_visual.data.load`` uses for
training. The model itself does the model-specific preprocessing (first layers).

- :class:`Embedder` -- ``Embedder.from_run(RUN_DIR)`` / ``Embedder.from_backbone(name, weights,
  image_size)``; ``embed_images`` (query images), ``describe()`` (what the manifest records).
- :func:`load_image` -- path, http(s) URL, bytes, PIL image or array -> uint8 HxWx3 (UserError if unreadable).
- :func:`embed_dataset` -- a DATA_DIR's splits in batches with a progress bar into
  ``embeddings.npy`` (float32, L2-normalised) + ``items.csv`` + ``thumbs/``; in shards, resumable
  (:mod:`.records` cuts the work, :mod:`.shards` writes and assembles it; :mod:`.beam_embed`
  does the same work on Apache Beam).
"""

import hashlib
import io
import json
import os
import re
import shutil
import sys
import threading

import numpy as np

from amazon_visual.errors import UserError
from amazon_visual.retrieval.layout import THUMB_SIZE, safe_name  # noqa: F401  (re-exported)

DEFAULT_RESIZE = "pad"
CHUNK_ITEMS = 2048
URL_TIMEOUT = 15
MAX_URL_BYTES = 32 << 20


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def _describe_input(img):
    if isinstance(img, (str, os.PathLike)):
        return str(img)
    return f"<{type(img).__name__}>"


def _fetch_url(url):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "amazon-visual"})
    try:
        with urllib.request.urlopen(req, timeout=URL_TIMEOUT) as r:
            data = r.read(MAX_URL_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(
            f"query image {url} cannot be downloaded ({reason}): check the URL or pass a local file"
        ) from None
    if len(data) > MAX_URL_BYTES:
        raise UserError(f"query image {url} is larger than {MAX_URL_BYTES >> 20} MiB: pass a smaller image")
    return data


def load_image(img):
    """Decode a query image to a uint8 RGB array (H, W, 3).

    ``img``: a file path, an ``http(s)://`` URL, encoded image ``bytes``, a PIL image, or
    an array (H, W, 3) / (H, W) with values in [0, 255] (uint8 or float). Raises
    :class:`UserError` for anything that is not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = _describe_input(img)
    try:
        if isinstance(img, Image.Image):
            pil = img
        elif isinstance(img, np.ndarray) or (hasattr(img, "shape") and hasattr(img, "dtype")):
            a = np.asarray(img)
            if a.ndim == 2:
                a = np.stack([a] * 3, -1)
            if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
                raise UserError(f"query array has shape {a.shape}: pass an image array of shape (H, W, 3)")
            if a.shape[-1] == 1:
                a = np.repeat(a, 3, -1)
            a = a[..., :3]
            if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
                raise UserError("query array is not finite numbers: pass RGB values in [0, 255]")
            if a.dtype != np.uint8:
                a = np.clip(np.rint(a.astype(np.float64)), 0, 255).astype(np.uint8)
            return np.ascontiguousarray(a)
        else:
            if isinstance(img, (bytes, bytearray, memoryview)):
                data = bytes(img)
                name = "query bytes"
            elif isinstance(img, (str, os.PathLike)):
                s = os.fspath(img)
                if re.match(r"^https?://", s, re.I):
                    data = _fetch_url(s)
                elif re.match(r"^[a-z][a-z0-9+.-]*://", s, re.I):
                    raise UserError(f"query image {s}: only local files and http(s) URLs are supported")
                else:
                    if not os.path.isfile(s):
                        raise UserError(f"query image {s} does not exist: pass an image file or an http(s) URL")
                    with open(s, "rb") as f:
                        data = f.read()
            else:
                raise UserError(
                    f"query image of type {type(img).__name__} is not supported: "
                    "pass a path, URL, bytes, PIL image or array"
                )
            pil = Image.open(io.BytesIO(data))
            pil.load()
        pil = ImageOps.exif_transpose(pil)
        if pil.mode != "RGB":
            if pil.mode in ("RGBA", "LA", "P"):
                rgba = pil.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                pil = Image.alpha_composite(bg, rgba)
            pil = pil.convert("RGB")
        a = np.asarray(pil, dtype=np.uint8)
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(
            f"query image {name} is not a readable image ({type(e).__name__}): "
            "pass a JPEG, PNG, WebP or other image Pillow can read"
        ) from None
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise UserError(f"query image {name} is empty: pass a real image")
    return np.ascontiguousarray(a)


def prepare_image(image, image_size, resize=DEFAULT_RESIZE):
    """uint8 HxWx3 -> float32 (image_size, image_size, 3) in [0, 255], exactly as the dataset pipeline does."""
    from amazon_visual.data import resize_image

    return np.asarray(resize_image(image, int(image_size), resize), dtype=np.float32)


def thumbnail_jpeg(image, size=THUMB_SIZE, quality=85):
    """JPEG bytes of a thumbnail (longer side ``size``) of a uint8 image array or PIL image."""
    from PIL import Image

    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    pil = pil.convert("RGB")
    pil.thumbnail((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------
# fingerprints
# --------------------------------------------------------------------------
def _sha256_file(path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def run_fingerprint(run_dir):
    """Fingerprint of a trained run: sha256 of its config.json (canonical) and model.keras."""
    h = hashlib.sha256()
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        h.update(json.dumps(json.load(f), sort_keys=True).encode())
    _sha256_file(os.path.join(run_dir, "model.keras"), h)
    return h.hexdigest()[:16]


def backbone_fingerprint(name, weights, image_size):
    w = "none" if weights is None or str(weights).lower() in ("none", "random", "") else str(weights)
    if w.lower() != "imagenet" and w != "none":
        if not os.path.isfile(w):
            raise UserError(f"weights file {w} does not exist: pass --weights imagenet, none or an existing file")
        w = "sha256:" + _sha256_file(w).hexdigest()[:16]
    elif w.lower() == "imagenet":
        w = "imagenet"
    return f"{name}:{w}:{int(image_size)}"


def dataset_fingerprint(data_dir):
    path = os.path.join(os.fspath(data_dir), "dataset_info.json")
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return None


# --------------------------------------------------------------------------
# the embedder
# --------------------------------------------------------------------------
class Embedder:
    """A model that maps [0, 255] float images to embedding vectors (and, for a run, class probabilities).

    Calls are serialised by a lock, so one Embedder can be shared by threads.
    """

    def __init__(self, model, image_size, info, labels=None, resize=DEFAULT_RESIZE, with_probs=False):
        self.model = model
        self.image_size = int(image_size)
        self.info = dict(info)
        self.labels = list(labels) if labels else None
        self.resize = resize
        self.with_probs = with_probs
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir):
        """Embedder from a trained RUN_DIR: outputs of its ``embedding`` layer and its class probabilities."""
        run_dir = os.fspath(run_dir)
        for name in ("model.keras", "config.json"):
            if not os.path.isfile(os.path.join(run_dir, name)):
                raise UserError(f"{run_dir} is not a trained run (no {name}): train one with amazon-visual train")
        fingerprint = run_fingerprint(run_dir)
        model, config, labels = _load_run(run_dir)
        import keras

        layer_name = config.get("embedding_layer", "embedding")
        try:
            emb_out = model.get_layer(layer_name).output
        except ValueError:
            raise UserError(
                f"model of {run_dir} has no layer named {layer_name!r}: retrain it with amazon-visual train"
            ) from None
        # a retrieval run (metric learning) outputs its embedding and has no class probabilities
        objective = config.get("objective", "classify")
        outputs = emb_out if objective == "retrieval" else [emb_out, model.output]
        combined = keras.Model(model.inputs, outputs, name=f"{model.name}_embed_and_predict")
        dim = int(emb_out.shape[-1])
        image_size = int(config.get("image_size") or model.inputs[0].shape[1])
        info = {
            "source": "run",
            "model": config.get("model", model.name),
            "run_dir": os.path.abspath(run_dir),
            "fingerprint": fingerprint,
            "embedding_layer": layer_name,
            "embedding_dim": dim,
            "image_size": image_size,
            "weights": config.get("weights"),
            "resize": config.get("resize", DEFAULT_RESIZE),
            "preprocessing": config.get("preprocessing"),
            "objective": objective,
            "train_classes": list(labels),
        }
        return cls(
            combined, image_size, info, labels=labels, resize=info["resize"], with_probs=objective != "retrieval"
        )

    @classmethod
    def from_backbone(cls, name, weights="imagenet", image_size=224):
        """Embedder from a pretrained keras.applications backbone (global-average-pooled features)."""
        from amazon_visual import models

        image_size = int(image_size)
        fingerprint = backbone_fingerprint(name, weights, image_size)
        try:
            model = models.build_embedder(name, image_size=image_size, weights=weights)
        except UserError:
            raise
        except Exception as e:  # e.g. imagenet weights that cannot be downloaded
            raise UserError(
                f"backbone {name} with weights {weights} cannot be built ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}): pass --weights PATH to a local "
                "weights file or check the network"
            ) from None
        dim = int(model.outputs[0].shape[-1])
        info = {
            "source": "backbone",
            "model": str(name).lower().replace("-", "_"),
            "run_dir": None,
            "fingerprint": fingerprint,
            "embedding_layer": "embedding",
            "embedding_dim": dim,
            "image_size": image_size,
            "weights": fingerprint.split(":", 1)[1].rsplit(":", 1)[0],
            "resize": DEFAULT_RESIZE,
            "preprocessing": None,
        }
        if info["weights"].startswith("sha256:"):  # a weights file: where it was, so queries can load it
            info["weights_path"] = os.path.abspath(os.fspath(weights))
        return cls(model, image_size, info, labels=None, resize=DEFAULT_RESIZE, with_probs=False)

    @classmethod
    def from_manifest(cls, manifest, run_dir=None, index_dir=None):
        """The Embedder an INDEX_DIR was built with (``run_dir`` overrides the recorded one, e.g. after a move).

        A backbone with random weights (``--weights none``) cannot be rebuilt identically:
        its model is saved in INDEX_DIR (``embedder.keras``) and loaded from there.
        """
        if manifest.get("embedder_file"):
            if index_dir is None:
                raise UserError("this index keeps its own embedder model: load it with its INDEX_DIR")
            path = os.path.join(os.fspath(index_dir), manifest["embedder_file"])
            import keras

            import amazon_visual.models.layers  # noqa: F401  (registers custom layers)

            try:
                model = keras.saving.load_model(path, compile=False)
            except Exception as e:
                raise UserError(
                    f"{path} cannot be loaded ({type(e).__name__}): rebuild the index with "
                    "amazon-visual index --overwrite"
                ) from None
            info = {
                k: manifest.get(k)
                for k in (
                    "source",
                    "model",
                    "run_dir",
                    "fingerprint",
                    "embedding_layer",
                    "embedding_dim",
                    "image_size",
                    "weights",
                    "resize",
                    "preprocessing",
                )
            }
            return cls(model, manifest["image_size"], info, resize=manifest.get("resize") or DEFAULT_RESIZE)
        if manifest.get("source") == "backbone":
            weights = manifest.get("weights") or "imagenet"
            if str(weights).startswith("sha256:"):
                path = manifest.get("weights_path")
                if not path or not os.path.isfile(path):
                    raise UserError(
                        f"this index was built from the backbone weights file {path or '(not recorded)'} "
                        f"({weights}), which is not there: pass --weights PATH to that file "
                        "(Python: Recommender.load(INDEX_DIR, backbone_weights=PATH))"
                    )
                if "sha256:" + _sha256_file(path).hexdigest()[:16] != weights:
                    raise UserError(
                        f"the weights file {path} is not the one this index was built from "
                        f"({weights}): pass --weights PATH to that file"
                    )
                weights = path
            return cls.from_backbone(manifest["model"], weights, manifest["image_size"])
        run_dir = run_dir or manifest.get("run_dir")
        if not run_dir or not os.path.isdir(run_dir):
            raise UserError(
                f"the run this index was built from ({run_dir}) is not there: "
                "pass run_dir= (Python) or --run RUN_DIR (CLI) with that run"
            )
        return cls.from_run(run_dir)

    @property
    def dim(self):
        return int(self.info["embedding_dim"])

    def describe(self):
        return dict(self.info)

    def predict(self, batch):
        """float32 batch (n, S, S, 3) in [0, 255] -> (embeddings float32 (n, d), probabilities or None)."""
        batch = np.asarray(batch, dtype=np.float32)
        with self._lock:
            out = self.model.predict_on_batch(batch)
        if self.with_probs:
            emb, probs = out
            return np.asarray(emb, np.float32).reshape(len(batch), -1), np.asarray(probs, np.float32)
        return np.asarray(out, np.float32).reshape(len(batch), -1), None

    def embed_images(self, images):
        """Query images (anything :func:`load_image` takes) -> (embeddings (n, d), probs or None, uint8 images)."""
        arrays = [load_image(im) for im in images]
        batch = np.stack([prepare_image(a, self.image_size, self.resize) for a in arrays])
        emb, probs = self.predict(batch)
        return emb, probs, arrays


def _is_random(weights):
    return weights is None or str(weights).lower() in ("none", "random", "")


def kept_model(partial, fingerprint):
    """``(path, present)`` of the embedder model kept in ``partial`` for ``fingerprint``."""
    path = os.path.join(partial, "embedder.keras")
    try:
        with open(path + ".json", encoding="utf-8") as f:
            present = json.load(f).get("fingerprint") == fingerprint and os.path.isfile(path)
    except (OSError, ValueError):
        present = False
    return path, present


def keep_model(embedder, partial, fingerprint):
    """Save ``embedder``'s model as ``partial/embedder.keras`` (unless it is there for ``fingerprint``); its path."""
    from amazon_visual.atomic import write_text

    path, present = kept_model(partial, fingerprint)
    if not present:
        os.makedirs(partial, exist_ok=True)
        tmp = os.path.join(partial, f"embedder.tmp-{os.getpid()}.keras")
        embedder.model.save(tmp)
        os.replace(tmp, path)
        write_text(path + ".json", json.dumps({"fingerprint": fingerprint}))
    return path


def model_for_workers(embedder, partial):
    """Path of a ``.keras`` file holding ``embedder``'s model, for workers of another process (Beam)."""
    d = embedder.describe()
    if d["source"] == "backbone" and _is_random(d.get("weights")):
        return kept_model(partial, None)[0]  # kept there by embedder_for_index
    return keep_model(embedder, partial, d["fingerprint"])


def embedder_for_index(run_dir, backbone, weights, image_size, partial):
    """The Embedder ``amazon-visual index`` uses. A backbone with random weights (``none``) is kept in
    ``partial/embedder.keras`` at once and reloaded from there by a resumed run, so that every
    embedding of one index comes from the same weights; its fingerprint includes the file's hash."""
    if run_dir is not None:
        emb = Embedder.from_run(run_dir)
        if image_size and int(image_size) != emb.image_size:
            raise UserError(
                f"--image-size {image_size} differs from the run's image size {emb.image_size}: "
                "leave it out for a trained run"
            )
        return emb
    size = int(image_size or 224)
    if not _is_random(weights):
        return Embedder.from_backbone(backbone, weights=weights, image_size=size)
    base = backbone_fingerprint(backbone, weights, size)
    path, present = kept_model(partial, base)
    if present:
        info = {
            "source": "backbone",
            "model": str(backbone).lower().replace("-", "_"),
            "run_dir": None,
            "fingerprint": base,
            "embedding_layer": "embedding",
            "image_size": size,
            "weights": "none",
            "resize": DEFAULT_RESIZE,
            "preprocessing": None,
            "embedder_file": os.path.basename(path),
        }
        emb = Embedder.from_manifest(info, index_dir=partial)
        emb.info["embedding_dim"] = int(emb.model.outputs[0].shape[-1])
    else:
        emb = Embedder.from_backbone(backbone, weights=weights, image_size=size)
        keep_model(emb, partial, base)
    emb.info["fingerprint"] = f"{base}:{_sha256_file(path).hexdigest()[:16]}"
    return emb


def _load_run(run_dir):
    from amazon_visual.training.runs import load_run

    return load_run(run_dir)


# --------------------------------------------------------------------------
# a whole dataset
# --------------------------------------------------------------------------
def partial_state(embedder_fingerprint, data_dir, splits, counts, chunk_items, thumbnails):
    """What a resumed embedding must share with the run that wrote ``.partial`` (local or Beam alike)."""
    return {
        "format": 2,
        "splits": list(splits),
        "chunk_items": int(chunk_items),
        "thumbnails": bool(thumbnails),
        "model": embedder_fingerprint,
        "dataset": dataset_fingerprint(data_dir),
        "counts": counts,
    }


def open_partial(out_dir, state):
    """``out_dir/.partial``, kept when it was written with the same ``state`` and emptied otherwise."""
    from amazon_visual.atomic import write_bytes as atomic_write_bytes
    from amazon_visual.retrieval.layout import PARTIAL

    partial = os.path.join(os.fspath(out_dir), PARTIAL)
    state_path = os.path.join(partial, "state.json")
    if os.path.isdir(partial):
        try:
            with open(state_path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(state)):
            for name in os.listdir(partial):  # the embedder a resumed run reuses stays (see build_index)
                if not name.startswith("embedder"):
                    p = os.path.join(partial, name)
                    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(partial, exist_ok=True)
    if not os.path.isfile(state_path):
        atomic_write_bytes(state_path, json.dumps(state).encode())
    return partial


def start_dataset(embedder, data_dir, out_dir, splits, batch_size, chunk_items, thumbnails):
    """Plan the embedding of DATA_DIR's ``splits`` into ``out_dir`` and open its ``.partial``.

    Returns ``{"ranges", "todo" (the ranges without a complete shard), "counts", "total",
    "names", "partial", "thumbs_root"}`` -- shared by the local loop and the Beam pipeline.
    """
    from amazon_visual import data
    from amazon_visual.retrieval import records, shards
    from amazon_visual.retrieval.layout import THUMBS

    out_dir = os.fspath(out_dir)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    chunk_items = records.round_chunk(chunk_items, batch_size)
    names = data.class_names(data_dir)
    ranges, counts = records.plan(data_dir, list(splits), chunk_items)
    total = sum(counts.values())
    if total == 0:
        raise UserError(f"the splits {', '.join(splits)} of {data_dir} hold no example: choose other --splits")
    state = partial_state(embedder.describe().get("fingerprint"), data_dir, splits, counts, chunk_items, thumbnails)
    partial = open_partial(out_dir, state)
    if thumbnails:
        os.makedirs(os.path.join(out_dir, THUMBS), exist_ok=True)
    thumbs_root = out_dir if thumbnails else None
    todo = [r for r in ranges if not shards.shard_complete(os.path.join(partial, r.name), thumbs_root)]
    return {
        "ranges": ranges,
        "todo": todo,
        "counts": counts,
        "total": total,
        "names": names,
        "partial": partial,
        "thumbs_root": thumbs_root,
    }


def finish_dataset(job, embedder, data_dir, out_dir, cleanup):
    """Assemble ``embeddings.npy`` and ``items.csv`` from the job's shards; the summary embed_dataset returns."""
    from amazon_visual.retrieval import shards

    partial = job["partial"]
    shards.assemble(
        [os.path.join(partial, r.name) for r in job["ranges"]], os.fspath(out_dir), embedder.dim, job["total"]
    )
    if cleanup:
        shutil.rmtree(partial, ignore_errors=True)
    return {
        "n_items": job["total"],
        "split_counts": job["counts"],
        "class_names": job["names"],
        "dataset_fingerprint": dataset_fingerprint(data_dir),
    }


def embed_dataset(
    embedder,
    data_dir,
    out_dir,
    splits=("train", "validation", "test"),
    batch_size=64,
    thumbnails=True,
    progress=True,
    chunk_items=CHUNK_ITEMS,
    cleanup=True,
):
    """Embed DATA_DIR's ``splits`` into ``out_dir``: ``embeddings.npy`` (float32, L2-normalised),
    ``items.csv`` and ``thumbs/``.

    Work is kept in ``out_dir/.partial`` as one shard per range of at most ``chunk_items``
    items (:mod:`.records`, :mod:`.shards`); rerunning the same call after an interruption
    resumes after the last complete shard. ``cleanup=False`` keeps ``.partial`` (the caller
    removes it once the whole INDEX_DIR is written). Returns ``{"n_items", "split_counts",
    "class_names", "dataset_fingerprint"}``.
    """
    from tqdm import tqdm

    from amazon_visual import data
    from amazon_visual.retrieval import records

    job = start_dataset(embedder, data_dir, out_dir, splits, batch_size, chunk_items, thumbnails)
    bar = tqdm(total=job["total"], desc="embedding", unit="img", file=sys.stderr, disable=not progress)
    bar.update(job["total"] - sum(len(r) for r in job["todo"]))
    features = data.info(data_dir).features
    for r in job["todo"]:
        emb, fields = records.embed_records(
            lambda b: embedder.predict(b)[0],
            records.read_range(r),
            features,
            embedder.image_size,
            embedder.resize,
            thumbnails,
            batch_size,
            on_batch=bar.update,
        )
        records.write_range(job["partial"], r, emb, fields, job["names"], job["thumbs_root"])
    bar.close()
    return finish_dataset(job, embedder, data_dir, out_dir, cleanup)
