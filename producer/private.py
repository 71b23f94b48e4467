"""Private files: the state directory is mode 0700 and its files 0600, whatever the umask.

The local store holds every canonical record, demographics included, so nobody but the user the
daemon runs as may read it. ``private_dir`` creates the directory 0700 or checks an existing one;
``private_file`` creates a file 0600 (before SQLite opens it, so the journal, WAL and shared-memory
files SQLite derives from it inherit that mode) or checks an existing one.

An existing directory or file that group or others may access is, per ``[state] permissions``:

- ``"tighten"`` (default): changed to 0700 / 0600, with a warning naming the path and old mode.
  If that fails (the process does not own it) the start is refused as below.
- ``"refuse"``: the start is refused with a ``ConfigError`` on ``state.dir`` that names the path,
  its mode and the ``chmod`` command that fixes it (for directories managed by someone else, e.g.
  configuration management, that must not be changed behind its back).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

import structlog

from producer.errors import ConfigError

log = structlog.get_logger(__name__)

Policy = Literal["tighten", "refuse"]

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
#: Permission bits that let anyone but the owner in.
_OTHERS: Final = 0o077
#: The files SQLite keeps next to a database.
SQLITE_SUFFIXES: Final = ("", "-wal", "-shm", "-journal")


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories created inside are private to the owner (umask 077)."""
    old = os.umask(_OTHERS)
    try:
        yield
    finally:
        os.umask(old)


def _refuse(path: Path, mode: int, wanted: int, why: str) -> ConfigError:
    kind = "directory" if stat.S_ISDIR(mode) else "file"
    return ConfigError(
        "state.dir",
        f"{kind} {str(path)!r} is accessible to group or others (mode {stat.S_IMODE(mode):04o}) "
        f"and {why}; it holds student records: run `chmod {wanted:o} {path}` "
        "(and make the daemon's user its owner), then start again",
    )


def _ensure_mode(path: Path, wanted: int, policy: Policy) -> None:
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & _OTHERS == 0:
        return
    if policy == "refuse":
        raise _refuse(path, mode, wanted, 'state.permissions = "refuse"')
    try:
        path.chmod(wanted)
    except PermissionError:
        raise _refuse(path, mode, wanted, "this process cannot change it") from None
    log.warning(
        "state.permissions_tightened",
        path=str(path),
        old_mode=f"{stat.S_IMODE(mode):04o}",
        new_mode=f"{wanted:04o}",
    )


def private_dir(path: Path, *, policy: Policy = "tighten") -> None:
    """Create ``path`` (and missing parents) with mode 0700, or check an existing directory."""
    if not path.exists():
        with private_umask():
            path.mkdir(parents=True, mode=DIR_MODE, exist_ok=True)
    if not path.is_dir():
        raise ConfigError("state.dir", f"{str(path)!r} exists and is not a directory")
    _ensure_mode(path, DIR_MODE, policy)


def private_file(path: Path, *, policy: Policy = "tighten") -> None:
    """Create ``path`` empty with mode 0600 if it is missing, or check an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        _ensure_mode(path, FILE_MODE, policy)
        return
    os.close(fd)
    path.chmod(FILE_MODE)  # whatever the umask took away, never what it left


def private_sqlite(path: Path, *, policy: Policy = "tighten") -> None:
    """Make the directory of a SQLite database and the database's files private, before it is
    opened: existing journal, WAL and shared-memory files are checked too, and new ones inherit
    the database file's 0600 (SQLite gives them the mode of the database file)."""
    private_dir(path.parent, policy=policy)
    private_file(path, policy=policy)
    for suffix in SQLITE_SUFFIXES[1:]:
        sibling = path.with_name(path.name + suffix)
        if sibling.exists():
            _ensure_mode(sibling, FILE_MODE, policy)
