"""The CLI hooks of job arrays: `run --shard`, `plan --shards N --parallel K` and `merge`.

Kept apart from cli.py so the plain `plan` command and these options can grow independently;
the arithmetic lives in shard.py and the checks in merge.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

from bulkgetty.assets import Asset
from bulkgetty.config import DEFAULT_API_RATE, RunOptions, api_url_from_env
from bulkgetty.errors import UsageError
from bulkgetty.getty.api import ProductInfo
from bulkgetty.getty.auth import Credentials
from bulkgetty.getty.connect import ConnectWatch, open_client
from bulkgetty.getty.retry import RetryPolicy
from bulkgetty.scale.merge import META_DEFAULTS, META_MANIFEST, META_SHARD, merge_shards
from bulkgetty.scale.shard import ShardSpec, file_digest, shard_of, split_budget
from bulkgetty.stages.manifest import ManifestDefaults, read_manifest, validate_manifest

__all__ = (
    "add_merge_arguments",
    "add_plan_shard_arguments",
    "downloads_remaining",
    "merge_command",
    "plan_command",
    "shard_options",
)


def defaults_text(defaults: ManifestDefaults) -> str:
    """The defaults that shape asset identities, as the journal records them."""
    return f"asset_type={defaults.asset_type} product_type={defaults.product_type or ''}"


def shard_options(
    options: RunOptions, spec: ShardSpec, manifest: Path, defaults: ManifestDefaults
) -> RunOptions:
    """A shard run binds its journal to (spec, manifest digest, defaults); its cap spans runs."""
    meta = (
        (META_SHARD, str(spec)),
        (META_MANIFEST, file_digest(manifest)),
        (META_DEFAULTS, defaults_text(defaults)),
    )
    return dataclasses.replace(options, journal_meta=meta, cap_all_runs=True)


def _assets(path: Path, defaults: ManifestDefaults) -> Iterator[Asset]:
    for row in read_manifest(path, defaults):
        yield row.asset


# plan --shards -----------------------------------------------------------------------------


def add_plan_shard_arguments(p: argparse.ArgumentParser) -> None:
    """`plan --shards N [--parallel K]` on top of the plain plan's options."""
    p.add_argument(
        "--shards", type=int, metavar="N", help="per-shard --max-downloads/--api-rate for N shards"
    )
    p.add_argument(
        "--parallel", type=int, metavar="K", help="with --shards: shards running at once (N)"
    )
    p.add_argument(
        "--downloads-remaining",
        type=int,
        metavar="D",
        help="with --shards: quota to split (default: downloads_remaining from /v3/products)",
    )


async def plan_command(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    remaining = args.downloads_remaining
    if remaining is None:
        remaining = await downloads_remaining(args, env)
    budget = split_budget(
        shards=args.shards,
        parallel=args.parallel or args.shards,
        downloads_remaining=remaining,
        api_rate=args.api_rate or DEFAULT_API_RATE,
    )
    lines = [f"downloads remaining: {'unknown' if remaining is None else remaining}"]
    lines += budget.lines()
    if args.manifest == "-":
        raise UsageError("plan --shards needs the manifest as a file (shards read it by name)")
    if args.manifest:
        defaults = ManifestDefaults(asset_type=args.asset_type, product_type=args.product_type)
        path = Path(args.manifest)
        validate_manifest(path, defaults)
        sizes = [0] * args.shards
        for asset in _assets(path, defaults):
            sizes[shard_of(asset, args.shards)] += 1
        lines.append(f"assets per shard: {min(sizes)} to {max(sizes)} ({sum(sizes)} unique in all)")
        cap = budget.max_downloads
        if cap is not None and max(sizes) > cap:
            short = sum(max(0, n - cap) for n in sizes)
            lines.append(f"{short} assets will wait for quota (shards hold more than their share)")
    cap_flag = "" if budget.max_downloads is None else f" --max-downloads {budget.max_downloads}"
    rate_flag = "" if budget.api_rate is None else f" --api-rate {budget.api_rate:g}"
    lines.append(f"run each shard with: --shard I/{args.shards}{cap_flag}{rate_flag}")
    out.write("\n".join(lines) + "\n")
    return 0


async def downloads_remaining(args: argparse.Namespace, env: Mapping[str, str]) -> int | None:
    """Sum of `downloads_remaining` over the account's products (or the one named)."""
    async with contextlib.AsyncExitStack() as stack:
        if args.sandbox:
            from bulkgetty.sandbox import Sandbox

            sandbox = await stack.enter_async_context(Sandbox())
            env = {**env, **sandbox.credentials_env()}
        credentials = Credentials.from_env(env)
        api_url = args.api_url or api_url_from_env(env)
        rate = args.api_rate or DEFAULT_API_RATE
        watch = ConnectWatch(api_url, lambda line: print(f"bulkgetty: {line}", file=sys.stderr))
        policy = RetryPolicy(on_retry=watch)  # an unreachable API: named, given up in a minute
        client = await stack.enter_async_context(
            open_client(credentials, api_url, api_rate=rate, policy=policy)
        )
        products = await client.products()
    return _remaining(products, args.product_type)


def _remaining(products: list[ProductInfo], product_type: str | None) -> int | None:
    chosen = [p for p in products if product_type is None or p.type == product_type]
    if product_type is not None and not chosen:
        raise UsageError(f"the account has no {product_type} product")
    known = [p.downloads_remaining for p in chosen if p.downloads_remaining is not None]
    return sum(known) if known else None


# merge -------------------------------------------------------------------------------------


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="the shards' --out folders")
    p.add_argument("--manifest", required=True, type=Path, help="the manifest the shards ran")
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="for report.jsonl, summary.json"
    )
    p.add_argument("--product-type", metavar="T", help="as given to the shards' runs")
    p.add_argument(
        "--asset-type", choices=("image", "video"), default="image", help="as given to the runs"
    )


def merge_command(args: argparse.Namespace, out: TextIO) -> int:
    defaults = ManifestDefaults(asset_type=args.asset_type, product_type=args.product_type)
    validate_manifest(args.manifest, defaults)
    rows = _assets(args.manifest, defaults)
    result = merge_shards(
        args.dirs, args.manifest, rows, args.out, defaults=defaults_text(defaults)
    )
    for problem in result.problems:
        out.write(f"bulkgetty merge: {problem}\n")
    out.write(result.line() + "\n")
    if not result.problems:
        out.write(f"report: {args.out / 'report.jsonl'}; summary: {args.out / 'summary.json'}\n")
    return result.exit_code
