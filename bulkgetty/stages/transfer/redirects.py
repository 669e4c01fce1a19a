"""Redirects and the delivery URL: checks for every hop, never a secret sent on.

No Getty header ever goes to the delivery host (the URI signs itself), and redirects are
followed here, not by aiohttp, so every hop gets a scheme check, a hop limit and loop
detection, and nothing is forwarded to another host. A URI's query string is its
signature: it is sent byte for byte, and messages show `scheme://host/path` only.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from bulkgetty.errors import (
    RedirectError,
    UsageError,
)
from bulkgetty.getty.http import check_url_scheme, map_errors
from bulkgetty.stages.validate import redact_url

#: One GET of the attempt's URI with these headers, redirects followed (`get_following`).
Get = Callable[[dict[str, str]], Awaitable[aiohttp.ClientResponse]]

_REDIRECT_CODES: Final = frozenset({301, 302, 303, 307, 308})
_SECRET_HEADERS: Final = ("authorization", "api-key")


def _refuse_secret_headers(session: aiohttp.ClientSession) -> None:
    """A session with default credentials would send them to the delivery host: refuse it."""
    present = [h for h in _SECRET_HEADERS if h in session.headers]
    if present:
        raise UsageError(f"delivery session must not carry default {', '.join(present)} headers")


def _check_hop(url: str, *, what: str) -> None:
    try:
        check_url_scheme(url, what=what)
    except UsageError as exc:
        raise RedirectError(str(exc)) from exc


def _as_url(url: str) -> URL:
    """Send a signed URL byte for byte (no re-quoting) when it is already encoded."""
    if url.isascii() and url.isprintable() and " " not in url:
        return URL(url, encoded=True)
    return URL(url)


async def get_following(
    session: aiohttp.ClientSession, uri: str, headers: dict[str, str], *, max_redirects: int
) -> aiohttp.ClientResponse:
    """GET with redirects followed here: hop limit, loop detection, scheme check."""
    url = uri
    seen = {url}
    for hop in itertools.count():
        resp = await map_errors(partial(_request, session, url, headers))
        if resp.status not in _REDIRECT_CODES:
            return resp
        location = resp.headers.get("Location")
        resp.release()
        if not location:
            raise RedirectError(f"HTTP {resp.status} without Location from {redact_url(url)}")
        if hop == max_redirects:
            raise RedirectError(f"more than {hop} redirects, last from {redact_url(url)}")
        url = urljoin(url, location.strip())
        _check_hop(url, what="redirect target")
        if url in seen:
            raise RedirectError(f"redirect loop back to {redact_url(url)}")
        seen.add(url)
    raise AssertionError("itertools.count() never ends")


async def _request(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    return await session.get(_as_url(url), headers=headers, allow_redirects=False)
