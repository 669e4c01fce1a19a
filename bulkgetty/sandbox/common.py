"""What the API origin's modules share: app keys, the Getty error type, query parsing."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .state import SandboxState

__all__ = (
    "DELIVERY_KEY",
    "GRANT_KEY",
    "STATE_KEY",
    "ApiError",
    "Handler",
    "getty_error",
    "json_response",
    "not_found",
    "query_bool",
    "query_int",
    "state_of",
)

STATE_KEY: web.AppKey[SandboxState] = web.AppKey("state", SandboxState)
DELIVERY_KEY: web.AppKey[list[str]] = web.AppKey("delivery", list)
GRANT_KEY: web.RequestKey[str] = web.RequestKey("grant", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Raised by helpers; turned into a Getty-style JSON response by the handler wrapper."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def getty_error(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, {"ErrorCode": code, "ErrorMessage": message})


def not_found(asset_type: str, asset_id: str) -> ApiError:
    code = "ImageNotFound" if asset_type == "image" else "VideoNotFound"
    return getty_error(404, code, f"{asset_type.capitalize()} not found: {asset_id}")


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def state_of(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise getty_error(400, "InvalidParameterValue", f"Field: {name}, value {raw!r} is not a bool")


def query_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise getty_error(
            400, "InvalidParameterValue", f"Field: {name}, Message: The value '{raw}' is not valid"
        )
    return int(raw)
