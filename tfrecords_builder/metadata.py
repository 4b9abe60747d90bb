"""Readers for the three public Amazon product metadata formats, streamed line by line.

- 2014 (McAuley): each line a Python dict literal ``{'asin', 'title', 'imUrl',
  'categories': [[path], [path], ...]}``, parsed with ``ast.literal_eval`` (never ``eval``);
- 2018 (Ni): strict JSON lines ``{"asin", "title", "category": [path], "main_cat",
  "imageURL": [...], "imageURLHighRes": [...]}`` with HTML entities to unescape;
- 2023 (Hou): JSONL ``{"parent_asin", "title", "main_category", "categories": [path],
  "images": [{"large", "hi_res", "thumb", "variant"}]}``.

Files may be plain or gzipped (detected by magic bytes, not by name). The format is
detected from the first well-formed line. A malformed line is skipped and counted
with its line number; nothing here ever loads a whole file.
"""
import ast
import gzip
import html
import io
import json
import os
from dataclasses import dataclass, field

from amazon_visual.errors import UserError

FORMATS = ("2014", "2018", "2023")
MAX_LINE_CHARS = 5_000_000  # a longer line is malformed (guards literal_eval and memory)
MAX_RECORDED = 100  # malformed line numbers kept per file in the report


@dataclass
class Product:
    asin: str
    title: str = ""
    paths: list = field(default_factory=list)  # list of category paths (lists of names)
    image_urls: list = field(default_factory=list)  # best first
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
        return {"lines": self.lines, "products": self.products, "malformed": self.malformed,
                "malformed_lines": self.malformed_lines, "formats": self.formats}


def open_text(path):
    """Open a plain or gzipped text file for streaming (UTF-8, undecodable bytes replaced)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"metadata file {path} does not exist: pass an Amazon meta_*.json(.gz) / .jsonl(.gz) file")
    with open(path, "rb") as f:
        magic = f.read(2)
    raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)


def _text(value):
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    return html.unescape(value).strip()


def _path(value):
    """A category path: list of non-empty unescaped names."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [t for t in (_text(v) for v in value if isinstance(v, (str, int, float))) if t]


def _urls(values):
    out = []
    for v in values:
        if isinstance(v, str):
            v = v.strip()
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
    return asin, rec.get("title"), paths, _urls([rec.get("imUrl")])


def _parse_2018(line):
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    asin = rec.get("asin")
    paths = []
    p = _path(rec.get("category") or [])
    if p:
        paths.append(p)
    elif rec.get("main_cat"):
        paths.append(_path(rec.get("main_cat")))
    hi = rec.get("imageURLHighRes") or []
    lo = rec.get("imageURL") or []
    hi = hi if isinstance(hi, list) else [hi]
    lo = lo if isinstance(lo, list) else [lo]
    return asin, rec.get("title"), paths, _urls(hi + lo)


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
        images = sorted((im for im in images if isinstance(im, dict)),
                        key=lambda im: 0 if str(im.get("variant", "")).upper() == "MAIN" else 1)
        for im in images:
            urls.extend([im.get("large"), im.get("hi_res"), im.get("thumb")])
    return asin, rec.get("title"), paths, _urls(urls)


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
    if "parent_asin" in rec or "main_category" in rec or (
            isinstance(rec.get("images"), list) and "categories" in rec and "asin" not in rec):
        return "2023"
    if "imUrl" in rec or ("categories" in rec and "category" not in rec and "images" not in rec):
        return "2014"
    return "2018"


def detect_format(path, max_lines=1000):
    """Detect the format of a metadata file from its first well-formed lines."""
    with open_text(path) as f:
        for i, line in enumerate(f):
            if i >= max_lines:
                break
            if len(line) > MAX_LINE_CHARS:
                continue
            fmt = detect_line_format(line)
            if fmt:
                return fmt
    raise UserError(f"metadata file {path}: no Amazon product record in its first {max_lines} lines "
                    "(expected the 2014, 2018 or 2023 format, one record per line)")


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
            for lineno, line in enumerate(f, 1):
                stats.lines += 1
                if not line.strip():
                    stats.lines -= 1
                    continue
                if len(line) > MAX_LINE_CHARS:
                    stats.bad(path, lineno, "line too long")
                    continue
                try:
                    asin, title, cat_paths, urls = parse(line.strip())
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, AttributeError) as e:
                    stats.bad(path, lineno, f"unparsable {f_fmt} record ({type(e).__name__})")
                    continue
                asin = _text(asin)
                if not asin:
                    stats.bad(path, lineno, "no asin")
                    continue
                stats.products += 1
                yield Product(asin=asin, title=_text(title), paths=cat_paths, image_urls=urls,
                              source=os.path.basename(path), line=lineno)
