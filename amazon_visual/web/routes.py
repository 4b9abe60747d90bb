"""The routes of the service (see :mod:`amazon_visual.web.app`)."""

import math
import time
import urllib.parse

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from amazon_visual.errors import UserError
from amazon_visual.retrieval import filters as F
from amazon_visual.retrieval.index import thumbnail_file
from amazon_visual.retrieval.recommend import attributes
from amazon_visual.web.limits import read_image

router = APIRouter()
K = Query(10, ge=1, le=1000, description="number of results (1 to 1000)")
MIN_SIM = Query(None, ge=-1.0, le=1.0, description="keep results with cosine similarity >= this")
CATEGORY = Query(None, max_length=200, description="keep results of this category (see /v1/categories)")
SAME = Query(False, description="keep results of the query's category (its label, or the predicted one)")
BRAND = Query(
    None,
    max_length=200,
    description="keep this brand (repeat the parameter for several; case does not matter; see /v1/attributes)",
)
MIN_PRICE = Query(None, description="keep products with a price >= this (a product without a price never matches)")
MAX_PRICE = Query(None, description="keep products with a price <= this (a product without a price never matches)")
MIN_RATING = Query(None, description="keep products with an average rating >= this (0 to 5; unrated never matches)")
COLLAPSE = Query(
    False,
    description="one product of each duplicate group (groups: the duplicates.csv of amazon-visual "
    "audit copied into INDEX_DIR; 400 when there is none)",
)
ASIN = Path(..., min_length=1, max_length=64)

#: the error answers of the API, declared in its OpenAPI schema: every one is JSON {"detail": ...}, a line
#: saying what to do (FastAPI's own 422 for a malformed parameter gives a list of validation errors)
ERRORS = {
    400: "bad input (not an image, bad JSON, an unreadable URL): the detail says what to do",
    401: "missing or wrong write token",
    403: "not allowed on this server (URL queries or writes are off)",
    404: "no such product or thumbnail",
    409: "this index does not take writes",
    413: "the body or the image is too large",
    415: "the body is neither multipart/form-data nor JSON",
    422: "a parameter or field out of range, of the wrong type, or unknown",
    503: "the index or the model is not ready",
}
ERROR_BODY = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}},
}
#: statuses a read-only route may answer; the routes that take a body may answer every one of ERRORS
READ_ERRORS = (400, 404, 413, 422, 503)


def declare_errors(router):
    """Declare the error answers in the OpenAPI entry of every route of ``router`` (those a route
    declares itself are kept), so that clients, and the schema tests, know every status."""
    from fastapi.routing import APIRoute

    for route in router.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            statuses = READ_ERRORS if route.methods <= {"GET", "HEAD"} else tuple(ERRORS)
            declared = {
                s: {"description": ERRORS[s], "content": {"application/json": {"schema": ERROR_BODY}}} for s in statuses
            }
            route.responses = {**declared, **route.responses}


# --------------------------------------------------------------------------
# shaping results for the API
# --------------------------------------------------------------------------
def thumb_url(asin):
    return f"/thumbs/{urllib.parse.quote(str(asin), safe='')}.jpg"


def product_json(row, has_thumb):
    """An item of items.csv as the API shows it (``category`` is the class the filters use; ``brand``,
    ``price``, ``average_rating``, ``rating_number``: null when missing)."""
    asin = str(row.get("asin", ""))
    return {
        "asin": asin,
        "title": row.get("title", ""),
        "category": row.get("label", ""),
        "category_path": row.get("category", ""),
        "image_url": row.get("image_url", ""),
        "split": row.get("split", ""),
        "thumbnail": thumb_url(asin) if has_thumb else None,
        **attributes(row),
    }


def result_json(r):
    out = product_json(r, r.get("thumb") is not None)
    out.update(rank=r["rank"], similarity=r["similarity"])
    return out


def query_json(q):
    out = {"kind": q.get("kind")}
    if q.get("kind") == "asin":
        out.update(
            asin=q["asin"],
            title=q.get("title", ""),
            category=q.get("label", ""),
            thumbnail=thumb_url(q["asin"]) if q.get("thumb") else None,
        )
    if q.get("predicted_label") is not None:
        out.update(predicted_category=q["predicted_label"], predicted_probability=q.get("predicted_probability"))
    if q.get("same_category") is not None:
        out["filtered_category"] = q["same_category"]
    if q.get("filters"):
        out["filters"] = q["filters"]
    if q.get("collapse_duplicates"):
        out["collapse_duplicates"] = True
    return out


def check_query_names(request):
    """422 naming a query parameter the route does not take (FastAPI would ignore it: a typo such as
    ``max_prcie`` must not silently return unfiltered results)."""
    route = request.scope.get("route")
    known = {p.alias for p in route.dependant.query_params} if route is not None else set()
    unknown = sorted(set(request.query_params.keys()) - known)
    if unknown:
        raise HTTPException(
            422, f"unknown query parameter {unknown[0][:60]!r}: this route takes {', '.join(sorted(known))}"
        )


