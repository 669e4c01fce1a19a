"""What `bulkgetty sandbox` prints once it listens: where, the exports, and how to try it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Sandbox

__all__ = ("banner",)


def banner(sandbox: Sandbox) -> str:
    """The URL, one `export` line per variable a client needs, and a command to paste."""
    creds = sandbox.credentials_env()
    how = " over HTTPS (a private CA made at start)" if sandbox.ca_file else ""
    lines = [f"Getty API emulator listening at {sandbox.api_url}{how}", "", "credentials:"]
    lines += [f"  export {k}={v}" for k, v in creds.items()]
    if sandbox.ca_file:
        lines += [
            "",
            "SSL_CERT_FILE makes Python, curl and OpenSSL trust the sandbox; for Node.js:",
            f"  export NODE_EXTRA_CA_CERTS={sandbox.ca_file}",
        ]
    bandwidth = sandbox.config.bandwidth
    if bandwidth:
        lines += ["", f"delivery: each file at most {bandwidth} bytes/s"]
    inline = " ".join(f"{k}={v}" for k, v in creds.items())
    lines += [
        "",
        "try it (from a clone of the repository, in another shell):",
        f"  {inline} bulkgetty run manifests/sample.csv --out ./downloads",
        "",
        "Ctrl-C stops it.",
    ]
    return "\n".join(lines) + "\n"
