"""Micro-batching: concurrent photo queries gathered into one model call.

:class:`MicroBatcher` is a queue and one worker thread: the worker takes the first waiting
item, then keeps taking items until it holds ``max_batch`` of them or ``max_wait_ms`` have
passed since the first, and calls ``fn`` once on the whole list. Callers block on a
:class:`concurrent.futures.Future` each. ``max_batch=1`` turns batching off.

:class:`BatchedEmbedder` puts a MicroBatcher in front of an
:class:`amazon_visual.retrieval.embeddings.Embedder`: decoding and resizing stay in the
caller's thread (Pillow, in parallel); the resize (TensorFlow ops, the very function the
index used) and the model call run in the batcher's thread, once per batch: TensorFlow ops
from many threads at once would fight the model call for TensorFlow's thread pools. It has the Embedder's
interface, so a :class:`~amazon_visual.retrieval.recommend.Recommender` built with
``embedder=BatchedEmbedder(...)`` is the same engine with batched image queries. The
model is loaded on first use (or by :meth:`BatchedEmbedder.warm_up`).
"""

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from amazon_visual.errors import UserError

_STOP = object()


class ModelUnavailable(UserError):
    """The model of the index cannot be loaded: photo queries cannot be answered (ASIN queries can)."""


class MicroBatcher:
    """``submit(x) -> Future`` of ``fn([..., x, ...])[i]``; ``fn`` maps a list of inputs to a list of outputs."""

    def __init__(self, fn, max_batch=32, max_wait_ms=5.0, on_batch=None, name="micro-batcher"):
        if int(max_batch) < 1:
            raise UserError(f"--max-batch must be at least 1, not {max_batch}")
        if float(max_wait_ms) < 0:
            raise UserError(f"--max-wait-ms must be >= 0, not {max_wait_ms}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, x):
        fut = Future()
        with self._lock:
            if not self._closed:
                self._queue.put((x, fut))
                return fut
        self._process([(x, fut)])  # closed: answer in the caller's thread, never hang
        return fut

    def close(self):
        """Stop after the items already queued are answered."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)

    def _gather(self, first):
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self):
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            self._process(batch)
            if stop:
                return

    def _process(self, batch):
        t0 = time.perf_counter()
        try:
            outs = self.fn([x for x, _ in batch])
        except BaseException as e:  # every waiting caller gets the error, the worker lives on
            for _, fut in batch:
                fut.set_exception(e)
            return
        for (_, fut), out in zip(batch, outs):
            fut.set_result(out)
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - t0)


class BatchedEmbedder:
    """An Embedder whose model calls go through a :class:`MicroBatcher`.

    ``factory``: a callable returning the real Embedder (called once, on first use).
    """

    def __init__(self, factory, max_batch=32, max_wait_ms=5.0, on_batch=None):
        self._factory = factory
        self._inner = None
        self._error = None
        self._load_lock = threading.Lock()
        self.batcher = MicroBatcher(self._predict, max_batch, max_wait_ms, on_batch)

    @property
    def inner(self):
        if self._inner is None:
            with self._load_lock:
                if self._inner is None:
                    if self._error is not None:
                        raise ModelUnavailable(self._error)
                    try:
                        self._inner = self._factory()
                    except UserError as e:
                        self._error = f"photo queries are unavailable: {e}"
                        raise ModelUnavailable(self._error) from None
        return self._inner

    @property
    def loaded(self):
        return self._inner is not None

    def __getattr__(self, name):  # labels, image_size, resize, describe(), ... of the real Embedder
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def warm_up(self, sizes=(1, 2)):
        """Load the model and trace it for a few batch sizes, so the first queries are not slow."""
        inner = self.inner
        for n in sizes:
            inner.predict(np.zeros((n, inner.image_size, inner.image_size, 3), np.float32))

    def _predict(self, arrays):
        from amazon_visual.retrieval.embeddings import prepare_image

        inner = self.inner
        emb, probs = inner.predict(np.stack([prepare_image(a, inner.image_size, inner.resize) for a in arrays]))
        return [(emb[i], None if probs is None else probs[i]) for i in range(len(arrays))]

    def embed_images(self, images):
        """Like ``Embedder.embed_images``; the model call is shared with concurrent callers."""
        from amazon_visual.retrieval.embeddings import load_image

        self.inner  # noqa: B018  (a model that cannot load fails here, before the queue)
        arrays = [load_image(im) for im in images]
        futures = [self.batcher.submit(a) for a in arrays]
        outs = [f.result() for f in futures]
        probs = None if outs[0][1] is None else np.stack([o[1] for o in outs])
        return np.stack([o[0] for o in outs]), probs, arrays

    def close(self):
        self.batcher.close()
