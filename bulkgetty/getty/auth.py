"""Credentials and the one token every worker shares.

Why single-flight and a scaled margin: token calls count against the key's QPS budget (Getty
docs), and the SDKs' history is full of token-per-call and inverted-expiry bugs. So one token
request serves all concurrent callers, a token is reused until shortly before it expires, and
after a 401 only the first worker holding the stale token drops it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import orjson

from bulkgetty.errors import AuthenticationError, RateLimitedError, ServerError, UsageError
from bulkgetty.getty.api import error_from_response, parse_envelope, redact
from bulkgetty.getty.http import map_errors
from bulkgetty.getty.ratelimit import RateLimiter
from bulkgetty.getty.retry import RetryPolicy, with_retries

__all__ = ("Credentials", "Grant", "TokenProvider")

Grant = Literal["password", "refresh_token", "access_token", "client_credentials"]

#: Lifetime assumed when the token answer has no usable `expires_in` (Getty's usual 30 min).
DEFAULT_EXPIRES_IN = 1800.0
#: The refresh margin never exceeds this (seconds), however long the token lives.
MAX_MARGIN = 300.0
#: Share of the lifetime kept as margin: a 60 s token is refreshed after 54 s, not every call.
MARGIN_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Credentials:
    """What identifies us to Getty. Only `api_key` is mandatory; `repr` shows no secret."""

    api_key: str = field(repr=False)
    api_secret: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Credentials:
        """Read the GETTY_* variables; a missing required one is a UsageError naming it."""

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        api_key = get("GETTY_API_KEY")
        if api_key is None:
            raise UsageError("GETTY_API_KEY is not set: the Getty API needs an API key")
        username, password = get("GETTY_USERNAME"), get("GETTY_PASSWORD")
        if (username is None) != (password is None):
            missing = "GETTY_PASSWORD" if password is None else "GETTY_USERNAME"
            raise UsageError(f"{missing} is not set: GETTY_USERNAME and GETTY_PASSWORD go together")
        creds = cls(
            api_key=api_key,
            api_secret=get("GETTY_API_SECRET"),
            username=username,
            password=password,
            refresh_token=get("GETTY_REFRESH_TOKEN"),
            access_token=get("GETTY_ACCESS_TOKEN"),
        )
        if creds.grant == "client_credentials" and creds.api_secret is None:
            raise UsageError(
                "GETTY_API_SECRET is not set: without GETTY_USERNAME/GETTY_PASSWORD, "
                "GETTY_REFRESH_TOKEN or GETTY_ACCESS_TOKEN the client_credentials grant needs it"
            )
        return creds

    @property
    def grant(self) -> Grant:
        """How the first token is obtained: password, then refresh token, then access token."""
        if self.username is not None and self.password is not None:
            return "password"
        if self.refresh_token is not None:
            return "refresh_token"
        if self.access_token is not None:
            return "access_token"
        return "client_credentials"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for redaction and leak scans."""
        values = (self.api_key, self.api_secret, self.password, self.refresh_token)
        return tuple(v for v in (*values, self.access_token) if v)


