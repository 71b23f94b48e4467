"""Private files: the state directory is 0700 and its files 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from producer.errors import ConfigError
from producer.private import private_dir, private_file
from producer.state import StateStore, StateWrite


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Runs the test under umask 000, the worst case, and restores the umask afterwards."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def write_some(store: StateStore) -> None:
    """Upserts a few records so SQLite creates its WAL and shared-memory files."""
    store.apply(
        [StateWrite("users", "d1", f"u{i}", b"d" * 16, b"v" * 100) for i in range(50)],
        topic="t",
        offsets={0: 50},
    )


@pytest.mark.usefixtures("loose_umask")
def test_new_store_is_private_including_wal_and_shm(tmp_path: Path) -> None:
    """Under umask 000 a new state dir is 0700 and the database, its WAL and its shared-memory
    file are 0600, and no other file appears in the directory."""
    state = tmp_path / "deep" / "state"
    store = StateStore(state / "shard-0.sqlite")
    try:
        write_some(store)
        assert store.count() == 50
        files = sorted(p.name for p in state.iterdir())
        assert files == ["shard-0.sqlite", "shard-0.sqlite-shm", "shard-0.sqlite-wal"]
        assert mode(state) == 0o700
        for name in files:
            assert mode(state / name) == 0o600, name
    finally:
        store.close()


@pytest.mark.usefixtures("loose_umask")
def test_existing_loose_dir_and_files_are_tightened_with_a_warning(tmp_path: Path) -> None:
    """A state dir left 0755 with a world-readable database and WAL (e.g. written by an older
    release) is tightened to 0700/0600 on open, each change logged with path and old mode."""
    state = tmp_path / "state"
    store = StateStore(state / "s.sqlite")
    write_some(store)
    store.close()
    state.chmod(0o755)
    (state / "s.sqlite").chmod(0o644)
    (state / "s.sqlite-wal").write_bytes(b"")
    (state / "s.sqlite-wal").chmod(0o664)
    with capture_logs() as logs:
        store = StateStore(state / "s.sqlite")
    try:
        assert store.count() == 50
        write_some(store)
        assert mode(state) == 0o700
        for path in state.iterdir():
            assert mode(path) == 0o600, path.name
        tightened = {e["path"]: e["old_mode"] for e in logs if e["event"].endswith("tightened")}
        assert tightened == {
            str(state): "0755",
            str(state / "s.sqlite"): "0644",
            str(state / "s.sqlite-wal"): "0664",
        }
    finally:
        store.close()


def test_refuse_policy_names_the_fix_and_changes_nothing(tmp_path: Path) -> None:
    """With ``permissions = "refuse"`` a group-readable state dir stops the start with a
    config error on ``state.dir`` that gives the chmod command; the directory is left alone and
    no database is created."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o750)
    with pytest.raises(ConfigError) as caught:
        StateStore(state / "s.sqlite", permissions="refuse")
    assert caught.value.key == "state.dir"
    assert f"chmod 700 {state}" in str(caught.value)
    assert "0750" in str(caught.value)
    assert mode(state) == 0o750
    assert list(state.iterdir()) == []


def test_refuse_policy_checks_an_existing_database_file(tmp_path: Path) -> None:
    """A private dir holding a world-readable database is refused under ``"refuse"`` with the
    file's chmod command, and tightened under the default."""
    state = tmp_path / "state"
    private_dir(state)
    db = state / "s.sqlite"
    db.write_bytes(b"")
    db.chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {db}"):
        private_file(db, policy="refuse")
    private_file(db)
    assert mode(db) == 0o600


def test_a_file_where_the_dir_should_be_is_a_config_error(tmp_path: Path) -> None:
    """``state.dir`` naming an existing file is refused with a message naming the path."""
    target = tmp_path / "state"
    target.write_text("not a directory")
    with pytest.raises(ConfigError, match="not a directory"):
        private_dir(target)


def test_permissions_config_key() -> None:
    """``[state] permissions`` accepts tighten | refuse and names the key otherwise."""
    from producer.config import config_from_mapping  # noqa: PLC0415

    assert config_from_mapping({"state": {"permissions": "refuse"}}, {}).state.permissions == (
        "refuse"
    )
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"state": {"permissions": "loose"}}, {})
    assert caught.value.key == "state.permissions"


def test_a_loose_dir_this_process_cannot_change_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When tightening fails (the directory belongs to another user: ``chmod`` raises
    PermissionError, simulated here because tests may run as root), the start is refused with
    the chmod command and a hint to make the daemon's user the owner."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)

    def not_owner(self: Path, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "chmod", not_owner)
    with pytest.raises(ConfigError) as caught:
        private_dir(state)
    message = str(caught.value)
    assert "this process cannot change it" in message
    assert f"chmod 700 {state}" in message
    assert "owner" in message
