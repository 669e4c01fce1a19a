"""HTTPS in the sandbox, and the `bulkgetty sandbox` command as a user runs it.

The TLS mode is checked in process (a real TLS handshake against the private CA) and through
the CLI: `bulkgetty sandbox --tls` prints the exports, a run with them downloads over HTTPS,
a run without `SSL_CERT_FILE` stops in one line before spending, a port in use is one line,
and Ctrl-C talks about the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bulkgetty.sandbox import Faults, Sandbox, SandboxConfig, SandboxThread
from tests.harness import REPO, clean_env, cli, report, sha256, write_ids

#: Longest wait for `bulkgetty sandbox` to print its banner.
BANNER_TIMEOUT = 20.0


async def test_tls_sandbox_serves_api_and_delivery_over_https_with_its_ca() -> None:
    async with Sandbox(tls=True) as sb:
        assert sb.api_url.startswith("https://127.0.0.1:")
        assert all(url.startswith("https://") for url in sb.delivery_urls)
        assert sb.ca_file is not None and sb.credentials_env()["SSL_CERT_FILE"] == sb.ca_file
        trusted = ssl.create_default_context(cafile=sb.ca_file)
        async with aiohttp.ClientSession() as session:
            form = {
                "grant_type": "client_credentials",
                "client_id": sb.config.api_key,
                "client_secret": sb.config.api_secret,
            }
            async with session.post(f"{sb.api_url}/oauth2/token", data=form, ssl=trusted) as r:
                assert r.status == 200
                token = (await r.json())["access_token"]
            headers = {"Api-Key": sb.config.api_key, "Authorization": f"Bearer {token}"}
            url = f"{sb.api_url}/v3/downloads/images/9810001?auto_download=false"
            async with session.post(url, headers=headers, ssl=trusted) as r:
                uri = (await r.json())["uri"]
            assert uri.startswith(sb.delivery_urls[0] + "/")
            async with session.get(uri, ssl=trusted) as r:
                body = await r.read()
            assert len(body) == sb.expected("image", "9810001").length


async def test_tls_sandbox_certificate_is_refused_without_its_ca() -> None:
    """The certificate really is verified: a client that does not trust the CA fails."""
    async with Sandbox(tls=True) as sb:
        untrusted = ssl.create_default_context(cafile=None)
        untrusted.load_verify_locations(cadata=_other_ca_pem())
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"{sb.api_url}/v3/products", ssl=untrusted)


def _other_ca_pem() -> str:
    import trustme

    return trustme.CA().cert_pem.bytes().decode()


async def test_tls_sandbox_removes_its_ca_file_at_close() -> None:
    sb = Sandbox(tls=True)
    await sb.start()
    ca_file = sb.ca_file
    assert ca_file is not None and Path(ca_file).is_file()
    await sb.close()
    assert not Path(ca_file).exists()


def test_run_over_https_downloads_whole_files(tmp_path: Path) -> None:
    with SandboxThread(SandboxConfig(image_bytes=(20_000, 60_000)), tls=True) as sb:
        ids = ["9810001", "9810002", "9810003"]
        out = tmp_path / "o"
        done = cli(
            "run",
            str(write_ids(tmp_path / "ids.txt", ids)),
            "--out",
            str(out),
            env=clean_env(sb.credentials_env()),
        )
        assert done.returncode == 0, done.stderr
        for row in report(out):
            assert sha256(Path(row["path"])) == sb.expected("image", row["id"]).sha256
        assert all(r.origin.startswith("https://") for r in sb.stats.delivery_requests)


def test_untrusted_certificate_is_one_line_naming_the_host_exit_2_nothing_spent(
    tmp_path: Path,
) -> None:
    with SandboxThread(tls=True) as sb:
        env = clean_env(sb.credentials_env())
        del env["SSL_CERT_FILE"]
        manifest = write_ids(tmp_path / "ids.txt", ["9810001", "9810002"])
        done = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=env)
        host = sb.api_url.removeprefix("https://")
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"TLS certificate of {host} is not trusted" in lines[0]
        assert "SSL_CERT_FILE" in lines[0]
        assert sb.ledger == [] and sum(sb.stats.post_requests.values()) == 0


# --- the `bulkgetty sandbox` command ---


@contextlib.contextmanager
def sandbox_cli(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], str]]:
    """`bulkgetty sandbox ARGS` running; yields it, the exports it printed and its banner."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkgetty", "sandbox", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=clean_env(),
    )
    try:
        banner = _read_banner(proc)
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in banner.splitlines()
            if line.strip().startswith("export ")
        )
        yield proc, exports, banner
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # as a user stops it: its CA folder is removed
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def _read_banner(proc: subprocess.Popen[str]) -> str:
    """Lines up to "Ctrl-C stops it", read by a thread so the wait is bounded."""
    stdout = proc.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + BANNER_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        try:
            seen.append(lines.get(timeout=left))
        except queue.Empty:
            break
        if seen[-1].startswith("Ctrl-C stops it"):
            return "".join(seen)
    raise AssertionError(f"no banner from the sandbox: {''.join(seen)!r}")


