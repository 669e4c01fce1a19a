"""Run the Getty sandbox API in its own process (so it never shares a CPU-bound loop).

Prints one JSON line {"api_url": ..., "delivery": [...], "env": {...}} on stdout once the
servers listen, then serves until SIGTERM/SIGINT. Quota is effectively unlimited: every
benchmark rep buys every asset again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from bulkgetty.sandbox import Product, Sandbox, SandboxConfig
from bulkgetty.sandbox.tls import TlsMaterial, load_tls

UNLIMITED = 10**9


def sandbox_config(
    *,
    seed: int = 0,
    file_bytes: int = 256 * 2**10,
    delivery_base: str | None = None,
    delivery_latency: float = 0.0,
    api_latency: float = 0.0,
    qps: float | None = None,
) -> SandboxConfig:
    """The config both this process and the harness (for corpus and hashes) build."""
    products = (
        Product(1001, "premiumaccess", UNLIMITED, name="Premium Access"),
        Product(1002, "editorialsubscription", UNLIMITED, name="Editorial Subscription"),
        Product(1003, "royaltyfreesubscription", UNLIMITED, name="Royalty-Free Subscription"),
    )
    return SandboxConfig(
        products=products,
        image_bytes=(file_bytes, file_bytes),
        video_bytes=(file_bytes, file_bytes),
        delivery_base=delivery_base,
        delivery_latency=delivery_latency,
        api_latency=api_latency,
        qps=qps,
        record_delivery=False,
        seed=seed,
    )


async def serve(config: SandboxConfig, tls: TlsMaterial | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Sandbox(config, host="127.0.0.1", tls=tls or False) as sandbox:
        info = {
            "api_url": sandbox.api_url,
            "delivery": list(sandbox.delivery_urls),
            "env": sandbox.credentials_env(),
        }
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--file-bytes", type=int, default=256 * 2**10)
    p.add_argument("--delivery-base", default=None)
    p.add_argument("--delivery-latency", type=float, default=0.0)
    p.add_argument("--api-latency", type=float, default=0.0)
    p.add_argument("--qps", type=float, default=None)
    p.add_argument(
        "--tls-dir", type=Path, help="serve HTTPS with the CA and certificate `make_tls` wrote"
    )
    a = p.parse_args()
    config = sandbox_config(
        seed=a.seed,
        file_bytes=a.file_bytes,
        delivery_base=a.delivery_base,
        delivery_latency=a.delivery_latency,
        api_latency=a.api_latency,
        qps=a.qps,
    )
    asyncio.run(serve(config, load_tls(a.tls_dir) if a.tls_dir else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
