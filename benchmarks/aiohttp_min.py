"""Reference loop, not a downloader: one session, N workers, one GET per file, 1 MiB
`iter_chunked`, blocking writes. No retries, no resume, no temp file.

    python benchmarks/aiohttp_min.py URLS.txt DEST -c 16

Each line of URLS.txt is a URL; the file name is the last path segment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from urllib.parse import unquote, urlsplit

import aiohttp

CHUNK = 2**20


async def fetch(session: aiohttp.ClientSession, url: str, dest: str) -> None:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    async with session.get(url) as resp:
        resp.raise_for_status()
        with open(os.path.join(dest, name), "wb") as fh:
            async for chunk in resp.content.iter_chunked(CHUNK):
                fh.write(chunk)


async def run(urls: list[str], dest: str, concurrency: int) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, read_bufsize=CHUNK
    ) as session:

        async def worker() -> None:
            while True:
                try:
                    url = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await fetch(session, url, dest)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("urls")
    p.add_argument("dest")
    p.add_argument("-c", "--concurrency", type=int, default=16)
    a = p.parse_args()
    with open(a.urls, encoding="utf-8") as fh:
        urls = [line.strip() for line in fh if line.strip()]
    os.makedirs(a.dest, exist_ok=True)
    asyncio.run(run(urls, a.dest, a.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