def test_sandbox_tls_command_prints_ssl_cert_file_and_a_run_with_its_exports_works(
    tmp_path: Path,
) -> None:
    with sandbox_cli("--tls") as (proc, exports, banner):
        assert exports["GETTY_API_URL"].startswith("https://127.0.0.1:")
        assert Path(exports["SSL_CERT_FILE"]).is_file()
        assert f"NODE_EXTRA_CA_CERTS={exports['SSL_CERT_FILE']}" in banner
        manifest = write_ids(tmp_path / "ids.txt", ["9810001", "9810002"])
        done = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=clean_env(exports))
        assert done.returncode == 0, done.stderr
        assert [r["status"] for r in report(tmp_path / "o")] == ["downloaded"] * 2
    assert proc.returncode == 0
    assert not Path(exports["SSL_CERT_FILE"]).exists(), "Ctrl-C left the CA folder behind"


def test_sandbox_on_a_port_in_use_is_one_line_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "bulkgetty", "sandbox", "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=clean_env(),
            timeout=30,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "unexpected error" not in done.stderr


def test_sandbox_ctrl_c_says_the_sandbox_stopped_not_partial_files() -> None:
    with sandbox_cli() as (proc, _, _):
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "sandbox stopped" in stderr
    assert "partial files" not in stderr and "resume" not in stderr


def test_sandbox_rate_and_video_size_shape_what_it_serves(tmp_path: Path) -> None:
    """--video-size makes every video that large; --rate is applied and said in the banner."""
    size = 300_000
    with sandbox_cli("--rate", "2000000", "--video-size", str(size)) as (_, exports, banner):
        assert "each file at most 2000000 bytes/s" in banner
        manifest = tmp_path / "videos.csv"
        manifest.write_text("id,asset_type\n9810001,video\n")
        out = tmp_path / "o"
        done = cli("run", str(manifest), "--out", str(out), env=clean_env(exports))
        assert done.returncode == 0, done.stderr
        (row,) = report(out)
        assert os.path.getsize(row["path"]) == size


def test_good_https_download_ending_in_connection_close_is_not_called_surplus(
    tmp_path: Path,
) -> None:
    """Over TLS, a server that answers `Connection: close` follows the body with a
    close_notify: raw bytes on the socket that are not body bytes. The surplus check
    (transfer._surplus_after_body) must not take them for a Content-Length cut short."""
    import trustme

    hit = "9810001"
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    with SandboxThread(SandboxConfig(sizes={hit: 200_000}), tls=True) as sb:
        assert sb.ca_file is not None
        bundle = tmp_path / "both-cas.pem"
        bundle.write_bytes(Path(sb.ca_file).read_bytes() + ca.cert_pem.bytes())
        with _closing_file_server(sb, context) as port:
            sb.configure(faults=Faults(redirect_to={hit: f"https://localhost:{port}{{path}}"}))
            env = clean_env({**sb.credentials_env(), "SSL_CERT_FILE": str(bundle)})
            manifest = write_ids(tmp_path / "ids.txt", [hit])
            out = tmp_path / "o"
            done = cli("run", str(manifest), "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
        (row,) = report(out)
        assert row["sha256"] == sb.expected("image", hit).sha256


@contextlib.contextmanager
def _closing_file_server(sb: SandboxThread, context: ssl.SSLContext) -> Iterator[int]:
    """An HTTPS origin serving the sandbox's files with `Connection: close`, then closing."""
    from bulkgetty.sandbox.content import file_spec, parse_file_path

    async def handle(request: web.Request) -> web.StreamResponse:
        parsed = parse_file_path(request.path)
        assert parsed is not None
        spec = file_spec(sb.config, *parsed)
        body = b"".join(bytes(chunk) for chunk in spec.slices())
        response = web.Response(body=body, headers={"Content-Type": spec.content_type})
        response.force_close()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    runner = web.AppRunner(app, access_log=None)
    thread.start()

    async def up() -> int:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        return int(runner.addresses[0][1])

    try:
        yield asyncio.run_coroutine_threadsafe(up(), loop).result(timeout=10)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
