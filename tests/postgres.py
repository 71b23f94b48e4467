"""A real PostgreSQL server for tests: Debian's ``postgresql`` binaries, a throwaway cluster.

``initdb`` in a fresh temporary directory, ``pg_ctl start`` on a free loopback port with the
Unix socket in that directory, trust authentication for one role, ``fsync=off``; stopped
(``-m immediate``) and removed afterwards. PostgreSQL refuses to run as root, so under root (as
CI runs) the cluster belongs to the ``postgres`` system user that the Debian package creates.
When the binaries are missing the test fails under ``CI=true`` (``.ci/run`` installs them) and
skips elsewhere, saying how to install them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROLE = "cdc"


def bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb``, if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.fail("running as root and neither a postgres nor a nobody user exists")


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A running server; yields a DSN for database ``postgres`` as role ``cdc``."""
    bins = bindir()
    if bins is None:
        reason = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    user = _run_as()
    base = Path(tempfile.mkdtemp(prefix="cdc-pg-"))
    if user is not None:
        shutil.chown(base, user)
    data = base / "data"
    port = _free_port()

    def run(*args: str) -> None:
        # cwd: the postgres user may not be allowed into the checkout's directory.
        done = subprocess.run(
            args, user=user, cwd=base, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            log = base / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{' '.join(args)} failed: {done.stderr[-2000:]}{tail}")

    try:
        run(str(bins / "initdb"), "-D", str(data), "-U", ROLE, "-A", "trust", "-E", "UTF8", "-N")
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            str(bins / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(base / "server.log"),
            "-w",
            "start",
        )
        try:
            yield f"postgresql://{ROLE}@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                user=user,
                cwd=base,
                capture_output=True,
                check=False,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
