"""Fuzzed input (hypothesis) for the metadata readers and the image normaliser.

Properties: never a crash (only UserError for a file that is no catalog or whose data
ends early, ImageError for an image), never code executed, every non-blank line either
a product or a counted bad record. No TensorFlow here; the whole file runs in ~15 s.
FUZZ_EXAMPLES=2000 (environment) runs a deeper search.
"""

import gzip
import io
import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from amazon_visual.errors import UserError
from builder_fixtures import image_bytes, line_2014, line_2018, line_2023, product
from tfrecords_builder import metadata
from tfrecords_builder.images import ImageError, _to_rgb, normalize, process_item
from tfrecords_builder.metadata import ReadStats, read_products

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 100)),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
LINE = {"2014": line_2014, "2018": line_2018, "2023": line_2023}

# ------------------------------------------------------------------------------ strategies
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "&amp;", "B0\x00", " ", "\u2028", "\ufeff"])
)
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)
KEYS = [
    "asin",
    "parent_asin",
    "title",
    "category",
    "categories",
    "main_cat",
    "main_category",
    "imageURL",
    "imageURLHighRes",
    "images",
    "imUrl",
]
records = st.fixed_dictionaries({}, optional={k: json_values for k in KEYS})
py_values = st.recursive(
    scalars | st.binary(max_size=8) | st.complex_numbers(allow_nan=False, allow_infinity=False),
    lambda c: st.lists(c, max_size=3) | st.tuples(c, c) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=10,
)
py_records = st.fixed_dictionaries({}, optional={k: py_values for k in KEYS})
# code a Python literal could smuggle in; each would create the file named by {0} if it ran
EVIL = [
    "__import__('os').system('touch {0}')",
    "open('{0}', 'w')",
    "(lambda: open('{0}', 'w'))()",
    "[open('{0}', 'w') for _ in 'x']",
    "f\"{{open('{0}', 'w')}}\"",
    "__import__('pathlib').Path('{0}').touch()",
    "exec(\"open('{0}','w')\")",
    "().__class__.__bases__[0].__subclasses__()",
    "{{**open('{0}', 'w')}}",
]


def _write(lines, gz=False, encoding="utf-8"):
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    data = ("\n".join(lines) + "\n").encode(encoding, "surrogatepass")
    with gzip.open(path, "wb") if gz else open(path, "wb") as f:
        f.write(data)
    return path


def _read(path, fmt=None):
    """Products and stats; a UserError is allowed (a file that is no catalog)."""
    stats = ReadStats()
    got = []
    try:
        for p in read_products(path, stats, fmt=fmt):
            got.append(p)
    except UserError as e:
        assert str(e).startswith("metadata file ") and "\n" not in str(e)
    finally:
        os.remove(path)
    assert stats.products == len(got)
    assert stats.products + stats.malformed == stats.lines  # every non-blank line is counted
    for p in got:  # what reaches TFDS / the report is valid text
        assert p.asin and isinstance(p.asin, str)
        for text in [p.asin, p.title, *p.image_urls, *(n for path in p.paths for n in path)]:
            assert isinstance(text, str)
            text.encode("utf-8")
        assert all(isinstance(path, list) and path and all(path) for path in p.paths)
    return got, stats


