"""What a sandbox pretends to be: the account, its products and the faults it injects.

Everything is a frozen value so a test can build one config, tweak it with
`dataclasses.replace` (or `Sandbox.configure`) and never see another test's changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ("VIDEO_SIZES", "Faults", "Product", "SandboxConfig")

#: Video size names the download endpoint accepts; anything else is FileDownloadSizeNotFound.
VIDEO_SIZES: frozenset[str] = frozenset({"sd", "hd1", "hd2", "hd3", "hd4", "4k", "lwf", "ntsccm"})

#: Largest image height the sandbox will sell; a larger `height` is FileDownloadSizeNotFound.
MAX_IMAGE_HEIGHT = 10_000


@dataclass(frozen=True, slots=True)
class Product:
    """One product of `GET /v3/products`; quota is tracked per `id` by the running sandbox."""

    id: int
    type: str
    download_limit: int = 1000
    #: Remaining at start (and after `reset_quota`, the limit again); None means the limit.
    downloads_remaining: int | None = None
    name: str = ""
    agreement_name: str = "Sandbox Agreement"
    download_limit_duration: str = "Monthly"
    download_limit_reset_utc_date: str = "2099-01-01T00:00:00Z"
    status: str = "active"

    @property
    def initial_remaining(self) -> int:
        return self.download_limit if self.downloads_remaining is None else self.downloads_remaining


@dataclass(frozen=True, slots=True)
class Faults:
    """Scripted misbehaviour, keyed by asset id.

    `times` counts attempts for that asset: POSTs for API faults, file GETs (after any
    redirect hops) for delivery faults. Attempts are numbered from 0 per sandbox, so a
    fault with `times=2` hits the first two attempts and the third one succeeds.
    """

    # --- API (POST /v3/downloads/...) ---
    #: id -> (status, times, spends). spends=True charges the download before failing: the
    #: in-doubt case a client must not blindly retry.
    post_status: Mapping[str, tuple[int, int, bool]] = field(default_factory=dict)
    #: id -> seconds. The first POST is charged, then hangs this long before answering.
    post_hang: Mapping[str, float] = field(default_factory=dict)

    # --- delivery ---
    #: id -> (nbytes, times): the connection closes after nbytes of body.
    close_after: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    #: id -> (nbytes, seconds, times): the body pauses after nbytes, then continues.
    stall_after: Mapping[str, tuple[int, float, int]] = field(default_factory=dict)
    #: id -> times: a Range request gets the whole file with 200.
    ignore_range: Mapping[str, int] = field(default_factory=dict)
    #: ids whose content (and ETag, Last-Modified) changes after the first file GET.
    etag_change: frozenset[str] = frozenset()
    #: id -> times: a 206 whose Content-Range names other bytes than those sent.
    wrong_content_range: Mapping[str, int] = field(default_factory=dict)
    #: ids served with chunked transfer encoding and no Content-Length.
    chunked: frozenset[str] = frozenset()
    #: ids served with neither Content-Length nor chunking: the body ends where the
    #: connection closes (with `close_after`, a cut that looks like the end of the file).
    close_delimited: frozenset[str] = frozenset()
    #: id -> times: a 200 with an empty body (Content-Length: 0) instead of the file.
    empty_body: Mapping[str, int] = field(default_factory=dict)
    #: id -> delta: Content-Length is the real length + delta (>0: body ends early and the
    #: connection closes; <0: the extra bytes follow the declared body, then it closes).
    length_mismatch: Mapping[str, int] = field(default_factory=dict)
    #: id -> status codes: one redirect hop per code, alternating between the delivery origins.
    redirects: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: ids whose delivery URI redirects forever between the two delivery origins.
    redirect_loop: frozenset[str] = frozenset()
    #: id -> URL: the first delivery response is a 302 there. "{path}" in the URL is replaced by
    #: the signed path and query, so `http://localhost:PORT{path}` reaches the real file.
    redirect_to: Mapping[str, str] = field(default_factory=dict)
    #: id -> raw Content-Disposition value (hostile names).
    disposition: Mapping[str, str] = field(default_factory=dict)
    #: ids served without Content-Disposition.
    no_disposition: frozenset[str] = frozenset()
    #: ids whose delivery URI is always rejected as expired.
    expired: frozenset[str] = frozenset()
    #: id -> times: 200 with a text/html error page instead of the file.
    html_error: Mapping[str, int] = field(default_factory=dict)
    #: id -> (status, times): the delivery answers this status (e.g. 500, 503) instead.
    status: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    #: id -> times: a Range request is answered 416 with `Content-Range: bytes */LENGTH`.
    range_416: Mapping[str, int] = field(default_factory=dict)
    #: id -> attempt: from this file GET on, the URI is refused as expired (it expires while
    #: the file is being fetched; combine with `close_after` to cut the first attempt).
    expire_from: Mapping[str, int] = field(default_factory=dict)

    # --- random faults ---
    #: Probability that a file GET not scripted above gets one of `fault_kinds`, chosen
    #: deterministically from (seed, id, attempt), so a rerun sees the same faults.
    fault_rate: float = 0.0
    #: Kinds for `fault_rate`: "status" (503), "close_after" (half the body), "html_error".
    fault_kinds: tuple[str, ...] = ("status", "close_after", "html_error")


_DEFAULT_PRODUCTS = (
    Product(1001, "premiumaccess", 1000, name="Premium Access"),
    Product(1002, "editorialsubscription", 1000, name="Editorial Subscription"),
    Product(1003, "royaltyfreesubscription", 1000, name="Royalty-Free Subscription"),
)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """The account the sandbox emulates and how its servers behave."""

    api_key: str = "sandbox-key"
    api_secret: str = "sandbox-secret"
    username: str = "sandbox-user"
    password: str = "sandbox-password"
    #: Access-token lifetime; the refresh token lives a year.
    expires_in: int = 1800
    #: Old docs show `"expires_in": "1800"`; clients must cope with both.
    expires_in_as_string: bool = False
    #: False emulates a key that is not "fully authorized": client_credentials tokens then get
    #: 401 UserTokenRequired on downloads.
    client_credentials_can_download: bool = True
    products: tuple[Product, ...] = _DEFAULT_PRODUCTS
    #: Product type charged when a POST names neither product_type nor product_id.
    default_product_type: str = "premiumaccess"
    #: Asset ids that do not exist (404 on POST, absent from search).
    missing_ids: frozenset[str] = frozenset()
    #: The ids that exist (`bulkgetty sandbox --catalogue FILE`); None: every id with a
    #: digit in it exists, as Getty's ids all have (see `bulkgetty.sandbox.catalogue`).
    catalogue: frozenset[str] | None = None
    #: Range of file lengths, chosen deterministically per asset and variant.
    image_bytes: tuple[int, int] = (20_000, 400_000)
    video_bytes: tuple[int, int] = (1_000_000, 8_000_000)
    #: Exact file length per asset id, overriding the ranges.
    sizes: Mapping[str, int] = field(default_factory=dict)
    #: Token bucket per key over all API and token requests; None is unlimited. It runs on
    #: real monotonic time, not `clock`, so a frozen test clock cannot starve it.
    qps: float | None = None
    api_latency: float = 0.0
    #: Serve API requests one at a time (each holding `api_latency`): requests queue at the
    #: server, so a token valid when sent can be expired when its request is handled.
    api_serial: bool = False
    delivery_latency: float = 0.0
    #: Bytes per second per delivery response; None is unlimited.
    bandwidth: int | None = None
    #: Delivery URI lifetime in seconds from issue.
    uri_ttl: float = 86_400.0
    #: False makes a repeat POST (same asset, options and product) free.
    spend_on_repeat: bool = True
    #: Seconds before a spend shows in the download history (Getty's lag is undocumented).
    history_lag: float = 0.0
    #: Write history dates without a time zone (`2026-12-03T08:00:00`, UTC as Getty means it).
    history_naive_dates: bool = False
    #: External delivery base URL (e.g. nginx serving `write_corpus` output). Signed URIs then
    #: point there; the sandbox's own delivery origins still serve the same paths.
    delivery_base: str | None = None
    #: Record every delivery request (method, path, headers) in `stats.delivery_requests`.
    record_delivery: bool = True
    faults: Faults = field(default_factory=Faults)
    #: Wall clock for token and URI expiry and for ledger dates; inject one to time-travel.
    clock: Callable[[], float] = time.time
    seed: int = 0

    def product_by_id(self, product_id: int) -> Product | None:
        return next((p for p in self.products if p.id == product_id), None)
