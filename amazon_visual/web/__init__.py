"""Pages and the service: the HTML report of a demo or a set of runs (:mod:`.report`), look-alike
galleries (:mod:`.gallery`), all rendered from the Jinja2 templates of ``templates/`` with one
stylesheet in ``static/`` (:mod:`.templating`); the ``serve`` command's FastAPI app (:mod:`.app`,
:mod:`.routes`), its index holder and reloading (:mod:`.state`), micro-batching (:mod:`.batching`),
URL fetching without SSRF (:mod:`.fetch`), request limits (:mod:`.limits`), metrics
(:mod:`.metrics`) and uvicorn runner (:mod:`.serve`)."""