# ------------------------------------------------------------------------------ metadata
@FUZZ
@given(data=st.binary(max_size=3000), gz=st.booleans())
def test_random_bytes(data, gz):
    fd, path = tempfile.mkstemp()
    with os.fdopen(fd, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    _read(path)


@FUZZ
@given(
    recs=st.lists(records, min_size=1, max_size=8),
    fmt=st.sampled_from(["2014", "2018", "2023"]),
    ascii_only=st.booleans(),
)
def test_random_json_records(recs, fmt, ascii_only):
    lines = [json.dumps(r, ensure_ascii=ascii_only) for r in recs]
    _read(_write(lines), fmt=fmt)
    _read(_write(lines))  # format detection on random records


@FUZZ
@given(
    recs=st.lists(py_records, min_size=1, max_size=6),
    evil=st.sampled_from(EVIL),
    key=st.sampled_from(KEYS),
    where=st.integers(0, 5),
)
def test_random_python_literals_never_run_code(recs, evil, key, where):
    with tempfile.TemporaryDirectory() as tmp:
        sentinel = os.path.join(tmp, "PWNED")
        bad = "{" + f"'{key}': " + evil.format(sentinel) + ", 'asin': 'EVIL'}"
        lines = [repr(r) for r in recs]
        lines.insert(min(where, len(lines)), bad)
        got, stats = _read(_write([line_2014(product("G1", ["A"]))] + lines), fmt="2014")
        assert not os.path.exists(sentinel)
        assert "EVIL" not in {p.asin for p in got}  # the line with code is a counted bad record
        assert stats.malformed >= 1


@FUZZ
@given(frac=st.floats(0, 1, exclude_max=True), n=st.integers(1, 60))
def test_truncated_gzip_is_a_user_error_after_the_products_before_it(frac, n):
    lines = [line_2018(product(f"T{i:03d}", ["Shoes"], title="t" * (i % 7) * 20)) for i in range(n)]
    full = gzip.compress(("\n".join(lines) + "\n").encode())
    cut = 2 + int(frac * (len(full) - 2))  # (one byte is no gzip magic: a plain one-line file)
    fd, path = tempfile.mkstemp(suffix=".json.gz")
    with os.fdopen(fd, "wb") as f:
        f.write(full[:cut])
    stats = ReadStats()
    got = []
    with pytest.raises(UserError, match="ends early or is corrupt|no Amazon product record"):
        for p in read_products(path, stats, fmt="2018" if cut % 2 else None):
            got.append(p.asin)
    os.remove(path)
    assert got == [f"T{i:03d}" for i in range(len(got))]  # a prefix, in order; nothing invented


@FUZZ
@given(lengths=st.lists(st.integers(0, 3000), min_size=1, max_size=6), newline=st.sampled_from(["\n", "\r\n", "\r"]))
def test_huge_lines_are_counted_and_never_held_whole(monkeypatch, lengths, newline):
    monkeypatch.setattr(metadata, "MAX_LINE_CHARS", 1000)
    lines = [line_2018(product(f"H{i}", ["Shoes"], title="x" * n)) for i, n in enumerate(lengths)]
    fd, path = tempfile.mkstemp()
    with os.fdopen(fd, "w", newline="") as f:
        f.write(newline.join(lines))
    got, stats = _read(path, fmt="2018")
    long = [i for i, ln in enumerate(lines) if len(ln) > 1000]
    assert [p.asin for p in got] == [f"H{i}" for i in range(len(lines)) if i not in long]
    assert [m["line"] for m in stats.malformed_lines] == [i + 1 for i in long]
    assert all(m["reason"] == "line too long" for m in stats.malformed_lines)


@FUZZ
@given(
    titles=st.lists(st.text(max_size=30), min_size=1, max_size=5),
    encoding=st.sampled_from(["utf-8-sig", "utf-16", "utf-16-be", "utf-32"]),
    fmt=st.sampled_from(["2014", "2023"]),
)
def test_files_with_a_bom_read_like_utf8(titles, encoding, fmt):
    titles = [t.encode("utf-8", "replace").decode("utf-8") for t in titles]
    lines = [LINE[fmt](product(f"U{i}", ["Shoes", "Boots"], title=t)) for i, t in enumerate(titles)]
    if encoding == "utf-16-be":
        raw = b"\xfe\xff" + ("\n".join(lines) + "\n").encode("utf-16-be")
        fd, path = tempfile.mkstemp()
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
    else:
        path = _write(lines, encoding=encoding)
    expect, _ = _read(_write(lines))
    got, stats = _read(path)
    assert stats.malformed == 0
    assert [(p.asin, p.title, p.paths) for p in got] == [(p.asin, p.title, p.paths) for p in expect]


def test_latin1_bytes_are_replaced_not_fatal(tmp_path):
    path = tmp_path / "m.json"
    line = json.dumps({"asin": "L1", "title": "Caf\xe9 cr\xe8me", "category": ["Caf\xe9"]}, ensure_ascii=False)
    path.write_bytes(line.encode("latin-1") + b"\n")
    (p,) = read_products(str(path))
    assert p.asin == "L1" and p.title == "Caf\ufffd cr\ufffdme"


def test_a_line_over_the_real_limit(tmp_path):
    good = line_2018(product("OK1", ["Shoes"]))
    path = tmp_path / "m.json"
    path.write_text(good + "\n" + "{" + "x" * (metadata.MAX_LINE_CHARS + 10) + "\n" + good.replace("OK1", "OK2"))
    stats = ReadStats()
    assert [p.asin for p in read_products(str(path), stats)] == ["OK1", "OK2"]
    assert stats.malformed_lines == [{"file": "m.json", "line": 2, "reason": "line too long"}]


# ------------------------------------------------------------------------------ images
SIGNATURES = [
    b"",
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"P6\n",
    b"\x00\x00\x01\x00",
]


@FUZZ
@given(sig=st.sampled_from(SIGNATURES), body=st.binary(max_size=2000), size=st.integers(8, 300))
def test_random_bytes_are_image_errors(sig, body, size):
    data = sig + body
    try:
        jpeg, w, h = normalize(data, size)
    except ImageError as e:
        assert str(e) and "\n" not in str(e)
        assert process_item(("K", data, size))[1:] == (None, str(e))
    else:
        assert max(w, h) <= size and Image.open(io.BytesIO(jpeg)).mode == "RGB"


@FUZZ
@given(
    kind=st.sampled_from(["jpeg", "png", "gif", "webp", "cmyk", "palette", "rgba", "16bit", "big"]),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 2000),
)
def test_damaged_images_are_image_errors_or_decode(kind, flips, cut):
    data = bytearray(image_bytes(kind))
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data[:cut] if cut is not None else data)
    try:
        jpeg, w, h = normalize(data, 64)
    except ImageError:
        return
    assert max(w, h) <= 64 and Image.open(io.BytesIO(jpeg)).mode == "RGB"


