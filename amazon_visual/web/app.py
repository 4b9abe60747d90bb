"""``amazon-visual serve``: the visual-search service (FastAPI), its API and its web page.

``create_app(Settings(index_dir, ...))`` returns the ASGI app; :mod:`amazon_visual.web.serve`
runs it under uvicorn. The routes (OpenAPI at ``/docs``):

- ``POST /v1/search``: a photo (multipart field ``file``) or JSON ``{"url": ...}`` / ``{"asin": ...}``;
  query parameters ``k``, ``min_similarity``, ``category``, ``same_category``;
- ``GET /v1/products/{asin}``, ``GET /v1/products/{asin}/similar``, ``GET /v1/products``
  (browse: ``category``, ``q``, ``page``, ``per_page``), ``GET /v1/categories``;
- ``GET /thumbs/{asin}.jpg`` (only thumbnails the index lists), ``GET /`` (the page), ``/static``;
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus);
- ``PUT`` / ``DELETE /v1/products/{asin}``: live writes on an index built with ``--writable``,
  switched on by a write token (:mod:`.writes`).

The :class:`~amazon_visual.retrieval.recommend.Recommender` is the engine: ASIN queries call
it in the event loop (a few index look-ups, no model); photo queries are decoded in the
thread pool and their model calls micro-batched (:mod:`.batching`). Bad input answers a 4xx
JSON ``{"detail": ...}``; nothing answers a traceback.
"""

import dataclasses
import json
import logging
import os
from contextlib import asynccontextmanager

from amazon_visual.errors import UserError
from amazon_visual.web.batching import ModelUnavailable
from amazon_visual.web.fetch import FetchError, UrlFetcher
from amazon_visual.web.limits import DEFAULT_MAX_PIXELS, BodySizeLimit, PayloadTooLarge
from amazon_visual.web.metrics import MetricsMiddleware, ServiceMetrics
from amazon_visual.web.state import IndexHolder
from amazon_visual.web.templating import STATIC_DIR

log = logging.getLogger("amazon_visual.serve")
MAX_K = 1000
PER_PAGE = 24
ENV_SETTINGS = "AMAZON_VISUAL_SERVE_SETTINGS"


@dataclasses.dataclass
class Settings:
    """What ``amazon-visual serve`` configures (see its ``--help``)."""

    index_dir: str
    run_dir: str = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    allow_url_fetch: bool = False
    url_allow_hosts: tuple = ()
    url_timeout: float = 5.0
    max_upload_mb: float = 10.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    reload_poll_seconds: float = 2.0
    warm_up: bool = True
    write_token_file: str = None  # live writes: the token's file (else env AMAZON_VISUAL_WRITE_TOKEN; neither: off)

    @property
    def max_upload_bytes(self):
        return int(self.max_upload_mb * 2**20)

    def to_env(self):
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls):
        return cls(**json.loads(os.environ[ENV_SETTINGS]))


def app_from_env():
    """The app factory uvicorn workers import (``serve --workers N``)."""
    return create_app(Settings.from_env())


def create_app(settings):
    """The FastAPI app serving ``settings.index_dir``; the index is loaded when the app starts."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    metrics = ServiceMetrics()
    holder = IndexHolder(
        settings.index_dir,
        run_dir=settings.run_dir,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        metrics=metrics,
        poll_seconds=settings.reload_poll_seconds,
    )
    app = FastAPI(
        title="amazon-visual", summary="Visual product search: look-alike products by photo or ASIN", lifespan=_lifespan
    )
    app.state.settings, app.state.holder, app.state.metrics = settings, holder, metrics
    app.state.fetcher = UrlFetcher(settings.url_allow_hosts, settings.url_timeout, settings.max_upload_bytes)
    from amazon_visual.web import routes, writes

    token = writes.load_token(settings.write_token_file)  # kept only as its digest, never logged
    app.state.write_token_digest = writes.token_digest(token) if token else None
    for router in (routes.router, writes.router):
        routes.declare_errors(router)
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + (64 << 10))  # room for multipart headers
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


@asynccontextmanager
async def _lifespan(app):
    import asyncio
    import signal
    import threading

    holder = app.state.holder
    holder.load()
    holder.start_watching()
    loop = asyncio.get_running_loop()
    why = None
    if not hasattr(signal, "SIGHUP"):  # Windows has no SIGHUP
        why = "no SIGHUP on this platform"
    else:
        try:
            loop.add_signal_handler(
                signal.SIGHUP, lambda: threading.Thread(target=holder.reload, args=("SIGHUP",), daemon=True).start()
            )
        except (RuntimeError, ValueError, NotImplementedError) as e:
            # a fallback, by design: not the main thread (an embedded server, tests), or an event loop
            # that cannot install signal handlers
            why = type(e).__name__
    if why:
        log.info(
            "reload on SIGHUP is not available here (%s); the index still reloads when its manifest "
            "changes (--reload-poll)",
            why,
        )
    if app.state.settings.warm_up:
        threading.Thread(target=_warm_up, args=(holder,), name="model-warm-up", daemon=True).start()
    try:
        yield
    finally:
        holder.stop()


def _warm_up(holder):
    try:
        holder.current.embedder.warm_up()
    except UserError as e:
        log.warning("%s (ASIN queries still work)", e)


def _add_error_handlers(app):
    from fastapi.responses import JSONResponse

    def answer(status):
        async def handler(request, exc):
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handler

    async def fetch_error(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    async def internal(request, exc):
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); the server keeps serving"}, status_code=500
        )

    app.add_exception_handler(ModelUnavailable, answer(503))
    app.add_exception_handler(UserError, answer(400))
    app.add_exception_handler(PayloadTooLarge, answer(413))
    app.add_exception_handler(FetchError, fetch_error)
    app.add_exception_handler(Exception, internal)
