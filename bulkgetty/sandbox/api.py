"""The API origin: OAuth token endpoint, /v3 endpoints and the /__sandbox__ control surface.

Choices where Getty is undocumented (getty-api.md §12):
- Bad grants answer 400 (`invalid_grant`, `unauthorized_client`, `unsupported_grant_type`);
  a wrong client id/secret answers 401 `invalid_client`.
- An expired or unknown bearer answers 401 `{"message":"Unauthorized"}` with
  `WWW-Authenticate: Bearer realm="Download",error="invalid_token",...`.
- A product_type the account does not hold answers 403 `NoAccessToProductType`; an unknown
  product_id answers 401 `ProductIdNotAvailableForUser`; several products of one type and no
  product_id answers 400 `MissingRequiredQueryParameters`.
- The refresh grant does not rotate the refresh token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bulkgetty.assets import PRODUCT_TYPES, Asset

from . import metadata
from .catalogue import exists
from .common import (
    DELIVERY_KEY,
    GRANT_KEY,
    STATE_KEY,
    ApiError,
    Handler,
    getty_error,
    not_found,
)
from .common import json_response as _json
from .common import query_bool as _bool
from .common import query_int as _int
from .common import state_of as _state
from .config import VIDEO_SIZES, Product
from .content import Variant
from .media import IMAGE_HEIGHTS
from .state import SandboxState, Spend

__all__ = ("build_api_app",)

_MISSING_TOKEN = ApiError(
    401,
    {"ErrorCode": "AuthorizationTokenRequired", "ErrorMessage": "The access token is missing"},
    {
        "WWW-Authenticate": 'Bearer realm="Download",error="invalid_token",'
        'error_description="The access token is missing"'
    },
)
_BAD_TOKEN = ApiError(
    401,
    {"message": "Unauthorized"},
    {
        "WWW-Authenticate": 'Bearer realm="Download",error="invalid_token",'
        'error_description="The access token is invalid or has expired"'
    },
)
_THROTTLED = ApiError(
    429,
    {"message": "Account Over Queries Per Second Limit"},
    {"X-Error-Detail": "Account Over Queries Per Second Limit"},
)


def _gateway(handler: Handler, *, bearer: bool | None) -> Handler:
    """Api-Key check, throttle, latency and bearer check, in the gateway's order.

    bearer=True requires a valid token, None checks one only if sent, False ignores it.
    """

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = _state(request)
        state.stats.api_requests += 1
        state.stats.api_request_times.append(time.monotonic())
        try:
            key = request.headers.get("Api-Key")
            if not key:
                raise ApiError(401, {"message": "Unauthorized"})
            if key != state.config.api_key:
                raise ApiError(
                    403, {"message": "Forbidden"}, {"x-amzn-errortype": "ForbiddenException"}
                )
            if not state.allow(key):
                raise _THROTTLED
            async with state.api_turn():
                if state.config.api_latency:
                    await asyncio.sleep(state.config.api_latency)
                if bearer is not False:
                    _check_bearer(request, state, required=bearer is True)
                return await handler(request)
        except ApiError as exc:
            return _json(exc.body, exc.status, exc.headers)

    return wrapped


def _check_bearer(request: web.Request, state: SandboxState, *, required: bool) -> None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if not auth:
        if required:
            raise _MISSING_TOKEN
        return
    info = state.access_token(token.strip()) if scheme.lower() == "bearer" else None
    if info is None:
        raise _BAD_TOKEN
    request[GRANT_KEY] = info.grant


# --- OAuth ---


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return _json({"error": error, "error_description": description}, status)


async def token(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    config = state.config
    state.stats.token_requests += 1
    state.stats.api_request_times.append(time.monotonic())
    form = await request.post()
    fields = {k: str(v) for k, v in form.items()}
    client_id = fields.get("client_id", "")
    if not state.allow(client_id or "-"):
        return _json(_THROTTLED.body, 429, _THROTTLED.headers)
    if config.api_latency:
        await asyncio.sleep(config.api_latency)
    grant = fields.get("grant_type", "")
    secret = fields.get("client_secret")
    if client_id != config.api_key or (
        secret != config.api_secret and (grant != "refresh_token" or secret is not None)
    ):
        return _oauth_error(401, "invalid_client", "Client authentication failed")
    refresh: str | None = None
    if grant == "client_credentials":
        pass
    elif grant == "password":
        if fields.get("username") != config.username or fields.get("password") != config.password:
            return _oauth_error(
                400,
                "unauthorized_client",
                "The authorization grant or refresh token is invalid, expired, revoked or "
                "issued to another client",
            )
        refresh = state.issue_refresh_token()
    elif grant == "refresh_token":
        refresh = fields.get("refresh_token", "")
        if not state.refresh_token_valid(refresh):
            return _oauth_error(400, "invalid_grant", "The refresh token is invalid or expired")
    else:
        return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}")
    body: dict[str, Any] = {
        "access_token": state.issue_access_token(grant),
        "token_type": "Bearer",
        "expires_in": str(config.expires_in) if config.expires_in_as_string else config.expires_in,
    }
    if refresh is not None:
        body["refresh_token"] = refresh
    return _json(body)


# --- query parsing ---


def _body(raw: bytes) -> dict[str, str | None]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise getty_error(400, "InvalidRequest", "The request body is not valid JSON") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, str | None) for v in data.values()):
        raise getty_error(400, "InvalidRequest", "The request body must be an object of strings")
    return {k: data.get(k) for k in ("project_code", "download_notes")}


def _pick_product(state: SandboxState, product_type: str | None, product_id: int | None) -> Product:
    config = state.config
    if product_type is not None and product_type not in PRODUCT_TYPES:
        raise getty_error(400, "InvalidParameterValue", f"Unknown product_type {product_type!r}")
    if product_id is not None:
        product = config.product_by_id(product_id)
        if product is None or (product_type is not None and product.type != product_type):
            raise getty_error(401, "ProductIdNotAvailableForUser", "Product id not available")
        return product
    wanted = product_type or config.default_product_type
    matches = [p for p in config.products if p.type == wanted]
    if not matches:
        raise getty_error(403, "NoAccessToProductType", f"No access to product type {wanted}")
    if len(matches) > 1:
        raise getty_error(
            400, "MissingRequiredQueryParameters", "product_id is required for this product_type"
        )
    return matches[0]


def _variant(request: web.Request, asset_type: str) -> Variant:
    if asset_type == "image":
        height = _int(request, "height")
        file_type = request.query.get("file_type") or None
        if file_type is not None and file_type not in ("jpg", "eps"):
            raise getty_error(400, "InvalidParameterValue", f"Unknown file_type {file_type!r}")
        if height is not None and height not in IMAGE_HEIGHTS:
            raise getty_error(404, "FileDownloadSizeNotFound", f"No download size {height}")
        return Variant(height=height, file_type=file_type)
    size = request.query.get("size") or None
    if size is not None and size not in VIDEO_SIZES:
        raise getty_error(404, "FileDownloadSizeNotFound", f"No download size {size!r}")
    return Variant(size=size)


# --- downloads ---


def _download_handler(asset_type: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await post_download(request, asset_type)

    return handler


async def post_download(request: web.Request, asset_type: str) -> web.StreamResponse:
    state = _state(request)
    asset_id = request.match_info["id"]
    state.stats.post_requests[f"{asset_type}/{asset_id}"] += 1
    auto = _bool(request, "auto_download", asset_type == "image")
    _bool(request, "use_team_credits", False)
    product_type = request.query.get("product_type") or None
    product_id = _int(request, "product_id")
    variant = _variant(request, asset_type)
    body = _body(await request.read())
    if not exists(state.config, asset_id):
        raise not_found(asset_type, asset_id)
    if request.get(GRANT_KEY) == "client_credentials" and not (
        state.config.client_credentials_can_download
    ):
        raise getty_error(401, "UserTokenRequired", "Security token must contain a user.")
    product = _pick_product(state, product_type, product_id)
    key = Asset(
        asset_id,
        "image" if asset_type == "image" else "video",
        product_type=product_type,
        product_id=product_id,
        height=variant.height,
        size=variant.size,
        file_type=variant.file_type,
    ).key
    attempt = state.post_attempts[asset_id]
    state.post_attempts[asset_id] += 1
    faults = state.config.faults
    if asset_id in faults.post_status:
        status, times, spends = faults.post_status[asset_id]
        if attempt < times:
            if spends:
                _charge(state, asset_type, asset_id, key, product, variant, body)
            raise getty_error(status, "SystemError", "Injected server fault")
    _charge(state, asset_type, asset_id, key, product, variant, body)
    if asset_id in faults.post_hang and attempt == 0:
        await asyncio.sleep(faults.post_hang[asset_id])
    uri = _delivery_uri(request, state, asset_type, asset_id, variant)
    if auto:
        return web.Response(status=303, headers={"Location": uri})
    return _json({"uri": uri})


def _charge(
    state: SandboxState,
    asset_type: str,
    asset_id: str,
    key: str,
    product: Product,
    variant: Variant,
    body: dict[str, str | None],
) -> None:
    repeat = (key, product.id) in state.spent_keys
    charged = state.config.spend_on_repeat or not repeat
    if charged and state.remaining.get(product.id, 0) <= 0:
        raise getty_error(
            403, "OverageLimitReached", f"Download limit reached for product {product.id}"
        )
    if charged:
        state.remaining[product.id] -= 1
    state.spent_keys.add((key, product.id))
    size_name = variant.size or (str(variant.height) if variant.height else None)
    state.ledger.append(
        Spend(
            asset_type,
            asset_id,
            key,
            product.type,
            product.id,
            state.now(),
            charged,
            size_name,
            body.get("project_code"),
            body.get("download_notes"),
        )
    )


def _delivery_uri(
    request: web.Request, state: SandboxState, asset_type: str, asset_id: str, variant: Variant
) -> str:
    """A signed URI on the first delivery origin, named with the host the client used."""
    path = state.path_for(asset_type, asset_id, variant)
    base = state.config.delivery_base or _like_request(request, request.app[DELIVERY_KEY][0])
    return f"{base.rstrip('/')}{path}?{state.signed_query(path)}"


def _like_request(request: web.Request, origin: str) -> str:
    """`origin` with the host the client reached the API by (`localhost` stays `localhost`)."""
    parts = urlsplit(origin)
    host = request.url.raw_host or parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{parts.port}"


# --- products and history ---


async def products(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    items = [
        {
            "id": p.id,
            "type": p.type,
            "name": p.name or p.type,
            "status": p.status,
            "agreement_name": p.agreement_name,
            "application_website": None,
            "download_limit": p.download_limit,
            "downloads_remaining": state.remaining.get(p.id, 0),
            "download_limit_duration": p.download_limit_duration,
            "download_limit_reset_utc_date": p.download_limit_reset_utc_date,
            "expiration_utc_date": None,
            "credits_remaining": None,
            "imagepack_resolution": None,
            "team_credits": None,
            "download_requirements": None,
            "ai_gen_requirements": None,
            "overage": None,
        }
        for p in state.config.products
    ]
    return _json({"products": items})


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_date(request: web.Request, name: str, *, use_time: bool, end: bool) -> float | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise getty_error(
            400, "InvalidParameterValue", f"Field: {name}, bad date {raw!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    if not use_time:
        parsed = parsed.replace(hour=0, minute=0, second=0, microsecond=0)
        if end:
            parsed += dt.timedelta(days=1)
    return parsed.timestamp()


def _shown_spends(state: SandboxState) -> Iterator[Spend]:
    """The spend ledger newest first, as the download history shows it: without the spends
    of the last `history_lag` seconds."""
    lag = state.config.history_lag
    until = state.now() - lag
    return (s for s in reversed(state.ledger) if not lag or s.at <= until)


def _history_item(state: SandboxState, spend: Spend) -> dict[str, Any]:
    product = state.config.product_by_id(spend.product_id)
    return {
        "id": spend.id,
        "asset_type": spend.asset_type,
        "date_downloaded": _iso(spend.at).rstrip("Z")
        if state.config.history_naive_dates
        else _iso(spend.at),
        "product_type": spend.product_type,
        "product_id": spend.product_id,
        "agreement_name": product.agreement_name if product else None,
        "thumb_uri": None,
        "download_details": {
            "download_notes": spend.download_notes,
            "project_code": spend.project_code,
        },
        "download_source": "api",
        "size_name": spend.size_name,
        "dimensions": None,
        "license_model": "royaltyfree",
        "user": {
            "username": state.config.username,
            "first_name": None,
            "middle_name": None,
            "last_name": None,
        },
        "generated_asset_id": None,
    }


async def downloads(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    use_time = _bool(request, "use_time", False)
    _bool(request, "company_downloads", False)
    page = _int(request, "page", 1) or 0
    page_size = _int(request, "page_size", 30) or 0
    if page < 1:
        raise getty_error(400, "InvalidPage", "page must be at least 1")
    if not 1 <= page_size <= 100:
        raise getty_error(400, "InvalidPageSize", "page_size must be between 1 and 100")
    window = 30 * 86_400.0
    date_from = _parse_date(request, "date_from", use_time=use_time, end=False)
    date_to = _parse_date(request, "date_to", use_time=use_time, end=True)
    now = state.now()
    if date_to is None:
        date_to = now if date_from is None else min(now, date_from + window)
    if date_from is None:
        date_from = date_to - window
    product_type = request.query.get("product_type") or None
    matches = [
        s
        for s in _shown_spends(state)
        if date_from <= s.at <= date_to and (product_type is None or s.product_type == product_type)
    ]
    chunk = matches[(page - 1) * page_size : page * page_size]
    return _json(
        {"result_count": len(matches), "downloads": [_history_item(state, s) for s in chunk]}
    )


def _asset_history_handler(asset_type: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = _state(request)
        asset_id = request.match_info["id"]
        if not exists(state.config, asset_id):
            raise not_found(asset_type, asset_id)
        _bool(request, "company_downloads", False)
        items = []
        for s in _shown_spends(state):
            if s.asset_type == asset_type and s.id == asset_id:
                item = _history_item(state, s)
                details = item.pop("download_details")
                items.append({**item, **details})
        return _json({"id": asset_id, "downloads": items})

    return handler


# --- control surface ---


async def control_state(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    body = state.stats.as_json()
    body["spends"] = dict(state.spends_by_asset())
    body["remaining"] = {str(k): v for k, v in state.remaining.items()}
    # When each charged POST was answered (monotonic s): the rate a client held while buying.
    body["spend_times"] = [s.at for s in state.ledger if s.charged]
    return _json(body)


async def control_reset_quota(request: web.Request) -> web.StreamResponse:
    _state(request).reset_quota()
    return _json({"ok": True})


async def control_clear_history(request: web.Request) -> web.StreamResponse:
    _state(request).clear_history()
    return _json({"ok": True})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes and methods answer a JSON envelope, as Getty's gateway does, never
    aiohttp's text/plain page: a client parsing every error body as JSON must not choke."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _json({"message": exc.reason}, exc.status, headers)


def build_api_app(state: SandboxState, delivery_urls: list[str]) -> web.Application:
    """The API origin; `delivery_urls` is filled in once the delivery servers are bound."""
    app = web.Application(client_max_size=2**20, middlewares=[_json_errors])
    app[STATE_KEY] = state
    app[DELIVERY_KEY] = delivery_urls

    def add(method: str, path: str, handler: Handler, bearer: bool | None) -> None:
        app.router.add_route(method, path, _gateway(handler, bearer=bearer))

    app.router.add_post("/oauth2/token", token)
    for asset_type in ("image", "video"):
        plural = f"{asset_type}s"
        add("POST", f"/v3/downloads/{plural}/{{id}}", _download_handler(asset_type), True)
        add("GET", f"/v3/{plural}/{{id}}/downloadhistory", _asset_history_handler(asset_type), True)
        for path, handler in metadata.routes(asset_type):
            add("GET", path, handler, None)
    add("GET", "/v3/products", products, True)
    add("GET", "/v3/downloads", downloads, True)
    app.router.add_get("/media/{asset_type}/{id}/{name}", metadata.display_image)
    app.router.add_get("/__sandbox__/state", control_state)
    app.router.add_post("/__sandbox__/reset_quota", control_reset_quota)
    app.router.add_post("/__sandbox__/clear_history", control_clear_history)
    return app
