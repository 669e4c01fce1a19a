"""The one place that makes HTTP sessions and maps aiohttp's errors into ours.

Sessions carry no default headers at all: the API client adds `Api-Key` and `Authorization`
per request, and the delivery path sends none, so no redirect can carry a secret to another
host. Redirects are never followed by aiohttp (`allow_redirects=False` at every call site):
the transfer stage follows them itself, with a hop limit and loop detection.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp

from bulkgetty.errors import BulkGettyError, CertificateError, ConnectError, ReadError, UsageError

__all__ = ("Timeouts", "check_url_scheme", "is_loopback_host", "map_errors", "new_session")

T = TypeVar("T")

USER_AGENT = "bulkgetty/0.1"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """No total timeout: a 4 GiB video takes as long as it takes. A stall is what we catch."""

    connect: float = 30.0
    #: Longest wait for the next bytes of a response (a stalled transfer).
    stall: float = 60.0


def new_session(timeouts: Timeouts, *, limit: int = 100) -> aiohttp.ClientSession:
    """A session with no default headers, no cookies, no automatic decompression."""
    connector = aiohttp.TCPConnector(
        ssl=_verifying_context(),
        limit=limit,
        limit_per_host=limit,
        ttl_dns_cache=300,
        # No `enable_cleanup_closed`: it aborts TLS transports already closed, which on
        # Debian 12's own Python (3.11.2) raises AttributeError in asyncio (fixed in later
        # 3.11s) when the session closes. A TLS shutdown that hangs ends by asyncio's own
        # shutdown timeout instead.
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=timeouts.stall,
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        headers={"User-Agent": USER_AGENT},
        skip_auto_headers=("Accept-Encoding",),
        read_bufsize=2**20,
    )


def _verifying_context() -> ssl.SSLContext:
    """The system's trust store, read now rather than when aiohttp was imported.

    Python's default context honours `SSL_CERT_FILE` / `SSL_CERT_DIR`, so a sandbox CA (or a
    company proxy's) is trusted the standard way, also when the variable is set after import.
    Verification itself is never turned off. Reading the store costs ~25 ms of CPU, so the
    sessions of one process share a context while those variables keep their values.
    """
    where = (_file_identity(os.environ.get("SSL_CERT_FILE")), os.environ.get("SSL_CERT_DIR"))
    context = _CONTEXTS.get(where)
    if context is None:
        context = ssl.create_default_context()
        context.set_alpn_protocols(["http/1.1"])
        _CONTEXTS.clear()  # one at a time: a test that moves the variables gets a new one
        _CONTEXTS[where] = context
    return context


_CONTEXTS: dict[tuple[object, str | None], ssl.SSLContext] = {}


def _file_identity(path: str | None) -> object:
    """A CA file by path and version: a new file written at the same path is read afresh."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return path
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: the only hosts plain http:// may reach.

    Cached: every delivery URI and redirect is checked, and a run meets few hosts."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url_scheme(url: str, *, what: str) -> None:
    """Refuse anything but https, or http to a loopback address (the sandbox, tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return
    given = _shown(url)
    hint = ""
    if "://" not in url:
        host = urlsplit("//" + given).hostname or ""
        hint = f": add the scheme, e.g. {'http' if is_loopback_host(host) else 'https'}://{given}"
    raise UsageError(
        f"{what} needs https:// (or http:// for a loopback address), got {given!r}{hint}"
    )


def _shown(url: str) -> str:
    """A URL as it was given, less any credentials, query or fragment (never a secret)."""
    has_scheme = "://" in url
    parts = urlsplit(url if has_scheme else "//" + url)
    prefix = f"{parts.scheme}://" if has_scheme else ""
    return prefix + parts.netloc.rsplit("@", 1)[-1] + parts.path


async def map_errors(call: Callable[[], Awaitable[T]], *, sent_may_spend: bool = False) -> T:
    """Await `call`, turning aiohttp and socket errors into ConnectError or ReadError.

    A connect-class failure means the request never left, so nothing was spent. Anything
    later means the server may have acted on it; with `sent_may_spend` (a download POST) the
    error says so, and the caller must not repeat the request blindly.
    """
    try:
        return await call()
    except BulkGettyError:
        raise
    except aiohttp.ClientConnectorCertificateError as exc:
        raise CertificateError(certificate_message(exc)) from exc
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise ConnectError(f"cannot connect: {describe(exc)}") from exc
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ReadError(
            f"connection lost or timed out: {describe(exc)}", may_have_spent=sent_may_spend
        ) from exc


def certificate_message(exc: aiohttp.ClientConnectorCertificateError) -> str:
    """One line naming the host whose certificate failed, and the standard way to trust it."""
    reason = getattr(exc.certificate_error, "verify_message", "") or str(exc.certificate_error)
    return (
        f"the TLS certificate of {exc.host}:{exc.port} is not trusted ({reason}); "
        "to trust a private CA (the sandbox's, a company proxy's) set SSL_CERT_FILE to its PEM"
    )


def describe(exc: BaseException) -> str:
    """A short description of a low-level error that never includes a URL's query string."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{exc.host}:{exc.port}: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    text = str(exc).split("?", 1)[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
