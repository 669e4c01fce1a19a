"""The delivery origins: signed, self-authenticating file URIs with Range support and faults.

Two origins share one handler; redirect faults bounce between them. Requests carry no Getty
credentials, and every request is recorded so a test can prove that none leaked here.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from .content import FileSpec, parse_file_path
from .state import RecordedRequest, SandboxState

__all__ = ("build_delivery_app",)

STATE_KEY: web.AppKey[SandboxState] = web.AppKey("state", SandboxState)
ORIGINS_KEY: web.AppKey[list[str]] = web.AppKey("origins", list)
INDEX_KEY: web.AppKey[int] = web.AppKey("index", int)

#: Write size when no bandwidth cap applies: big writes keep the server off the profile.
WRITE_CHUNK = 2**20


def _xml_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>SANDBOX</RequestId></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


@dataclass(frozen=True, slots=True)
class _Range:
    start: int
    end: int  # exclusive


def parse_range(header: str, length: int) -> _Range | bool | None:
    """A single byte range; None to ignore the header, False if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or length == 0:
            return False
        return _Range(max(0, length - suffix), length)
    start = int(first)
    if last and not last.isdigit():
        return None
    end = min(length, int(last) + 1) if last else length
    if last and int(last) < start:
        return None
    if start >= length:
        return False
    return _Range(start, end)


def _if_range_ok(value: str | None, spec: FileSpec) -> bool:
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == spec.etag
    parsed = email.utils.parsedate_to_datetime(value) if value else None
    return parsed is not None and int(parsed.timestamp()) == int(spec.last_modified)


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    origins = request.app[ORIGINS_KEY]
    index = request.app[INDEX_KEY]
    config = state.config
    path = request.rel_url.raw_path
    if config.record_delivery:
        state.stats.delivery_requests.append(
            RecordedRequest(origins[index], request.method, path, dict(request.headers))
        )
    if config.delivery_latency:
        await asyncio.sleep(config.delivery_latency)
    parsed = parse_file_path(path)
    if parsed is None:
        return _xml_error(404, "NoSuchKey", "The specified key does not exist.")
    asset_type, asset_id, variant = parsed
    exp = request.query.get("exp", "")
    if not state.signature_ok(path, exp, request.query.get("sig", "")):
        return _xml_error(403, "AccessDenied", "Access Denied")
    faults = config.faults
    expire_from = faults.expire_from.get(asset_id)
    expired_now = expire_from is not None and state.get_attempts[asset_id] >= expire_from
    if asset_id in faults.expired or expired_now or int(exp) <= state.now():
        return _xml_error(403, "AccessDenied", "Request has expired")
    redirect = _redirect(request, state, asset_id, origins, index)
    if redirect is not None:
        return redirect
    attempt = state.get_attempts[asset_id]
    if request.method != "HEAD":
        state.get_attempts[asset_id] += 1
    spec = state.spec(asset_type, asset_id, variant, state.generation(asset_id, attempt))
    return await _serve(request, state, spec, attempt)


def _redirect(
    request: web.Request, state: SandboxState, asset_id: str, origins: list[str], index: int
) -> web.StreamResponse | None:
    faults = state.config.faults
    hop = request.query.get("hop")
    signed = f"exp={request.query['exp']}&sig={request.query['sig']}"
    path = request.rel_url.raw_path
    other = origins[1 - index]
    if asset_id in faults.redirect_loop:
        return web.Response(status=302, headers={"Location": f"{other}{path}?{signed}&hop=0"})
    if hop is None and asset_id in faults.redirect_to:
        target = faults.redirect_to[asset_id].replace("{path}", f"{path}?{signed}&hop=done")
        return web.Response(status=302, headers={"Location": target})
    codes = faults.redirects.get(asset_id, ())
    step = int(hop) if hop is not None and hop.isdigit() else (0 if hop is None else len(codes))
    if step < len(codes):
        location = f"{other}{path}?{signed}&hop={step + 1}"
        return web.Response(status=codes[step], headers={"Location": location})
    return None


@dataclass(frozen=True, slots=True)
class _BodyFaults:
    """How this one response's body misbehaves."""

    #: Stop after this many body bytes and close the connection.
    cut: int | None = None
    stall_at: int | None = None
    stall_for: float = 0.0


class _CloseDelimited(web.StreamResponse):
    """A response without Content-Length or chunking: its body ends when the server hangs up
    (HTTP/1.0 style; aiohttp would chunk a body of unknown length on HTTP/1.1)."""

    _length_check = False


def _error_fault(state: SandboxState, asset_id: str, attempt: int) -> web.Response | None:
    """A scripted or random fault that replaces the file entirely."""
    faults = state.config.faults
    random_fault = _random_fault(state, asset_id, attempt)
    status_fault = faults.status.get(asset_id)
    if status_fault and attempt < status_fault[1]:
        return _xml_error(status_fault[0], "ServiceUnavailable", "Injected delivery fault")
    if random_fault == "status":
        return _xml_error(503, "ServiceUnavailable", "Injected delivery fault")
    if attempt < faults.html_error.get(asset_id, 0) or random_fault == "html_error":
        html = "<!DOCTYPE html><html><body><h1>Service error</h1></body></html>"
        return web.Response(text=html, content_type="text/html")
    return None


