"""The sandbox's memory: tokens, quota, the ledger, counters and URI signing.

One `SandboxState` is shared by the three servers of a sandbox; all of it lives on the
sandbox's event loop, so no locks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .config import SandboxConfig
from .content import Expected, FileSpec, Variant, expected_of, file_path, file_spec

__all__ = ("RecordedRequest", "SandboxState", "SandboxStats", "Spend", "TokenInfo")

REFRESH_TOKEN_LIFETIME = 365 * 86_400.0


@dataclass(frozen=True, slots=True)
class Spend:
    """One successful download POST, as the account's history will show it."""

    asset_type: str
    id: str
    #: The request's identity as `bulkgetty.assets.Asset.key` spells it (options as sent).
    key: str
    product_type: str
    product_id: int
    at: float
    #: False when `spend_on_repeat=False` made this repeat free.
    charged: bool = True
    size_name: str | None = None
    project_code: str | None = None
    download_notes: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request that reached a delivery origin: proof of what a client sent there."""

    origin: str
    method: str
    path: str
    headers: dict[str, str]


@dataclass(slots=True)
class SandboxStats:
    """Counters for assertions; mutated only on the sandbox's loop."""

    token_requests: int = 0
    api_requests: int = 0
    rejected_429: int = 0
    post_requests: collections.Counter[str] = field(default_factory=collections.Counter)
    delivery_requests: list[RecordedRequest] = field(default_factory=list)
    #: File body bytes the delivery origins wrote, over all responses (re-fetches included).
    delivery_body_bytes: int = 0
    #: `time.monotonic()` of every API and token request, for requests-per-second checks.
    api_request_times: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "token_requests": self.token_requests,
            "api_requests": self.api_requests,
            "rejected_429": self.rejected_429,
            "delivery_body_bytes": self.delivery_body_bytes,
            "post_requests": dict(self.post_requests),
            "delivery_requests": [
                {"origin": r.origin, "method": r.method, "path": r.path, "headers": r.headers}
                for r in self.delivery_requests
            ],
        }


@dataclass(frozen=True, slots=True)
class TokenInfo:
    grant: str
    expires_at: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class SandboxState:
    """Mutable account state behind the servers."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.secret = secrets.token_bytes(32)
        self.ledger: list[Spend] = []
        #: (key, product id) of every charged or free spend: makes repeat detection O(1).
        self.spent_keys: set[tuple[str, int]] = set()
        self.stats = SandboxStats()
        self.remaining: dict[int, int] = {}
        self.access_tokens: dict[str, TokenInfo] = {}
        self.refresh_tokens: dict[str, float] = {}
        self.post_attempts: collections.Counter[str] = collections.Counter()
        self.get_attempts: collections.Counter[str] = collections.Counter()
        #: Every access and refresh token ever issued: what a leak scan looks for.
        self.issued_tokens: list[str] = []
        self._buckets: dict[str, _Bucket] = {}
        self._serial: asyncio.Lock | None = None
        self.reset_quota()

    def api_turn(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Where an API request waits for its turn: one at a time with `api_serial`."""
        if not self.config.api_serial:
            return contextlib.nullcontext()
        if self._serial is None:
            self._serial = asyncio.Lock()  # made on the serving loop, at first use
        return self._serial

    # --- config and quota ---

    def configure(self, **changes: Any) -> None:
        old_products = self.config.products
        self.config = replace(self.config, **changes)
        if self.config.products != old_products:
            self.reset_quota()

    def reset_quota(self) -> None:
        self.remaining = {p.id: p.initial_remaining for p in self.config.products}

    def clear_history(self) -> None:
        """A fresh account: no download in its history (quotas and counters unchanged)."""
        self.ledger.clear()

    def spends_by_asset(self) -> collections.Counter[str]:
        return collections.Counter(f"{s.asset_type}/{s.id}" for s in self.ledger if s.charged)

    def now(self) -> float:
        return self.config.clock()

    # --- rate limit ---

    def allow(self, key: str) -> bool:
        """Token bucket per key: capacity max(1, qps), refilled at qps per monotonic second."""
        qps = self.config.qps
        if qps is None:
            return True
        capacity = max(1.0, qps)
        now = time.monotonic()
        bucket = self._buckets.setdefault(key, _Bucket(capacity, now))
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * qps)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.stats.rejected_429 += 1
        return False

    # --- tokens ---

    def issue_access_token(self, grant: str) -> str:
        token = secrets.token_urlsafe(24)
        self.issued_tokens.append(token)
        self.access_tokens[token] = TokenInfo(grant, self.now() + self.config.expires_in)
        return token

    def issue_refresh_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self.issued_tokens.append(token)
        self.refresh_tokens[token] = self.now() + REFRESH_TOKEN_LIFETIME
        return token

    def access_token(self, token: str) -> TokenInfo | None:
        info = self.access_tokens.get(token)
        if info is None or info.expires_at <= self.now():
            return None
        return info

    def revoke_access_tokens(self) -> int:
        """Forget every access token (a key rotation, a server restart): each is now stale."""
        count = len(self.access_tokens)
        self.access_tokens.clear()
        return count

    def refresh_token_valid(self, token: str) -> bool:
        expires = self.refresh_tokens.get(token)
        return expires is not None and expires > self.now()

    # --- delivery URIs ---

    def sign(self, path: str, expires_at: int) -> str:
        message = f"{path}|{expires_at}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def signed_query(self, path: str) -> str:
        expires_at = int(self.now() + self.config.uri_ttl)
        return f"exp={expires_at}&sig={self.sign(path, expires_at)}"

    def signature_ok(self, path: str, exp: str, sig: str) -> bool:
        if not exp.isdigit():
            return False
        return hmac.compare_digest(self.sign(path, int(exp)), sig)

    # --- content ---

    def generation(self, asset_id: str, attempt: int) -> int:
        return 1 if asset_id in self.config.faults.etag_change and attempt > 0 else 0

    def spec(self, asset_type: str, asset_id: str, variant: Variant, generation: int) -> FileSpec:
        return file_spec(self.config, asset_type, asset_id, variant, generation)

    def expected(
        self,
        asset_type: str,
        asset_id: str,
        *,
        height: int | None = None,
        size: str | None = None,
        file_type: str | None = None,
    ) -> Expected:
        """The final content: for `etag_change` assets, the content after the change."""
        generation = 1 if asset_id in self.config.faults.etag_change else 0
        variant = Variant(height, size, file_type)
        return expected_of(self.spec(asset_type, asset_id, variant, generation))

    def path_for(self, asset_type: str, asset_id: str, variant: Variant) -> str:
        return file_path(asset_type, asset_id, variant)
