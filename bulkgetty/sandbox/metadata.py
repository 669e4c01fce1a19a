"""Search and asset metadata: the four search variants, by id, by ids, `fields` and sets.

Routes per asset type (`images`, `videos`):

    GET /v3/search/{plural}                 creative and editorial together
    GET /v3/search/{plural}/creative        one family only
    GET /v3/search/{plural}/editorial
    GET /v3/{plural}?ids=a,b                records, plus `{plural}_not_found`
    GET /v3/{plural}/{ids}                  the same, ids comma separated in the path
    GET /media/{asset_type}/{id}/{name}     the `display_sizes` URIs (no Api-Key, like a CDN)

`fields` is honoured: single fields (`id`, `title`, `caption`, `asset_family`,
`collection_code`, `collection_name`, `license_model`, `max_dimensions`, `download_sizes`,
`display_sizes`, `comp`, `preview`, `thumb`, `date_created`, `largest_downloads`, ...) and the
sets `summary_set` (the default), `display_set` and `detail_set`. Unknown fields are ignored.
Every absolute URI follows the scheme and host the client used. Search accepts Getty's other
documented parameters (`sort_order`, `orientations`, `exclude_nudity`, ...) and ignores them.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from .catalogue import exists, listing, search
from .common import Handler, getty_error, json_response, query_int, state_of
from .config import VIDEO_SIZES
from .content import Variant
from .media import IMAGE_HEIGHTS, VIDEO_FRAMES, image_dimensions, jpeg_parts
from .state import SandboxState

__all__ = ("routes",)

_SUMMARY = {
    "asset_family",
    "caption",
    "collection_code",
    "collection_name",
    "display_sizes",
    "license_model",
    "max_dimensions",
    "title",
}
_DISPLAY = {"display_sizes"}
_DETAIL = _SUMMARY | {
    "allowed_use",
    "artist",
    "collection_id",
    "copyright",
    "date_created",
    "editorial_segments",
    "orientation",
    "product_types",
    "quality_rank",
}
_SETS = {"summary_set": _SUMMARY, "display_set": _DISPLAY, "detail_set": _DETAIL}
#: Display sizes: name -> image height of the JPEG served for it.
_DISPLAY_HEIGHTS = {"thumb": 170, "preview": 300, "comp": 612}


def routes(asset_type: str) -> list[tuple[str, Handler]]:
    """(path, handler) of every GET route for one asset type, behind the gateway."""
    plural = f"{asset_type}s"
    return [
        (f"/v3/search/{plural}", _search_handler(asset_type, None)),
        (f"/v3/search/{plural}/creative", _search_handler(asset_type, "creative")),
        (f"/v3/search/{plural}/editorial", _search_handler(asset_type, "editorial")),
        (f"/v3/{plural}", _by_ids_handler(asset_type, from_path=False)),
        (f"/v3/{plural}/{{id}}", _by_ids_handler(asset_type, from_path=True)),
    ]


def _fields(request: web.Request) -> set[str]:
    """The fields asked for, sets expanded; `summary_set` when none."""
    asked = {f.strip() for f in request.query.get("fields", "").split(",") if f.strip()}
    fields = {"id"}
    for name in asked or {"summary_set"}:
        fields |= _SETS.get(name, {name})
    return fields


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _search_handler(asset_type: str, family: str | None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = state_of(request)
        page = query_int(request, "page", 1) or 0
        page_size = query_int(request, "page_size", 30) or 0
        if page < 1:
            raise getty_error(400, "InvalidPage", "page must be at least 1")
        if not 1 <= page_size <= 100:
            raise getty_error(400, "InvalidPageSize", "page_size must be between 1 and 100")
        found = search(state.config, asset_type, request.query.get("phrase", ""), family)
        chunk = found[(page - 1) * page_size : page * page_size]
        fields = _fields(request)
        items = [_record(request, state, asset_type, item.id, fields) for item in chunk]
        return json_response({"result_count": len(found), f"{asset_type}s": items})

    return handler


def _by_ids_handler(asset_type: str, *, from_path: bool) -> Handler:
    """`GET /v3/images?ids=a,b` and `/v3/images/a,b`: records, and the ids not found."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = state_of(request)
        raw = request.match_info["id"] if from_path else request.query.get("ids", "")
        ids = [i.strip() for i in raw.split(",") if i.strip()]
        if not ids:
            raise getty_error(400, "MissingRequiredQueryParameters", "ids is required")
        if len(ids) > 100:
            raise getty_error(400, "InvalidParameterValue", "at most 100 ids")
        fields = _fields(request)
        found = [i for i in ids if exists(state.config, i)]
        key = f"{asset_type}s"
        return json_response(
            {
                key: [_record(request, state, asset_type, i, fields) for i in found],
                f"{key}_not_found": [i for i in ids if i not in found],
            }
        )

    return handler


