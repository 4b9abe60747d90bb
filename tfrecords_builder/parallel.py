"""Ordered, bounded parallel map over worker processes, for the image work.

``OrderedPool.imap(fn, tasks)`` yields ``fn(task)`` in task order like
``multiprocessing.Pool.imap``, but keeps at most ``window`` tasks in flight (memory
stays flat for millions of images) and never hangs when worker processes cannot
start or die (``spawn`` from an interactive ``__main__``, OOM kill): it then
finishes the remaining tasks in this process and says so on stderr.

Workers are started with ``spawn``: the parent usually has TensorFlow loaded, and
forking a process that runs TensorFlow threads is unsafe.
"""

import collections
import itertools
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool


class OrderedPool:
    def __init__(self, workers, window_per_worker=64, chunk=16):
        self.workers = max(1, int(workers))
        self.window = max(2, self.workers * window_per_worker)
        self.chunk = max(1, int(chunk))
        self._ex = None
        self.fallback = False
        if self.workers > 1:
            self._ex = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def warm(self, fn=None):
        """Start the workers now (in the background) so their start-up overlaps other work."""
        if self._ex is not None and not self.fallback:
            for _ in range(self.workers):
                self._ex.submit(fn or _noop)

    def imap(self, fn, tasks):
        """Yield ``fn(task)`` for each task, in order."""
        if self._ex is None or self.fallback:
            for t in tasks:
                yield fn(t)
            return
        it = iter(tasks)
        pending = collections.deque()  # (future, chunk of tasks), in task order

        def submit():
            chunk = list(itertools.islice(it, self.chunk))
            if chunk:
                pending.append((None, chunk))  # recorded first: a failed submit loses no task
                pending[-1] = (self._ex.submit(_run_chunk, fn, chunk), chunk)
            return bool(chunk)

        try:
            while len(pending) * self.chunk < self.window and submit():
                pass
            while pending:
                fut, chunk = pending[0]
                results = fut.result()
                pending.popleft()
                yield from results
                submit()
            return
        except BrokenProcessPool:
            self._broken()
        # finish in this process, in order: the unfinished chunks, then the rest
        for _, chunk in pending:
            for t in chunk:
                yield fn(t)
        for t in it:
            yield fn(t)

    def _broken(self):
        print(
            "amazon-visual: worker processes failed to start or died; continuing in this process "
            "(run from a script file for parallel image work)",
            file=sys.stderr,
        )
        self.fallback = True
        self.close()

    def close(self):
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _noop():
    return None


def _run_chunk(fn, chunk):
    return [fn(t) for t in chunk]