# formats able to hold each mode (first one wins); the others are converted in memory only
SAVE_AS = {
    "1": "PNG",
    "L": "PNG",
    "LA": "PNG",
    "P": "PNG",
    "RGB": "PNG",
    "RGBA": "PNG",
    "I;16": "PNG",
    "I;16B": "TIFF",
    "I;16L": "TIFF",
    "I": "TIFF",
    "F": "TIFF",
    "CMYK": "JPEG",
    "YCbCr": "IM",
    "LAB": "TIFF",
    "PA": "TIFF",
    "RGBX": "TIFF",
}
SIDES = st.sampled_from([1, 2, 3, 7, 64, 257, 1000, 10_000])


@FUZZ
@given(
    mode=st.sampled_from(sorted(Image.MODES)),
    w=SIDES,
    h=SIDES,
    size=st.sampled_from([8, 31, 64, 256]),
    seed=st.integers(0, 255),
)
def test_every_mode_and_extreme_sizes(mode, w, h, size, seed):
    assume(w * h <= 1_000_000)
    noise = Image.effect_noise((w, h), 60).point(lambda v: (v + seed) % 256)  # varied pixels, any size
    if mode in ("LAB", "HSV"):
        im = Image.merge(mode, [noise] * 3)
    elif mode in ("La", "RGBa", "I;16N", "PA"):
        im = Image.new(mode, (w, h), seed)
    else:
        im = noise.convert(mode)
    out = _to_rgb(im)
    assert out.mode == "RGB" and out.size == (w, h)
    fmt = SAVE_AS.get(mode)
    if fmt is None:
        return
    buf = io.BytesIO()
    im.save(buf, fmt)
    jpeg, ow, oh = normalize(buf.getvalue(), size)
    got = Image.open(io.BytesIO(jpeg))
    assert got.mode == "RGB" and got.size == (ow, oh) and max(ow, oh) == min(size, max(w, h))
    assert min(ow, oh) >= 1
