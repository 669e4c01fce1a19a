"""parfive as a peer: `python benchmarks/parfive_get.py URLS.txt DEST --max-conn 16
--max-splits 1 --chunksize 65536`. Exits 1 if any file failed."""

from __future__ import annotations

import argparse
import sys
from urllib.parse import unquote, urlsplit

import parfive  # type: ignore[import-untyped]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("urls")
    p.add_argument("dest")
    p.add_argument("--max-conn", type=int, default=16)
    p.add_argument("--max-splits", type=int, default=1)
    p.add_argument("--chunksize", type=int, default=65536)
    a = p.parse_args()
    with open(a.urls, encoding="utf-8") as fh:
        urls = [line.strip() for line in fh if line.strip()]
    dl = parfive.Downloader(
        max_conn=a.max_conn, max_splits=a.max_splits, progress=False, overwrite=True
    )
    for url in urls:
        name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        dl.enqueue_file(url, path=a.dest, filename=name, chunksize=a.chunksize)
    results = dl.download()
    if results.errors:
        for err in results.errors[:5]:
            sys.stderr.write(f"parfive: {err.url.split('?')[0]}: {err.exception}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
