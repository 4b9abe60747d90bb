"""HTML gallery of a recommendation: the query image, then the results' images with their scores.

Every image is embedded in the page as a base64 JPEG data URI (a thumbnail), so the
page needs no network and refers to no other file: it can be mailed or archived alone.
A result with no thumbnail shows a grey box with its ASIN.

- :func:`gallery_fragment` (query, results, title) -> an HTML ``<section>`` with its own
  scoped CSS, for other pages (``amazon-visual report``) to reuse;
- :func:`gallery_page` -> a whole HTML document; :func:`write_gallery` writes it atomically.

``query`` is a dict: ``image`` (anything :func:`amazon_visual.retrieval.embeddings.load_image`
takes; a URL is not fetched: pass the decoded array as ``image_array``) and/or ``thumb`` (a file path); ``caption`` (text) or the keys
``kind``/``asin``/``title``/``label``/``predicted_label`` that
:meth:`amazon_visual.retrieval.recommend.Recommender.recommend` returns. ``results`` are the
result dicts of :class:`~amazon_visual.retrieval.recommend.Recommender` (``thumb``, ``similarity``,
``rank``, ``asin``, ``title``, ``label``, ``image_url``).
"""
import base64
import html
import os

THUMB = 200

CSS = """
.av-gallery{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;margin:1em 0}
.av-gallery h2{font-size:1.2em;margin:.2em 0 .6em}
.av-gallery .av-row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.av-gallery figure{margin:0;width:170px;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fff}
.av-gallery figure.av-query{border:2px solid #1f77b4;width:200px}
.av-gallery .av-img{width:100%;height:160px;display:flex;align-items:center;justify-content:center;background:#fafafa}
.av-gallery .av-query .av-img{height:190px}
.av-gallery img{max-width:100%;max-height:100%;object-fit:contain}
.av-gallery .av-missing{width:100%;height:100%;background:#e5e5e5;color:#666;display:flex;align-items:center;justify-content:center;font-size:.8em}
.av-gallery figcaption{font-size:.78em;line-height:1.3;margin-top:4px;word-wrap:break-word}
.av-gallery .av-score{font-weight:600;color:#1f77b4}
.av-gallery .av-bar{height:4px;background:#1f77b4;border-radius:2px;margin-top:2px}
.av-gallery .av-label{color:#555}
"""


def image_data_uri(src, size=THUMB):
    """A ``data:image/jpeg;base64,...`` thumbnail of ``src`` (path, bytes, PIL image, array), or None if unreadable."""
    from amazon_visual.retrieval.embeddings import load_image, thumbnail_jpeg
    from amazon_visual.errors import UserError

    if src is None:
        return None
    if isinstance(src, (str, os.PathLike)) and not os.path.isfile(os.fspath(src)):
        return None
    try:
        jpeg = thumbnail_jpeg(load_image(src), size=size)
    except (UserError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _img_html(uri, alt):
    if uri is None:
        return f'<div class="av-img"><div class="av-missing">{html.escape(alt)}</div></div>'
    return f'<div class="av-img"><img src="{uri}" alt="{html.escape(alt, quote=True)}"></div>'


def _query_caption(query):
    if query.get("caption"):
        return html.escape(str(query["caption"]))
    if query.get("kind") == "asin" or query.get("asin"):
        parts = [f"<b>query: {html.escape(str(query.get('asin', '')))}</b>"]
        if query.get("label"):
            parts.append(f'<span class="av-label">{html.escape(str(query["label"]))}</span>')
        if query.get("title"):
            parts.append(html.escape(str(query["title"])))
        return "<br>".join(parts)
    parts = ["<b>query image</b>"]
    if isinstance(query.get("image"), (str, os.PathLike)):
        parts.append(html.escape(os.path.basename(os.fspath(query["image"]))))
    if query.get("predicted_label"):
        p = query.get("predicted_probability")
        parts.append(f'<span class="av-label">predicted: {html.escape(str(query["predicted_label"]))}'
                     + (f" ({p:.2f})" if p is not None else "") + "</span>")
    return "<br>".join(parts)


def gallery_fragment(query, results, title=None, size=THUMB):
    """An HTML ``<section class="av-gallery">`` (with its CSS) showing the query and the results."""
    query = dict(query or {})
    qsrc = query.get("image_array")
    if qsrc is None:
        qsrc = query.get("image")
    uri = None
    if qsrc is not None and (not isinstance(qsrc, (str, os.PathLike)) or os.path.isfile(os.fspath(qsrc))):
        uri = image_data_uri(qsrc, size)  # a URL is not fetched again: pass the decoded image as image_array
    if uri is None and query.get("thumb"):
        uri = image_data_uri(query["thumb"], size)
    out = [f"<style>{CSS}</style>", '<section class="av-gallery">']
    if title:
        out.append(f"<h2>{html.escape(str(title))}</h2>")
    out.append('<div class="av-row">')
    out.append(f'<figure class="av-query">{_img_html(uri, "query")}<figcaption>{_query_caption(query)}</figcaption></figure>')
    for r in results:
        sim = float(r.get("similarity", 0.0))
        alt = str(r.get("asin", ""))
        ruri = image_data_uri(r.get("thumb"), size) if r.get("thumb") else None
        bits = [f'<span class="av-score">#{int(r.get("rank", 0))} &nbsp; {sim:.3f}</span>',
                f'<div class="av-bar" style="width:{max(0.0, min(1.0, sim)) * 100:.0f}%"></div>',
                html.escape(alt)]
        if r.get("label"):
            bits.append(f'<span class="av-label">{html.escape(str(r["label"]))}</span>')
        if r.get("title"):
            t = str(r["title"])
            bits.append(html.escape(t if len(t) <= 90 else t[:89] + "\u2026"))
        out.append(f'<figure>{_img_html(ruri, alt)}<figcaption>{"<br>".join(bits)}</figcaption></figure>')
    out.append("</div></section>")
    return "\n".join(out)


def gallery_page(query, results, title="Look-alike products", size=THUMB):
    """A whole HTML document: :func:`gallery_fragment` in a page."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(str(title))}</title></head><body>\n"
            + gallery_fragment(query, results, title=title, size=size) + "\n</body></html>\n")


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
