"""Readers for the three public Amazon product metadata formats, streamed line by line.

- 2014 (McAuley): each line a Python dict literal ``{'asin', 'title', 'imUrl',
  'categories': [[path], [path], ...]}``, parsed with ``ast.literal_eval`` (never ``eval``);
- 2018 (Ni): strict JSON lines ``{"asin", "title", "category": [path], "main_cat",
  "imageURL": [...], "imageURLHighRes": [...]}`` with HTML entities to unescape;
- 2023 (Hou): JSONL ``{"parent_asin", "title", "main_category", "categories": [path],
  "images": [{"large", "hi_res", "thumb", "variant"}]}``.

Each product also carries its attributes (brand, price, average rating, number of ratings;
None where the record has none): see :mod:`tfrecords_builder.attributes`.

Files may be plain or gzipped (detected by magic bytes, not by name), UTF-8 (with or
without a BOM) or UTF-16/32 with a BOM; undecodable bytes are replaced. The format is
detected from the first well-formed line. A malformed line (unparsable, not a record,
no usable ASIN, longer than :data:`MAX_LINE_CHARS`) is skipped and counted with its
line number; nothing here ever loads a whole file or a whole overlong line. A gzip
stream that ends early or is corrupt is a :class:`UserError` naming the file.
Fields of the wrong type are ignored (a title that is a list is no title); text is
made valid Unicode (lone surrogates replaced).
"""

import ast
import gzip
import html
import io
import json
import os
import zlib
from dataclasses import dataclass, field

from amazon_visual.errors import UserError
from tfrecords_builder.attributes import attributes

FORMATS = ("2014", "2018", "2023")
MAX_LINE_CHARS = 5_000_000  # a longer line is malformed (guards literal_eval and memory)
MAX_RECORDED = 100  # malformed line numbers kept per file in the report


@dataclass
class Product:
    asin: str
    title: str = ""
    paths: list = field(default_factory=list)  # list of category paths (lists of names)
    image_urls: list = field(default_factory=list)  # best first
    store: str = ""  # 2018 main_cat / 2023 main_category (also a one-name path in ``paths``)
    brand: object = None  # str, or None when missing (2014/2018 brand; 2023 store, else details["Brand"])
    price: object = None  # float dollars, or None
    average_rating: object = None  # float 0-5 (2023), or None
    rating_number: object = None  # float count (2023), or None
    source: str = ""
    line: int = 0


@dataclass
class ReadStats:
    lines: int = 0
    products: int = 0
    malformed: int = 0
    malformed_lines: list = field(default_factory=list)  # [{"file", "line", "reason"}]
    formats: dict = field(default_factory=dict)  # file -> format

    def bad(self, path, lineno, reason):
        self.malformed += 1
        if len(self.malformed_lines) < MAX_RECORDED * max(1, len(self.formats)):
            self.malformed_lines.append({"file": os.path.basename(path), "line": lineno, "reason": reason})

    def as_dict(self):
        return {
            "lines": self.lines,
            "products": self.products,
            "malformed": self.malformed,
            "malformed_lines": self.malformed_lines,
            "formats": self.formats,
        }


def open_text(path):
    """Open a plain or gzipped text file for streaming (encoding from its BOM, else UTF-8)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"metadata file {path} does not exist: pass an Amazon meta_*.json(.gz) / .jsonl(.gz) file")
    with open(path, "rb") as f:
        magic = f.read(2)
    raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    try:
        head = raw.peek(4)[:4]
    except (OSError, EOFError, zlib.error) as e:
        raw.close()
        raise _read_error(path, 0, e) from None
    return io.TextIOWrapper(raw, encoding=_encoding(head), errors="replace", newline=None)


def _encoding(head):
    if head in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "utf-32"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    return "utf-8-sig"  # UTF-8, its BOM dropped when there is one


def _read_error(path, lineno, e):
    where = f"after line {lineno}" if lineno else "at its start"
    return UserError(
        f"metadata file {path}: its data ends early or is corrupt {where} "
        f"({type(e).__name__}: {str(e)[:80]}): download or copy the file again"
    )


def _lines(f, path):
    """Each line of ``f``, or None for a line over MAX_LINE_CHARS (read in pieces, never held whole)."""
    limit, lineno = MAX_LINE_CHARS, 0
    try:
        while True:
            line = f.readline(limit + 1)
            if not line:
                return
            lineno += 1
            if len(line) <= limit or line.endswith("\n"):
                yield line
                continue
            while line and not line.endswith("\n"):
                line = f.readline(limit + 1)
            yield None
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip, I/O error
        raise _read_error(path, lineno, e) from None


def _text(value):
    """Valid, unescaped, stripped text of a scalar; "" for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return ""
    value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
    return html.unescape(value).strip()


