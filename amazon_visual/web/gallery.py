"""HTML gallery of a recommendation: the query image, then the results' images with their scores.

Every image is embedded in the page as a base64 JPEG data URI (a thumbnail), so the
page needs no network and refers to no other file: it can be mailed or archived alone.
A result with no thumbnail shows a grey box with its ASIN. The HTML comes from the Jinja2
templates ``templates/gallery.html`` (the ``gallery`` macro), ``gallery_fragment.html`` and
``gallery_page.html``, autoescaped.

- :func:`gallery_fragment` (query, results, title) -> an HTML ``<section>`` with the shared
  stylesheet, for other pages to reuse (``amazon-visual report`` calls the template's macro);
- :func:`gallery_page` -> a whole HTML document; :func:`write_gallery` writes it atomically.

``query`` is a dict: ``image`` (anything :func:`amazon_visual.retrieval.embeddings.load_image`
takes; a URL is not fetched: pass the decoded array as ``image_array``) and/or ``thumb`` (a file path);
``caption`` (text) or the keys ``kind``/``asin``/``title``/``label``/``predicted_label`` that
:meth:`amazon_visual.retrieval.recommend.Recommender.recommend` returns. ``results`` are the
result dicts of :class:`~amazon_visual.retrieval.recommend.Recommender` (``thumb``, ``similarity``,
``rank``, ``asin``, ``title``, ``label``, ``image_url``).
"""

import base64
import os

from amazon_visual.web.templating import render

THUMB = 200
TITLE_CHARS = 90


def image_data_uri(src, size=THUMB):
    """A ``data:image/jpeg;base64,...`` thumbnail of ``src`` (path, bytes, PIL image, array), or None if unreadable."""
    from amazon_visual.errors import UserError
    from amazon_visual.retrieval.embeddings import load_image, thumbnail_jpeg

    if src is None:
        return None
    if isinstance(src, (str, os.PathLike)) and not os.path.isfile(os.fspath(src)):
        return None
    try:
        jpeg = thumbnail_jpeg(load_image(src), size=size)
    except (UserError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def query_caption(query):
    """The query's caption as lines ``{"text", "kind"}`` (kind: bold, label or plain) for the template."""
    if query.get("caption"):
        return [{"text": str(query["caption"]), "kind": "plain"}]
    if query.get("kind") == "asin" or query.get("asin"):
        lines = [{"text": f"query: {query.get('asin', '')}", "kind": "bold"}]
        if query.get("label"):
            lines.append({"text": str(query["label"]), "kind": "label"})
        if query.get("title"):
            lines.append({"text": str(query["title"]), "kind": "plain"})
        return lines
    lines = [{"text": "query image", "kind": "bold"}]
    if isinstance(query.get("image"), (str, os.PathLike)):
        lines.append({"text": os.path.basename(os.fspath(query["image"])), "kind": "plain"})
    if query.get("predicted_label"):
        p = query.get("predicted_probability")
        lines.append(
            {
                "text": f"predicted: {query['predicted_label']}" + (f" ({p:.2f})" if p is not None else ""),
                "kind": "label",
            }
        )
    return lines


def _short(text, n=TITLE_CHARS):
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def gallery_context(query, results, title=None, size=THUMB):
    """What the ``gallery`` macro of ``templates/gallery.html`` shows: every image as a data URI."""
    query = dict(query or {})
    qsrc = query.get("image_array")
    if qsrc is None:
        qsrc = query.get("image")
    uri = None
    if qsrc is not None and (not isinstance(qsrc, (str, os.PathLike)) or os.path.isfile(os.fspath(qsrc))):
        uri = image_data_uri(qsrc, size)  # a URL is not fetched again: pass the decoded image as image_array
    if uri is None and query.get("thumb"):
        uri = image_data_uri(query["thumb"], size)
    rows = []
    for r in results:
        sim = float(r.get("similarity", 0.0))
        rows.append(
            {
                "rank": int(r.get("rank", 0)),
                "similarity": sim,
                "asin": str(r.get("asin", "")),
                "bar": f"{max(0.0, min(1.0, sim)) * 100:.0f}",
                "label": str(r.get("label") or ""),
                "title": _short(r["title"]) if r.get("title") else "",
                "uri": image_data_uri(r.get("thumb"), size) if r.get("thumb") else None,
            }
        )
    return {"title": str(title) if title else "", "query_uri": uri, "caption": query_caption(query), "results": rows}


def gallery_fragment(query, results, title=None, size=THUMB):
    """An HTML ``<section class="av-gallery">`` (with the shared stylesheet) showing the query and the results."""
    return render("gallery_fragment.html", g=gallery_context(query, results, title, size))


def gallery_page(query, results, title="Look-alike products", size=THUMB):
    """A whole HTML document showing the gallery."""
    return render("gallery_page.html", title=str(title), g=gallery_context(query, results, title, size))


def write_gallery(path, query, results, title="Look-alike products", size=THUMB):
    """Write :func:`gallery_page` to ``path`` atomically; returns the path."""
    from amazon_visual.atomic import write_bytes as atomic_write_bytes

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        from amazon_visual.errors import UserError

        raise UserError(f"folder {folder} does not exist: create it or choose another --html path")
    atomic_write_bytes(path, gallery_page(query, results, title, size).encode("utf-8"))
    return path
