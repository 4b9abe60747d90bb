"""The tensorflow-datasets builder ``amazon_products``.

The class list is dynamic: it comes from the :class:`BuildPlan` given to the builder
and ends up in ``features.json`` / ``dataset_info.json``, so
``tfds.builder_from_directory(DATA_DIR)`` reads the dataset back without this code.

Without Beam, ``_generate_examples`` feeds the image work (decode, convert, resize,
JPEG encode) to worker processes (ordered, bounded ``imap``) and yields the JPEG
bytes, which ``tfds.features.Image`` stores as they are (bytes are not re-encoded).
With Beam, the same work runs in a ``beam.FlatMap`` on the runner's workers.

Besides the photo, its class and its texts, each example carries the product's attributes
(:mod:`tfrecords_builder.attributes`): ``brand`` (text, "" when missing) and ``price``,
``average_rating``, ``rating_number`` (float32 scalars, NaN when missing). Datasets of
version 1.0.0 were built before them; readers treat their absence as "all missing".
"""

import json
import math
import os
import socket
from dataclasses import dataclass, field

import numpy as np
import tensorflow_datasets as tfds

from tfrecords_builder.images import process_item
from tfrecords_builder.splits import SPLIT_NAMES

DATASET_VERSION = "1.1.0"  # 1.1.0: the product attributes (brand, price, average_rating, rating_number)
NUMERIC_ATTRIBUTES = ("price", "average_rating", "rating_number")
_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


@dataclass
class BuildPlan:
    """Everything the builder needs: classes, the plan of examples on disk, the image work."""

    class_names: list
    store: object  # tfrecords_builder.plan.PlanStore: the products of each split, streamed in metadata order
    image_size: int = 256
    pool: object = None  # tfrecords_builder.parallel.OrderedPool for the image work (None: in-process)
    beam: bool = False
    failures_dir: str = ""  # beam: workers append their failures here as JSON lines
    failures: object = None  # non-beam: a tfrecords_builder.report.FailureLog ({"asin", "url", "reason", "stage"})
    counts: dict = field(default_factory=dict)  # split -> [count per label]
    progress: object = None  # tqdm bar updated per processed image
    _stream: object = None

    def split_names(self):
        """The splits with at least one product (tfds cannot write an empty split)."""
        return [name for name in SPLIT_NAMES if self.store.count(name)]

    def results(self):
        """One ordered stream of image results over all non-empty splits, in split order.

        A single stream keeps the workers busy across split boundaries (while tfds
        writes one split's shards, the next split's images are already in work).
        """
        if self._stream is None:
            tasks = (
                (it["asin"], it["source"], self.image_size)
                for name in self.split_names()
                for it in self.store.items(name)
            )
            self._stream = self.pool.imap(process_item, tasks) if self.pool is not None else map(process_item, tasks)
        return self._stream

    def reset(self):
        self._stream = None
        self.counts = {}


def _features(class_names):
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "asin": tfds.features.Text(),
            "title": tfds.features.Text(),
            "category": tfds.features.Text(),
            "image_url": tfds.features.Text(),
            "brand": tfds.features.Text(),
            **{name: tfds.features.Scalar(dtype=np.float32) for name in NUMERIC_ATTRIBUTES},
        }
    )


def _number(value):
    """A stored attribute number: NaN for a missing one (None)."""
    return math.nan if value is None else float(value)


def _example(item, jpeg):
    return {
        "image": jpeg,
        "label": int(item["label"]),
        "asin": item["asin"],
        "title": item["title"],
        "category": item["category"],
        "image_url": item["image_url"],
        "brand": item.get("brand") or "",
        **{name: _number(item.get(name)) for name in NUMERIC_ATTRIBUTES},
    }


def _beam_process(item, image_size, failures_dir):
    """Beam worker: one item -> zero or one ``(key, example)``; failures go to a file."""
    key, jpeg, reason = process_item((item["asin"], item["source"], image_size))
    if jpeg is None:
        rec = {"asin": item["asin"], "url": item["image_url"], "reason": reason}
        # one append-only file per worker process; each record is one small write (atomic with O_APPEND)
        path = os.path.join(failures_dir, f"failures-{_HOST}-{os.getpid()}.jsonl")
        line = (json.dumps(rec) + "\n").encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return
    yield key, _example(item, jpeg)


class AmazonProducts(tfds.core.GeneratorBasedBuilder):
    """Amazon product photos labelled with catalog categories (built by amazon-visual build-data)."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {
        "1.0.0": "Built by amazon-visual build-data.",
        DATASET_VERSION: "Product attributes: brand, price, average_rating, rating_number.",
    }

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # No checksums or config files live next to this module; returning None also keeps
        # tfds from probing the package with the optional importlib_resources backport.
        return None

    def __init__(self, *, plan=None, **kwargs):
        self._plan = plan
        super().__init__(**kwargs)

    def _info(self):
        names = self._plan.class_names if self._plan is not None else []
        return self.dataset_info_from_configs(
            description=(
                "Amazon product photos (normalised RGB JPEG) labelled with the class found in each "
                "product's catalog category paths; built by `amazon-visual build-data`."
            ),
            features=_features(names),
            supervised_keys=("image", "label"),
            homepage="https://amazon-reviews-2023.github.io/",
        )

    def _split_generators(self, dl_manager):
        # tfds cannot write a split with no example: such a split is left out (and reported)
        return {name: self._generate_examples(split=name) for name in self._plan.split_names()}

    def _generate_examples(self, split):
        plan = self._plan
        if plan.beam:
            import apache_beam as beam

            # the split's items as JSON lines, read by the runner's workers (nothing pickled into the pipeline)
            path = os.path.join(os.path.dirname(plan.store.path), f"{split}.jsonl")
            plan.store.export_split(split, path)
            return (
                beam.io.ReadFromText(path)
                | f"Items_{split}" >> beam.Map(json.loads)
                | f"Images_{split}"
                >> beam.FlatMap(_beam_process, image_size=plan.image_size, failures_dir=plan.failures_dir)
            )
        return self._generate_local(split)

    def _generate_local(self, split):
        plan = self._plan
        counts = plan.counts.setdefault(split, [0] * len(plan.class_names))
        results = plan.results()
        for item in plan.store.items(split):
            key, jpeg, reason = next(results)
            if key != item["asin"]:  # tfds consumes the splits in the order _split_generators gives
                raise RuntimeError(f"image results out of order: expected {item['asin']!r}, got {key!r}")
            if plan.progress is not None:
                plan.progress.update(1)
            if jpeg is None:
                plan.failures.append(
                    {"asin": item["asin"], "url": item["image_url"], "reason": reason, "stage": "image"}
                )
                plan.store.image_failed(item["asin"])
                continue
            counts[item["label"]] += 1
            yield key, _example(item, jpeg)
