"""The write routes of the service: ``PUT`` / ``DELETE /v1/products/{asin}`` on a writable index.

Switched on by a write token (``serve --write-token-file FILE`` or the environment variable
``AMAZON_VISUAL_WRITE_TOKEN``); a request sends ``Authorization: Bearer <token>``, compared in
constant time (:func:`hmac.compare_digest` of the SHA-256 digests), never logged or echoed.

- no token configured: 403, nothing changes; a missing or wrong bearer: 401;
- an index built without ``--writable``: 409, one line saying so;
- ``PUT``: multipart ``file`` (the photo) and ``attributes`` (a JSON object: ``title``,
  ``category`` (one of the index's categories), ``brand``, ``price`` (>= 0), ``average_rating``
  ([0, 5]), ``rating_number`` (>= 0), each optional); the photo is embedded with the server's
  model (the micro-batched embedder the searches use); 201 when the ASIN is new, 200 when it
  replaced a product; a photo that is not an image or bad attributes: 422;
- ``DELETE``: 200, or 404 for an ASIN the catalog does not hold.

A write is appended to the index's write log (:mod:`amazon_visual.retrieval.writelog`): one
SQLite transaction, fsynced before the answer; every worker sees it at its next query.
"""

import hashlib
import hmac
import logging
import os

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from amazon_visual.errors import UserError
from amazon_visual.retrieval import writelog
from amazon_visual.web.batching import ModelUnavailable
from amazon_visual.web.limits import PayloadTooLarge, read_image

log = logging.getLogger("amazon_visual.serve")
router = APIRouter()
ENV_TOKEN = "AMAZON_VISUAL_WRITE_TOKEN"
ASIN = Path(..., min_length=1, max_length=64)


def load_token(token_file=None):
    """The write token (str) from ``token_file`` or the environment, or None (writes switched off)."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise UserError(
                f"--write-token-file {token_file} cannot be read ({e.strerror}): give a file holding the write token"
            ) from None
        if not token:
            raise UserError(f"--write-token-file {token_file} is empty: put the write token in it")
        return token
    return os.environ.get(ENV_TOKEN, "").strip() or None


def token_digest(text):
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class _Refused(Exception):
    def __init__(self, status, outcome, detail):
        super().__init__(detail)
        self.status, self.outcome, self.detail = status, outcome, detail


def _authorize(request):
    """The current Recommender of a writable index, after the token checks (else _Refused)."""
    expected = request.app.state.write_token_digest
    if expected is None:
        raise _Refused(
            403,
            "forbidden",
            "writes are switched off on this server: start it with "
            "--write-token-file FILE or AMAZON_VISUAL_WRITE_TOKEN",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token_digest(given.strip()), expected):
        raise _Refused(401, "unauthorized", "missing or wrong write token: send Authorization: Bearer <token>")
    rec = request.app.state.holder.current
    try:
        writelog.live_index(rec.index)
    except writelog.ReadOnlyIndex as e:
        raise _Refused(409, "read_only", str(e)) from None
    return rec


def _count(request, op, outcome):
    request.app.state.metrics.writes.labels(op, outcome).inc()


def _refused(request, op, e):
    _count(request, op, e.outcome)
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse({"detail": e.detail}, status_code=e.status, headers=headers)


async def _read_put(request):
    """(photo bytes, attributes text or None) of a multipart PUT (HTTPException 422/415 otherwise)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(
            415,
            "send the product as multipart/form-data: field 'file' (the photo) and field 'attributes' (a JSON object)",
        )
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(422, "send the photo in the multipart field 'file'")
    attributes = form.get("attributes")
    if isinstance(attributes, UploadFile):
        attributes = await attributes.read()
    return await upload.read(), attributes


def _put(rec, asin, data, attributes, max_pixels):
    try:
        read_image(data, max_pixels, "the uploaded photo")  # a bomb or not an image, before the model
        return writelog.put_product(rec, asin, data, attributes)
    except (PayloadTooLarge, writelog.ReadOnlyIndex, ModelUnavailable):  # 413, 409, 503
        raise
    except UserError as e:
        raise HTTPException(422, str(e)) from None


@router.put("/v1/products/{asin}", summary="add or replace a product (writable index, write token)")
async def put_product(request: Request, asin: str = ASIN):
    from amazon_visual.web.routes import product_json

    try:
        rec = _authorize(request)
    except _Refused as e:
        return _refused(request, "put", e)
    try:
        data, attributes = await _read_put(request)
        row, seq, created = await run_in_threadpool(
            _put, rec, asin, data, attributes, request.app.state.settings.max_pixels
        )
    except HTTPException as e:
        _count(request, "put", "rejected")
        raise e from None
    except (PayloadTooLarge, ModelUnavailable):
        _count(request, "put", "rejected")
        raise
    _count(request, "put", "created" if created else "replaced")
    out = product_json(row, True)
    out.update(seq=seq, created=created, similar=f"/v1/products/{asin}/similar")
    return JSONResponse(out, status_code=201 if created else 200)


@router.delete("/v1/products/{asin}", summary="remove a product (writable index, write token)")
async def delete_product(request: Request, asin: str = ASIN):
    try:
        rec = _authorize(request)
    except _Refused as e:
        return _refused(request, "delete", e)
    seq = await run_in_threadpool(writelog.delete_product, rec, asin)
    if seq is None:
        _count(request, "delete", "not_found")
        raise HTTPException(404, f"ASIN {asin[:64]} is not in the catalog: nothing to delete")
    _count(request, "delete", "deleted")
    return {"asin": asin, "deleted": True, "seq": seq}