class TokenProvider:
    """Hands out a valid bearer token; fetches a new one only when needed, once for everyone."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        credentials: Credentials,
        *,
        limiter: RateLimiter,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._url = api_url.rstrip("/") + "/oauth2/token"
        self._creds = credentials
        self._limiter = limiter
        self._policy = policy
        self._clock = clock
        self._token: str | None = credentials.access_token
        self._refresh_at = float("inf") if credentials.grant == "access_token" else float("-inf")
        self._refresh_token = (
            credentials.refresh_token if credentials.grant == "refresh_token" else None
        )
        self._inflight: asyncio.Future[str] | None = None
        self._expires_at = float("inf")
        self._lifetime = DEFAULT_EXPIRES_IN
        #: The slowest recent API exchange (decaying): a token must outlive a request's trip.
        self._latency = 0.0
        #: Token requests sent (for tests and progress).
        self.requests = 0

    @property
    def api_key(self) -> str:
        """The key sent as `Api-Key` on every API request."""
        return self._creds.api_key

    @property
    def can_refresh(self) -> bool:
        """False with a fixed access token: a 401 then cannot be cured by asking again."""
        return self._creds.grant != "access_token"

    async def token(self) -> str:
        """A valid access token; concurrent callers share one in-flight token request."""
        if self._token is not None and (not self.can_refresh or self._clock() < self._fresh_until):
            return self._token
        if self._inflight is None:
            task = asyncio.ensure_future(self._fetch())
            self._inflight = task
            task.add_done_callback(self._forget_inflight)
        return await asyncio.shield(self._inflight)

    async def invalidate(self, stale: str) -> None:
        """After a 401: drop the token only if it still is `stale`, so N workers cause 1 refresh."""
        if self.can_refresh and self._token == stale:
            self._token = None
            self._refresh_at = float("-inf")

    @property
    def _fresh_until(self) -> float:
        """Hand the token out until then: its margin grows with the API's latency."""
        return min(self._refresh_at, self._expires_at - self._margin(self._lifetime))

    def may_have_expired(self, token: str) -> bool:
        """Whether a 401 on `token` can be its expiry in transit rather than a refusal.

        True when another worker already replaced it, or when it is within its margin of the
        end of its life (the server's clock started it earlier than ours, by one round trip).
        """
        if token != self._token:
            return True
        return self._clock() >= self._expires_at - self._margin(self._lifetime)

    def note_latency(self, seconds: float) -> None:
        """One API exchange took `seconds`: refresh early enough to outlive such a trip."""
        self._latency = max(seconds, self._latency * 0.9)

    def secrets(self) -> tuple[str, ...]:
        """The credentials' secrets plus the tokens in use now."""
        extra = tuple(t for t in (self._token, self._refresh_token) if t)
        return tuple(dict.fromkeys(self._creds.secrets() + extra))

    def _forget_inflight(self, task: asyncio.Future[str]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved by the awaiting callers; silence "never retrieved"

    async def _fetch(self) -> str:
        """Get a token: refresh grant when we hold a refresh token, else the primary grant."""
        if self._refresh_token is not None:
            try:
                return await self._grant("refresh_token")
            except AuthenticationError:
                if self._creds.grant != "password":
                    raise
                self._refresh_token = None  # refused: fall back to the password grant
        grant = self._creds.grant
        return await self._grant("client_credentials" if grant == "access_token" else grant)

    async def _grant(self, grant: Grant) -> str:
        form = self._form(grant)
        answer = await with_retries(self._policy, lambda: self._post(form, grant))
        return self._accept(answer, grant)

    def _form(self, grant: Grant) -> dict[str, str]:
        form = {"grant_type": grant, "client_id": self._creds.api_key}
        if self._creds.api_secret is not None:
            form["client_secret"] = self._creds.api_secret
        if grant == "password":
            form["username"] = self._creds.username or ""
            form["password"] = self._creds.password or ""
        elif grant == "refresh_token":
            form["refresh_token"] = self._refresh_token or ""
        return form

    async def _post(self, form: dict[str, str], grant: Grant) -> dict[str, object]:
        """One token request through the limiter; errors become AuthenticationError & co."""
        await self._limiter.acquire()
        self.requests += 1

        async def call() -> tuple[int, dict[str, str], bytes]:
            async with self._session.post(
                self._url, data=form, headers={"Accept": "application/json"}, allow_redirects=False
            ) as resp:
                kept = {
                    k: resp.headers[k]
                    for k in ("X-Error-Detail", "Retry-After")
                    if k in resp.headers
                }
                return resp.status, kept, await resp.read()

        status, headers, body = await map_errors(call)
        if status != 200:
            error = error_from_response(
                "POST /oauth2/token", status, headers, body, secrets=self.secrets()
            )
            if isinstance(error, RateLimitedError):
                self._limiter.on_throttled()
            if isinstance(error, RateLimitedError | ServerError):
                raise error
            raise self._refused(status, body, grant)
        self._limiter.on_success()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise AuthenticationError(
                f"the token endpoint answered without a JSON object (grant: {grant})", status=status
            )
        return parsed

    def _refused(self, status: int, body: bytes, grant: Grant) -> AuthenticationError:
        """An AuthenticationError naming the OAuth problem and the grant, never a secret."""
        code, description = parse_envelope(body)
        text = f"the API refused the credentials: {code or f'HTTP {status}'}"
        if description and description != code:
            text += f": {description}"
        text = redact(f"{text} (grant: {grant})", self.secrets())
        return AuthenticationError(text, status=status, code=code)

    def _accept(self, answer: dict[str, object], grant: Grant) -> str:
        """Keep the token, its refresh time and any refresh token from a token answer."""
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise AuthenticationError(
                f"the token answer has no access_token (grant: {grant})", status=200
            )
        expires_in = _seconds(answer.get("expires_in"))
        refresh = answer.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            self._refresh_token = refresh
        self._token = access
        self._lifetime = expires_in
        self._expires_at = self._clock() + expires_in
        self._refresh_at = self._expires_at - self._margin(expires_in)
        return access

    def _margin(self, lifetime: float) -> float:
        """Refresh this long before expiry: a share of the lifetime, or two slow trips, at most
        half the lifetime (a shorter token than two trips is refreshed at half its life)."""
        wanted = max(lifetime * MARGIN_SHARE, 2 * self._latency)
        return min(MAX_MARGIN, wanted, lifetime / 2)


def _seconds(value: object) -> float:
    """`expires_in` as a number or a numeric string ("1800"); anything else: the default."""
    if isinstance(value, bool):
        return DEFAULT_EXPIRES_IN
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            return DEFAULT_EXPIRES_IN
    else:
        return DEFAULT_EXPIRES_IN
    return seconds if seconds > 0 else DEFAULT_EXPIRES_IN
