"""validate.py: the rules that decide whether a delivery answer is the file.

Header rules are checked on a stand-in that has just a status, headers and a URL (they read
nothing else); rules that read a body are checked on real answers from an aiohttp server
on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from bulkgetty.errors import DeliveryError, IntegrityError, UriExpiredError
from bulkgetty.getty.http import Timeouts, new_session
from bulkgetty.stages.validate import (
    check_content_range,
    close_delimited,
    content_length,
    raise_for_status,
    redact_url,
    refuse_error_page,
    same_body,
    sniff_error_page,
    surplus_after_body,
    total_from_probe,
    unsatisfied_total,
)

#: path -> (status, headers, body) the server answers.
Canned = dict[str, tuple[int, dict[str, str], bytes]]


@pytest.fixture
async def canned() -> AsyncIterator[tuple[str, Canned]]:
    answers: Canned = {}

    async def handle(request: web.Request) -> web.Response:
        status, headers, data = answers[request.path]
        return web.Response(status=status, headers=headers, body=data)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", answers
    await runner.cleanup()


async def served(
    canned: tuple[str, Canned],
    check: Callable[[aiohttp.ClientResponse], Awaitable[Any]],
    status: int,
    data: bytes = b"",
    **headers: str,
) -> Any:
    """Answer one GET with `status`, `headers` and `data`, and run `check` on that answer."""
    base, answers = canned
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    path = f"/f{len(answers)}.jpg"
    answers[path] = (status, named, data)
    async with (
        new_session(Timeouts(connect=5, stall=5)) as session,
        session.get(f"{base}{path}?sig=SECRET") as resp,
    ):
        return await check(resp)


def test_redact_url_drops_query_and_userinfo() -> None:
    assert (
        redact_url("https://u:p@h.example:8443/p/x.jpg?sig=S#f") == "https://h.example:8443/p/x.jpg"
    )
    assert redact_url("https://h.example/p.jpg?sig=S") == "https://h.example/p.jpg"
    assert redact_url("http://[::1]:8080/p.jpg?sig=S") == "http://[::1]:8080/p.jpg"
    assert redact_url("file:///p.jpg") == "file:///p.jpg"


class _Transport:
    def __init__(self, sock: socket.socket, tls: bool) -> None:
        self.extra = {"socket": sock, "ssl_object": object() if tls else None}

    def get_extra_info(self, name: str) -> object:
        return self.extra.get(name)


class _Protocol:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport

    def exception(self) -> BaseException | None:
        return None


@pytest.mark.parametrize(("tls", "seen"), [(False, True), (True, False)])
def test_bytes_waiting_after_a_body_count_as_surplus_only_on_plain_http(
    tls: bool, seen: bool
) -> None:
    """Under TLS, raw bytes after the body may be a close_notify or a session ticket, not
    body bytes: only aiohttp's parse error may say "surplus" there."""
    ours, server = socket.socketpair()
    with ours, server:
        server.sendall(b"surplus")
        protocol = _Protocol(_Transport(ours, tls))
        assert surplus_after_body(cast(Any, protocol)) is seen
        assert ours.recv(16) == b"surplus"  # peeked, never consumed, never closed


# ------------------------------------------ response checks, one rule each (validate.py)


@dataclass
class Answer:
    """Just what validate.py reads of a response: status, headers, URL."""

    status: int
    headers: CIMultiDict[str]
    url: str = "https://delivery.example/f.jpg?sig=SECRET"


def answer(status: int, **headers: str) -> aiohttp.ClientResponse:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return cast(aiohttp.ClientResponse, Answer(status, CIMultiDict(named)))


@pytest.mark.parametrize(
    ("header", "start", "last", "total", "length", "why"),
    [
        ("bytes 0-999/1000", 500, None, 1000, None, "does not match"),  # start wrong, end right
        ("bytes 500-998/1000", 500, None, 1000, None, "does not match"),  # end wrong
        ("bytes 0-499/2000", 0, 499, 1000, None, "does not match"),  # the size changed
        ("bytes 0-499/1000", 0, 499, None, "400", "Content-Length 400"),
        ("bytes 0-1000/1000", 0, 1000, None, None, "past the end"),
        ("bytes 0-499/*", 0, 499, None, None, "expected 206"),
        ("bytes 0-499", 0, 499, None, None, "expected 206"),
        ("", 0, 499, None, None, "expected 206"),
    ],
)
def test_a_206_must_name_exactly_the_bytes_asked_for(
    header: str, start: int, last: int | None, total: int | None, length: str | None, why: str
) -> None:
    headers = {"Content-Range": header} if header else {}
    if length is not None:
        headers["Content-Length"] = length
    with pytest.raises(IntegrityError, match=why) as caught:
        check_content_range(answer(206, **headers), start, last, total)
    assert "SECRET" not in str(caught.value)


def test_a_206_that_matches_returns_the_total() -> None:
    ok = answer(206, Content_Range=" Bytes 500-999/1000 ", Content_Length="500")
    assert check_content_range(ok, 500, None, 1000) == 1000
    assert check_content_range(ok, 500, 999, None) == 1000
    with pytest.raises(IntegrityError, match="expected 206"):
        check_content_range(answer(200, Content_Range="bytes 500-999/1000"), 500, None, None)


