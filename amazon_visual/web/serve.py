"""Running the service under uvicorn (what ``amazon-visual serve`` calls).

One worker: the app object runs in this process. Several workers (``--workers N``):
uvicorn's supervisor starts N processes that each build the app from the settings passed
in the environment; they share the listening socket and, through the memory-mapped index,
the index's pages. Their Prometheus metrics go through prometheus-client's multiprocess
directory (a temporary folder unless ``PROMETHEUS_MULTIPROC_DIR`` is set). ``SIGHUP``
reloads the index (one worker), or makes uvicorn restart the workers one by one (several).
"""

import os
import shutil
import tempfile

from amazon_visual.errors import UserError


def check_index(settings):
    """Fail early, with a clear line, when the INDEX_DIR cannot be served."""
    from amazon_visual.retrieval.recommend import Recommender

    Recommender.load(settings.index_dir, run_dir=settings.run_dir).close()


def serve(settings, host="127.0.0.1", port=8000, workers=1, access_log=False, log_level="info"):
    """Serve ``settings.index_dir`` on ``host:port`` until interrupted."""
    import uvicorn

    from amazon_visual.web.app import ENV_SETTINGS, create_app

    if int(workers) < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")
    if not 0 <= int(port) <= 65535:
        raise UserError(f"--port {port} is not a TCP port (0 to 65535)")
    check_index(settings)
    if int(workers) == 1:
        uvicorn.run(create_app(settings), host=host, port=int(port), access_log=access_log, log_level=log_level)
        return
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="amazon-visual-metrics-")
    os.environ[ENV_SETTINGS] = settings.to_env()
    try:
        uvicorn.run(
            "amazon_visual.web.app:app_from_env",
            factory=True,
            host=host,
            port=int(port),
            workers=int(workers),
            access_log=access_log,
            log_level=log_level,
        )
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
