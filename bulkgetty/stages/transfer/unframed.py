"""A body that ended with its connection: confirm its length before calling the file whole.

Why: a 200 without Content-Length or chunked framing ends where the connection does, and a
connection cut halfway looks the same as one closed at the end. Only the server can say
which it was, so it is asked for the bytes after what arrived (validate.py reads the answer).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp

from bulkgetty.errors import IntegrityError, ReadError
from bulkgetty.stages.files import SequentialWriter
from bulkgetty.stages.transfer.redirects import Get
from bulkgetty.stages.transfer.tracker import Tracker, pump
from bulkgetty.stages.validate import raise_for_status, same_body, total_from_probe
from bulkgetty.stages.validate import where as _where

__all__ = ("confirm_length",)


async def confirm_length(
    track: Tracker,
    get: Get,
    resp: aiohttp.ClientResponse,
    writer: SequentialWriter,
    hasher: Any,
) -> None:
    """Ask for the bytes after the body `resp` gave `writer`; go on or fail by the answer.

    416 `*/GOT` or a 200 of length GOT confirms it; a 206 means the body was cut, and
    carries the rest (streamed on into the same `.part`); a 200 without a length is read
    again and must hash the same. Any other answer: start over.
    """
    track.progress(await writer.flush())
    got, at = writer.position, _where(resp)
    probe = await get(track.range_headers(got, None))
    try:
        if probe.status != 416:
            await raise_for_status(probe)
        with track.resetting():
            total = total_from_probe(probe, got)
            if total is None and not await same_body(probe, got, hasher.hexdigest()):
                raise IntegrityError(f"two copies of a body without a length differ ({at})")
        if probe.status == 206 and total is not None:
            track.state = replace(track.state, total=total)
            rest = await pump(track, probe, writer, limit=None, sniff=False)
            if rest != total - got:
                raise ReadError(f"body ended after {got + rest} of {total} bytes from {at}")
    finally:
        probe.release()
