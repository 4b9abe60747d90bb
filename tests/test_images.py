"""Image normalising with Pillow: every mode to RGB JPEG, resizing, bad files. No TensorFlow here."""
import io

import pytest
from PIL import Image

from builder_fixtures import bomb_png, image_bytes
from tfrecords_builder import images
from tfrecords_builder.images import ImageError, index_images_dir, normalize, process_item

GOOD = ["jpeg", "png", "cmyk", "palette", "rgba", "la", "16bit", "gray", "gif", "webp", "big"]


def _open(jpeg):
    im = Image.open(io.BytesIO(jpeg))
    assert im.format == "JPEG"
    return im


@pytest.mark.parametrize("kind", GOOD)
def test_every_mode_becomes_rgb_jpeg(kind, tmp_path):
    data = image_bytes(kind)
    jpeg, w, h = normalize(data, 64)
    im = _open(jpeg)
    assert im.mode == "RGB" and im.size == (w, h) and max(w, h) <= 64
    # from a path too
    p = tmp_path / f"x.{kind}"
    p.write_bytes(data)
    assert normalize(str(p), 64)[1:] == (w, h)


def test_colours_survive_conversion():
    px = lambda kind: _open(normalize(image_bytes(kind), 64)[0]).getpixel((10, 10))  # noqa: E731
    r, g, b = px("cmyk")  # CMYK (0, 255, 255, 0) is red
    assert r > 200 and g < 50 and b < 50
    assert min(px("rgba")) > 245  # transparent over white
    assert abs(px("16bit")[0] - 155) < 4  # 40000 / 65535 * 255
    assert abs(px("gray")[0] - 128) < 4


def test_resize_keeps_aspect_ratio_and_never_enlarges():
    _, w, h = normalize(image_bytes("big"), 64)  # 300 x 150
    assert (w, h) == (64, 32)
    _, w, h = normalize(image_bytes("jpeg"), 64)  # 40 x 30 stays
    assert (w, h) == (40, 30)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (60, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    _, w, h = normalize(buf.getvalue(), 64)
    assert (w, h) == (20, 60)


@pytest.mark.parametrize("kind,reason", [("truncated", "undecodable"), ("html", "not an image"),
                                         ("empty", "empty"), ("bomb", "decompression bomb")])
def test_bad_images_raise_image_error(kind, reason):
    with pytest.raises(ImageError, match=reason):
        normalize(image_bytes(kind), 64)
    key, jpeg, why = process_item(("A1", image_bytes(kind), 64))
    assert key == "A1" and jpeg is None and reason in why


def test_bomb_guard_by_pixel_count(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="decompression bomb"):
        normalize(image_bytes("big"), 64)  # 45000 px > 2 x 100
    assert images.MAX_IMAGE_PIXELS > 1_000_000
    with pytest.raises(ImageError, match="decompression bomb"):
        normalize(bomb_png(20_000, 20_000), 64)


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="unreadable"):
        normalize(str(tmp_path / "nope.jpg"), 64)


def test_index_images_dir(tmp_path):
    for name in ["B1.jpg", "B2.PNG", "B3.webp", "B3.gif", "notes.txt", ".jpg"]:
        (tmp_path / name).write_bytes(b"x")
    idx = index_images_dir(str(tmp_path))
    assert sorted(idx) == ["B1", "B2", "B3"]
    assert idx["B3"].endswith("B3.gif")  # extension order: .jpg .jpeg .png .gif .webp ...
