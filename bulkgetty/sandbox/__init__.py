"""An embedded Getty Images API emulator: real aiohttp servers on 127.0.0.1.

A `Sandbox` runs three servers: the API origin (`/oauth2/token`, `/v3/...`), and two
delivery origins that serve signed, expiring file URIs (redirect faults hop between them).
Everything is scripted by a frozen `SandboxConfig`; `Faults` injects misbehaviour per asset
id. File content is deterministic per (seed, asset, variant) and never stored, so
`Sandbox.expected()` says exactly what a correct download must hash to.

Control surface on the API origin, for out-of-process tests (no auth):

    GET  /__sandbox__/state        -> {"spends": {"image/123": 1, ...}, "remaining":
                                       {"1001": 999, ...}, "token_requests": n,
                                       "api_requests": n, "rejected_429": n,
                                       "post_requests": {"image/123": n},
                                       "delivery_requests": [{"origin", "method",
                                       "path", "headers"}, ...]}
    POST /__sandbox__/reset_quota  -> {"ok": true}; every product back to its limit
    POST /__sandbox__/clear_history -> {"ok": true}; no download in the account's history

Delivery URIs look like `{delivery}/{asset_type}/{file}?exp=<unix>&sig=<hmac hex>`; see
`bulkgetty.sandbox.content` for the file naming that `write_corpus` reproduces for an
external static server (`SandboxConfig.delivery_base`).

Where Getty is undocumented the sandbox picks (details in `bulkgetty.sandbox.api`): bad
grants 400, wrong client credentials 401 `invalid_client`; an expired or unknown bearer 401
`{"message":"Unauthorized"}` with `WWW-Authenticate: Bearer ... error="invalid_token"`; a
product_type the account lacks 403 `NoAccessToProductType`; every POST spends, repeats
included, unless `spend_on_repeat=False`; expired or tampered URIs 403 XML `AccessDenied`.

Search, metadata, `fields` and the catalogue of ids that exist: `bulkgetty.sandbox.metadata`
and `bulkgetty.sandbox.catalogue`; the media files: `bulkgetty.sandbox.media`.

Not emulated: search filters other than `phrase` (accepted and ignored),
`download_requirements`, overage, credit packs, team credits (accepted and ignored),
implicit/PKCE grants, multi-range requests (answered 200 with the whole file).

HTTPS: `Sandbox(tls=True)` (and `bulkgetty sandbox --tls`) serves all three origins with a
certificate of a private CA made at start (`bulkgetty.sandbox.tls`); `credentials_env()` then
carries `SSL_CERT_FILE`, which Python's default context (so bulkgetty's) honours.
"""

from .banner import banner
from .config import VIDEO_SIZES, Faults, Product, SandboxConfig
from .content import Expected, Variant, content, write_corpus
from .server import Sandbox, SandboxThread, serve_forever
from .state import RecordedRequest, SandboxStats, Spend

__all__ = (
    "VIDEO_SIZES",
    "Expected",
    "Faults",
    "Product",
    "RecordedRequest",
    "Sandbox",
    "SandboxConfig",
    "SandboxStats",
    "SandboxThread",
    "Spend",
    "Variant",
    "banner",
    "content",
    "serve_forever",
    "write_corpus",
)
