"""A static file server that sleeps before every response (GET and HEAD alike).

`python -m benchmarks.latency_server ROOT --delay 0.05` prints `http://127.0.0.1:PORT` and
serves ROOT (a `write_corpus` directory) with Range support via `web.FileResponse`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web


def build_app(root: Path, delay: float) -> web.Application:
    base = root.resolve()

    async def handle(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        target = (base / request.path.lstrip("/")).resolve()
        if base not in target.parents or not target.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(target)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


async def serve(root: Path, delay: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(root, delay), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    sys.stdout.write(f"http://127.0.0.1:{sock.getsockname()[1]}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("root", type=Path)
    p.add_argument("--delay", type=float, default=0.05)
    a = p.parse_args()
    asyncio.run(serve(a.root, a.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