def _file_headers(state: SandboxState, spec: FileSpec) -> dict[str, str]:
    faults = state.config.faults
    headers = {
        "Content-Type": spec.content_type,
        "ETag": spec.etag,
        "Last-Modified": email.utils.formatdate(spec.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
    }
    if spec.id in faults.disposition:
        headers["Content-Disposition"] = faults.disposition[spec.id]
    elif spec.id not in faults.no_disposition:
        headers["Content-Disposition"] = f"attachment; filename={quote(spec.filename, safe='-.')}"
    return headers


def _body_faults(
    state: SandboxState, asset_id: str, attempt: int, size: int, delta: int
) -> _BodyFaults:
    faults = state.config.faults
    cut: int | None = None
    close_fault = faults.close_after.get(asset_id)
    if close_fault and attempt < close_fault[1]:
        cut = close_fault[0]
    elif _random_fault(state, asset_id, attempt) == "close_after":
        cut = size // 2
    if delta > 0 and cut is None:
        cut = size  # the declared length is never reached: hang up after the real body
    stall = faults.stall_after.get(asset_id)
    if stall and attempt < stall[2]:
        return _BodyFaults(cut, stall[0], stall[1])
    return _BodyFaults(cut)


async def _serve(
    request: web.Request, state: SandboxState, spec: FileSpec, attempt: int
) -> web.StreamResponse:
    faults = state.config.faults
    asset_id = spec.id
    error = _error_fault(state, asset_id, attempt)
    if error is not None:
        return error
    headers = _file_headers(state, spec)
    if attempt < faults.empty_body.get(asset_id, 0):
        return web.Response(status=200, headers=headers)
    length = spec.length
    status, start, end = 200, 0, length
    range_header = request.headers.get("Range")
    if range_header is not None and attempt >= faults.ignore_range.get(asset_id, 0):
        parsed = parse_range(range_header, length)
        if attempt < faults.range_416.get(asset_id, 0):
            parsed = False
        if parsed is False:
            headers["Content-Range"] = f"bytes */{length}"
            return web.Response(status=416, headers=headers)
        if isinstance(parsed, _Range) and _if_range_ok(request.headers.get("If-Range"), spec):
            status, start, end = 206, parsed.start, parsed.end
            claimed = start
            if attempt < faults.wrong_content_range.get(asset_id, 0):
                claimed = start + 1 if end < length else max(0, start - 1)
            headers["Content-Range"] = f"bytes {claimed}-{claimed + end - start - 1}/{length}"

    unframed = asset_id in faults.close_delimited
    response = (_CloseDelimited if unframed else web.StreamResponse)(status=status, headers=headers)
    delta = faults.length_mismatch.get(asset_id, 0)
    if asset_id in faults.chunked:
        response.enable_chunked_encoding()
    elif unframed:
        response.force_close()
    else:
        response.content_length = max(0, end - start + delta)
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    plan = _body_faults(state, asset_id, attempt, end - start, delta)
    transport = request.transport
    # aiohttp trims writes to Content-Length: the surplus is pushed past it on the socket,
    # right behind the declared bytes (as a server streaming the whole file would), then
    # the connection is hung up.
    surplus = transport if delta < 0 and plan.cut is None else None
    await _write_body(response, state, spec, start, end, plan, surplus=surplus)
    if (plan.cut is not None or surplus is not None or unframed) and transport is not None:
        transport.close()
    else:
        await response.write_eof()
    return response


async def _write_body(
    response: web.StreamResponse,
    state: SandboxState,
    spec: FileSpec,
    start: int,
    end: int,
    plan: _BodyFaults,
    *,
    surplus: asyncio.Transport | None = None,
) -> None:
    """Write [start, end) in large slices, honouring the cut-off, one stall and the cap.

    With `surplus`, the bytes past the declared Content-Length go straight to that transport
    in one write with the last few declared ones, so they reach the client together, as from
    a server streaming the whole file behind a short header.
    """
    bandwidth = state.config.bandwidth
    limit = end if plan.cut is None else min(end, start + plan.cut)
    piece = WRITE_CHUNK if bandwidth is None else max(1024, min(WRITE_CHUNK, bandwidth // 10))
    stall_pos = None if plan.stall_at is None else start + plan.stall_at
    pos = start
    while pos < limit:
        if stall_pos == pos:
            await asyncio.sleep(plan.stall_for)
            stall_pos = None
        stop = min(limit, pos + piece)
        if stall_pos is not None and pos < stall_pos < stop:
            stop = stall_pos
        raw_from = stop
        if surplus is not None and response.content_length is not None:
            declared_end = start + response.content_length
            if declared_end < stop:
                raw_from = max(pos, declared_end - _SURPLUS_LEAD)
        for chunk in spec.slices(pos, raw_from):
            await response.write(chunk)
        if raw_from < stop and surplus is not None:
            surplus.write(b"".join(bytes(chunk) for chunk in spec.slices(raw_from, stop)))
        state.stats.delivery_body_bytes += stop - pos
        if bandwidth:
            await asyncio.sleep((stop - pos) / bandwidth)
        pos = stop


#: Declared bytes sent in the same write as a short Content-Length's surplus.
_SURPLUS_LEAD = 4096


def _random_fault(state: SandboxState, asset_id: str, attempt: int) -> str | None:
    faults = state.config.faults
    if faults.fault_rate <= 0 or not faults.fault_kinds:
        return None
    rng = random.Random(f"{state.config.seed}|{asset_id}|{attempt}")
    if rng.random() >= faults.fault_rate:
        return None
    return rng.choice(faults.fault_kinds)


def build_delivery_app(state: SandboxState, origins: list[str], index: int) -> web.Application:
    """Delivery origin number `index`; `origins` is filled in once both are bound."""
    app = web.Application()
    app[STATE_KEY] = state
    app[ORIGINS_KEY] = origins
    app[INDEX_KEY] = index
    app.router.add_get("/{tail:.*}", handle)
    return app
