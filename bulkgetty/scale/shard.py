"""Job arrays: which rows a shard owns, what each shard may spend, and the journal's binding.

A row belongs to shard `sha256(Asset.key) mod N`. The hash is over the asset's identity (what
one licensed download buys), never Python's `hash()` (salted per process), so every process on
every machine agrees, and duplicate rows always land in the same shard: a duplicate can never be
bought twice by two shards.

Budget and rate are split so that no shard can overspend even if every shard runs at once:
each shard gets `downloads_remaining // N` downloads and `rate / K` queries per second when at
most K shards run at the same time (`bulkgetty plan --shards N --parallel K`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bulkgetty.assets import Asset
from bulkgetty.errors import UsageError

__all__ = (
    "ShardBudget",
    "ShardSpec",
    "file_digest",
    "parse_shard",
    "shard_of",
    "split_budget",
)

_SPEC = re.compile(r"^(\d+)/(\d+)$")
_AUTO = re.compile(r"^auto(?:/(\d+))?$")


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard `index` of `count` (0-based, as Slurm array ids and Kubernetes indexes are)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UsageError(f"--shard: the shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise UsageError(
                f"--shard: index {self.index} is outside 0..{self.count - 1} "
                f"(shards are numbered from 0)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, asset: Asset) -> bool:
        return shard_of(asset, self.count) == self.index

    def select(self, assets: Iterable[Asset]) -> Iterator[Asset]:
        """The rows of this shard, in manifest order."""
        return (a for a in assets if self.owns(a))


def shard_of(asset: Asset, count: int) -> int:
    """The shard that owns `asset`: the first 8 bytes of sha256(identity), mod `count`."""
    digest = hashlib.sha256(asset.key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str, env: Mapping[str, str] | None = None) -> ShardSpec:
    """`i/N`, or `auto` / `auto/N` from the job scheduler's environment.

    `auto` reads `SLURM_ARRAY_TASK_ID` (minus `SLURM_ARRAY_TASK_MIN`, so `--array=1-8` works
    too) with `SLURM_ARRAY_TASK_COUNT`, or Kubernetes' `JOB_COMPLETION_INDEX`, whose count the
    pod does not see: give it as `auto/N`. A count given as `auto/N` must match Slurm's.
    """
    env = os.environ if env is None else env
    text = text.strip()
    m = _SPEC.match(text)
    if m:
        return ShardSpec(int(m.group(1)), int(m.group(2)))
    m = _AUTO.match(text)
    if not m:
        raise UsageError(f"--shard must be I/N (e.g. 0/8), auto or auto/N, got {text!r}")
    given = int(m.group(1)) if m.group(1) else None
    if "SLURM_ARRAY_TASK_ID" in env:
        index = _env_int(env, "SLURM_ARRAY_TASK_ID") - _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT", given)
        if given is not None and given != count:
            raise UsageError(
                f"--shard auto/{given}: SLURM_ARRAY_TASK_COUNT says {count} shards; "
                "make the --array range and the shard count agree"
            )
        return ShardSpec(index, count)
    if "JOB_COMPLETION_INDEX" in env:
        if given is None:
            raise UsageError(
                "--shard auto: JOB_COMPLETION_INDEX is set but the shard count is not; "
                "use --shard auto/N with N = the Job's completions"
            )
        return ShardSpec(_env_int(env, "JOB_COMPLETION_INDEX"), given)
    raise UsageError(
        "--shard auto: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set; "
        "give the shard as I/N"
    )


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None:
        if default is None:
            raise UsageError(f"--shard auto: {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--shard auto: {name}={value!r} is not a whole number") from None


def file_digest(path: Path) -> str:
    """sha256 of a manifest's bytes: the journal refuses a shard rerun on another manifest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class ShardBudget:
    """What each shard may use so that all of them together stay within the account's."""

    shards: int
    parallel: int
    #: `--max-downloads` for every shard; None when the remaining quota is unknown.
    max_downloads: int | None
    #: `--api-rate` for every shard (queries per second); None when the rate is unlimited.
    api_rate: float | None
    #: Downloads the split leaves unused (remaining mod shards).
    unassigned: int

    def lines(self) -> list[str]:
        """Human summary for `bulkgetty plan --shards`."""
        out = [f"{self.shards} shards, at most {self.parallel} running at once"]
        if self.max_downloads is None:
            out.append("per shard: --max-downloads not needed (the remaining quota is unknown)")
        else:
            spare = f" ({self.unassigned} left unassigned)" if self.unassigned else ""
            out.append(
                f"per shard: --max-downloads {self.max_downloads}: "
                f"{self.max_downloads * self.shards} in all{spare}"
            )
        if self.api_rate is None:
            out.append("per shard: --api-rate not needed (unlimited)")
        else:
            out.append(
                f"per shard: --api-rate {self.api_rate:g}: "
                f"at most {self.api_rate * self.parallel:g} queries/s together"
            )
        return out


def split_budget(
    *, shards: int, parallel: int, downloads_remaining: int | None, api_rate: float | None
) -> ShardBudget:
    """Per-shard cap and rate whose sums never pass the account's remaining quota and rate.

    The cap is split over all N shards (a shard may run whenever, and reruns of a shard
    resume, so each needs its own share); the rate only over the K that run at the same time.
    Both round down: the sum of the parts is at most the whole.
    """
    if shards < 1:
        raise UsageError(f"--shards must be at least 1, got {shards}")
    if parallel < 1:
        raise UsageError(f"--parallel must be at least 1, got {parallel}")
    if downloads_remaining is not None and downloads_remaining < 0:
        raise UsageError(f"downloads remaining must be 0 or more, got {downloads_remaining}")
    if api_rate is not None and api_rate <= 0:
        raise UsageError(f"--api-rate must be more than 0, got {api_rate}")
    parallel = min(parallel, shards)
    cap = None if downloads_remaining is None else downloads_remaining // shards
    unassigned = 0 if downloads_remaining is None or cap is None else downloads_remaining % shards
    rate = None
    if api_rate is not None:
        # Round down to 1/1000 q/s so that K printed values never add up to more than the rate.
        rate = int(api_rate / parallel * 1000) / 1000
        if rate <= 0:
            raise UsageError(
                f"--api-rate {api_rate:g} split over {parallel} parallel shards is below "
                "0.001 queries/s; run fewer shards at once"
            )
    return ShardBudget(shards, parallel, cap, rate, unassigned)