def attribute_filters(request, brand, min_price, max_price, min_rating):
    """The parsed :class:`~amazon_visual.retrieval.filters.Filters` of a request (422 with the reason when bad)."""
    check_query_names(request)
    try:
        return F.parse_filters(
            {"brand": brand, "min_price": min_price, "max_price": max_price, "min_rating": min_rating}
        )
    except UserError as e:
        raise HTTPException(422, str(e)) from None


def _filters(gen, category, same_category):
    """The Recommender's ``same_category``: a category name, True (the query's own) or False."""
    if category is not None:
        if category not in gen.categories:
            raise HTTPException(422, f"unknown category {category!r}: see GET /v1/categories")
        return category
    return bool(same_category)


def _answer(out, t0, gen):
    # JSON-ready already (str, int, float): answered without FastAPI's generic encoder, which costs more than the search
    return JSONResponse(
        {
            "query": query_json(out["query"]),
            "results": [result_json(r) for r in out["results"]],
            "index": {"n_items": gen.rec.index.n_items, "generation": gen.number},
            "took_ms": round((time.perf_counter() - t0) * 1000, 3),
        }
    )


def _asin_search(request, asin, k, min_similarity, category, same_category, filters=None, collapse=False):
    t0 = time.perf_counter()
    gen = request.app.state.holder.generation
    rec = gen.rec
    if asin not in rec.index.asin_to_id:
        raise HTTPException(404, f"ASIN {asin} is not in the index: query an indexed ASIN or a photo")
    out = rec.recommend(
        asin=asin,
        k=k,
        min_similarity=min_similarity,
        same_category=_filters(gen, category, same_category),
        filters=filters,
        collapse_duplicates=collapse,
    )
    return _answer(out, t0, gen)


def _photo_search(gen, data, k, min_similarity, keep, max_pixels, name, filters=None, collapse=False):
    t0 = time.perf_counter()
    image = read_image(data, max_pixels, name)
    out = gen.rec.recommend(
        image=image,
        k=k,
        min_similarity=min_similarity,
        same_category=keep,
        filters=filters,
        collapse_duplicates=collapse,
    )
    return _answer(out, t0, gen)