def _path(value):
    """A category path: list of non-empty unescaped names."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [t for t in (_text(v) for v in value) if t]


def _urls(values):
    out = []
    for v in values:
        if isinstance(v, str):
            v = v.encode("utf-8", "replace").decode("utf-8").strip()
            if v and v not in out:
                out.append(v)
    return out


def _parse_2014(line):
    rec = ast.literal_eval(line)
    if not isinstance(rec, dict):
        raise ValueError("not a dict literal")
    asin = rec.get("asin")
    paths = []
    cats = rec.get("categories") or []
    if isinstance(cats, (list, tuple)):
        for p in cats:
            p = _path(p)
            if p:
                paths.append(p)
    return asin, rec.get("title"), paths, _urls([rec.get("imUrl")]), "", attributes(rec, "2014")


def _parse_2018(line):
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    asin = rec.get("asin")
    paths = []
    p = _path(rec.get("category") or [])
    if p:
        paths.append(p)
    elif _path(rec.get("main_cat")):
        paths.append(_path(rec.get("main_cat")))
    hi = rec.get("imageURLHighRes") or []
    lo = rec.get("imageURL") or []
    hi = hi if isinstance(hi, list) else [hi]
    lo = lo if isinstance(lo, list) else [lo]
    return asin, rec.get("title"), paths, _urls(hi + lo), _text(rec.get("main_cat")), attributes(rec, "2018")


def _parse_2023(line):
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    asin = rec.get("parent_asin") or rec.get("asin")
    paths = []
    main = _text(rec.get("main_category"))
    p = _path(rec.get("categories") or [])
    if p:
        paths.append(p)
    # main_category is the store ("AMAZON FASHION", "All Beauty"): a path of its own
    if main and main.casefold() not in {c.casefold() for c in p}:
        paths.append([main])
    urls = []
    images = rec.get("images") or []
    if isinstance(images, dict):  # some dumps store {"large": [...], "hi_res": [...]}
        images = [dict(zip(images, vals)) for vals in zip(*[v for v in images.values() if isinstance(v, list)])]
    if isinstance(images, list):
        # the MAIN picture first, then the others; per picture large (<=500 px), then hi_res
        images = sorted(
            (im for im in images if isinstance(im, dict)),
            key=lambda im: 0 if str(im.get("variant", "")).upper() == "MAIN" else 1,
        )
        for im in images:
            urls.extend([im.get("large"), im.get("hi_res"), im.get("thumb")])
    return asin, rec.get("title"), paths, _urls(urls), main, attributes(rec, "2023")


_PARSERS = {"2014": _parse_2014, "2018": _parse_2018, "2023": _parse_2023}


def detect_line_format(line):
    """The format of one line, or None when it is not a well-formed record."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        return "2014" if isinstance(rec, dict) else None
    if not isinstance(rec, dict):
        return None
    if (
        "parent_asin" in rec
        or "main_category" in rec
        or (isinstance(rec.get("images"), list) and "categories" in rec and "asin" not in rec)
    ):
        return "2023"
    if "imUrl" in rec or ("categories" in rec and "category" not in rec and "images" not in rec):
        return "2014"
    return "2018"


def detect_format(path, max_lines=1000):
    """Detect the format of a metadata file from its first well-formed lines."""
    with open_text(path) as f:
        for i, line in enumerate(_lines(f, path)):
            if i >= max_lines:
                break
            if line is None:
                continue
            fmt = detect_line_format(line)
            if fmt:
                return fmt
    raise UserError(
        f"metadata file {path}: no Amazon product record in its first {max_lines} lines "
        "(expected the 2014, 2018 or 2023 format, one record per line)"
    )


def read_products(paths, stats=None, fmt=None):
    """Yield :class:`Product` for every well-formed line of every file, streamed.

    ``stats`` (a :class:`ReadStats`) collects line counts and malformed lines.
    ``fmt`` forces a format for all files (auto-detected per file otherwise).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        path = os.fspath(path)
        f_fmt = fmt or detect_format(path)
        if f_fmt not in _PARSERS:
            raise UserError(f"unknown metadata format {f_fmt!r}: use one of {', '.join(FORMATS)}")
        stats.formats[os.path.basename(path)] = f_fmt
        parse = _PARSERS[f_fmt]
        with open_text(path) as f:
            for lineno, line in enumerate(_lines(f, path), 1):
                if line is not None and not line.strip():
                    continue
                stats.lines += 1
                product, reason = _record(parse, line, f_fmt)
                if product is None:
                    stats.bad(path, lineno, reason)
                    continue
                stats.products += 1
                product.source, product.line = os.path.basename(path), lineno
                yield product


def _record(parse, line, fmt):
    """``(Product, None)`` for a well-formed line, else ``(None, reason)``."""
    if line is None:
        return None, "line too long"
    try:
        asin, title, cat_paths, urls, store, attrs = parse(line.strip())
        asin = _text(asin)
        title = _text(title)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, AttributeError) as e:
        return None, f"unparsable {fmt} record ({type(e).__name__})"
    if not asin:
        return None, "no asin"
    return Product(asin=asin, title=title, paths=cat_paths, image_urls=urls, store=store, **attrs), None
