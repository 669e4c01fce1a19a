"""The Getty API client: download POST, products, history, search; errors into our tree.

Why the download POST is apart from every other call: each successful POST spends one
licensed download and Getty has no idempotency key. So it is repeated only when nothing can
have been spent (the connection never opened, a 429, a 401 cured by a new token); a 5xx, a
timeout or a connection lost after sending raises at once with `may_have_spent=True`, and the
engine settles it through the download history instead of guessing.

Every request carries `Api-Key` and `Authorization` on that request only (sessions have no
default headers), never follows redirects, and passes the shared rate limiter. Error messages
are short, name method, path, status and Getty's code, and never contain a secret.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

import aiohttp
import orjson

from bulkgetty.assets import Asset
from bulkgetty.errors import (
    ApiError,
    AuthenticationError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
)
from bulkgetty.getty.http import map_errors
from bulkgetty.getty.ratelimit import RateLimiter
from bulkgetty.getty.retry import RetryPolicy, with_retries

if TYPE_CHECKING:
    from bulkgetty.getty.auth import TokenProvider

__all__ = (
    "DELIVERY_URI_LIFETIME",
    "SEARCH_PAGE_SIZES",
    "DownloadGrant",
    "GettyClient",
    "HistoryItem",
    "ProductInfo",
    "error_from_response",
    "parse_envelope",
    "redact",
)

#: A delivery URI is valid for 24 hours from the moment the POST answered (getty-api.md §3.3).
DELIVERY_URI_LIFETIME = 24 * 3600.0
#: The only page sizes search accepts (getty-api.md §8).
SEARCH_PAGE_SIZES = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 25, 30, 50, 60, 75, 100)
#: `GET /v3/downloads` allows at most this page size (getty-api.md §7.1).
HISTORY_MAX_PAGE_SIZE = 100
#: The throttle marker of the current 429 and of the legacy (Mashery) 403.
QPS_DETAIL = "Account Over Queries Per Second Limit"
#: 401 codes a new token cannot cure: refreshing would only spend rate budget.
NOT_A_TOKEN_PROBLEM = frozenset(
    {
        "OverageLimitReached",
        "NoDownloadAuthorization",
        "NoAgreement",
        "InsufficientCredits",
        "ProductIdNotAvailableForUser",
        "UserHasNoSubscriptions",
        "UserTokenRequired",
    }
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_KEPT_HEADERS = ("Location", "Retry-After", "X-Error-Detail")
#: Awaited right before a spending request may leave (see `GettyClient.download`).
BeforeSend = Callable[[], Awaitable[None]]
_MAX_TEXT = 200


@dataclass(frozen=True, slots=True)
class DownloadGrant:
    """A bought download: the delivery URI and when it stops working (wall clock)."""

    uri: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class ProductInfo:
    """One product of `GET /v3/products`: what may still be spent on it."""

    id: int
    type: str
    name: str | None
    status: str | None
    download_limit: int | None
    downloads_remaining: int | None
    download_limit_duration: str | None
    download_limit_reset_utc_date: str | None
    overage_remaining: int | None


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One earlier download, from `GET /v3/downloads` or an asset's download history."""

    id: str
    asset_type: str
    date_downloaded: str
    product_type: str | None
    product_id: int | None
    size_name: str | None


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced, longest first (one may contain another)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text


def parse_envelope(body: bytes) -> tuple[str | None, str | None]:
    """(code, message) from any of Getty's error envelopes, or (None, None).

    Getty service `{"ErrorCode","ErrorMessage"}`, gateway `{"message"}`, OAuth
    `{"error","error_description"}` and the legacy `{"code","message"}` all co-exist.
    """
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    code = _first_text(data, ("ErrorCode", "error", "code"))
    message = _first_text(data, ("ErrorMessage", "error_description", "message", "error_message"))
    return code, message


def _first_text(data: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:_MAX_TEXT]
    return None


#: 401/403 codes that say the key, the secret or the token is refused (not one asset).
AUTH_CODES = frozenset(
    {
        "Unauthorized",
        "Forbidden",
        "ForbiddenException",
        "AuthorizationTokenRequired",
        "InvalidApiKey",
        "UserTokenRequired",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "invalid_token",
    }
)