def _record(
    request: web.Request, state: SandboxState, asset_type: str, asset_id: str, fields: set[str]
) -> dict[str, Any]:
    item = listing(state.config.seed, asset_id)
    base = _base(request)
    width, height = _max_dimensions(asset_type)
    values: dict[str, Any] = {
        "id": asset_id,
        "title": item.title,
        "caption": f"{item.title}. Sandbox {asset_type} {asset_id}.",
        "asset_family": item.asset_family,
        "collection_code": item.collection_code,
        "collection_name": item.collection_name,
        "collection_id": sum(map(ord, item.collection_code)),
        "license_model": "rightsmanaged" if item.asset_family == "editorial" else "royaltyfree",
        "max_dimensions": {"width": width, "height": height},
        "artist": "Sandbox Photographer",
        "copyright": "2026 Sandbox",
        "date_created": "2026-01-01T00:00:00",
        "orientation": "Horizontal",
        "quality_rank": 1,
        "allowed_use": {"usage_restrictions": [], "how_can_i_use_it": "Sandbox use only."},
        "editorial_segments": ["news"] if item.asset_family == "editorial" else [],
        "product_types": [p.type for p in state.config.products],
    }
    record: dict[str, Any] = {k: v for k, v in values.items() if k in fields}
    shown = _DISPLAY_HEIGHTS.keys() if "display_sizes" in fields else fields
    displays = [d for d in _display_sizes(base, asset_type, asset_id) if d["name"] in shown]
    if displays:
        record["display_sizes"] = displays
    if "download_sizes" in fields:
        record["download_sizes"] = _download_sizes(state, asset_type, asset_id)
    if "largest_downloads" in fields:
        record["largest_downloads"] = _largest(state, base, asset_type, asset_id)
    return record


def _max_dimensions(asset_type: str) -> tuple[int, int]:
    if asset_type == "image":
        return image_dimensions(IMAGE_HEIGHTS[-1])
    return VIDEO_FRAMES["4k"]


def _display_sizes(base: str, asset_type: str, asset_id: str) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "is_watermarked": name != "thumb",
            "uri": f"{base}/media/{asset_type}/{asset_id}/{name}.jpg",
        }
        for name in _DISPLAY_HEIGHTS
    ]


def _download_sizes(state: SandboxState, asset_type: str, asset_id: str) -> list[dict[str, Any]]:
    """Getty's estimates: `bytes` a little under the real length (getty-api.md §8)."""
    if asset_type == "image":
        out = []
        for height in IMAGE_HEIGHTS:
            spec = state.spec(asset_type, asset_id, Variant(height=height), 0)
            width, _ = image_dimensions(height)
            out.append(
                {
                    "name": str(height),
                    "media_type": "image/jpeg",
                    "bytes": spec.length * 97 // 100,
                    "width": width,
                    "height": height,
                    "dpi": 300,
                }
            )
        return out
    return [
        {
            "name": size,
            "content_type": "video/mp4",
            "bytes": state.spec(asset_type, asset_id, Variant(size=size), 0).length * 97 // 100,
            "width": VIDEO_FRAMES[size][0],
            "height": VIDEO_FRAMES[size][1],
        }
        for size in sorted(VIDEO_SIZES)
    ]


def _largest(
    state: SandboxState, base: str, asset_type: str, asset_id: str
) -> list[dict[str, Any]]:
    products = state.config.products
    if not products:
        return []
    product = products[sum(map(ord, asset_id)) % len(products)]
    return [
        {
            "product_type": product.type,
            "product_id": str(product.id),
            "agreement_name": product.agreement_name,
            "uri": f"{base}/v3/downloads/{asset_type}s/{asset_id}",
        }
    ]


# --- display images ---


@functools.lru_cache(maxsize=8)
def _display_jpeg(height: int) -> bytes:
    return b"".join(bytes(part) for part in jpeg_parts(height, 0, 0, 0))


async def display_image(request: web.Request) -> web.StreamResponse:
    """A `display_sizes` URI: a small JPEG of that display size (any existing asset)."""
    state = state_of(request)
    name = request.match_info["name"].removesuffix(".jpg")
    if name not in _DISPLAY_HEIGHTS or not exists(state.config, request.match_info["id"]):
        return json_response({"message": "Not Found"}, 404)
    body = _display_jpeg(_DISPLAY_HEIGHTS[name])
    return web.Response(body=body, content_type="image/jpeg")
