"""Servers the harness starts: nginx, the sandbox API process, the latency server.

Every server is a child process in its own session, bound to 127.0.0.1, and stopped by its
PID (then its process group) in `ServerSet.close`, also on Ctrl-C or an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

NGINX_CONF = """\
worker_processes 2;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    types {{ image/jpeg jpg; application/postscript eps; video/mp4 mp4; }}
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port}{ssl};
        {certificates}
        root {root};
        location / {{ {location} }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def wait_http(url: str, timeout: float = 10.0, ca_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=context):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} did not come up") from None
            time.sleep(0.05)


def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """First stdout line of a child that announces itself, or a clear error."""
    assert proc.stdout is not None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    if not line:
        raise RuntimeError(f"server {proc.args!r} exited before it was ready")
    return line.strip()


@dataclass
class ServerSet:
    """All servers of one scenario; `close` stops each by PID."""

    procs: list[tuple[str, subprocess.Popen[str]]] = field(default_factory=list)
    tmpdirs: list[Path] = field(default_factory=list)

    def spawn(self, name: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=kwargs.pop("stderr", subprocess.DEVNULL),
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            **kwargs,
        )
        self.procs.append((name, proc))
        return proc

    def start_nginx(
        self, root: Path, *, limit_rate: str | None = None, tls: Any | None = None
    ) -> str:
        """nginx serving `root`; `limit_rate` caps every connection (nginx syntax, e.g. 50m);
        `tls` (a `bulkgetty.sandbox.tls.TlsMaterial`): HTTPS with its certificate."""
        nginx = find_nginx()
        if nginx is None:
            raise FileNotFoundError("nginx")
        prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.tmpdirs.append(prefix)
        (prefix / "tmp").mkdir()
        port = free_port()
        conf = prefix / "nginx.conf"
        location = f"limit_rate {limit_rate};" if limit_rate else ""
        pem = tls.server_pem if tls is not None else None
        certificates = f"ssl_certificate {pem}; ssl_certificate_key {pem};" if pem else ""
        conf.write_text(
            NGINX_CONF.format(
                prefix=prefix,
                port=port,
                root=root.resolve(),
                location=location,
                ssl=" ssl" if pem else "",
                certificates=certificates,
            )
        )
        self.spawn("nginx", [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "e")])
        url = f"{'https' if pem else 'http'}://127.0.0.1:{port}"
        wait_http(url + "/", ca_file=tls.ca_file if tls is not None else None)
        return url

    def start_latency(self, root: Path, delay: float) -> str:
        cmd = [sys.executable, "-m", "benchmarks.latency_server", str(root), "--delay", str(delay)]
        proc = self.spawn("latency-server", cmd, cwd=REPO)
        return read_line(proc)

    def start_sandbox(
        self,
        *,
        file_bytes: int,
        delivery_base: str | None,
        qps: float | None = None,
        api_latency: float = 0.0,
        tls_dir: Path | None = None,
    ) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "benchmarks.sandbox_server", "--file-bytes", str(file_bytes)]
        if tls_dir is not None:
            cmd += ["--tls-dir", str(tls_dir)]
        if delivery_base:
            cmd += ["--delivery-base", delivery_base]
        if qps is not None:
            cmd += ["--qps", str(qps)]
        if api_latency:
            cmd += ["--api-latency", str(api_latency)]
        proc = self.spawn("sandbox", cmd, cwd=REPO)
        info: dict[str, Any] = json.loads(read_line(proc))
        return info

    def cpu_seconds(self) -> dict[str, float]:
        """User+sys CPU of each server process (and nginx's workers) from /proc."""
        out: dict[str, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for name, proc in self.procs:
            total = 0.0
            for pid in _tree(proc.pid):
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                total += (int(fields[11]) + int(fields[12])) / tick
            out[name] = total
        return out

    def close(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only its children
                proc.wait(timeout=5)
        self.procs.clear()
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self.tmpdirs.clear()


def _tree(pid: int) -> list[int]:
    """pid and its direct children (nginx master + workers)."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return pids + [int(c) for c in children]