def error_from_response(
    what: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str] = (),
    retry_after: float | None = None,
    may_have_spent: bool = False,
) -> ApiError:
    """The error for an API answer with an error status; `what` is "METHOD /path"."""
    code, message = parse_envelope(body)
    detail = headers.get("X-Error-Detail")
    text = f"{what}: {status}"
    if code:
        text += f" {code}"
    if message and message != code:
        text += f": {message}"
    if code == "UserTokenRequired":
        text += (
            " (downloads need a user token: set GETTY_USERNAME and GETTY_PASSWORD for the"
            " password grant, or GETTY_REFRESH_TOKEN)"
        )
    text = redact(text, secrets)
    throttled = status == 429 or (status == 403 and QPS_DETAIL in (detail or "", message or ""))
    if throttled:
        return RateLimitedError(text, status=status, code=code, retry_after=retry_after)
    if code == "OverageLimitReached":
        return QuotaExceededError(text, status=status, code=code)
    kind: type[ApiError] = ApiError
    if status in (401, 403) and (code is None or code in AUTH_CODES):
        # Gateway answers ({"message": "Unauthorized"/"Forbidden"}) and token codes are about
        # the credentials; other Getty codes (NoAccessToProductType, NoDownloadAuthorization,
        # ...) are about one asset and must fail that asset, not the run.
        kind = AuthenticationError
    elif status == 404:
        kind = NotFoundError
    elif status >= 500:
        kind = ServerError
    return kind(text, status=status, code=code, may_have_spent=may_have_spent)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class GettyClient:
    """The Getty API as typed async calls; one instance is shared by all workers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        tokens: TokenProvider,
        *,
        limiter: RateLimiter,
        policy: RetryPolicy,
        auto_download: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._base = api_url.rstrip("/")
        self._tokens = tokens
        self._limiter = limiter
        self._policy = policy
        self._auto_download = auto_download
        self._wall_clock = wall_clock
        self._api_key = tokens.api_key

    async def download(
        self, asset: Asset, *, before_send: BeforeSend | None = None
    ) -> DownloadGrant:
        """Buy one download of `asset`: spends quota. One try: the caller owns retries.

        `before_send` is awaited right before each time the request may leave (after the
        rate limiter and the token): the caller commits its intent there, so the intent's
        time is the sending time, and may refuse to send (the run is stopping).
        """
        path = f"/v3/downloads/{asset.asset_type}s/{quote(asset.id, safe='')}"
        params = asset.query(auto_download=self._auto_download)
        answer = await self._send_authorized(
            "POST", path, params, asset.body(), spending=True, before_send=before_send
        )
        what = f"POST {path}"
        if self._auto_download and answer.status in _REDIRECTS:
            location = answer.headers.get("Location")
            if location:
                return self._grant(urljoin(self._base + path, location))
            raise ApiError(
                f"{what}: {answer.status} without Location",
                status=answer.status,
                may_have_spent=True,  # a 303 means it was bought
            )
        if answer.status == 200:
            uri = _json(answer.body).get("uri")
            if isinstance(uri, str) and uri:
                return self._grant(uri)
        raise ApiError(
            f"{what}: {answer.status} without a delivery URI",
            status=answer.status,
            may_have_spent=True,
        )

    async def products(self) -> list[ProductInfo]:
        """The account's products with their remaining downloads (the quota pre-check)."""
        data = await self._get_json("/v3/products", {})
        return [_product(p) for p in _dicts(data.get("products"))]

    async def downloads(
        self,
        *,
        date_from: str | None = None,
        date_to: str | None = None,
        product_type: str | None = None,
        company_downloads: bool = False,
        page_size: int = 100,
    ) -> AsyncIterator[HistoryItem]:
        """Every earlier download in the window, all pages (the API defaults to 30 days)."""
        size = min(max(page_size, 1), HISTORY_MAX_PAGE_SIZE)
        params = {"page_size": str(size)}
        for key, value in (("date_from", date_from), ("date_to", date_to)):
            if value:
                params[key] = value
        if product_type:
            params["product_type"] = product_type
        if company_downloads:
            params["company_downloads"] = "true"
        page, seen = 1, 0
        while True:
            data = await self._get_json("/v3/downloads", {**params, "page": str(page)})
            items = _dicts(data.get("downloads"))
            for item in items:
                yield _history(item, default_id="", default_type="")
            seen += len(items)
            total = data.get("result_count")
            if len(items) < size or (isinstance(total, int) and seen >= total):
                return
            page += 1

    async def asset_download_history(self, asset_type: str, asset_id: str) -> list[HistoryItem]:
        """Earlier downloads of one asset: the cheapest "already licensed?" check."""
        path = f"/v3/{asset_type}s/{quote(asset_id, safe='')}/downloadhistory"
        data = await self._get_json(path, {})
        items = _dicts(data.get("downloads"))
        return [_history(i, default_id=asset_id, default_type=asset_type) for i in items]

    async def search(
        self, phrase: str, *, asset_type: str = "image", limit: int = 100
    ) -> AsyncIterator[tuple[str, str | None, int | None]]:
        """(id, product_type, product_id) of up to `limit` results, from largest_downloads."""
        size = next((s for s in SEARCH_PAGE_SIZES if s >= min(limit, 100)), 100)
        path = f"/v3/search/{asset_type}s"
        page, count = 1, 0
        while count < limit:
            params = {
                "phrase": phrase,
                "fields": "largest_downloads",
                "page": str(page),
                "page_size": str(size),
            }
            data = await self._get_json(path, params)
            results = _dicts(data.get(f"{asset_type}s"))
            for result in results:
                if count >= limit:
                    return
                asset_id = result.get("id")
                if asset_id is None:
                    continue
                largest = _dicts(result.get("largest_downloads"))
                first = largest[0] if largest else {}
                yield str(asset_id), _text(first.get("product_type")), _int(first.get("product_id"))
                count += 1
            if len(results) < size:
                return
            page += 1

    def _grant(self, uri: str) -> DownloadGrant:
        return DownloadGrant(uri=uri, expires_at=self._wall_clock() + DELIVERY_URI_LIFETIME)

    async def _get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        answer = await self._call("GET", path, params=params, body=None, spending=False)
        if answer.status != 200:
            raise ApiError(f"GET {path}: unexpected {answer.status}", status=answer.status)
        return _json(answer.body)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str],
        body: dict[str, str] | None,
        spending: bool,
    ) -> _Answer:
        """One logical request that spends nothing, retried by the policy."""
        return await with_retries(
            self._policy,
            lambda: self._send_authorized(method, path, params, body, spending=spending),
            is_spending_post=spending,
        )

    async def _send_authorized(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        body: dict[str, str] | None,
        *,
        spending: bool,
        before_send: BeforeSend | None = None,
    ) -> _Answer:
        """Send with a token taken after the limiter's wait; a stale token is replaced.

        A 401 on a token that may have expired on its way (it was handed out valid, then the
        request queued here or at the server) is a stale token, not refused credentials: drop
        it and send again, a bounded number of times. The first 401 always gets one new token
        (a revoked token looks fresh); after that only a token that could have expired in
        transit does, so refused credentials still stop the run at once.
        """
        tries = 0
        while True:
            tries += 1
            await self._limiter.acquire()
            token = await self._tokens.token()
            if before_send is not None:
                await before_send()
            try:
                return await self._send(method, path, params, body, spending, token)
            except AuthenticationError as error:
                if not self._stale_token(error, token, tries):
                    raise
                await self._tokens.invalidate(token)

    def _stale_token(self, error: AuthenticationError, token: str, tries: int) -> bool:
        if error.status != 401 or error.code in NOT_A_TOKEN_PROBLEM:
            return False
        if not self._tokens.can_refresh or tries >= max(self._policy.attempts, 2):
            return False
        return tries == 1 or self._tokens.may_have_expired(token)

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        body: dict[str, str] | None,
        spending: bool,
        token: str,
    ) -> _Answer:
        """One HTTP exchange; error statuses raise our errors."""
        headers = {
            "Api-Key": self._api_key,
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        url = self._base + path

        async def call() -> _Answer:
            async with self._session.request(
                method, url, params=params, data=data, headers=headers, allow_redirects=False
            ) as resp:
                kept = {k: resp.headers[k] for k in _KEPT_HEADERS if k in resp.headers}
                return _Answer(resp.status, kept, await resp.read())

        started = time.monotonic()
        answer = await map_errors(call, sent_may_spend=spending)
        self._tokens.note_latency(time.monotonic() - started)
        if answer.status < 400:
            self._limiter.on_success()
            return answer
        raise self._error(f"{method} {path}", answer, spending)

    def _error(self, what: str, answer: _Answer, spending: bool) -> ApiError:
        retry_after = None
        if "Retry-After" in answer.headers:
            retry_after = self._policy.parse_retry_after(
                answer.headers["Retry-After"], self._wall_clock()
            )
        error = error_from_response(
            what,
            answer.status,
            answer.headers,
            answer.body,
            secrets=self._tokens.secrets(),
            retry_after=retry_after,
            may_have_spent=spending and answer.status >= 500,
        )
        if isinstance(error, RateLimitedError):
            self._limiter.on_throttled()
        return error


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    """Getty sends some ids as numbers and some as strings ("12345")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _product(data: Mapping[str, Any]) -> ProductInfo:
    overage = data.get("overage")
    return ProductInfo(
        id=_int(data.get("id")) or 0,
        type=_text(data.get("type")) or "",
        name=_text(data.get("name")),
        status=_text(data.get("status")),
        download_limit=_int(data.get("download_limit")),
        downloads_remaining=_int(data.get("downloads_remaining")),
        download_limit_duration=_text(data.get("download_limit_duration")),
        download_limit_reset_utc_date=_text(data.get("download_limit_reset_utc_date")),
        overage_remaining=_int(overage.get("remaining")) if isinstance(overage, dict) else None,
    )


def _history(data: Mapping[str, Any], *, default_id: str, default_type: str) -> HistoryItem:
    asset_id = data.get("id")
    return HistoryItem(
        id=str(asset_id) if asset_id is not None else default_id,
        asset_type=_text(data.get("asset_type")) or default_type,
        date_downloaded=_text(data.get("date_downloaded")) or "",
        product_type=_text(data.get("product_type")),
        product_id=_int(data.get("product_id")),
        size_name=_text(data.get("size_name")),
    )
