"""The Jinja2 environment every page of the package is rendered with.

One templates folder (``amazon_visual/web/templates``), one shared stylesheet
(``amazon_visual/web/static/style.css``), autoescaping on for every template. Files the
package writes (the report, the ``--html`` gallery) inline the stylesheet with
``{{ stylesheet() }}`` so they stay self-contained; the service links ``/static/style.css``.
"""

import functools
import os

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES_DIR = os.path.join(HERE, "templates")
STATIC_DIR = os.path.join(HERE, "static")
STYLESHEET = os.path.join(STATIC_DIR, "style.css")


@functools.lru_cache(maxsize=1)
def stylesheet_text():
    with open(STYLESHEET, encoding="utf-8") as f:
        return f.read()


def _stylesheet():
    from markupsafe import Markup

    return Markup(stylesheet_text())


@functools.lru_cache(maxsize=1)
def environment():
    """The shared :class:`jinja2.Environment` (autoescaping, strict undefined variables)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html", "htm", "xml"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["stylesheet"] = _stylesheet
    from amazon_visual import __version__

    env.globals["version"] = __version__
    return env


def render(name, **context):
    """Render the template ``name`` (a file in the templates folder) with ``context``."""
    return environment().get_template(name).render(**context)
