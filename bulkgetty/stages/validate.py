"""Checks on a delivery response: status, error pages, lengths, ranges. No I/O but reads.

Split from transfer.py so the rules that decide whether an answer is the file can be read
(and mutation-tested) on their own. Every check raises the error the retry policy acts on:
UriExpiredError (the signature is refused: never retried), IntegrityError (the answer is not
the bytes asked for), DeliveryError (retryable server trouble).

A body is trusted only as far as its framing proves it: a Content-Length or a Content-Range
is checked byte for byte, a chunked body ends with its terminator; a body that simply stops
when the connection closes (no length, no chunking) proves nothing, so its length must be
confirmed by asking again (`confirmed_total`).
"""

from __future__ import annotations

import hashlib
import re
import socket
from functools import partial
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from bulkgetty.errors import BulkGettyError, DeliveryError, IntegrityError, UriExpiredError
from bulkgetty.getty.http import map_errors

__all__ = (
    "check_content_range",
    "close_delimited",
    "content_length",
    "raise_for_status",
    "redact_url",
    "refuse_error_page",
    "same_body",
    "sniff_error_page",
    "surplus_after_body",
    "total_from_probe",
    "unsatisfied_total",
    "where",
)

_REFUSED_CODES: Final = frozenset({401, 403, 410})
_ERROR_PAGE_TYPES: Final = frozenset(
    {"text/html", "application/xml", "text/xml", "application/json"}
)
_UNTYPED: Final = frozenset({None, "application/octet-stream", "binary/octet-stream"})
_ERROR_PAGE_PREFIXES: Final = (b"<!doctype", b"<html", b"<?xml")
_EXPIRED_MARKERS: Final = (
    b"accessdenied",
    b"expired",
    b"signaturedoesnotmatch",
    b"invalidtoken",
    b"request has expired",
)
_PEEK_BYTES: Final = 4096
_CONTENT_RANGE: Final = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED: Final = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


def redact_url(url: str | URL) -> str:
    """`scheme://host[:port]/path`: a URL fit for a message (no signature, no userinfo)."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def where(resp: aiohttp.ClientResponse) -> str:
    return redact_url(resp.url)


def content_length(resp: aiohttp.ClientResponse) -> int | None:
    """The body length promised by the headers; None for chunked or encoded bodies."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise IntegrityError(f"Content-Encoding {encoding!r} from {where(resp)} (asked identity)")
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise IntegrityError(f"bad Content-Length {value[:40]!r} from {where(resp)}")
    return int(value)


def check_content_range(
    resp: aiohttp.ClientResponse, start: int, last: int | None, total: int | None
) -> int:
    """A 206 must say exactly `bytes start-last/total` and carry that many bytes; returns total."""
    header = resp.headers.get("Content-Range", "")
    match = _CONTENT_RANGE.match(header)
    at = where(resp)
    if resp.status != 206 or match is None or match.group(3) == "*":
        raise IntegrityError(f"expected 206 bytes {start}-, got {resp.status} {header!r} ({at})")
    first, end, full = int(match.group(1)), int(match.group(2)), int(match.group(3))
    want_last = last if last is not None else full - 1
    if first != start or end != want_last or (total is not None and full != total):
        raise IntegrityError(f"Content-Range {header!r} does not match bytes {start}-{want_last}")
    if end >= full:
        raise IntegrityError(f"Content-Range {header!r} is past the end ({at})")
    length = content_length(resp)
    if length is not None and length != end - first + 1:
        raise IntegrityError(f"Content-Length {length} does not match Content-Range {header!r}")
    return full


