"""Decode, normalise and re-encode product images (Pillow), and find them in a folder.

:func:`normalize` turns any image file Pillow reads into an RGB JPEG whose longer
side is at most ``image_size``: EXIF orientation applied, CMYK / palette / grayscale /
16-bit / float converted, transparency composed over white. It runs in worker
processes (:func:`process_item` is the picklable task). Bad inputs raise
:class:`ImageError` with a short reason; a decompression bomb is one of them.

A photo is judged by the pixels actually decoded. A JPEG is decoded at reduced
scale (libjpeg's DCT scaling, 1/2 to 1/8, through Pillow's ``draft``), so a real
8-100 megapixel product photo is decoded as a few megapixels and passes; Pillow's
full-size guard is not applied to it. Refused as a decompression bomb: any image
that would be decoded beyond :data:`MAX_IMAGE_PIXELS` (a PNG, GIF, WebP, TIFF ... is
decoded at full size, so Pillow's own guard at that limit stays in force for them),
and a JPEG whose header claims more than :data:`MAX_JPEG_PIXELS`.
"""

import io
import os
import struct
import warnings

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

# The decompression-bomb guard: at most this many pixels are decoded per image. Pillow's
# own guard (DecompressionBombError above 2x this, a warning above it: both count as a
# failure here) checks every format but JPEG at open time, and its plugins use it inside
# (GIF frames, TIFF tiles, ICO/ICNS sizes); a JPEG is checked at its reduced decoding size.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# The largest JPEG accepted at all (full size, from its header): above the largest camera
# photos met in catalogs (100 MP, e.g. 11648 x 8736). A progressive JPEG holds its
# full-size DCT coefficients while it decodes (2 bytes per sample: up to ~360 MB at this
# size with 4:2:0 chroma, ~720 MB with 4:4:4), whatever the scale of its output.
MAX_JPEG_PIXELS = 120_000_000
BOMB = "decompression bomb (too many pixels)"
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
JPEG_QUALITY = 90


class ImageError(Exception):
    """An image that cannot be used; ``str(e)`` is the reason recorded in the report."""


def _to_rgb(im):
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode == "La":
            im = im.convert("LA")  # Pillow converts La only to LA
        rgba = im.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer gray: scale the used range into 0..255
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size else 0
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        a = np.clip(a * scale, 0, 255).astype("uint8")
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0
        return Image.fromarray(np.clip(a, 0, 255).astype("uint8"), "L").convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV ...
    return im.convert("RGB")


def _open_source(source):
    """A binary file object for ``source`` (path or bytes)."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty file")
        return io.BytesIO(source)
    try:
        if os.path.getsize(source) == 0:
            raise ImageError("empty file")
        return open(source, "rb")
    except OSError as e:
        raise ImageError(f"unreadable file ({e.strerror})") from None


def _open_image(fp):
    """Open with Pillow; a JPEG without the full-size guard (see :func:`_reduce`)."""
    head = fp.read(3)
    fp.seek(0)
    if head == b"\xff\xd8\xff":  # the JPEG signature
        return JpegImagePlugin.jpeg_factory(fp)
    return Image.open(fp)  # Pillow's guard: DecompressionBombWarning / Error


def _reduce(im, image_size):
    """Let a JPEG decode at reduced scale; refuse an image that would decode too many pixels."""
    w, h = im.size
    if im.format in ("JPEG", "MPO"):
        if w * h > MAX_JPEG_PIXELS:
            raise ImageError(BOMB)
        longer = max(w, h)
        if longer > image_size:  # the aspect-kept target, as Image.thumbnail asks draft for
            im.draft("RGB", (max(1, w * image_size // longer), max(1, h * image_size // longer)))
    w, h = im.size  # what load() will decode
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(BOMB)


def normalize(source, image_size, quality=JPEG_QUALITY):
    """``(jpeg_bytes, width, height)`` of ``source`` (path or bytes), longer side <= ``image_size``."""
    fp = _open_source(source)
    try:
        with fp, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_image(fp) as im:
                _reduce(im, image_size)
                im.load()
                im = ImageOps.exif_transpose(im)
                im = _to_rgb(im)
                if max(im.size) > image_size:
                    im.thumbnail((image_size, image_size), Image.Resampling.BICUBIC)
                out = io.BytesIO()
                im.save(out, format="JPEG", quality=quality)
                return out.getvalue(), im.size[0], im.size[1]
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(BOMB) from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, MemoryError, struct.error) as e:
        msg = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise ImageError(f"undecodable image ({msg})") from None


def warm_up():
    """Worker start-up: load Pillow's format plugins before the first image arrives."""
    Image.init()


def process_item(task):
    """Worker task: ``(key, source, image_size)`` -> ``(key, jpeg or None, reason or None)``."""
    key, source, image_size = task
    try:
        jpeg, _, _ = normalize(source, image_size)
        return key, jpeg, None
    except ImageError as e:
        return key, None, str(e)
    except Exception as e:  # never let one image stop the build
        return key, None, f"image error ({type(e).__name__})"


def iter_image_files(images_dir):
    """``(asin, path, rank)`` for the image files in ``images_dir`` (not recursive), streamed.

    Files are named by ASIN with any common extension (``B000123.jpg``); ``rank`` is the
    extension's place in :data:`IMAGE_EXTENSIONS` (lower wins when several files share a stem).
    """
    rank = {e: i for i, e in enumerate(IMAGE_EXTENSIONS)}
    with os.scandir(os.fspath(images_dir)) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            # no stat per file (slow on network disks); a folder or a dead link named like an
            # image fails later as an unreadable image and is reported
            if ext in rank and stem:
                yield stem, entry.path, rank[ext]
