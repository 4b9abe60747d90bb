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
  ``embeddings.npy`` (float32, L2-normalised) + ``items.csv`` + ``thumbs/``; chunked, resumable.
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

DEFAULT_RESIZE = "pad"
THUMB_SIZE = 160
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
        raise UserError(f"query image {url} cannot be downloaded ({reason}): check the URL or pass a local file") from None
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
                raise UserError(f"query image of type {type(img).__name__} is not supported: "
                                "pass a path, URL, bytes, PIL image or array")
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
        raise UserError(f"query image {name} is not a readable image ({type(e).__name__}): "
                        "pass a JPEG, PNG, WebP or other image Pillow can read") from None
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


def safe_name(text, max_len=60):
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s[:max_len] or "item"


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
            raise UserError(f"model of {run_dir} has no layer named {layer_name!r}: retrain it with amazon-visual train") from None
        # a retrieval run (metric learning) outputs its embedding and has no class probabilities
        objective = config.get("objective", "classify")
        outputs = emb_out if objective == "retrieval" else [emb_out, model.output]
        combined = keras.Model(model.inputs, outputs, name=f"{model.name}_embed_and_predict")
        dim = int(emb_out.shape[-1])
        image_size = int(config.get("image_size") or model.inputs[0].shape[1])
        info = {"source": "run", "model": config.get("model", model.name), "run_dir": os.path.abspath(run_dir),
                "fingerprint": fingerprint, "embedding_layer": layer_name, "embedding_dim": dim,
                "image_size": image_size, "weights": config.get("weights"), "resize": config.get("resize", DEFAULT_RESIZE),
                "preprocessing": config.get("preprocessing"), "objective": objective, "train_classes": list(labels)}
        return cls(combined, image_size, info, labels=labels, resize=info["resize"], with_probs=objective != "retrieval")

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
            raise UserError(f"backbone {name} with weights {weights} cannot be built ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}): pass --weights PATH to a local "
                            "weights file or check the network") from None
        dim = int(model.outputs[0].shape[-1])
        info = {"source": "backbone", "model": str(name).lower().replace("-", "_"), "run_dir": None,
                "fingerprint": fingerprint, "embedding_layer": "embedding", "embedding_dim": dim,
                "image_size": image_size, "weights": fingerprint.split(":", 1)[1].rsplit(":", 1)[0],
                "resize": DEFAULT_RESIZE, "preprocessing": None}
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
                raise UserError(f"{path} cannot be loaded ({type(e).__name__}): rebuild the index with "
                                "amazon-visual index --overwrite") from None
            info = {k: manifest.get(k) for k in ("source", "model", "run_dir", "fingerprint", "embedding_layer",
                                                 "embedding_dim", "image_size", "weights", "resize", "preprocessing")}
            return cls(model, manifest["image_size"], info, resize=manifest.get("resize") or DEFAULT_RESIZE)
        if manifest.get("source") == "backbone":
            weights = manifest.get("weights") or "imagenet"
            if str(weights).startswith("sha256:"):
                path = manifest.get("weights_path")
                if not path or not os.path.isfile(path):
                    raise UserError(f"this index was built from the backbone weights file {path or '(not recorded)'} "
                                    f"({weights}), which is not there: pass --weights PATH to that file "
                                    "(Python: Recommender.load(INDEX_DIR, backbone_weights=PATH))")
                weights = path  # its checksum is checked against the manifest's fingerprint
            return cls.from_backbone(manifest["model"], weights, manifest["image_size"])
        run_dir = run_dir or manifest.get("run_dir")
        if not run_dir or not os.path.isdir(run_dir):
            raise UserError(f"the run this index was built from ({run_dir}) is not there: "
                            "pass run_dir= (Python) or --run RUN_DIR (CLI) with that run")
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


def _load_run(run_dir):
    from amazon_visual.training.runs import load_run

    return load_run(run_dir)


