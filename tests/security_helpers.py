"""Throwaway PKI for transport-security tests: a CA and a server certificate for 127.0.0.1.

Generated per test in a temporary directory with the ``openssl`` CLI (the ``cryptography``
package is not a dependency); nothing here is ever committed. Keys are EC P-256 (fast to make)
in unencrypted PKCS#8 PEM, which both Python's ``ssl`` and Kafka's PEM keystore read.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    """Files of one throwaway PKI."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    #: The server certificate followed by the CA's (a full chain).
    server_chain: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the server certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.server_chain), str(self.server_key))
        return context


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (for a broker a test starts)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextmanager
def own_broker(data_dir: Path, settings: Mapping[str, str]) -> Iterator[str]:
    """A separate ``scripts/kafka`` broker (its own data directory; the shared broker is
    untouched) configured by ``settings`` (environment variables of the script, including
    ``KAFKA_PORT`` and ``KAFKA_CONTROLLER_PORT``: take them from one ``free_ports`` call),
    started for the block and stopped, its data removed, after. Yields its PLAINTEXT bootstrap."""
    from tests.conftest import KAFKA_SCRIPT, broker_answers  # noqa: PLC0415 - conftest imports us

    port = settings["KAFKA_PORT"]
    env = {
        **os.environ,
        "KAFKA_DATA_DIR": str(data_dir),
        "KAFKA_HEAP": "-Xms128m -Xmx384m",
        "KAFKA_START_TIMEOUT": "90",
        **settings,
    }
    started = subprocess.run(
        [str(KAFKA_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=150,
        check=False,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert broker_answers(f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(
            [str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, timeout=60, check=False
        )


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr[-2000:]}")


def _key(path: Path, cwd: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path),
        cwd=cwd,
    )  # fmt: skip


def make_pki(directory: Path, *, name: str = "oneroster-cdc test") -> Pki:
    """A CA and a server certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``) in ``directory``."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to generate test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    _key(ca_key, directory)
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "2",
        "-subj", f"/CN={name} CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca_cert),
        cwd=directory,
    )  # fmt: skip
    _key(key, directory)
    _openssl("req", "-new", "-key", str(key), "-subj", "/CN=127.0.0.1", "-out", str(csr),
             cwd=directory)  # fmt: skip
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    chain = directory / "server-chain.pem"
    chain.write_text(cert.read_text() + ca_cert.read_text())
    for private in (ca_key, key):
        private.chmod(0o600)
    return Pki(ca_cert=ca_cert, server_cert=cert, server_key=key, server_chain=chain)
