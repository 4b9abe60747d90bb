"""DATA_DIR's examples in item order, cut into ranges: the work units of the embedding.

Item order is split by split (in the order asked), then TFRecord shard by shard, then
record by record: item ``i`` of an INDEX_DIR is the same example whether the local loop or
the Beam pipeline embedded it. A :class:`Range` is at most ``chunk_items`` consecutive
records of one shard file; each range becomes one embedding shard
(:mod:`amazon_visual.retrieval.shards`), so a killed run resumes range by range, and Beam
workers take ranges in parallel.

Reading: a range's serialized records are read straight from its byte offset in the
TFRecord file (:func:`read_range`; the offsets come from one scan of the record headers,
so no range re-reads the records before it), then parsed and decoded by the dataset's own
tfds ``FeaturesDict`` (what ``tfds``/``amazon_visual.data.load`` do) and resized by
:func:`amazon_visual.data.resize_image` to the model's input, as for training
(:func:`dataset`). TFRecord framing: ``uint64 length, uint32 crc, data, uint32 crc``; the
CRCs are not checked here (no CRC-32C in the standard library); a damaged record fails to
parse instead.
"""

import hashlib
import math
import os
import struct
from dataclasses import dataclass

from amazon_visual.errors import UserError
from amazon_visual.retrieval.layout import ATTRIBUTE_COLUMNS, NUMERIC_ATTRIBUTES, THUMB_SIZE, THUMBS, safe_name


@dataclass(frozen=True)
class Range:
    split: str
    chunk: int  # index of the range within its split (names the shard)
    path: str  # the TFRecord file
    start: int  # first record in the file
    stop: int  # one past the last record
    offset: int  # item id of the first record in the INDEX_DIR
    byte_offset: int = 0  # where record ``start`` begins in the file

    @property
    def name(self):
        return f"{self.split}-{self.chunk:05d}"

    def __len__(self):
        return self.stop - self.start


def round_chunk(chunk_items, batch_size):
    """``chunk_items`` rounded down to a multiple of ``batch_size`` (at least one batch)."""
    return max(int(batch_size), (int(chunk_items) // int(batch_size)) * int(batch_size))


def plan(data_dir, splits, chunk_items):
    """``(ranges, counts)``: the ranges of ``splits`` in item order, and the example count per split."""
    from amazon_visual import data

    info = data.info(data_dir)
    available = list(info.splits.keys())
    ranges, counts, offset = [], {}, 0
    for split in splits:
        if split not in available:
            raise UserError(f"{data_dir} has no split {split!r}: use --splits with some of {', '.join(available)}")
        sp = info.splits[split]
        files = [os.fspath(p) for p in sp.filepaths]
        if len(files) != len(sp.shard_lengths):
            raise UserError(
                f"{data_dir}: split {split} lists {len(files)} files for {len(sp.shard_lengths)} shards: "
                "rebuild the dataset with amazon-visual build-data"
            )
        chunk = 0
        for path, length in zip(files, sp.shard_lengths):
            starts = record_offsets(path, int(length), int(chunk_items))
            for start, byte_offset in starts:
                stop = min(int(length), start + int(chunk_items))
                ranges.append(Range(split, chunk, path, start, stop, offset, byte_offset))
                offset += stop - start
                chunk += 1
        counts[split] = int(sum(sp.shard_lengths))
    return ranges, counts


def _bad(path, why):
    return UserError(
        f"{path} is not a complete TFRecord file ({why}): rebuild the dataset with amazon-visual build-data"
    )


def record_offsets(path, length, every):
    """``[(record index, byte offset)]`` of records 0, every, 2*every, ... of a TFRecord file of
    ``length`` records (one pass over the record headers; the data is skipped, not read)."""
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: rebuild the dataset with amazon-visual build-data")
    size = os.path.getsize(path)
    out = []
    with open(path, "rb") as f:
        pos = 0
        for i in range(length):
            if i % every == 0:
                out.append((i, pos))
            f.seek(pos)
            head = f.read(12)
            if len(head) != 12:
                raise _bad(path, f"{i} records instead of {length}")
            pos += 16 + struct.unpack("<Q", head[:8])[0]
            if pos > size:
                raise _bad(path, f"record {i} runs past the end")
    return out


def read_range(rng):
    """The serialized records of a range (bytes), read from its byte offset."""
    out = []
    with open(rng.path, "rb") as f:
        f.seek(rng.byte_offset)
        for i in range(len(rng)):
            head = f.read(12)
            if len(head) != 12:
                raise _bad(rng.path, f"record {rng.start + i} is missing")
            n = struct.unpack("<Q", head[:8])[0]
            data = f.read(n)
            if len(data) != n or len(f.read(4)) != 4:
                raise _bad(rng.path, f"record {rng.start + i} is truncated")
            out.append(data)
    return out


def dataset(serialized, features, image_size, resize, thumbnails):
    """``tf.data`` of serialized examples (unbatched, in order): model input ``pixels``, the
    text fields, ``label`` and, with ``thumbnails``, a JPEG ``thumb``."""
    import tensorflow as tf

    from amazon_visual.data import resize_image

    def convert(record):
        ex = features.deserialize_example(record)
        img = ex["image"]
        out = {
            "pixels": resize_image(img, image_size, resize),
            "asin": ex["asin"],
            "title": ex["title"],
            "category": ex["category"],
            "image_url": ex["image_url"],
            "label": ex["label"],
        }
        out.update({name: ex[name] for name in attributes})
        if thumbnails:
            side = tf.minimum(THUMB_SIZE, tf.reduce_max(tf.shape(img)[:2]))  # never enlarged
            small = tf.image.resize(img, tf.stack([side, side]), preserve_aspect_ratio=True, antialias=True)
            out["thumb"] = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8), quality=85)
        return out

    attributes = [name for name in ATTRIBUTE_COLUMNS if name in features.keys()]  # datasets built before them lack them
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(serialized), dtype=tf.string))
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def item_row(ex, item_id, split, names, out_dir=None):
    """The items-table row of one converted example (numpy values); with ``out_dir`` its
    thumbnail is written to ``out_dir/thumbs/`` (atomically) and named in the row."""
    from amazon_visual.atomic import write_bytes

    asin = _text(ex["asin"])
    label_id = int(ex["label"])
    thumb = ""
    if out_dir is not None and "thumb" in ex:
        thumb = f"{THUMBS}/{item_id:07d}-{safe_name(asin)}.jpg"
        write_bytes(os.path.join(out_dir, thumb), bytes(ex["thumb"]))
    row = {
        "asin": asin,
        "title": _text(ex["title"]),
        "category": _text(ex["category"]),
        "label": names[label_id] if 0 <= label_id < len(names) else str(label_id),
        "label_id": label_id,
        "image_url": _text(ex["image_url"]),
        "split": split,
        "thumb": thumb,
        "image_sha256": ex.get("image_sha256"),
    }
    row.update(attribute_values(ex))
    return row