def surplus_after_body(protocol: ResponseHandler | None) -> bool:
    """Bytes after a Content-Length body mean the header cut the file short.

    aiohttp stops at Content-Length and, when more bytes follow, fails to parse them as the
    next response on that connection; a server never sends anything unasked on HTTP/1.1, so
    either that parse error or bytes still waiting in the socket give the surplus away. Only
    surplus that has reached this host when the body ends can be seen; nothing later can be.
    Under TLS only the parse error counts: raw bytes waiting there may be the session's own
    records (a close_notify after `Connection: close`, a session ticket), not body bytes.
    """
    if protocol is None:
        return False
    if isinstance(protocol.exception(), HttpProcessingError):
        return True
    transport = protocol.transport
    if transport is None or transport.get_extra_info("ssl_object") is not None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    # asyncio's socket wrapper has no recv: peek through a borrowed socket object on the same
    # descriptor (family and type given, so no getsockopt), detached so it never closes it.
    peer = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
    try:
        return bool(peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing waiting (EAGAIN), or the socket is gone: no surplus seen
        return False
    finally:
        peer.detach()


def unsatisfied_total(resp: aiohttp.ClientResponse) -> int | None:
    """The `*/total` of a 416's Content-Range, when the server gives one."""
    match = _UNSATISFIED.match(resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


async def raise_for_status(resp: aiohttp.ClientResponse) -> None:
    """Map a non-2xx delivery answer to the error the retry policy understands."""
    status = resp.status
    if status in (200, 206):
        return
    at = where(resp)
    if status in _REFUSED_CODES:
        raise UriExpiredError(f"delivery refused with HTTP {status} ({at}): URI expired?")
    if status in (400, 404):
        head = await _peek(resp)
        if _is_error_document(_mime(resp), head):
            raise UriExpiredError(f"delivery refused with HTTP {status} ({at}): URI expired?")
        raise DeliveryError(f"HTTP {status} from {at}")
    if status == 416:
        raise IntegrityError(f"HTTP 416 without a Range request from {at}")
    raise DeliveryError(f"HTTP {status} from {at}")


async def refuse_error_page(resp: aiohttp.ClientResponse) -> None:
    """A 2xx whose Content-Type is HTML, XML or JSON is an error page, never media."""
    mime = _mime(resp)
    if mime not in _ERROR_PAGE_TYPES:
        return
    head = await _peek(resp)
    _raise_error_page(mime, head, resp)


def sniff_error_page(first: bytes, resp: aiohttp.ClientResponse) -> None:
    """Without a Content-Type (or with octet-stream), an HTML or XML start marks an error page."""
    if _mime(resp) not in _UNTYPED:
        return
    start = first[:64].lstrip().lower()
    if start.startswith(_ERROR_PAGE_PREFIXES):
        _raise_error_page(None, first[:_PEEK_BYTES], resp)


def _raise_error_page(mime: str | None, head: bytes, resp: aiohttp.ClientResponse) -> None:
    at = where(resp)
    lowered = head.lower()
    if any(marker in lowered for marker in _EXPIRED_MARKERS):
        raise UriExpiredError(f"delivery answered an access-denied page ({at}): URI expired?")
    raise IntegrityError(f"delivery answered an error page ({mime or 'markup'}), not media: {at}")


def _is_error_document(mime: str | None, head: bytes) -> bool:
    if mime in _ERROR_PAGE_TYPES:
        return True
    return head[:64].lstrip().lower().startswith(_ERROR_PAGE_PREFIXES)


def _mime(resp: aiohttp.ClientResponse) -> str | None:
    value = resp.headers.get("Content-Type")
    return value.split(";", 1)[0].strip().lower() if value else None


async def _peek(resp: aiohttp.ClientResponse) -> bytes:
    """The first few KiB of an error body (never more: it is only for classification)."""
    try:
        return await map_errors(partial(resp.content.read, _PEEK_BYTES))
    except BulkGettyError:
        return b""


def close_delimited(resp: aiohttp.ClientResponse) -> bool:
    """The body ends only where the connection closes (no Content-Length, not chunked).

    Such a body proves nothing about its length: a connection cut halfway ends it just as
    cleanly as the server's last byte does.
    """
    if resp.headers.get("Content-Length") is not None:
        return False
    return "chunked" not in resp.headers.get("Transfer-Encoding", "").lower()


def total_from_probe(resp: aiohttp.ClientResponse, got: int) -> int | None:
    """What the answer to `Range: bytes=GOT-`, sent after a close-delimited body of GOT
    bytes, says the file's length is.

    GOT when it confirms that body (416 `bytes */GOT`, or a 200 whose Content-Length is
    GOT); the larger total of a 206 `bytes GOT-LAST/TOTAL` (the body was cut: that 206 holds
    the rest); None for a 200 without a length (only a second copy can confirm it).
    IntegrityError for any other answer: that length cannot be trusted.
    """
    if resp.status == 416:
        if unsatisfied_total(resp) == got:
            return got
        header = resp.headers.get("Content-Range", "")
        raise IntegrityError(f"416 {header!r} does not confirm {got} bytes ({where(resp)})")
    if resp.status == 206:
        return check_content_range(resp, got, None, None)
    length = content_length(resp)
    if length is None or length == got:
        return length
    raise IntegrityError(f"the body ended after {got} bytes, the file has {length} ({where(resp)})")


async def same_body(resp: aiohttp.ClientResponse, size: int, sha256: str) -> bool:
    """Whether `resp`'s body is exactly `size` bytes hashing to `sha256` (a second copy)."""
    hasher = hashlib.sha256()
    seen = 0
    while chunk := await map_errors(partial(resp.content.read, 2**20)):
        seen += len(chunk)
        if seen > size:
            return False
        hasher.update(chunk)
    return seen == size and hasher.hexdigest() == sha256
