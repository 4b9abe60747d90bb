"""Embedding a DATA_DIR on Apache Beam: ``amazon-visual index ... --beam [--beam-options ...]``.

The same work as :func:`amazon_visual.retrieval.embeddings.embed_dataset`, cut into the
same ranges (:mod:`.records`) and written as the same embedding shards (:mod:`.shards`),
run by a Beam pipeline on any runner::

    Create(ranges still to do) | Reshuffle
      | ReadRange      the range's serialized tf.Examples, read from its byte offset in the TFRecord shard
      | RunInference   KeyedModelHandler(KerasEmbeddingHandler): decode, resize (as for training), embed
      | WriteShard     thumbnails, then the shard (.npy, then .json: the completion mark)

Beam 2.77 ships ``TFModelHandlerNumpy``/``TFModelHandlerTensor``, but they import
``tensorflow_hub``, load the whole model with ``tf.keras.models.load_model`` (the classifier,
not its ``embedding`` layer, and without this package's custom layers) and are tested with
TF 2.9-2.11; :class:`KerasEmbeddingHandler` is a ``ModelHandler`` that loads the run's Keras 3
``.keras`` embedding model (kept in ``.partial/embedder.keras`` by the driver, so every
worker embeds with exactly the driver's model). One element is one range (at most
``chunk_items`` encoded photos, a few MB), passed to RunInference pre-batched
(``with_no_batching``); the handler embeds it in batches of ``batch_size``. (With
RunInference's own batching, ``BatchElements`` emits its last batch in ``finish_bundle``,
which the Dask runner of Beam 2.77 drops: the last range of every partition went missing.)

The driver then streams the shards into ``embeddings.npy`` and ``items.csv`` and the
index is built from them on disk (:func:`amazon_visual.retrieval.index.build_index`). A
killed pipeline loses only the ranges in flight: rerun the command and it submits the
ranges whose shard is missing.
"""

import os
import shlex
import sys
import threading

import numpy as np

from amazon_visual.errors import UserError

try:
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult
except ImportError:  # the module stays importable; embed_dataset_beam says what to install
    ModelHandler, PredictionResult = object, None


def parse_options(beam_options):
    """Pipeline option strings (a string or a list of strings) -> argv list."""
    if not beam_options:
        return []
    if isinstance(beam_options, str):
        beam_options = [beam_options]
    return [a for o in beam_options for a in shlex.split(o)]