def attribute_values(ex):
    """The product attributes of a converted example, None where missing (a NaN number, an empty brand,
    or a dataset built before attributes existed)."""
    out = {}
    brand = _text(ex["brand"]).strip() if "brand" in ex else ""
    out["brand"] = brand or None
    for name in NUMERIC_ATTRIBUTES:
        v = float(ex[name]) if name in ex else math.nan
        out[name] = None if math.isnan(v) else (int(v) if name == "rating_number" else v)
    return out


def image_sha256(record):
    """SHA-256 (hex) of the stored photo bytes of a serialized example: what ``index --update`` compares
    to know a photo changed (the title or price changing does not change it)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(record)
    return hashlib.sha256(ex.features.feature["image"].bytes_list.value[0]).hexdigest()


def embed_records(predict, serialized, features, image_size, resize, thumbnails, batch_size, on_batch=None):
    """``(embeddings (m, d) float32 L2-normalised, [field dict per example])`` of serialized examples.

    ``predict``: float32 batch (b, S, S, 3) in [0, 255] -> embeddings (b, d). The local loop and
    the Beam model handler both embed a range through this function; ``on_batch(n)`` reports progress."""
    import numpy as np

    from amazon_visual.retrieval.layout import normalize

    embs, fields = [], []
    serialized = list(serialized)
    ds = dataset(serialized, features, image_size, resize, thumbnails)
    for batch in ds.batch(int(batch_size)).prefetch(2).as_numpy_iterator():
        emb = normalize(np.asarray(predict(batch.pop("pixels")), np.float32))
        embs.append(emb.reshape(len(emb), -1))
        fields.extend({k: v[j] for k, v in batch.items()} for j in range(len(emb)))
        if on_batch is not None:
            on_batch(len(emb))
    for f, record in zip(fields, serialized):
        f["image_sha256"] = image_sha256(record)
    return np.concatenate(embs), fields


def write_range(partial, rng, embeddings, fields, names, thumbs_root=None):
    """Write a range's thumbnails (into ``thumbs_root``/thumbs, if given), then its embedding shard."""
    from amazon_visual.retrieval.shards import write_shard

    rows = [item_row(f, rng.offset + j, rng.split, names, thumbs_root) for j, f in enumerate(fields)]
    write_shard(os.path.join(partial, rng.name), embeddings, rows)
