"""Concurrent, resumable image downloads into a cache keyed by ASIN.

- only ``http``/``https`` URLs; a per-request timeout; a size cap per image;
- retries with exponential backoff on timeouts, connection errors, 429 and 5xx, never
  on other 4xx;
- the cache file name comes from the ASIN through :func:`cache_name` (sanitised
  characters plus a short hash), never a path taken from the data;
- each file is written to ``name.tmp-<pid>-<thread>`` then renamed with ``os.replace``,
  so a killed run leaves no partial cache file and a rerun fetches only what is missing;
- the URL each cached image came from is appended to ``urls.jsonl`` in the cache before
  the image is renamed into place, so a rerun reports the same URL (a product's first
  URL may have failed and its second served the image);
- a rerun on an updated catalog reuses every cached image whose recorded URL is still one
  of the product's URLs (or that has no record); a product whose URLs no longer include the
  one its cached image came from was re-photographed: its image is fetched again
  ("refreshed") and replaces the cached one only once the new one is complete.

Every failure is returned as ``{"asin", "url", "reason"}``; the build goes on.
"""

import hashlib
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait

MAX_BYTES = 20 * 1024 * 1024
USER_AGENT = "amazon-visual-build-data/0.1 (+https://pypi.org/project/amazon-visual/)"
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def cache_name(asin):
    """A safe file name for an ASIN: its safe characters (<= 40) plus 12 hex of its SHA-256."""
    digest = hashlib.sha256(str(asin).encode("utf-8")).hexdigest()[:12]
    stem = _SAFE.sub("_", str(asin))[:40].strip("_") or "x"
    return f"{stem}-{digest}.img"


def cache_path(cache_dir, asin):
    return os.path.join(os.fspath(cache_dir), cache_name(asin))


class _Failure(Exception):
    def __init__(self, reason, retry):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class UrlLog:
    """ASIN -> the URL its cached image came from: ``urls.jsonl`` in the cache, appended per download.

    Each record is one small ``O_APPEND`` write that starts with a newline, so a record cut
    by a kill never spoils the next one; unreadable lines are skipped, the last record wins.
    """

    NAME = "urls.jsonl"

    def __init__(self, cache_dir, load=True):
        """``load=False``: only append (the caller keeps the records it read with :meth:`records`)."""
        self.path = os.path.join(os.fspath(cache_dir), self.NAME)
        self.urls = dict(self.records(cache_dir)) if load else {}

    @classmethod
    def records(cls, cache_dir):
        """``(asin, url)`` records of the log in ``cache_dir``, streamed (a later record of an ASIN wins)."""
        try:
            with open(os.path.join(os.fspath(cache_dir), cls.NAME), encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        asin, url = json.loads(line)
                    except (ValueError, TypeError):
                        continue
                    if isinstance(asin, str) and isinstance(url, str):
                        yield asin, url
        except FileNotFoundError:
            pass

    def add(self, asin, url):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, ("\n" + json.dumps([asin, url])).encode("utf-8"))
        finally:
            os.close(fd)


def _fetch_once(url, dest, timeout, max_bytes, before_commit=None):
    tmp = f"{dest}.tmp-{os.getpid()}-{threading.get_ident()}"
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            final = urllib.parse.urlsplit(resp.geturl() or url).scheme.lower()
            if final not in ("http", "https"):
                raise _Failure(f"redirect to a {final} URL", retry=False)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise _Failure(f"too large ({int(length)} bytes > {max_bytes})", retry=False)
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml"):
                raise _Failure(f"not an image (Content-Type {ctype})", retry=False)
            size = 0
            deadline = time.monotonic() + timeout * 4
            with open(tmp, "wb") as out:
                while True:
                    chunk = resp.read(65536)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_bytes:
                        raise _Failure(f"too large (> {max_bytes} bytes)", retry=False)
                    if time.monotonic() > deadline:
                        raise _Failure("timeout (body too slow)", retry=True)
                    out.write(chunk)
            if size == 0:
                raise _Failure("empty body", retry=False)
            if length and length.isdigit() and size < int(length):
                raise _Failure(f"truncated body ({size} of {length} bytes)", retry=True)
        if before_commit is not None:
            before_commit()
        os.replace(tmp, dest)
    except _Failure:
        raise
    except urllib.error.HTTPError as e:
        code = e.code
        raise _Failure(f"HTTP {code}", retry=code >= 500 or code in (408, 429)) from None
    except TimeoutError:
        raise _Failure("timeout", retry=True) from None
    except urllib.error.URLError as e:
        r = e.reason
        if isinstance(r, (socket.timeout, TimeoutError)):
            raise _Failure("timeout", retry=True) from None
        raise _Failure(f"connection error ({r})", retry=True) from None
    except (ConnectionError, OSError) as e:
        raise _Failure(f"connection error ({type(e).__name__})", retry=True) from None
    except Exception as e:  # http.client.IncompleteRead, BadStatusLine, ...
        raise _Failure(f"connection error ({type(e).__name__})", retry=True) from None
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def fetch(asin, url, cache_dir, timeout=10.0, retries=3, backoff=0.5, max_bytes=MAX_BYTES, log=None, refresh=False):
    """Fetch one image into the cache; ``(path, None)`` or ``(None, reason)``. Cached files are kept
    unless ``refresh`` (then the new image replaces the cached one once complete; on failure the
    cached one stays).

    ``log`` (a :class:`UrlLog`) records the URL before the image is committed."""
    dest = cache_path(cache_dir, asin)
    if not refresh and os.path.isfile(dest) and os.path.getsize(dest) > 0:
        return dest, None
    scheme = urllib.parse.urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in ("http", "https"):
        return None, f"unsupported URL scheme {scheme or '(none)'!r}"
    last = "unknown"
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, dest, timeout, max_bytes, log and (lambda: log.add(asin, url)))
            return dest, None
        except _Failure as f:
            last = f.reason
            if not f.retry or attempt == retries:
                break
            time.sleep(backoff * (2**attempt))
    tries = f" after {attempt + 1} tries" if attempt else ""
    return None, last + tries


