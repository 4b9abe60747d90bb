"""Decode, normalise and re-encode product images (Pillow), and find them in a folder.

:func:`normalize` turns any image file Pillow reads into an RGB JPEG whose longer
side is at most ``image_size``: EXIF orientation applied, CMYK / palette / grayscale /
16-bit / float converted, transparency composed over white. It runs in worker
processes (:func:`process_item` is the picklable task). Bad inputs raise
:class:`ImageError` with a short reason; a decompression bomb is one of them.
"""
import io
import os
import warnings

from PIL import Image, ImageFile, ImageOps

# A decompression-bomb guard: Pillow raises DecompressionBombError above 2x this,
# warns above it; both count as a failure here.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
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
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0
        return Image.fromarray(np.clip(a, 0, 255).astype("uint8"), "L").convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV ...
    return im.convert("RGB")


def normalize(source, image_size, quality=JPEG_QUALITY):
    """``(jpeg_bytes, width, height)`` of ``source`` (path or bytes), longer side <= ``image_size``."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty file")
        fp = io.BytesIO(source)
    else:
        try:
            if os.path.getsize(source) == 0:
                raise ImageError("empty file")
        except OSError as e:
            raise ImageError(f"unreadable file ({e.strerror})") from None
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                im.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale when possible
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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("decompression bomb (too many pixels)") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, MemoryError) as e:
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


def index_images_dir(images_dir):
    """Map ASIN (file stem) -> path for the image files in ``images_dir`` (not recursive).

    Files are named by ASIN with any common extension (``B000123.jpg``); when several
    files share a stem the first extension in :data:`IMAGE_EXTENSIONS` order wins.
    """
    images_dir = os.fspath(images_dir)
    found = {}
    rank = {e: i for i, e in enumerate(IMAGE_EXTENSIONS)}
    with os.scandir(images_dir) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            if ext not in rank or not stem:
                continue
            # no stat per file (slow on network disks); a folder or a dead link named like an
            # image fails later as an unreadable image and is reported
            old = found.get(stem)
            if old is None or rank[ext] < rank[os.path.splitext(old)[1].lower()]:
                found[stem] = entry.path
    return found
