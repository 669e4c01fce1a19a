"""Redirects and the delivery URL: checks for every hop, never a secret sent on.

No Getty header ever goes to the delivery host (the URI signs itself), and redirects are
followed here, not by aiohttp, so every hop gets a scheme check, a hop limit and loop
detection, and nothing is forwarded to another host. A URI's query string is its
signature: it is sent byte for byte, and messages show `scheme://host/path` only.
"""

from __future__ import annotations

from typing import Final

import aiohttp
from yarl import URL

from bulkgetty.errors import (
    RedirectError,
    UsageError,
)
from bulkgetty.getty.http import check_url_scheme

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
