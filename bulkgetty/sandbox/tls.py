"""HTTPS for the sandbox: a private CA made at start, and one server certificate from it.

Real Getty traffic is HTTPS on the API and on the delivery URIs, so a faithful sandbox must
be able to speak it, with a certificate the client verifies for real (bulkgetty has no switch
that turns verification off). The CA lives only as long as the sandbox: its PEM is written to
a private temporary folder, and clients are told to trust it with `SSL_CERT_FILE` (Python,
OpenSSL, curl) or `NODE_EXTRA_CA_CERTS` (Node).
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ("SERVER_NAMES", "TlsMaterial", "make_tls")

#: Names the server certificate is valid for: every loopback spelling a client may use.
SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The server side of the sandbox's TLS, and the CA file clients must trust."""

    server_context: ssl.SSLContext
    #: PEM of the private CA (no key): what `SSL_CERT_FILE` points at.
    ca_file: Path
    folder: Path

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def make_tls(names: tuple[str, ...] = SERVER_NAMES) -> TlsMaterial:
    """A fresh CA (ECDSA, so it takes milliseconds) and a server certificate for `names`."""
    ca = trustme.CA(organization_name="bulkgetty sandbox")
    leaf = ca.issue_cert(*names)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    leaf.configure_cert(context)
    folder = Path(tempfile.mkdtemp(prefix="bulkgetty-sandbox-ca-"))
    ca_file = folder / "sandbox-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsMaterial(context, ca_file, folder)
