"""The benchmark harness: every scenario runs every available tool, interleaved by rep.

    python -m benchmarks [--scenario S ...] [--runs N] [--scale F] [--json PATH]

Measurement per run: wall from `time.monotonic()` around the child; the child's user+sys CPU
and peak RSS from `os.wait4(pid)` (the kernel's rusage of exactly that child and what it
reaped: what `/usr/bin/time` itself reads, without a wrapper process); server CPU from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .servers import REPO, ServerSet, find_nginx

RESULTS = REPO / "benchmarks" / "results"
KiB = 2**10
MiB = 2**20
STATE_DIR_PREFIX = ".bulkgetty"
RUN_TIMEOUT = 600.0


# --- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """bulkgetty's speed over `peer`'s in the same rep must be at least `ratio`."""

    peer: str
    ratio: float
    text: str
    #: The bulkgetty row measured against `peer` (a variant: e.g. 2 workers against 1).
    subject: str = "bulkgetty"


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    files: int
    file_bytes: int
    concurrency: int
    dest: str  # "disk" or "shm"
    scale_by: str = "files"  # what --scale shrinks: "files" or "bytes"
    asset_type: str = "image"
    delivery: str = "nginx"  # or "latency"
    delay: float = 0.0
    api_latency: float = 0.0
    qps: float | None = None
    durable: bool = False  # `sync` after every run counts in its wall time
    only_bulkgetty: bool = False
    segmented_peer: bool = False  # add aria2c -x4 -s4
    no_fsync_row: bool = False  # add a `bulkgetty --no-fsync` row
    targets: tuple[Target, ...] = ()
    max_rss_mib: float | None = None
    #: Target for bulkgetty's client CPU (user+sys, its processes) per file, in ms.
    cpu_per_file_ms: float | None = None
    #: nginx `limit_rate` per connection (a bandwidth cap that segmenting can beat).
    limit_rate: str | None = None
    #: Extra bulkgetty rows: (label, extra arguments).
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Manifest rows when more than `files`: the rest wait for `--max-downloads files`.
    rows: int = 0
    #: Seconds from start to the first finished file that the scenario must beat.
    first_file_within: float | None = None
    #: HTTPS for the API and delivery (nginx or the sandbox), one private CA every tool trusts.
    tls: bool = False

    def scaled(self, scale: float) -> tuple[int, int]:
        if self.scale_by == "files":
            return max(1, round(self.files * scale)), self.file_bytes
        return self.files, max(64 * KiB, round(self.file_bytes * scale))

    def scaled_rows(self, scale: float) -> int:
        return max(1, round(self.rows * scale)) if self.rows else 0

    @property
    def expect_exit(self) -> int:
        """A manifest larger than the cap leaves rows waiting: bulkgetty exits 3 by contract."""
        return 3 if self.rows else 0


#: `--workers N` rows (issue 16): the transfer stage in N processes beside the main one.
WORKER_ROWS = (
    ("bulkgetty --workers 1", ("--workers", "1")),
    ("bulkgetty --workers 2", ("--workers", "2")),
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "small",
            "2000 x 256 KiB from nginx, 16 streams, to disk (ext4, same fs as the repo); "
            "every tool timed with a `sync`",
            2000,
            256 * KiB,
            16,
            "disk",
            durable=True,
            no_fsync_row=True,
            variants=WORKER_ROWS[:1],
            cpu_per_file_ms=1.2,
            targets=(
                Target("curl -Z", 1.0, "small: >= 1.0x curl -Z (with sync)"),
                Target("aria2c -j16 -x1", 1.5, "small: >= 1.5x aria2c -j16"),
            ),
        ),
        Scenario(
            "small-shm",
            "2000 x 256 KiB from nginx, 16 streams, to tmpfs (/dev/shm)",
            2000,
            256 * KiB,
            16,
            "shm",
            variants=WORKER_ROWS,
            cpu_per_file_ms=1.2,
            targets=(
                Target("aria2c -j16 -x1", 1.0, "small to tmpfs: >= 1.0x aria2c"),
                Target(
                    "bulkgetty --workers 1",
                    1.3,
                    "small to tmpfs: 2 worker processes >= 1.3x 1 worker process",
                    subject="bulkgetty --workers 2",
                ),
            ),
        ),
        Scenario(
            "large",
            "4 x 512 MiB videos from nginx, 4 streams, to disk; every tool timed with a `sync`",
            4,
            512 * MiB,
            4,
            "disk",
            scale_by="bytes",
            asset_type="video",
            durable=True,
            segmented_peer=True,
            no_fsync_row=True,
            targets=(
                Target("curl -Z", 1.2, "large: >= 1.2x curl -Z (with sync)"),
                Target("aria2c -j4 -x4 -s4", 1.5, "large: >= 1.5x aria2c -x4"),
            ),
        ),
        Scenario(
            "latency-c16",
            "2000 x 256 KiB, 50 ms before every delivery response, 16 streams, to tmpfs",
            2000,
            256 * KiB,
            16,
            "shm",
            delivery="latency",
            delay=0.05,
            targets=(Target("curl -Z", 0.95, "latency: >= 0.95x curl -Z"),),
        ),
        Scenario(
            "latency-c64",
            "2000 x 256 KiB, 50 ms before every delivery response, 64 streams, to tmpfs",
            2000,
            256 * KiB,
            64,
            "shm",
            delivery="latency",
            delay=0.05,
            targets=(Target("curl -Z", 0.95, "latency: >= 0.95x curl -Z"),),
        ),
        Scenario(
            "latency-full",
            "latency-c16 plus 50 ms on every API request (token, POST): the full flow; "
            "peers get pre-acquired URLs as in latency-c16",
            2000,
            256 * KiB,
            16,
            "shm",
            delivery="latency",
            delay=0.05,
            api_latency=0.05,
            targets=(Target("curl -Z", 0.85, "full flow: >= 0.85x the latency figure"),),
        ),
        Scenario(
            "api-limited",
            "500 x 16 KiB, sandbox qps=10, bulkgetty --api-rate 10 (only bulkgetty: peers "
            "never touch the API)",
            500,
            16 * KiB,
            16,
            "shm",
            qps=10.0,
            only_bulkgetty=True,
        ),
        Scenario(
            "memory",
            "1 x 2 GiB video from nginx, 4 streams, to tmpfs: peak RSS of the client",
            1,
            2048 * MiB,
            4,
            "shm",
            scale_by="bytes",
            asset_type="video",
            max_rss_mib=80.0,
        ),
        Scenario(
            "capped",
            "2 x 1 GiB videos, nginx limit_rate 50 MB/s per connection, 2 streams, to tmpfs",
            2,
            1024 * MiB,
            2,
            "shm",
            scale_by="bytes",
            asset_type="video",
            limit_rate="50m",
            segmented_peer=True,
            variants=(("bulkgetty --segments 1", ("--segments", "1")),),
            targets=(
                Target("bulkgetty --segments 1", 3.0, "capped: segmented >= 3x unsegmented"),
                Target("aria2c -j2 -x4 -s4", 1.0, "capped: >= 1.0x aria2c -x4"),
            ),
        ),
        Scenario(
            "manifest-1m",
            "1,000,000-row manifest, --max-downloads 20000 (16 KiB images from nginx, to "
            "tmpfs): peak RSS and time to the first finished file",
            20000,
            16 * KiB,
            16,
            "shm",
            rows=1_000_000,
            only_bulkgetty=True,
            max_rss_mib=150.0,
            first_file_within=5.0,
        ),
    )
}
#: The HTTPS rows: `small` and `large` as they are, over TLS (nginx and the sandbox present
#: certificates of one private CA; bulkgetty, curl, aria2c, parfive and aiohttp-min are told
#: to trust it), so a run prints them beside the plain rows, with the plain ones' targets.
for _plain in ("small", "large"):
    _s = SCENARIOS[_plain]
    SCENARIOS[f"{_plain}-tls"] = replace(
        _s, name=f"{_plain}-tls", what=f"{_s.what}; over HTTPS", tls=True
    )
ALIASES = {
    "latency": ["latency-c16", "latency-c64"],
    "tls": ["small-tls", "large-tls"],
    "all": list(SCENARIOS),
}
DEFAULT = [n for n in SCENARIOS if n not in ("large", "large-tls")]


# --- tools ---------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a tool needs to build its command for one run."""

    scenario: Scenario
    files: int
    file_bytes: int
    work: Path
    urls: list[str]
    names: list[str]
    manifest: Path
    api_url: str
    env: dict[str, str]
    #: The private CA of an HTTPS scenario (tools that ignore SSL_CERT_FILE are given it).
    ca_file: str | None = None