def test_content_length_rules() -> None:
    assert content_length(answer(200)) is None
    assert content_length(answer(200, Content_Length="12")) == 12
    assert content_length(answer(200, Content_Length="12", Content_Encoding="identity")) == 12
    with pytest.raises(IntegrityError, match="bad Content-Length"):
        content_length(answer(200, Content_Length="-1"))
    with pytest.raises(IntegrityError, match="Content-Encoding 'gzip'"):
        content_length(answer(200, Content_Length="12", Content_Encoding="gzip"))


def test_only_a_body_with_neither_length_nor_chunking_is_close_delimited() -> None:
    assert close_delimited(answer(200))
    assert close_delimited(answer(200, Transfer_Encoding="identity"))
    assert not close_delimited(answer(200, Content_Length="0"))
    assert not close_delimited(answer(200, Transfer_Encoding="gzip, Chunked"))


def test_what_an_answer_after_a_close_delimited_body_says_about_its_length() -> None:
    assert total_from_probe(answer(416, Content_Range="bytes */700"), 700) == 700
    assert total_from_probe(answer(206, Content_Range="bytes 700-999/1000"), 700) == 1000
    assert total_from_probe(answer(200, Content_Length="700"), 700) == 700
    assert total_from_probe(answer(200), 700) is None
    with pytest.raises(IntegrityError, match=r"416 'bytes \*/900' does not confirm 700"):
        total_from_probe(answer(416, Content_Range="bytes */900"), 700)
    with pytest.raises(IntegrityError, match="does not confirm 700"):
        total_from_probe(answer(416), 700)
    with pytest.raises(IntegrityError, match="does not match"):
        total_from_probe(answer(206, Content_Range="bytes 0-999/1000"), 700)
    with pytest.raises(IntegrityError, match="ended after 700 bytes, the file has 1000"):
        total_from_probe(answer(200, Content_Length="1000"), 700)


def test_the_total_of_an_unsatisfiable_range() -> None:
    assert unsatisfied_total(answer(416, Content_Range="bytes */1000")) == 1000
    assert unsatisfied_total(answer(416, Content_Range=" bytes */7 ")) == 7
    assert unsatisfied_total(answer(416, Content_Range="bytes 0-1/1000")) is None
    assert unsatisfied_total(answer(416)) is None


# ------------------------------------------------------------ rules that read a body


@pytest.mark.parametrize("status", [401, 403, 410])
async def test_a_refused_signature_is_uri_expired_whatever_the_body(
    canned: tuple[str, Canned], status: int
) -> None:
    with pytest.raises(UriExpiredError, match=f"HTTP {status}") as caught:
        await served(canned, raise_for_status, status, b"nope", Content_Type="text/plain")
    assert "SECRET" not in str(caught.value)


@pytest.mark.parametrize("status", [400, 404])
@pytest.mark.parametrize(
    ("content_type", "page", "expired"),
    [
        ("application/xml", b"<Error>NoSuchKey</Error>", True),
        ("text/html; charset=utf-8", b"gone", True),
        ("application/octet-stream", b"  <?xml version='1.0'?><Error/>", True),
        ("application/octet-stream", b"\n<!DOCTYPE html><p>gone</p>", True),
        ("text/plain", b"<HTML>gone</HTML>", True),
        ("text/plain", b"no such thing", False),
    ],
)
async def test_a_4xx_is_uri_expired_only_when_it_is_an_error_document(
    canned: tuple[str, Canned], status: int, content_type: str, page: bytes, expired: bool
) -> None:
    """By its type or, without one that says so, by how its body starts."""
    with pytest.raises(DeliveryError) as caught:
        await served(canned, raise_for_status, status, page, Content_Type=content_type)
    assert isinstance(caught.value, UriExpiredError) is expired
    assert caught.value.retryable is not expired
    assert f"HTTP {status}" in str(caught.value) and "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("status", [200, 206])
async def test_200_and_206_pass_the_status_check(canned: tuple[str, Canned], status: int) -> None:
    assert await served(canned, raise_for_status, status, b"x") is None


async def test_416_to_a_request_without_range_is_an_integrity_error(
    canned: tuple[str, Canned],
) -> None:
    with pytest.raises(IntegrityError, match="416 without a Range request"):
        await served(canned, raise_for_status, 416)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_other_statuses_are_retryable_delivery_errors(
    canned: tuple[str, Canned], status: int
) -> None:
    with pytest.raises(DeliveryError, match=f"HTTP {status} from http") as caught:
        await served(canned, raise_for_status, status, b"busy", Content_Type="text/plain")
    assert caught.value.retryable and not isinstance(caught.value, IntegrityError | UriExpiredError)


