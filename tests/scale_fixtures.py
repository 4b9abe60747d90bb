"""Helpers of the scale tests (test_beam_embed, test_killsafe): DATA_DIRs with several TFRecord shards.

tfds writes a single shard below 128 MB, so a test dataset is re-sharded (and, to get
enough items for a measurable index build, its records repeated) after build_data.
"""

import json
import os

import numpy as np


def reshard(data_dir, split, parts, repeat=1):
    """Rewrite ``split`` of DATA_DIR as ``parts`` TFRecord files holding its records ``repeat`` times, in order."""
    import tensorflow as tf

    from amazon_visual import data

    info_path = os.path.join(data_dir, "dataset_info.json")
    sp = data.info(data_dir).splits[split]
    records = [r.numpy() for p in sp.filepaths for r in tf.data.TFRecordDataset(os.fspath(p))] * int(repeat)
    for p in sp.filepaths:
        os.remove(os.fspath(p))
    bounds = np.linspace(0, len(records), parts + 1).astype(int)
    for i in range(parts):
        name = f"amazon_products-{split}.tfrecord-{i:05d}-of-{parts:05d}"
        with tf.io.TFRecordWriter(os.path.join(data_dir, name)) as w:
            for r in records[bounds[i] : bounds[i + 1]]:
                w.write(r)
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    for s in info["splits"]:
        if s["name"] == split:
            s["shardLengths"] = [str(int(bounds[i + 1] - bounds[i])) for i in range(parts)]
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f)
    return len(records)