@dataclass(frozen=True)
class Tool:
    label: str
    kind: str  # "bulkgetty", "peer", "reference"
    build: Callable[[Ctx, Path], list[str]]
    needs: str | None = None  # executable or module; None: always there


def _bulkgetty(*extra: str) -> Callable[[Ctx, Path], list[str]]:
    def build(ctx: Ctx, dest: Path) -> list[str]:
        s = ctx.scenario
        rate = str(s.qps) if s.qps else "100000"
        cap = ("--max-downloads", str(ctx.files)) if s.rows else ()
        return [
            sys.executable,
            "-m",
            "bulkgetty",
            "run",
            str(ctx.manifest),
            "--out",
            str(dest),
            "--api-url",
            ctx.api_url,
            "--api-rate",
            rate,
            "--concurrency",
            str(s.concurrency),
            "--asset-type",
            s.asset_type,
            "--quiet",
            *cap,
            *extra,
        ]

    return build


def _curl(ctx: Ctx, dest: Path) -> list[str]:
    cfg = ctx.work / f"curl-{dest.name}.cfg"
    with cfg.open("w", encoding="utf-8") as fh:
        for url, name in zip(ctx.urls, ctx.names, strict=True):
            fh.write(f'url = "{url}"\noutput = "{dest / name}"\n')
    return [
        "curl",
        "-s",
        "-S",
        "--fail",
        "--no-progress-meter",
        "-Z",
        "--parallel-max",
        str(ctx.scenario.concurrency),
        "-K",
        str(cfg),
    ]


