"""Prometheus metrics of the service (prometheus-client).

Requests by route, method and status; request latency per route; model batch sizes and
batch latency; index size and reloads; live writes by operation and outcome. Each app gets its
own registry (several apps can live in one process, e.g. in tests). With several uvicorn workers, ``serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` aggregates every worker's files through
prometheus-client's multiprocess collector.
"""

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "amazon_visual_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "amazon_visual_http_request_duration_seconds",
            "request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "amazon_visual_model_batch_size",
            "images per model call (micro-batching)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "amazon_visual_model_batch_duration_seconds", "seconds per model call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.index_items = Gauge(
            "amazon_visual_index_items", "items in the index being served", multiprocess_mode="livemax", registry=r
        )
        self.reloads = Counter("amazon_visual_index_reloads", "index reloads by result", ["result"], registry=r)
        # live writes (web/writes.py): operation put|delete; outcome created|replaced|deleted|not_found|rejected|
        # unauthorized|forbidden|read_only
        self.writes = Counter(
            "amazon_visual_writes", "live writes by operation and outcome", ["operation", "outcome"], registry=r
        )

    def observe_batch(self, size, seconds):
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def exposition(self):
        """(body bytes, content type) for ``GET /metrics``."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request by its route template (not its raw path) and status."""

    def __init__(self, app, metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