def clean_partials(cache_dir):
    """Remove ``*.tmp-*`` files a killed run left behind; returns how many."""
    n = 0
    try:
        entries = list(os.scandir(cache_dir))
    except OSError:
        return 0
    for e in entries:
        if ".tmp-" in e.name and e.is_file():
            try:
                os.remove(e.path)
                n += 1
            except OSError:
                pass
    return n


def download_iter(
    items, cache_dir, workers=16, timeout=10.0, retries=3, backoff=0.5, max_bytes=MAX_BYTES, known_url=None, log=None
):
    """Download ``items`` (iterable of ``(asin, urls)``) concurrently, streamed.

    Yields ``(asin, path, url, reason)`` per item as each one finishes (not in item order: a
    slow host never holds the others back): ``path`` the cache file (None when every URL
    failed, ``reason`` says why; ``"cached"`` for an image already in the cache, ``"refreshed"``
    for a cached image fetched again because its recorded URL is no longer one of the item's
    URLs), ``url`` the URL the image came from (for a cached image: ``known_url(asin)``, the
    cache's :class:`UrlLog` record, or None). At most ``8 x workers`` items are in flight, so
    memory does not grow with the number of items. ``log``: the cache's :class:`UrlLog`.
    """
    cache_dir = os.fspath(cache_dir)
    log = log if log is not None else UrlLog(cache_dir)
    known_url = known_url if known_url is not None else log.urls.get

    def one(item, refresh=False):
        asin, urls = item
        reason, url = "no image URL", ""
        for url in urls[:3]:
            path, reason = fetch(asin, url, cache_dir, timeout, retries, backoff, max_bytes, log, refresh)
            if path:
                return asin, path, url, "refreshed" if refresh else None
        return asin, None, url, reason

    workers = max(1, int(workers))
    with ThreadPoolExecutor(max_workers=workers) as ex:
        running = set()
        for asin, urls in items:
            dest = cache_path(cache_dir, asin)
            refresh = False
            if os.path.isfile(dest) and os.path.getsize(dest) > 0:
                known = known_url(asin)
                if known is None or known in urls:
                    yield asin, dest, known, "cached"
                    continue
                refresh = True  # the product's photo changed: its URLs no longer hold the cached one's
            running.add(ex.submit(one, (asin, urls), refresh))
            if len(running) >= 8 * workers:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        for f in as_completed(running):
            yield f.result()


def download_all(
    items,
    cache_dir,
    workers=16,
    timeout=10.0,
    retries=3,
    backoff=0.5,
    max_bytes=MAX_BYTES,
    progress=None,
    used_urls=None,
):
    """Download ``items`` (iterable of ``(asin, urls)``) concurrently (in memory: see :func:`download_iter`).

    Returns ``(paths, failures, stats)``: ``paths`` maps ASIN -> cache file for the
    images now in the cache; ``failures`` is a list of ``{"asin", "url", "reason"}``;
    ``stats`` counts ``cached`` (already there), ``downloaded`` (a refreshed image among them) and
    ``failed``.
    For a product with several URLs the next one is tried when one fails; ``used_urls``
    (a dict), when given, receives ASIN -> the URL its image came from (for a cached
    image: the one in the cache's :class:`UrlLog`, when it has one).
    """
    cache_dir = os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    clean_partials(cache_dir)
    stats = {"cached": 0, "downloaded": 0, "failed": 0}
    paths, failures = {}, []
    items = list(items)
    order = {asin: i for i, (asin, _) in enumerate(items)}
    for asin, path, url, reason in download_iter(items, cache_dir, workers, timeout, retries, backoff, max_bytes):
        if path:
            paths[asin] = path
            stats["cached" if reason == "cached" else "downloaded"] += 1  # (a refreshed image: downloaded)
            if used_urls is not None and url is not None:
                used_urls[asin] = url
        else:
            failures.append({"asin": asin, "url": url, "reason": reason})
            stats["failed"] += 1
        if progress is not None:
            progress.update(1)
    failures.sort(key=lambda f: order[f["asin"]])
    return paths, failures, stats