def _aria2(segments: int) -> Callable[[Ctx, Path], list[str]]:
    def build(ctx: Ctx, dest: Path) -> list[str]:
        lst = ctx.work / "urls.txt"
        cmd = [
            "aria2c",
            "-q",
            "--file-allocation=none",
            "--auto-file-renaming=false",
            "--allow-overwrite=true",
            "--summary-interval=0",
            "--console-log-level=error",
            "-i",
            str(lst),
            "-j",
            str(ctx.scenario.concurrency),
            "-x",
            str(segments),
            "-d",
            str(dest),
        ]
        if segments > 1:
            cmd += ["-s", str(segments)]
        if ctx.ca_file:
            cmd.append(f"--ca-certificate={ctx.ca_file}")
        return cmd

    return build


def _python_script(script: str, *extra: str) -> Callable[[Ctx, Path], list[str]]:
    def build(ctx: Ctx, dest: Path) -> list[str]:
        c = str(ctx.scenario.concurrency)
        args = [arg.replace("{c}", c) for arg in extra]
        path = str(REPO / "benchmarks" / script)
        return [sys.executable, path, str(ctx.work / "urls.txt"), str(dest), *args]

    return build


def tools_for(s: Scenario) -> list[Tool]:
    c = s.concurrency
    tools = [Tool("bulkgetty", "bulkgetty", _bulkgetty())]
    if s.no_fsync_row:
        tools.append(Tool("bulkgetty --no-fsync", "bulkgetty", _bulkgetty("--no-fsync")))
    tools += [Tool(label, "bulkgetty", _bulkgetty(*args)) for label, args in s.variants]
    if s.only_bulkgetty:
        return tools
    tools += [
        Tool("curl -Z", "peer", _curl, needs="curl"),
        Tool(f"aria2c -j{c} -x1", "peer", _aria2(1), needs="aria2c"),
    ]
    if s.segmented_peer:
        tools.append(Tool(f"aria2c -j{c} -x4 -s4", "peer", _aria2(4), needs="aria2c"))
    tools += [
        Tool(
            "parfive",
            "peer",
            _python_script(
                "parfive_get.py", "--max-conn", "{c}", "--max-splits", "1", "--chunksize", "65536"
            ),
            needs="py:parfive",
        ),
        Tool("aiohttp-min", "reference", _python_script("aiohttp_min.py", "-c", "{c}")),
    ]
    return tools


def available(tool: Tool) -> str | None:
    """None if the tool can run, else why not."""
    if tool.needs is None:
        return None
    if tool.needs.startswith("py:"):
        module = tool.needs[3:]
        if importlib.util.find_spec(module) is None:
            return f"Python package {module} is not installed (benchmarks/install-peers.sh)"
        return None
    if shutil.which(tool.needs) is None:
        return f"{tool.needs} is not on PATH (benchmarks/install-peers.sh)"
    return None


# --- running one command -------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    rep: int
    ok: bool
    wall: float
    tool_wall: float
    sync_s: float
    cpu: float
    rss_mib: float
    exit_code: int
    files: int = 0
    bytes: int = 0
    verified: str = ""
    server_cpu: dict[str, float] = field(default_factory=dict)
    api_requests: int | None = None
    rejected_429: int | None = None
    #: Charged POSTs/s from the first to the last this run made (the limiter's own rate).
    post_rate: float | None = None
    #: Seconds from the start to the first finished (non-.part) file in the destination.
    first_file_s: float | None = None
    error: str = ""


_current: subprocess.Popen[bytes] | None = None


TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
RSS_SOURCE = (
    "/usr/bin/time -f '%U %S %M' (GNU time's wait4 of the tool alone)"
    if TIME_BIN
    else "os.wait4 of the child: an upper bound, the kernel carries the harness's own RSS "
    "across fork+exec into ru_maxrss"
)


class FirstFile(threading.Thread):
    """Polls a destination folder for its first finished file (any tool): time to first byte
    on disk as a user sees it, from outside the tool."""

    def __init__(self, dest: Path, t0: float) -> None:
        super().__init__(daemon=True)
        self.dest, self.t0 = dest, t0
        self.found: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with os.scandir(self.dest) as it:
                if any(e.is_file() and not e.name.endswith(".part") for e in it):
                    self.found = time.monotonic() - self.t0
                    return
            self.stop.wait(0.02)


def measure(
    cmd: Sequence[str], env: dict[str, str], log: Path, watch: Path | None = None
) -> tuple[int, float, float, float, float | None]:
    """(exit code, wall s, cpu s, peak RSS MiB, first file s) of one child, killed after
    RUN_TIMEOUT. `watch`: the destination to poll for the first finished file.

    With GNU time the tool is forked from `time`'s small process, so its ru_maxrss is its own;
    a direct child of this (large) Python process would inherit our RSS high-water mark.
    """
    global _current
    tfile = log.with_suffix(".time")
    full = [TIME_BIN, "-f", "%U %S %M", "-o", str(tfile), *cmd] if TIME_BIN else list(cmd)
    with log.open("wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        _current = proc
        watcher = FirstFile(watch, t0) if watch is not None else None
        if watcher is not None:
            watcher.start()
        timer = threading.Timer(RUN_TIMEOUT, _kill, (proc,))
        timer.start()
        try:
            _pid, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            _current = None
            if watcher is not None:
                watcher.stop.set()
                watcher.join()
        wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024
    if TIME_BIN:
        try:
            user, sys_, kib = tfile.read_text().strip().splitlines()[-1].split()
            cpu, rss = float(user) + float(sys_), int(kib) / 1024
        except (OSError, ValueError, IndexError):
            pass  # killed before time could write: keep wait4's figures
    return proc.returncode, wall, cpu, rss, watcher.found if watcher is not None else None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def timed_sync() -> float:
    t0 = time.monotonic()
    os.sync()
    return time.monotonic() - t0


def _post_rate(times: list[float]) -> float | None:
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def sandbox_control(api_url: str, ca_file: str | None, action: str) -> None:
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    req = urllib.request.Request(f"{api_url}/__sandbox__/{action}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10, context=context) as resp:
        resp.read()


def sandbox_state(api_url: str, ca_file: str | None = None) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    url = api_url + "/__sandbox__/state"
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


# --- verification --------------------------------------------------------------------------


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def verify(dest: Path, files: int, file_bytes: int, expected: set[str]) -> tuple[int, int, str]:
    """(count, total bytes, problem or "") for one destination: every file, a hashed sample."""
    found: list[Path] = []
    for root, dirs, names in os.walk(dest):
        dirs[:] = [d for d in dirs if not d.startswith(STATE_DIR_PREFIX)]
        found += [Path(root) / n for n in names]
    found.sort()
    total = sum(p.stat().st_size for p in found)
    if len(found) != files:
        return len(found), total, f"{len(found)} files, expected {files}"
    if total != files * file_bytes:
        return len(found), total, f"{total} bytes, expected {files * file_bytes}"
    k = min(len(found), 8 if file_bytes < 64 * MiB else 2)
    step = max(1, len(found) // k)
    sample = {found[i] for i in range(0, len(found), step)} | {found[-1]}
    seen: set[str] = set()
    for path in sorted(sample):
        digest = sha256_path(path)
        if digest not in expected or digest in seen:
            return len(found), total, f"{path.name}: sha256 matches no asset (or a duplicate)"
        seen.add(digest)
    return len(found), total, ""


# --- URLs for the peers --------------------------------------------------------------------


async def acquire_urls(
    api_url: str, env: dict[str, str], assets: list[tuple[str, str]]
) -> list[str]:
    """Buy every asset once through bulkgetty's own API client (the sandbox's quota is free)."""
    from bulkgetty.assets import Asset
    from bulkgetty.getty.api import GettyClient
    from bulkgetty.getty.auth import Credentials, TokenProvider
    from bulkgetty.getty.http import Timeouts, new_session
    from bulkgetty.getty.ratelimit import RateLimiter
    from bulkgetty.getty.retry import RetryPolicy

    limiter = RateLimiter(None)
    policy = RetryPolicy()
    async with new_session(Timeouts()) as session:
        tokens = TokenProvider(
            session, api_url, Credentials.from_env(env), limiter=limiter, policy=policy
        )
        client = GettyClient(session, api_url, tokens, limiter=limiter, policy=policy)
        gate = asyncio.Semaphore(32)

        async def one(asset_type: str, asset_id: str) -> str:
            async with gate:
                grant = await client.download(Asset(asset_id, asset_type))  # type: ignore[arg-type]
                return grant.uri

        return list(await asyncio.gather(*(one(t, i) for t, i in assets)))


# --- one scenario --------------------------------------------------------------------------


@contextlib.contextmanager
def trusting(ca_file: str | None) -> Iterator[None]:
    """SSL_CERT_FILE for this process while the block runs: bulkgetty's own client (used to
    buy the peers' URLs) reads it when it opens its session."""
    if ca_file is None:
        yield
        return
    old = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = ca_file
    try:
        yield
    finally:
        if old is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = old


@dataclass
class ScenarioResult:
    scenario: str
    what: str
    files: int
    file_bytes: int
    concurrency: int
    dest: str
    delivery: str
    notes: list[str]
    tools: list[str]
    skipped: dict[str, str]
    runs: list[Run]
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_scenario(
    s: Scenario,
    *,
    runs: int,
    scale: float,
    shm_root: Path,
    disk_root: Path,
    only: set[str] | None,
) -> ScenarioResult:
    from bulkgetty.sandbox import Sandbox, write_corpus
    from bulkgetty.sandbox.tls import make_tls

    from .sandbox_server import sandbox_config

    files, file_bytes = s.scaled(scale)
    say(f"\n== {s.name}: {s.what}")
    say(f"   {files} x {file_bytes / MiB:.3g} MiB, concurrency {s.concurrency}, {runs} reps")
    notes: list[str] = []
    tools: list[Tool] = []
    skipped: dict[str, str] = {}
    for tool in tools_for(s):
        if only is not None and tool.label.split()[0] not in only and tool.label not in only:
            continue
        why = available(tool)
        if why:
            skipped[tool.label] = why
            say(f"   peer missing: {tool.label}: {why}; skipped")
        else:
            tools.append(tool)

    ids = [str(1_000_000 + i) for i in range(files)]
    assets = [(s.asset_type, i) for i in ids]
    ext = "mp4" if s.asset_type == "video" else "jpg"
    names = [f"{i}.{ext}" for i in ids]
    config = sandbox_config(file_bytes=file_bytes)
    reference = Sandbox(config)
    expected = {reference.expected(t, i).sha256 for t, i in assets}

    work = Path(tempfile.mkdtemp(prefix=f"{s.name}-", dir=shm_root))
    servers = ServerSet()
    result_runs: list[Run] = []
    tls = make_tls() if s.tls else None
    ca_file = str(tls.ca_file) if tls is not None else None
    try:
        corpus = work / "corpus"
        write_corpus(corpus, assets, config)
        for d in [work, *corpus.rglob("*")]:
            if d.is_dir():
                d.chmod(0o755)
        delivery_base: str | None = None
        delivery = "nginx"
        if s.delivery == "latency":
            delivery_base = servers.start_latency(corpus, s.delay)
            delivery = f"aiohttp latency server ({s.delay * 1000:.0f} ms)"
        elif find_nginx() is not None:
            delivery_base = servers.start_nginx(corpus, limit_rate=s.limit_rate, tls=tls)
            if s.limit_rate:
                delivery = f"nginx, limit_rate {s.limit_rate} per connection"
        else:
            delivery = "sandbox delivery origin (nginx missing)"
            notes.append("nginx is missing: delivery is the sandbox's own Python origin")
            say("   nginx missing: delivery falls back to the sandbox's own origin (slower)")
        info = servers.start_sandbox(
            file_bytes=file_bytes,
            delivery_base=delivery_base,
            qps=s.qps,
            api_latency=s.api_latency,
            tls_dir=tls.folder if tls is not None else None,
        )
        api_url: str = info["api_url"]
        env = {**os.environ, **info["env"]}  # with TLS, the sandbox's env has SSL_CERT_FILE
        if ca_file is not None:
            env["CURL_CA_BUNDLE"] = ca_file
            delivery += ", HTTPS (one private CA, trusted by every tool)"
        urls: list[str] = []
        if any(t.kind != "bulkgetty" for t in tools):
            with trusting(ca_file):
                urls = asyncio.run(acquire_urls(api_url, info["env"], assets))
        (work / "urls.txt").write_text("".join(u + "\n" for u in urls))
        manifest = work / "manifest.txt"
        with manifest.open("w", encoding="utf-8") as fh:
            fh.writelines(i + "\n" for i in ids)
            extra = s.scaled_rows(scale) - len(ids)  # ids no corpus has: never bought (cap)
            fh.writelines(f"{5_000_000 + j}\n" for j in range(max(0, extra)))
        ctx = Ctx(s, files, file_bytes, work, urls, names, manifest, api_url, env, ca_file)
        dest_root = disk_root if s.dest == "disk" else shm_root
        say(f"   delivery: {delivery}; destination: {s.dest} ({dest_root})")

        for rep in range(1, runs + 1):
            for tool in tools:
                run = one_run(ctx, tool, rep, dest_root, expected, servers)
                result_runs.append(run)
                flag = "ok" if run.ok else f"FAILED: {run.error}"
                say(
                    f"   rep {rep} {tool.label:<22} {run.wall:8.3f} s  cpu {run.cpu:6.2f} s  "
                    f"rss {run.rss_mib:6.1f} MiB  {flag}"
                )
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
        if tls is not None:
            tls.remove()

    res = ScenarioResult(
        s.name,
        s.what,
        files,
        file_bytes,
        s.concurrency,
        s.dest,
        delivery,
        notes,
        [t.label for t in tools],
        skipped,
        result_runs,
    )
    summarize(res, s, tools)
    return res


def one_run(
    ctx: Ctx, tool: Tool, rep: int, dest_root: Path, expected: set[str], servers: ServerSet
) -> Run:
    s = ctx.scenario
    safe = "".join(ch if ch.isalnum() else "-" for ch in tool.label)
    dest = dest_root / f"{s.name}-{safe}-{rep}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cmd = tool.build(ctx, dest)
    if s.dest == "disk":
        os.sync()  # start every run with no writeback left by the one before
    state0 = None
    if tool.kind == "bulkgetty":
        # Every rep buys from an account with no download history, as the first does: the
        # check before spending reads the history, which would grow by the run's files a rep.
        sandbox_control(ctx.api_url, ctx.ca_file, "clear_history")
        state0 = sandbox_state(ctx.api_url, ctx.ca_file)
    cpu0 = servers.cpu_seconds()
    log = ctx.work / f"{safe}-{rep}.log"
    watch = dest if s.first_file_within is not None else None
    code, wall, cpu, rss, first = measure(cmd, ctx.env, log, watch)
    sync_s = timed_sync() if s.durable else 0.0
    cpu1 = servers.cpu_seconds()
    run = Run(tool.label, rep, False, wall + sync_s, wall, sync_s, cpu, rss, code)
    run.first_file_s = first
    run.server_cpu = {k: round(cpu1.get(k, 0.0) - v, 3) for k, v in cpu0.items()}
    if state0 is not None:
        state1 = sandbox_state(ctx.api_url, ctx.ca_file)
        run.api_requests = int(state1["api_requests"]) - int(state0["api_requests"])
        run.rejected_429 = int(state1["rejected_429"]) - int(state0["rejected_429"])
        run.post_rate = _post_rate(state1["spend_times"][len(state0["spend_times"]) :])
    run.files, run.bytes, problem = verify(dest, ctx.files, ctx.file_bytes, expected)
    if code != (s.expect_exit if tool.kind == "bulkgetty" else 0):
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        run.error = f"exit {code}: " + " | ".join(tail)
    elif problem:
        run.error = problem
    else:
        run.ok = True
        run.verified = "count, bytes, sha256 sample"
    shutil.rmtree(dest, ignore_errors=True)
    return run


# --- summary -------------------------------------------------------------------------------


def summarize(res: ScenarioResult, s: Scenario, tools: list[Tool]) -> None:
    kinds = {t.label: t.kind for t in tools}
    by_rep: dict[int, dict[str, Run]] = {}
    for r in res.runs:
        if r.ok:
            by_rep.setdefault(r.rep, {})[r.tool] = r
    for label in res.tools:
        mine = [r for r in res.runs if r.tool == label]
        good = [r for r in mine if r.ok]
        row: dict[str, Any] = {"runs": len(mine), "ok": len(good), "kind": kinds[label]}
        if good:
            walls = [r.wall for r in good]
            wall = statistics.median(walls)
            row |= {
                "wall_median": wall,
                "wall_min": min(walls),
                "wall_max": max(walls),
                "files_per_s": res.files / wall,
                "mb_per_s": res.files * res.file_bytes / wall / 1e6,
                "cpu_median": statistics.median(r.cpu for r in good),
                "rss_mib_max": max(r.rss_mib for r in good),
                "sync_median": statistics.median(r.sync_s for r in good),
            }
            ratios = []
            for rep_runs in by_rep.values():
                peers = [r.wall for t, r in rep_runs.items() if kinds[t] == "peer"]
                if peers and label in rep_runs:
                    ratios.append(min(peers) / rep_runs[label].wall)
            row["x_best_peer"] = statistics.median(ratios) if ratios else None
            r429 = [r.rejected_429 for r in good if r.rejected_429 is not None]
            reqs = [r.api_requests for r in good if r.api_requests is not None]
            if r429 and reqs:
                row["rejected_429"] = sum(r429)
                row["api_requests"] = sum(reqs)
        res.summary[label] = row

    for t in s.targets:
        ratios = []
        for rep_runs in by_rep.values():
            if t.subject in rep_runs and t.peer in rep_runs:
                ratios.append(rep_runs[t.peer].wall / rep_runs[t.subject].wall)
        value = statistics.median(ratios) if ratios else None
        res.targets.append(
            {
                "target": t.text,
                "measured": value,
                "met": None if value is None else value >= t.ratio,
                "how": f"median over reps of ({t.peer} wall / {t.subject} wall)",
            }
        )
    bg = res.summary.get("bulkgetty", {})
    if s.qps and bg.get("ok"):
        rate = bg["files_per_s"]
        share = bg.get("rejected_429", 0) / max(1, bg.get("api_requests", 1))
        posts = [r.post_rate for r in res.runs if r.ok and r.tool == "bulkgetty" and r.post_rate]
        post_rate = round(statistics.median(posts), 2) if posts else None
        res.targets.append(
            {
                "target": f"api-limited: >= 0.99 x {s.qps:g} assets/s over the wall, no 429",
                "measured": {"assets_per_s": rate, "share_429": share},
                "met": rate >= 0.99 * s.qps and not bg.get("rejected_429"),
                "how": "files / median wall; 429s and API requests from /__sandbox__/state",
            }
        )
        res.targets.append(
            {
                "target": f"api-limited: POSTs >= 0.99 x {s.qps:g}/s, first to last, no 429",
                "measured": {"posts_per_s": post_rate, "rejected_429": bg.get("rejected_429")},
                "met": post_rate is not None
                and post_rate >= 0.99 * s.qps
                and not bg.get("rejected_429"),
                "how": "median over reps of (charged POSTs - 1) / (last - first), sandbox clock",
            }
        )
    firsts = [r.first_file_s for r in res.runs if r.ok and r.tool == "bulkgetty"]
    if s.first_file_within is not None and firsts:
        known = [f for f in firsts if f is not None]
        first = statistics.median(known) if len(known) == len(firsts) else None
        res.targets.append(
            {
                "target": f"first finished file within {s.first_file_within:g} s",
                "measured": first,
                "met": first is not None and first <= s.first_file_within,
                "how": "median over reps of the time to the first non-.part file in the folder",
            }
        )
    if s.cpu_per_file_ms is not None and bg.get("ok"):
        ms = 1000 * bg["cpu_median"] / res.files
        res.targets.append(
            {
                "target": f"per-file CPU <= {s.cpu_per_file_ms:g} ms (client, all its processes)",
                "measured": round(ms, 3),
                "met": ms <= s.cpu_per_file_ms,
                "how": "median client user+sys CPU s (interpreter start included) / files",
            }
        )
    if s.max_rss_mib is not None and bg.get("ok"):
        rss = bg["rss_mib_max"]
        res.targets.append(
            {
                "target": f"memory: peak RSS <= {s.max_rss_mib:g} MiB",
                "measured": rss,
                "met": rss <= s.max_rss_mib,
                "how": "max ru_maxrss over reps (os.wait4)",
            }
        )


def table(res: ScenarioResult) -> str:
    head = "| tool | wall s (min..max) | files/s | MB/s | CPU s | peak RSS MiB | x best peer | ok |"
    lines = [f"### {res.scenario}: {res.what}", "", head, "|---|---|---|---|---|---|---|---|"]
    for label in res.tools:
        row = res.summary[label]
        ok = f"{row['ok']}/{row['runs']}"
        if not row["ok"]:
            lines.append(f"| {label} | failed | | | | | | {ok} |")
            continue
        x = row["x_best_peer"]
        extra = ""
        if "rejected_429" in row:
            extra = f" (429s: {row['rejected_429']} of {row['api_requests']} API requests)"
        lines.append(
            f"| {label}{extra} | {row['wall_median']:.2f} ({row['wall_min']:.2f}.."
            f"{row['wall_max']:.2f}) | {row['files_per_s']:.0f} | {row['mb_per_s']:.0f} | "
            f"{row['cpu_median']:.2f} | {row['rss_mib_max']:.1f} | "
            f"{'' if x is None else f'{x:.2f}'} | {ok} |"
        )
    for t in res.targets:
        m = t["measured"]
        if isinstance(m, dict):
            shown = ", ".join(f"{k}={v:.3g}" for k, v in m.items())
        else:
            shown = "n/a" if m is None else f"{m:.2f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"\ntarget {t['target']}: {shown} -> {verdict}")
    for label, why in res.skipped.items():
        lines.append(f"\nskipped {label}: {why}")
    for note in res.notes:
        lines.append(f"\nnote: {note}")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release()}
    probes = {
        "curl": ["curl", "--version"],
        "aria2c": ["aria2c", "--version"],
        "nginx": [find_nginx() or "nginx", "-v"],
    }
    for name, cmd in probes.items():
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
            out[name] = (p.stdout or p.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out[name] = "missing"
    for mod in ("aiohttp", "parfive", "bulkgetty"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except (ImportError, AttributeError):
            out[mod] = "missing"
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = ", ".join([*SCENARIOS, *ALIASES])
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="bulkgetty against curl -Z, aria2c, parfive and aiohttp-min, interleaved.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        metavar="S",
        help=f"one of: {names} (repeatable; default: all but large)",
    )
    p.add_argument("--runs", type=int, default=3, help="reps per tool (default 3)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink files/bytes (default 1.0)")
    p.add_argument("--tools", help="comma list of tool names to keep, e.g. bulkgetty,aiohttp-min")
    p.add_argument("--json", type=Path, metavar="PATH", help="results JSON (default: results/)")
    p.add_argument("--shm-dir", type=Path, default=Path("/dev/shm"), help="tmpfs root")
    p.add_argument(
        "--disk-dir", type=Path, default=RESULTS, help="disk destination root (default: results/)"
    )
    args = p.parse_args(argv)
    chosen: list[str] = []
    for name in args.scenario or DEFAULT:
        for n in ALIASES.get(name, [name]):
            if n not in SCENARIOS:
                p.error(f"unknown scenario {n!r}; choose from {names}")
            if n not in chosen:
                chosen.append(n)
    args.scenarios = chosen
    if args.runs < 1 or args.scale <= 0:
        p.error("--runs must be >= 1 and --scale > 0")
    return args


def precompile() -> None:
    """Byte-compile bulkgetty and the harness's server modules once, as `pip install` would.

    An editable install under PYTHONDONTWRITEBYTECODE (set on our machines) would otherwise
    compile every module again at each start (~0.1 s a run), which no installed tool pays.
    """
    for folder in (REPO / "bulkgetty", REPO / "benchmarks"):
        compileall.compile_dir(folder, quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = {t.strip() for t in args.tools.split(",")} if args.tools else None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    shm_base = args.shm_dir if args.shm_dir.is_dir() else Path(tempfile.gettempdir())
    shm_root = Path(tempfile.mkdtemp(prefix="bulkgetty-bench-", dir=shm_base))
    args.disk_dir.mkdir(parents=True, exist_ok=True)
    disk_root = Path(tempfile.mkdtemp(prefix="scratch-", dir=args.disk_dir))
    shm_root.chmod(0o755)
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {
        "date": stamp,
        "command": command,
        "versions": versions(),
        "cpus": os.cpu_count(),
        "cpu_rss_source": RSS_SOURCE,
        "wall": "time.monotonic() around the tool (plus a timed sync in durable scenarios)",
    }
    results: list[ScenarioResult] = []
    interrupted = False
    precompile()
    try:
        for name in args.scenarios:
            res = run_scenario(
                SCENARIOS[name],
                runs=args.runs,
                scale=args.scale,
                shm_root=shm_root,
                disk_root=disk_root,
                only=only,
            )
            results.append(res)
            say("\n" + table(res))
    except KeyboardInterrupt:
        interrupted = True
        if _current is not None:
            _kill(_current)
        say("\ninterrupted: servers stopped; partial results follow")
    finally:
        shutil.rmtree(shm_root, ignore_errors=True)
        shutil.rmtree(disk_root, ignore_errors=True)

    out = args.json or RESULTS / f"bench-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "scenarios": [asdict(r) for r in results]}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    say(f"\nresults: {out}")
    if results:
        say("\n" + "\n\n".join(table(r) for r in results))
    failed = [r for res in results for r in res.runs if not r.ok]
    if interrupted:
        return 130
    return 1 if failed else 0
