"""Image normalising with Pillow: every mode to RGB JPEG, resizing, bad files. No TensorFlow here."""

import io

import pytest
from PIL import Image

from builder_fixtures import bomb_png, forged_gif, forged_jpeg, image_bytes, large_jpeg, png_bomb
from tfrecords_builder import images
from tfrecords_builder.images import ImageError, iter_image_files, normalize, process_item

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


@pytest.mark.parametrize(
    "kind,reason",
    [("truncated", "undecodable"), ("html", "not an image"), ("empty", "empty"), ("bomb", "decompression bomb")],
)
def test_bad_images_raise_image_error(kind, reason):
    with pytest.raises(ImageError, match=reason):
        normalize(image_bytes(kind), 64)
    key, jpeg, why = process_item(("A1", image_bytes(kind), 64))
    assert key == "A1" and jpeg is None and reason in why


def test_bomb_guard_by_pixel_count(monkeypatch):
    assert images.MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS > 1_000_000
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="decompression bomb"):
        normalize(image_bytes("big"), 64)  # a JPEG decoded at 1/4 scale: 75 x 38 px > 100
    with pytest.raises(ImageError, match="decompression bomb"):
        normalize(image_bytes("png"), 64)  # 40 x 30 = 1200 px, Pillow's guard (> 2 x 100)
    with pytest.raises(ImageError, match="decompression bomb"):
        normalize(bomb_png(20_000, 20_000), 64)


@pytest.fixture(scope="module")
def jpeg_90mp():
    return large_jpeg(10954, 8216)  # 90 MP, ~1 MB, generated in ~0.2 s


def test_a_90_megapixel_jpeg_is_decoded_at_reduced_scale(jpeg_90mp):
    with pytest.raises(Image.DecompressionBombError):  # what a plain Pillow open does with it
        Image.open(io.BytesIO(jpeg_90mp))
    jpeg, w, h = normalize(jpeg_90mp, 256)
    assert (w, h) == (256, 192) and _open(jpeg).size == (256, 192)
    with images._open_image(io.BytesIO(jpeg_90mp)) as im:
        images._reduce(im, 256)
        assert im.size == (1370, 1027)  # decoded at 1/8 scale: 1.4 MP
    # a large image size needs a larger decode, still under the cap: 1/2 scale is 22.5 MP
    _, w, h = normalize(jpeg_90mp, 4096)
    assert (w, h) == (4096, 3072)
    assert process_item(("L1", jpeg_90mp, 64))[2] is None


def test_a_long_panorama_jpeg_is_reduced_by_its_longer_side():
    pano = large_jpeg(60_000, 1_000)  # 60 MP: both sides reduced by 8 for a 4096 px output
    assert normalize(pano, 4096)[1:] == (4096, 68)


@pytest.mark.parametrize(
    "make,what",
    [
        (lambda: png_bomb(9_000, 9_000), "81 MP PNG (78 KB): over Pillow's 2x limit"),
        (lambda: png_bomb(7_000, 7_000), "49 MP PNG: between the limit and 2x (Pillow's warning)"),
        (lambda: bomb_png(100_000, 100_000), "PNG header claiming 10 GP"),
        (lambda: forged_jpeg(65_000, 65_000), "JPEG header claiming 4.2 GP"),
        (lambda: forged_jpeg(12_000, 11_000), "JPEG header claiming 132 MP, over MAX_JPEG_PIXELS"),
        (lambda: forged_gif(65_535, 65_535), "GIF screen claiming 4.3 GP"),
    ],
    ids=["png-81mp", "png-49mp", "png-header", "jpeg-header-4gp", "jpeg-header-132mp", "gif-header"],
)
def test_real_bombs_are_refused(make, what):
    data = make()
    assert len(data) < 200_000, what
    with pytest.raises(ImageError, match="decompression bomb"):
        normalize(data, 256)
    assert process_item(("X", data, 256)) == ("X", None, images.BOMB)


def test_a_forged_jpeg_header_under_the_cap_costs_only_its_reduced_decode():
    # 108 MP claimed by a 600-byte file: decoded at 1/8 (1500 x 1125), never at full size;
    # libjpeg fills the missing data (the file ends with a proper EOI marker)
    data = forged_jpeg(12_000, 9_000)
    with images._open_image(io.BytesIO(data)) as im:
        images._reduce(im, 256)
        assert im.size == (1500, 1125)
    assert normalize(data, 256)[1:] == (256, 192)
    with pytest.raises(ImageError, match="undecodable"):
        normalize(data[:-200], 256)  # cut: Pillow refuses truncated files


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="unreadable"):
        normalize(str(tmp_path / "nope.jpg"), 64)


def test_image_files_of_a_folder(tmp_path):
    """The folder's listing as build-data keeps it (in its plan): one file per ASIN, the preferred extension."""
    from tfrecords_builder.plan import PlanStore

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ["B1.jpg", "B2.PNG", "B3.webp", "B3.gif", "notes.txt", ".jpg"]:
        (folder / name).write_bytes(b"x")
    assert sorted(stem for stem, _, _ in iter_image_files(str(folder))) == ["B1", "B2", "B3", "B3"]
    store = PlanStore(str(tmp_path / "plan.sqlite"))
    store.add_image_files(iter_image_files(str(folder)))
    idx = {a: store.image_file(a) for a in ("B1", "B2", "B3", "notes", "")}
    store.close()
    assert sorted(a for a, path in idx.items() if path) == ["B1", "B2", "B3"]
    assert idx["B3"].endswith("B3.gif")  # extension order: .jpg .jpeg .png .gif .webp ...