# --------------------------------------------------------------------------
# a whole dataset
# --------------------------------------------------------------------------
def _text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def embed_dataset(embedder, data_dir, out_dir, splits=("train", "validation", "test"), batch_size=64,
                  thumbnails=True, progress=True, chunk_items=CHUNK_ITEMS):
    """Embed DATA_DIR's ``splits`` into ``out_dir``: ``embeddings.npy`` (float32, L2-normalised),
    ``items.csv`` and ``thumbs/``.

    Work is kept in ``out_dir/.partial`` as chunks of ``chunk_items`` items; rerunning the
    same call after an interruption resumes after the last complete chunk. Returns
    ``{"n_items", "split_counts", "class_names", "dataset_fingerprint"}``.
    """
    import pandas as pd
    import tensorflow as tf
    from tqdm import tqdm

    from amazon_visual import data
    from amazon_visual.atomic import write_bytes as atomic_write_bytes
    from amazon_visual.retrieval.layout import EMBEDDINGS, ITEMS, THUMBS, normalize

    out_dir = os.fspath(out_dir)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    chunk_items = max(batch_size, (int(chunk_items) // batch_size) * batch_size)
    names = data.class_names(data_dir)
    available = data.splits(data_dir)
    splits = list(splits)
    for s in splits:
        if s not in available:
            raise UserError(f"{data_dir} has no split {s!r}: use --splits with some of {', '.join(available)}")
    counts = {s: data.num_examples(data_dir, s) for s in splits}
    total = sum(counts.values())
    if total == 0:
        raise UserError(f"the splits {', '.join(splits)} of {data_dir} hold no example: choose other --splits")

    partial = os.path.join(out_dir, ".partial")
    thumbs_dir = os.path.join(out_dir, THUMBS)
    state = {"splits": splits, "batch_size": batch_size, "chunk_items": chunk_items, "thumbnails": bool(thumbnails),
             "model": embedder.describe().get("fingerprint"), "dataset": dataset_fingerprint(data_dir),
             "counts": counts}
    state_path = os.path.join(partial, "state.json")
    if os.path.isdir(partial):
        try:
            with open(state_path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(state)):
            shutil.rmtree(partial)
    os.makedirs(partial, exist_ok=True)
    if thumbnails:
        os.makedirs(thumbs_dir, exist_ok=True)
    if not os.path.isfile(state_path):
        atomic_write_bytes(state_path, json.dumps(state).encode())

    size, resize = embedder.image_size, embedder.resize

    def convert(ex):
        img = ex["image"]
        out = {"pixels": data.resize_image(img, size, resize), "asin": ex["asin"], "title": ex["title"],
               "category": ex["category"], "image_url": ex["image_url"], "label": ex["label"]}
        if thumbnails:
            small = tf.image.resize(img, (THUMB_SIZE, THUMB_SIZE), preserve_aspect_ratio=True, antialias=True)
            out["thumb"] = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8), quality=85)
        return out

    bar = tqdm(total=total, desc="embedding", unit="img", file=sys.stderr, disable=not progress)
    offset = 0
    chunk_files = []
    for split in splits:
        n = counts[split]
        n_chunks = (n + chunk_items - 1) // chunk_items
        done = 0
        while done < n_chunks and _chunk_complete(partial, split, done, out_dir if thumbnails else None):
            done += 1
        bar.update(min(n, done * chunk_items))
        if done < n_chunks:
            ds = data.load(data_dir, split=split, prefetch=False).skip(done * chunk_items)
            ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)
            c = done
            buf_emb, buf_rows = [], []
            for batch in ds.as_numpy_iterator():
                emb, _ = embedder.predict(batch["pixels"])
                emb = normalize(emb)
                m = len(emb)
                for j in range(m):
                    item_id = offset + c * chunk_items + sum(len(e) for e in buf_emb) + j
                    asin = _text(batch["asin"][j])
                    label_id = int(batch["label"][j])
                    thumb = ""
                    if thumbnails:
                        thumb = f"{THUMBS}/{item_id:07d}-{safe_name(asin)}.jpg"
                        atomic_write_bytes(os.path.join(out_dir, thumb), bytes(batch["thumb"][j]))
                    buf_rows.append({"asin": asin, "title": _text(batch["title"][j]),
                                     "category": _text(batch["category"][j]),
                                     "label": names[label_id] if 0 <= label_id < len(names) else str(label_id),
                                     "label_id": label_id, "image_url": _text(batch["image_url"][j]),
                                     "split": split, "thumb": thumb})
                buf_emb.append(emb)
                bar.update(m)
                if sum(len(e) for e in buf_emb) >= chunk_items:
                    _write_chunk(partial, split, c, buf_emb, buf_rows)
                    c += 1
                    buf_emb, buf_rows = [], []
            if buf_emb:
                _write_chunk(partial, split, c, buf_emb, buf_rows)
        for i in range(n_chunks):
            chunk_files.append(os.path.join(partial, f"{split}-{i:05d}"))
        offset += n
    bar.close()

    # assemble: embeddings.npy (written in place through a memmap, then moved) and items.csv
    dim = embedder.dim
    tmp = os.path.join(out_dir, f"{EMBEDDINGS}.tmp-{os.getpid()}.npy")
    rows = []
    pos = 0
    for base in chunk_files:
        with open(base + ".json", encoding="utf-8") as f:
            rows.extend(json.load(f))
    if len(rows) != total:
        raise UserError(f"embedding {data_dir} produced {len(rows)} items, expected {total}: "
                        f"remove {partial} and run the command again")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, dim))
    for base in chunk_files:
        e = np.load(base + ".npy")
        out[pos:pos + len(e)] = e
        pos += len(e)
    out.flush()
    del out
    os.replace(tmp, os.path.join(out_dir, EMBEDDINGS))
    items = pd.DataFrame(rows, columns=["asin", "title", "category", "label", "label_id", "image_url", "split", "thumb"])
    atomic_write_bytes(os.path.join(out_dir, ITEMS), items.to_csv(index=False).encode("utf-8"))
    shutil.rmtree(partial, ignore_errors=True)
    return {"n_items": total, "split_counts": counts, "class_names": names,
            "dataset_fingerprint": dataset_fingerprint(data_dir)}


def _chunk_complete(partial, split, c, out_dir):
    """A chunk counts as done when its .json (written last) exists and, with thumbnails, its thumbnails too."""
    path = os.path.join(partial, f"{split}-{c:05d}.json")
    if not os.path.isfile(path) or not os.path.isfile(path[:-5] + ".npy"):
        return False
    if out_dir is None:
        return True
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except (OSError, ValueError):
        return False
    return all(os.path.isfile(os.path.join(out_dir, r["thumb"])) for r in rows if r.get("thumb"))


def _write_chunk(partial, split, c, embs, rows):
    from amazon_visual.atomic import write_bytes as atomic_write_bytes

    base = os.path.join(partial, f"{split}-{c:05d}")
    buf = io.BytesIO()
    np.save(buf, np.concatenate(embs).astype(np.float32))
    atomic_write_bytes(base + ".npy", buf.getvalue())
    # the .json marks the chunk complete: written last
    atomic_write_bytes(base + ".json", json.dumps(rows).encode("utf-8"))
