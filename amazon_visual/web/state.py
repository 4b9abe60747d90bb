"""The index a service answers from, and reloading it without downtime.

:class:`IndexHolder` keeps the current :class:`~amazon_visual.retrieval.recommend.Recommender`.
A request takes ``holder.current`` once and uses that object to the end. :meth:`IndexHolder.reload`
builds the new Recommender aside (the INDEX_DIR is read and checked, a bad or half-written
index leaves the old one in place) and then swaps the reference: requests in flight finish
on the old one, which is freed when the last of them is done (its memory maps with it; on
Linux they stay valid after ``amazon-visual index --overwrite`` removed the files).

A reload happens on :meth:`IndexHolder.reload` (``SIGHUP`` in ``serve``) or when the
watcher sees ``manifest.json`` change (``amazon-visual index`` writes it last, atomically).
When the new index was built with the same model (same fingerprint), the loaded model and
its micro-batcher are kept.

Live writes. An index built with ``--writable`` is served as a
:class:`~amazon_visual.retrieval.writelog.LiveIndex`: each worker follows the write log
(``INDEX_DIR/writes.sqlite``) itself, reading the entries committed since its last look before
each query (``PRAGMA data_version`` first, a few microseconds), so a write answered by any worker
is seen by every worker at its next query. A reload (``index --update`` folded the log into a
new generation) replays only the entries the new manifest has not folded.
"""

import functools
import logging
import os
import threading
import time

from amazon_visual.errors import UserError
from amazon_visual.retrieval.index import Index
from amazon_visual.retrieval.layout import MANIFEST
from amazon_visual.retrieval.writelog import LiveIndex
from amazon_visual.web.batching import BatchedEmbedder

log = logging.getLogger("amazon_visual.serve")


def manifest_signature(index_dir):
    """(inode, mtime ns, size) of INDEX_DIR/manifest.json, or None when it is missing."""
    try:
        st = os.stat(os.path.join(index_dir, MANIFEST))
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


ROW_CACHE = 1 << 16


class ServingIndex(Index):
    """A loaded :class:`~amazon_visual.retrieval.index.Index` tuned for serving many small queries.

    ``item()`` and ``thumb_path()`` read a row of the items table (through pandas) and stat a
    thumbnail per result, which costs more than the whole Annoy search. Here each row and
    its thumbnail's path are looked up once and kept (up to ``ROW_CACHE`` rows), and the
    ``label`` column the filters read per query is a plain object array. A thumbnail removed
    later (an index being rebuilt) answers 404 at ``/thumbs``.
    """

    @classmethod
    def wrap(cls, index):
        obj = cls.__new__(cls)
        obj.__dict__.update(index.__dict__)
        obj.items = index.items.astype({"label": object})
        obj._row = functools.lru_cache(maxsize=ROW_CACHE)(obj._read_row)
        return obj

    def _read_row(self, item_id):
        row = self.items.iloc[item_id].to_dict()
        name = row.get("thumb", "")
        path = os.path.join(self.index_dir, name) if name else None
        return row, (path if path and os.path.isfile(path) else None)

    def item(self, item_id):
        return dict(self._row(int(item_id))[0])

    def thumb_path(self, item_id):
        return self._row(int(item_id))[1]


class Generation:
    """One loaded index: the Recommender and what identifies it."""

    def __init__(self, number, rec, signature):
        self.number = number
        self.rec = rec
        self.signature = signature
        self.loaded_at = time.time()
        counts = rec.index.items["label"].value_counts()
        self.categories = {str(name): int(n) for name, n in sorted(counts.items())}  # category -> products


class IndexHolder:
    def __init__(self, index_dir, run_dir=None, max_batch=32, max_wait_ms=5.0, metrics=None, poll_seconds=2.0):
        self.index_dir = os.fspath(index_dir)
        self.run_dir = run_dir
        self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        self.metrics = metrics
        self.poll_seconds = float(poll_seconds)
        self._gen = None
        self._reload_lock = threading.Lock()
        self._failed_signature = None
        self._stop = threading.Event()
        self._watcher = None

    # ------------------------------------------------------------------ the current index
    @property
    def generation(self):
        return self._gen

    @property
    def current(self):
        if self._gen is None:
            raise UserError("the index is not loaded yet")
        return self._gen.rec

    def load(self):
        """The first load (raises UserError when INDEX_DIR cannot be served)."""
        with self._reload_lock:
            self._swap(self._build(manifest_signature(self.index_dir), previous=None))
        return self._gen

    def reload(self, reason="request"):
        """Load INDEX_DIR again aside and swap it in; False (old index kept) when it cannot be loaded."""
        with self._reload_lock:
            sig = manifest_signature(self.index_dir)
            try:
                gen = self._build(sig, previous=self._gen)
            except UserError as e:
                self._failed_signature = sig
                self._count("failed")
                log.warning("index reload (%s) failed, still serving the previous index: %s", reason, e)
                return False
            self._swap(gen)
            self._count("ok")
            log.info("index reloaded (%s): %d items, generation %d", reason, gen.rec.index.n_items, gen.number)
            return True

    def _build(self, signature, previous):
        from amazon_visual.retrieval.recommend import Recommender

        plain = Recommender.load(self.index_dir, run_dir=self.run_dir)
        old = previous.rec if previous is not None else None
        same_model = (
            old is not None
            and old.manifest.get("fingerprint") == plain.manifest.get("fingerprint")
            and old.manifest.get("source") == plain.manifest.get("source")
        )
        if same_model:
            embedder = old.embedder  # the loaded model and its batcher carry over
        else:
            on_batch = self.metrics.observe_batch if self.metrics is not None else None
            embedder = BatchedEmbedder(lambda: plain.embedder, self.max_batch, self.max_wait_ms, on_batch)
        index = plain.index
        if isinstance(index, LiveIndex):  # a writable index: its overlay on top of the serving index
            index = LiveIndex(ServingIndex.wrap(index.base), index.overlay)
        else:
            index = ServingIndex.wrap(index)
        rec = Recommender(index, embedder=embedder)
        number = previous.number + 1 if previous is not None else 1
        return Generation(number, rec, signature)

    def _swap(self, gen):
        old = self._gen
        self._gen = gen
        if old is not None and old.rec.embedder is not gen.rec.embedder:
            old.rec.embedder.close()  # queued queries are still answered; later ones run unbatched
        if self.metrics is not None:
            self.metrics.index_items.set(gen.rec.index.n_items)

    def _count(self, result):
        if self.metrics is not None:
            self.metrics.reloads.labels(result).inc()

    # ------------------------------------------------------------------ watching manifest.json
    def check_for_change(self):
        """Reload when manifest.json changed since the last load (and not to a version that already failed)."""
        sig = manifest_signature(self.index_dir)
        gen = self._gen
        if sig is None or gen is None or sig == gen.signature or sig == self._failed_signature:
            return False
        return self.reload("manifest.json changed")

    def start_watching(self):
        if self.poll_seconds <= 0 or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="index-watcher", daemon=True)
        self._watcher.start()

    def _watch(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_for_change()
            except Exception:  # the watcher must outlive any surprise
                log.exception("index watcher")

    def stop(self):
        self._stop.set()