@pytest.mark.parametrize(
    ("content_type", "page", "error"),
    [
        ("text/html", b"<p>Request has expired</p>", UriExpiredError),
        ("Application/JSON; charset=utf-8", b'{"error": "SignatureDoesNotMatch"}', UriExpiredError),
        ("text/xml", b"<Error>AccessDenied</Error>", UriExpiredError),
        ("application/xml", b"<Error>Slow down</Error>", IntegrityError),
        ("text/html", b"<p>Service error</p>", IntegrityError),
    ],
)
async def test_a_2xx_typed_as_a_page_is_never_media(
    canned: tuple[str, Canned], content_type: str, page: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        await served(canned, refuse_error_page, 200, page, Content_Type=content_type)
    assert type(caught.value) is error


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
async def test_a_2xx_typed_as_media_or_untyped_passes_the_type_check(
    canned: tuple[str, Canned], content_type: str
) -> None:
    page = b"<html>decided later, by sniffing</html>"
    assert await served(canned, refuse_error_page, 200, page, Content_Type=content_type) is None


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "binary/octet-stream"])
def test_an_untyped_body_that_starts_like_markup_is_an_error_page(
    content_type: str | None,
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    with pytest.raises(IntegrityError, match="error page \\(markup\\)"):
        sniff_error_page(b"  <!DOCTYPE html><p>oops</p>", answer(200, **headers))
    with pytest.raises(UriExpiredError):
        sniff_error_page(
            b"<?xml version='1.0'?><Error>AccessDenied</Error>", answer(200, **headers)
        )
    sniff_error_page(b"\xff\xd8\xff\xe0 JFIF <html>", answer(200, **headers))


def test_a_typed_body_is_not_sniffed() -> None:
    sniff_error_page(
        b"<html>a typed file may say anything</html>", answer(200, Content_Type="image/svg+xml")
    )


async def test_a_second_copy_confirms_only_the_same_bytes(canned: tuple[str, Canned]) -> None:
    data = b"0123456789" * 1000
    digest = hashlib.sha256(data).hexdigest()

    def same(size: int, sha: str) -> Callable[[aiohttp.ClientResponse], Awaitable[bool]]:
        return lambda resp: same_body(resp, size, sha)

    assert await served(canned, same(len(data), digest), 200, data) is True
    assert await served(canned, same(len(data), digest), 200, data[:-1]) is False
    assert await served(canned, same(len(data) - 1, digest), 200, data) is False
    other = data[:-1] + b"x"
    assert await served(canned, same(len(data), digest), 200, other) is False


async def test_a_second_copy_is_compared_over_all_its_reads(canned: tuple[str, Canned]) -> None:
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB: several reads
    digest = hashlib.sha256(data).hexdigest()
    ok = await served(canned, lambda resp: same_body(resp, len(data), digest), 200, data)
    assert ok is True


def test_an_empty_content_encoding_is_identity() -> None:
    assert content_length(answer(200, Content_Length="12", Content_Encoding=" ")) == 12


def test_only_the_first_64_bytes_are_sniffed_for_markup() -> None:
    untyped = answer(200)
    sniff_error_page(b" " * 60 + b"<html>", untyped)
    with pytest.raises(IntegrityError):
        sniff_error_page(b" " * 59 + b"<html>", untyped)


async def test_an_error_page_names_its_type_and_where_it_came_from(
    canned: tuple[str, Canned],
) -> None:
    with pytest.raises(IntegrityError, match=r"error page \(text/html\), not media: http") as c:
        await served(canned, refuse_error_page, 200, b"x", Content_Type="text/html; a=1; b=2")
    assert "SECRET" not in str(c.value)
    with pytest.raises(UriExpiredError, match=r"access-denied page \(https://delivery"):
        sniff_error_page(b"<?xml version='1.0'?><Error>AccessDenied</Error>", answer(200))


def test_a_206_error_names_the_answer() -> None:
    with pytest.raises(IntegrityError, match=r"past the end \(https://delivery\.example/f\.jpg\)"):
        check_content_range(answer(206, Content_Range="bytes 0-1000/1000"), 0, 1000, None)


async def test_an_untyped_4xx_page_that_starts_like_markup_far_in_is_not_a_document(
    canned: tuple[str, Canned],
) -> None:
    page = b" " * 60 + b"<html>gone</html>"
    with pytest.raises(DeliveryError) as caught:
        await served(canned, raise_for_status, 404, page, Content_Type="text/plain")
    assert not isinstance(caught.value, UriExpiredError)


class _Raising:
    def __init__(self, transport: object, error: BaseException | None = None) -> None:
        self.transport, self.error = transport, error

    def exception(self) -> BaseException | None:
        return self.error


def test_surplus_is_seen_only_where_it_can_be() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    assert surplus_after_body(None) is False
    assert surplus_after_body(cast(Any, _Raising(None, BadHttpMessage("junk")))) is True
    assert surplus_after_body(cast(Any, _Raising(None))) is False
    no_socket = _Transport(cast(socket.socket, None), tls=False)
    assert surplus_after_body(cast(Any, _Raising(no_socket))) is False
    ours, peer = socket.socketpair()
    with ours, peer:
        quiet = _Transport(ours, tls=False)
        assert surplus_after_body(cast(Any, _Raising(quiet))) is False  # nothing waiting
