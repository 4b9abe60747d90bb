"""Limits on what a client may send: request body size and image pixels.

- :class:`BodySizeLimit`: ASGI middleware; a request whose ``Content-Length`` or streamed
  body exceeds the limit ends as ``413`` (:class:`PayloadTooLarge`) before it is parsed
  whole, so a huge upload never sits in memory or on disk.
- :func:`read_image`: encoded bytes -> uint8 RGB array through the package's
  :func:`~amazon_visual.retrieval.embeddings.load_image`, after checking the pixel count
  from the image header (a decompression bomb is refused before it is decoded).
"""

import io

from amazon_visual.errors import UserError

DEFAULT_MAX_PIXELS = 40_000_000


class PayloadTooLarge(Exception):
    """Answered as 413."""


class BodySizeLimit:
    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await _too_large(send, self.max_bytes)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"the request body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _too_large(send, max_bytes):
    from starlette.responses import JSONResponse

    response = JSONResponse(
        {
            "detail": f"the request body is larger than {max_bytes} bytes "
            f"({max_bytes / 2**20:g} MiB, --max-upload-mb): send a smaller image"
        },
        status_code=413,
    )
    await response({"type": "http"}, None, send)


def read_image(data, max_pixels=DEFAULT_MAX_PIXELS, name="the uploaded file"):
    """Decode ``data`` (encoded image bytes) to uint8 RGB; UserError (not an image) or PayloadTooLarge."""
    from PIL import Image

    from amazon_visual.retrieval.embeddings import load_image

    if not data:
        raise UserError(f"{name} is empty (0 bytes): send a JPEG, PNG or WebP photo")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:  # Pillow's own limit (Image.MAX_IMAGE_PIXELS) is lower still
        w = h = max_pixels + 1
    except Exception:  # Pillow raises many kinds for garbage; the full decode below names the problem
        w = h = 0
    if w * h > max_pixels:
        raise PayloadTooLarge(
            f"{name} has more pixels than the {max_pixels:,} allowed (a decompression bomb?): send a smaller image"
        )
    try:
        return load_image(data)
    except UserError:
        raise UserError(
            f"{name} is not a readable image (not an image, or truncated): "
            "send a JPEG, PNG, WebP or other image Pillow can read"
        ) from None
