"""CPU per file of bulkgetty's full flow on many small files, A/B against other source trees.

    python -m benchmarks.cpu_probe --files 1000 --runs 3
    python -m benchmarks.cpu_probe --files 1000 --runs 5 --src /tmp/base --src .
    python -m benchmarks.cpu_probe --files 1000 --runs 1 --wrap 'strace -f -c -o /tmp/st'
    python -m benchmarks.cpu_probe --files 1000 --runs 1 --wrap 'python -m cProfile -o /tmp/p'

Why its own probe: on a shared 2-core machine wall times move with the neighbours' load, but
the CPU seconds (user+sys) the client spends per file do not, and they are what issue 16
asks to cut. One nginx and one sandbox API process (as the harness starts them) serve every
run; each run is `python -m bulkgetty run` (token, one POST per asset, one GET per file,
write, fsync, rename, journal) into a fresh folder on tmpfs (`--disk`: under
benchmarks/results/). Runs alternate between the `--src` trees (PYTHONPATH, so each tree's
own `bulkgetty` is imported; byte-compiled first), so slow spells hit every tree alike.

Printed per run: client user+sys CPU s, CPU ms per file (the issue's figure: it includes the
interpreter's start), and the marginal ms per file, (CPU of N files - CPU of 1 file) /
(N - 1), which leaves the start out, the kernel's share (sys CPU s) and the API emulator's
CPU per file (the sandbox process bulkgetty buys from; it shares the 2 cores). The medians
per tree close the output.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .servers import REPO, ServerSet

KiB = 2**10


@dataclass
class Tree:
    """One source tree under test and its measurements."""

    src: Path
    base_cpu: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    #: Voluntary context switches per file (thread hand-offs: futex waits, mostly).
    switches: list[float] = field(default_factory=list)


def _process_cpu(pid: int) -> float:
    """user+sys CPU seconds of a running process (the API emulator's share of a run)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    tree: Tree, manifest: Path, dest_root: Path, env: dict[str, str], args: argparse.Namespace
) -> tuple[float, float, int, int, float]:
    """(user+sys CPU s, wall s, exit code, voluntary context switches, sys CPU s) of one
    bulkgetty run into a fresh folder."""
    dest = Path(tempfile.mkdtemp(prefix="probe-", dir=dest_root))
    cmd = [
        sys.executable,
        "-m",
        "bulkgetty",
        "run",
        str(manifest),
        "--out",
        str(dest),
        "--api-url",
        env["PROBE_API_URL"],
        "--api-rate",
        "100000",
        "--concurrency",
        str(args.concurrency),
        "--asset-type",
        "image",
        "--quiet",
        *args.extra,
    ]
    if args.wrap:
        files = len(manifest.read_text().split())
        wrap = shlex.split(args.wrap.replace("{files}", str(files)))
        cmd = wrap + (cmd[1:] if wrap[0] in ("python", "python3", sys.executable) else cmd)
        if wrap[0] in ("python", "python3"):
            cmd[0] = sys.executable
    child_env = {**env, "PYTHONPATH": str(tree.src)}
    if args.disk:
        os.sync()  # no writeback of the run before lands in this one (as the harness does)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=child_env, cwd=tree.src, stdin=subprocess.DEVNULL)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    shutil.rmtree(dest, ignore_errors=True)
    code = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime, wall, code, ru.ru_nvcsw, ru.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--kib", type=int, default=256, help="file size in KiB (default 256)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--src", action="append", type=Path, help="source tree (repeatable)")
    p.add_argument("--disk", action="store_true", help="write under benchmarks/results/")
    p.add_argument("--tls", action="store_true", help="HTTPS for nginx and the API")
    p.add_argument(
        "--wrap", default="", help="command prefix, e.g. 'strace -f -c -o F{files}' ({files}: N)"
    )
    p.add_argument("extra", nargs="*", help="more bulkgetty run options (after --)")
    args = p.parse_args(argv)
    trees = [Tree(s.resolve()) for s in (args.src or [REPO])]
    for tree in trees:
        compileall.compile_dir(tree.src / "bulkgetty", quiet=1)

    from bulkgetty.sandbox import write_corpus
    from bulkgetty.sandbox.tls import make_tls

    work = Path(tempfile.mkdtemp(prefix="cpu-probe-", dir="/dev/shm"))
    dest_root = work
    if args.disk:
        (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
        dest_root = Path(tempfile.mkdtemp(prefix="probe-", dir=REPO / "benchmarks" / "results"))
    servers = ServerSet()
    tls = make_tls() if args.tls else None
    try:
        from .sandbox_server import sandbox_config

        ids = [str(1_000_000 + i) for i in range(args.files)]
        corpus = work / "corpus"
        config = sandbox_config(file_bytes=args.kib * KiB)
        write_corpus(corpus, [("image", i) for i in ids], config)
        for d in [work, *corpus.rglob("*")]:
            if d.is_dir():
                d.chmod(0o755)
        base = servers.start_nginx(corpus, tls=tls)
        manifest, one = work / "manifest.txt", work / "one.txt"
        manifest.write_text("".join(i + "\n" for i in ids))
        one.write_text(ids[0] + "\n")
        asyncio.set_event_loop(None)
        for rep in range(1, args.runs + 1):
            for tree in trees:
                # A fresh API per run: the relicensing check before spending reads the
                # account's download history, which would grow with every run.
                api = ServerSet()
                try:
                    info = api.start_sandbox(
                        file_bytes=args.kib * KiB,
                        delivery_base=base,
                        tls_dir=tls.folder if tls is not None else None,
                    )
                    env = {**os.environ, **info["env"], "PROBE_API_URL": info["api_url"]}
                    base_cpu, _w, code0, sw0, _s = run_once(tree, one, dest_root, env, args)
                    api_cpu0 = _process_cpu(api.procs[0][1].pid)
                    cpu, wall, code, sw, sys_s = run_once(tree, manifest, dest_root, env, args)
                    api_ms = (_process_cpu(api.procs[0][1].pid) - api_cpu0) / args.files * 1000
                finally:
                    api.close()
                if code or code0:
                    print(f"{tree.src}: exit {code0}/{code}", file=sys.stderr)
                    return 1
                tree.base_cpu.append(base_cpu)
                tree.cpu.append(cpu)
                tree.wall.append(wall)
                tree.switches.append((sw - sw0) / (args.files - 1))
                marginal = (cpu - base_cpu) / (args.files - 1) * 1000
                per_file = cpu / args.files * 1000
                print(
                    f"rep {rep} {tree.src}: cpu {cpu:.2f} s ({per_file:.2f} ms/file, marginal"
                    f" {marginal:.2f} ms/file; 1 file {base_cpu:.2f} s; kernel {sys_s:.2f} s),"
                    f" wall {wall:.2f} s,"
                    f" {tree.switches[-1]:.1f} voluntary switches/file; API emulator"
                    f" {api_ms:.2f} ms/file",
                    flush=True,
                )
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
        if args.disk:
            shutil.rmtree(dest_root, ignore_errors=True)
        if tls is not None:
            tls.remove()
    n = args.files
    print(f"\n{n} x {args.kib} KiB, {args.concurrency} streams, {args.runs} runs, median (min):")
    for tree in trees:
        cpu, base_cpu = statistics.median(tree.cpu), statistics.median(tree.base_cpu)
        marginal = (cpu - base_cpu) / (n - 1) * 1000
        least = (min(tree.cpu) - min(tree.base_cpu)) / (n - 1) * 1000
        print(
            f"  {tree.src}: {cpu / n * 1000:.2f} ({min(tree.cpu) / n * 1000:.2f}) ms/file,"
            f" marginal {marginal:.2f} ({least:.2f}) ms/file, wall"
            f" {statistics.median(tree.wall):.2f} s, {statistics.median(tree.switches):.1f}"
            " voluntary switches/file"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
