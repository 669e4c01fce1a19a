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

__all__ = ("SERVER_NAMES", "TlsMaterial", "load_tls", "make_tls")

CA_FILE = "sandbox-ca.pem"
#: The server's key and certificate chain in one PEM (nginx takes it for both directives).
SERVER_FILE = "server.pem"

#: Names the server certificate is valid for: every loopback spelling a client may use.
SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The server side of the sandbox's TLS, and the CA file clients must trust."""

    server_context: ssl.SSLContext
    #: PEM of the private CA (no key): what `SSL_CERT_FILE` points at.
    ca_file: Path
    folder: Path
    #: The server key and certificate chain, for another server (nginx) to present.
    server_pem: Path

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def make_tls(names: tuple[str, ...] = SERVER_NAMES) -> TlsMaterial:
    """A fresh CA (ECDSA, so it takes milliseconds) and a server certificate for `names`,
    written to a new private folder (CA_FILE, SERVER_FILE)."""
    ca = trustme.CA(organization_name="bulkgetty sandbox")
    leaf = ca.issue_cert(*names)
    folder = Path(tempfile.mkdtemp(prefix="bulkgetty-sandbox-ca-"))
    ca.cert_pem.write_to_path(str(folder / CA_FILE))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(folder / SERVER_FILE))
    return load_tls(folder)


def load_tls(folder: Path) -> TlsMaterial:
    """The material `make_tls` wrote, e.g. shared by the benchmark's sandbox and nginx."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(folder / SERVER_FILE)
    return TlsMaterial(context, folder / CA_FILE, folder, folder / SERVER_FILE)