async def _read_query(request):
    """("image", bytes, name) | ("url", str) | ("asin", str) from a multipart upload or a JSON body."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "send the photo in the multipart field 'file'")
        return "image", await upload.read(), f"the uploaded file {upload.filename or ''}".strip()
    if ctype.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, 'the body is not valid JSON: send {"asin": ...} or {"url": ...}') from None
        keys = [key for key in ("asin", "url") if isinstance(body, dict) and body.get(key) is not None]
        if len(keys) != 1 or not isinstance(body[keys[0]], str) or not body[keys[0]].strip():
            raise HTTPException(422, 'send exactly one of {"asin": "..."} or {"url": "..."} as strings')
        return keys[0], body[keys[0]].strip()
    raise HTTPException(415, 'send a photo as multipart/form-data (field \'file\') or JSON {"asin"|"url": ...}')


@router.post("/v1/search", summary="look-alikes of a photo (upload or URL) or of an indexed product")
async def search(
    request: Request,
    k: int = K,
    min_similarity: float | None = MIN_SIM,
    category: str | None = CATEGORY,
    same_category: bool = SAME,
    brand: list[str] | None = BRAND,
    min_price: float | None = MIN_PRICE,
    max_price: float | None = MAX_PRICE,
    min_rating: float | None = MIN_RATING,
    collapse_duplicates: bool = COLLAPSE,
):
    filters = attribute_filters(request, brand, min_price, max_price, min_rating)
    query = await _read_query(request)
    state = request.app.state
    if query[0] == "asin":
        return _asin_search(request, query[1], k, min_similarity, category, same_category, filters, collapse_duplicates)
    gen = state.holder.generation
    keep = _filters(gen, category, same_category)
    if query[0] == "url":
        if not state.settings.allow_url_fetch:
            raise HTTPException(
                403, "URL queries are off on this server (start it with --allow-url-fetch): upload the photo instead"
            )
        data = await run_in_threadpool(state.fetcher.fetch, query[1])
        name = f"the image at {query[1][:120]}"
    else:
        data, name = query[1], query[2]
    return await run_in_threadpool(
        _photo_search, gen, data, k, min_similarity, keep, state.settings.max_pixels, name, filters, collapse_duplicates
    )


@router.get("/v1/products/{asin}", summary="one indexed product")
async def product(request: Request, asin: str = ASIN):
    rec = request.app.state.holder.current
    i = rec.index.asin_to_id.get(asin)
    if i is None:
        raise HTTPException(404, f"ASIN {asin} is not in the index")
    out = product_json(rec.index.item(i), rec.index.thumb_path(i) is not None)
    out["similar"] = f"/v1/products/{asin}/similar"
    return out


@router.get("/v1/products/{asin}/similar", summary="look-alikes of an indexed product (never itself)")
async def similar(
    request: Request,
    asin: str = ASIN,
    k: int = K,
    min_similarity: float | None = MIN_SIM,
    category: str | None = CATEGORY,
    same_category: bool = SAME,
    brand: list[str] | None = BRAND,
    min_price: float | None = MIN_PRICE,
    max_price: float | None = MAX_PRICE,
    min_rating: float | None = MIN_RATING,
    collapse_duplicates: bool = COLLAPSE,
):
    filters = attribute_filters(request, brand, min_price, max_price, min_rating)
    return _asin_search(request, asin, k, min_similarity, category, same_category, filters, collapse_duplicates)


@router.get("/v1/products", summary="browse the catalog: by category, title words, page by page")
async def products(
    request: Request,
    category: str | None = CATEGORY,
    q: str | None = Query(None, max_length=200, description="words the title contains"),
    page: int = Query(1, ge=1, le=1_000_000),
    per_page: int = Query(24, ge=1, le=200),
    brand: list[str] | None = BRAND,
    min_price: float | None = MIN_PRICE,
    max_price: float | None = MAX_PRICE,
    min_rating: float | None = MIN_RATING,
):
    filters = attribute_filters(request, brand, min_price, max_price, min_rating)
    gen = request.app.state.holder.generation
    rec = gen.rec
    items = rec.index.items
    mask = np.ones(len(items), bool)
    if category is not None:
        mask &= (items["label"] == _filters(gen, category, False)).to_numpy()
    if filters:
        mask &= F.select(rec.index, filters).mask
    if q:
        mask &= items["title"].str.contains(q, case=False, regex=False).to_numpy()
    snap = rec.index.snap() if hasattr(rec.index, "snap") else None  # a writable index (retrieval/writelog.py)
    if snap is not None and snap.n_hidden:
        mask &= ~snap.hidden  # products replaced or deleted live
    ids = np.flatnonzero(mask)
    start = (page - 1) * per_page
    rows = [product_json(rec.index.item(i), bool(items["thumb"].iat[i])) for i in ids[start : start + per_page]]
    return {
        "total": int(ids.size),
        "page": page,
        "per_page": per_page,
        "pages": max(1, math.ceil(ids.size / per_page)),
        "items": rows,
    }


@router.get("/v1/categories", summary="the categories of the index with their product counts")
async def categories(request: Request):
    cats = request.app.state.holder.generation.categories
    return {"categories": [{"name": n, "count": c} for n, c in cats.items()]}


@router.get(
    "/v1/attributes",
    summary="the product attributes the index has, for filters: brands with counts, price and rating ranges",
)
async def attribute_summary(request: Request):
    return F.columns(request.app.state.holder.current.index).summary()


@router.get(
    "/thumbs/{asin}.jpg",
    summary="the thumbnail of an indexed product",
    response_class=Response,
    responses={200: {"description": "the JPEG thumbnail", "content": {"image/jpeg": {}}}},
)
async def thumbnail(request: Request, asin: str = ASIN):
    rec = request.app.state.holder.current
    i = rec.index.asin_to_id.get(asin)
    if i is not None and i >= rec.index.n_items:  # written live: its thumbnail from the write log (writelog.py)
        path = rec.index.thumb_path(i)
    else:
        name = str(rec.index.items["thumb"].iat[i]) if i is not None else ""
        path = thumbnail_file(rec.index.index_dir, name)  # in INDEX_DIR/thumbs or a generation's thumbs, nowhere else
    if path is None:
        raise HTTPException(404, f"no thumbnail for {asin[:64]!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise HTTPException(404, f"no thumbnail for {asin!r} (the index is being rebuilt?)") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=300"})


@router.get("/healthz", summary="the process is alive")
async def healthz():
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="the index is loaded",
    responses={
        503: {
            "description": "the index is loading",
            "content": {"application/json": {"example": {"status": "loading"}}},
        }
    },
)
async def readyz(request: Request):
    gen = request.app.state.holder.generation
    if gen is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return {
        "status": "ready",
        "n_items": gen.rec.index.n_items,
        "generation": gen.number,
        "loaded_at": gen.loaded_at,
        "model_loaded": bool(getattr(gen.rec.embedder, "loaded", False)),
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request):
    body, ctype = request.app.state.metrics.exposition()
    return Response(body, media_type=ctype)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request):
    from amazon_visual.web.templating import render

    state = request.app.state
    gen = state.holder.generation
    rec = gen.rec
    return HTMLResponse(
        render(
            "serve.html",
            title="amazon-visual: visual search",
            categories=gen.categories,
            attributes=F.columns(rec.index).summary(),
            n_items=rec.index.n_items,
            url_fetch=state.settings.allow_url_fetch,
            classifier=rec.manifest.get("source") == "run",
        )
    )