class KerasEmbeddingHandler(ModelHandler):
    """RunInference model handler: a Keras 3 ``.keras`` embedding model over ranges of serialized examples.

    An example is a list of serialized ``tf.Example`` (one range); its inference is
    ``{"embeddings": (m, d) float32 L2-normalised, "fields": [dict per example]}``.
    """

    def __init__(self, model_path, data_dir, image_size, resize, thumbnails, batch_size, two_outputs):
        super().__init__()
        self.model_path, self.data_dir = model_path, data_dir
        self.image_size, self.resize, self.thumbnails = int(image_size), resize, bool(thumbnails)
        self.batch_size, self.two_outputs = int(batch_size), bool(two_outputs)

    def load_model(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        import amazon_visual.models.layers  # noqa: F401  (registers the package's custom layers)
        from amazon_visual import data

        return _Loaded(keras.saving.load_model(self.model_path, compile=False), data.info(self.data_dir).features)

    def _predict(self, model, batch):
        out = model.predict_on_batch(np.asarray(batch, np.float32))
        return out[0] if self.two_outputs else out

    def run_inference(self, batch, model, inference_args=None):
        from amazon_visual.retrieval.records import embed_records

        results = []
        for serialized in batch:
            emb, fields = embed_records(
                lambda b: self._predict(model.model, b),
                serialized,
                model.features,
                self.image_size,
                self.resize,
                self.thumbnails,
                self.batch_size,
            )
            results.append(PredictionResult(len(serialized), {"embeddings": emb, "fields": fields}))
        return results

    def get_num_bytes(self, batch):
        return sum(len(r) for serialized in batch for r in serialized)

    def get_metrics_namespace(self):
        return "amazon_visual_embed"


class _Loaded:
    """What a worker loads once (Beam shares it through a weak reference): the model and the dataset's features."""

    def __init__(self, model, features):
        self.model, self.features = model, features


def _read_range(rng):
    from amazon_visual.retrieval.records import read_range

    yield [(rng, read_range(rng))]  # a batch of one keyed example: RunInference runs without its own batching


def _write_shard(keyed, partial, names, thumbs_root):
    from amazon_visual.retrieval.records import write_range

    rng, result = keyed
    out = result.inference
    if len(out["fields"]) != len(rng):
        raise RuntimeError(f"range {rng.name}: {len(out['fields'])} examples embedded, {len(rng)} expected")
    write_range(partial, rng, out["embeddings"], out["fields"], names, thumbs_root)
    yield len(rng)


def _pipeline(argv, job, handler):
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    try:
        p = beam.Pipeline(options=PipelineOptions(argv))
    except (ValueError, TypeError, ImportError) as e:  # an unknown runner, a bad option value
        raise UserError(f"--beam-options {' '.join(argv)}: {str(e).splitlines()[0][:300]}") from None
    _ = (
        p
        | "Ranges" >> beam.Create(job["todo"])
        | "Spread" >> beam.Reshuffle()
        | "ReadRange" >> beam.FlatMap(_read_range)
        | "Embed" >> RunInference(KeyedModelHandler(handler).with_no_batching())
        | "WriteShard"
        >> beam.FlatMap(_write_shard, partial=job["partial"], names=job["names"], thumbs_root=job["thumbs_root"])
    )
    return p


def _watch(job, stop, progress):
    """Progress bar: completed shards counted in .partial every second (the workers write them)."""
    from tqdm import tqdm

    from amazon_visual.retrieval.shards import shard_complete

    bar = tqdm(total=job["total"], desc="embedding (beam)", unit="img", file=sys.stderr, disable=not progress)
    pending = list(job["todo"])
    bar.update(job["total"] - sum(len(r) for r in pending))
    while pending:
        done = [r for r in pending if shard_complete(os.path.join(job["partial"], r.name))]
        bar.update(sum(len(r) for r in done))
        pending = [r for r in pending if r not in done]
        if stop.wait(1.0):
            break
    bar.close()


def embed_dataset_beam(
    embedder,
    data_dir,
    out_dir,
    splits=("train", "validation", "test"),
    batch_size=64,
    thumbnails=True,
    beam_options=None,
    progress=True,
    chunk_items=None,
    cleanup=False,
):
    """Embed DATA_DIR's ``splits`` into ``out_dir`` with a Beam pipeline (see the module doc).

    Same files and same summary as :func:`~amazon_visual.retrieval.embeddings.embed_dataset`.
    """
    from amazon_visual.retrieval import embeddings as E
    from amazon_visual.retrieval.shards import shard_complete

    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise UserError("--beam needs apache-beam: pip install 'amazon-visual[beam]'") from None
    argv = parse_options(beam_options)
    data_dir, out_dir = os.path.abspath(os.fspath(data_dir)), os.path.abspath(os.fspath(out_dir))
    job = E.start_dataset(embedder, data_dir, out_dir, splits, batch_size, chunk_items or E.CHUNK_ITEMS, thumbnails)
    if job["todo"]:
        model_path = E.model_for_workers(embedder, job["partial"])
        handler = KerasEmbeddingHandler(
            model_path, data_dir, embedder.image_size, embedder.resize, thumbnails, batch_size, embedder.with_probs
        )
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(job, stop, progress), daemon=True)
        watcher.start()
        try:
            _pipeline(argv, job, handler).run().wait_until_finish()
        finally:
            stop.set()
            watcher.join()
        missing = [
            r.name for r in job["todo"] if not shard_complete(os.path.join(job["partial"], r.name), job["thumbs_root"])
        ]
        if missing:
            raise UserError(
                f"the Beam pipeline ({' '.join(argv) or 'DirectRunner'}) finished without writing "
                f"{len(missing)} of {len(job['todo'])} embedding shards ({', '.join(missing[:3])}...): "
                "rerun the command (it resumes) or use another runner"
            )
    return E.finish_dataset(job, embedder, data_dir, out_dir, cleanup)
