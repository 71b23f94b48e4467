"""The state store's SQLite methods on their own (no Kafka): a listing's seen keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from producer.state import StateStore, StateWrite
from producer.testing import memory_store


def _store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state.sqlite")
    writes = [
        StateWrite("orgs", "d1", sid, b"digest-" + sid.encode(), b"value")
        for sid in ("a", "b", "c", "d")
    ]
    writes.append(StateWrite("orgs", "d2", "a", b"other", b"value"))
    writes.append(StateWrite("users", "d1", "a", b"other", b"value"))
    store.apply(writes, topic="t.state", offsets={0: 6})
    return store


def test_a_listing_remembers_the_first_digest_it_saw_of_each_key(tmp_path: Path) -> None:
    """mark_seen keeps the first digest of a sourcedId; seen_digests answers only for the keys
    that listing saw, and another listing sees nothing of it."""
    store = _store(tmp_path)
    store.mark_seen("L1", [("a", b"first"), ("b", b"bee")])
    store.mark_seen("L1", [("a", b"second")])
    assert store.seen_digests("L1", ["a", "b", "z"]) == {"a": b"first", "b": b"bee"}
    assert store.seen_digests("L2", ["a", "b"]) == {}
    # More keys than one statement may bind are looked up in chunks.
    many = [f"k{i:05d}" for i in range(1_234)]
    store.mark_seen("L3", [(sid, b"x") for sid in many])
    assert store.seen_digests("L3", [*many, "nope"]) == dict.fromkeys(many, b"x")


def test_unseen_lists_the_district_and_entity_keys_the_listing_lacked(tmp_path: Path) -> None:
    """unseen is the sorted set difference store keys - seen keys, for one district and entity
    only; forget_seen drops one listing's marks (or all of them), and wipe drops them too."""
    store = _store(tmp_path)
    store.mark_seen("L1", [("c", b"x"), ("a", b"x"), ("zz", b"x")])
    store.mark_seen("L2", [("b", b"x")])
    assert list(store.unseen("L1", "orgs", "d1")) == ["b", "d"]
    assert list(store.unseen("L1", "orgs", "d2")) == []
    assert list(store.unseen("L1", "users", "d1")) == []
    assert list(store.unseen("L2", "orgs", "d1")) == ["a", "c", "d"]
    store.forget_seen("L1")
    assert list(store.unseen("L1", "orgs", "d1")) == ["a", "b", "c", "d"]
    assert store.seen_digests("L2", ["b"]) == {"b": b"x"}
    store.forget_seen()
    assert store.seen_digests("L2", ["b"]) == {}
    store.mark_seen("L4", [("a", b"x")])
    store.wipe()
    assert store.seen_digests("L4", ["a"]) == {}
    store.close()


def test_marks_survive_a_reopen_until_forgotten(tmp_path: Path) -> None:
    """The marks are on disk, not in the process: a reopened store still has them (the
    service forgets them at start, once its writer has fenced any predecessor)."""
    store = _store(tmp_path)
    store.mark_seen("L1", [("a", b"x")])
    store.close()
    again = StateStore(tmp_path / "state.sqlite")
    assert again.seen_digests("L1", ["a"]) == {"a": b"x"}
    again.forget_seen()
    assert again.seen_digests("L1", ["a"]) == {}
    again.close()


def _scan(store: StateStore) -> int:
    return int(store.db.execute("SELECT count(*) FROM records").fetchone()[0])


def test_the_kept_key_count_follows_every_write(tmp_path: Path) -> None:
    """count() is kept beside the rows (no scan): new keys add one, rewrites and a key written
    twice in one batch add one at most, deletes of present keys remove one and of absent keys
    none, a wipe resets it; it equals count(*) after each step, and a store without the kept
    count (written before it existed) counts once and keeps it from then on."""
    store = _store(tmp_path)
    assert store.count() == _scan(store) == 6
    store.apply(
        [
            StateWrite("orgs", "d1", "a", b"new", b"new"),  # present: rewritten
            StateWrite("orgs", "d1", "e", b"x", b"1"),  # new
            StateWrite("orgs", "d1", "e", b"y", b"2"),  # the same key again: the last wins
            StateWrite("orgs", "d1", "b", None, None),  # present: deleted
            StateWrite("orgs", "d1", "zz", None, None),  # absent: nothing
        ],
        topic="t.state",
        offsets={0: 11},
    )
    assert store.count() == _scan(store) == 6
    assert store.get("orgs", "d1", "e") is not None
    assert store.get("orgs", "d1", "e").value == b"2"  # type: ignore[union-attr]
    assert store.get("orgs", "d1", "a").digest == b"new"  # type: ignore[union-attr]
    store.apply_rows(
        [("users", "d9", f"u{i}", b"d", b"v", None) for i in range(10)],
        [("orgs", "d1", "c")],
        topic="t.state",
        offsets={0: 22},
    )
    assert store.count() == _scan(store) == 15
    store.db.execute("DELETE FROM meta WHERE name = 'keys'")  # as a store from before
    assert store.count() == 15
    store.apply([StateWrite("orgs", "d1", "f", b"x", b"1")], topic="t.state", offsets={0: 23})
    assert store.count() == _scan(store) == 16
    store.wipe()
    assert store.count() == _scan(store) == 0
    store.close()


def test_an_in_memory_store_leaves_the_working_directory_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``:memory:`` is SQLite's name for a file-less database: opening one creates no file named
    ``:memory:`` and does not make the working directory private (it is not the store's dir)."""
    workdir = tmp_path / "checkout"
    workdir.mkdir(mode=0o755)
    workdir.chmod(0o755)
    monkeypatch.chdir(workdir)
    store = memory_store()
    store.close()
    assert list(workdir.iterdir()) == []
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o755


def test_claim_wipes_a_file_of_another_layout_and_keeps_its_own(tmp_path: Path) -> None:
    """A store written before shards existed, or for another shard or count, is wiped (the
    restore rebuilds it) and then belongs to the claimed shard; claiming it again as the same
    shard keeps what it holds."""
    store = _store(tmp_path)  # no layout: a 0.1.0 single-file store
    reason = store.claim(shards=6, shard=0, max_age=3600)
    assert reason is not None
    assert "no layout" in reason
    assert (store.count(), store.offsets("t.state"), store.layout()) == (0, {}, (6, 0))
    store.apply([StateWrite("orgs", "d1", "a", b"x", b"v")], topic="t.state", offsets={0: 3})
    assert store.claim(shards=6, shard=0, max_age=3600) is None
    assert store.count() == 1
    reason = store.claim(shards=6, shard=1, max_age=3600)
    assert reason == "written for shard 0 of 6, not shard 1 of 6"
    assert store.count() == 0
    store.apply([StateWrite("orgs", "d1", "a", b"x", b"v")], topic="t.state", offsets={1: 3})
    assert store.claim(shards=3, shard=1, max_age=3600) is not None
    assert store.count() == 0
    store.close()


def test_claim_wipes_a_store_older_than_the_age_limit(tmp_path: Path) -> None:
    """A store last synced longer ago than ``max_age`` (half the state topic's tombstone
    retention: deletes of that time may be compacted away) is wiped; a fresh one is kept, and
    a completed restore counts as synced."""
    store = StateStore(tmp_path / "s.sqlite")
    assert store.claim(shards=2, shard=1, max_age=100) is None  # empty: nothing to distrust
    store.apply([StateWrite("orgs", "d1", "a", b"x", b"v")], topic="t.state", offsets={1: 3})
    synced = store.db.execute("SELECT value FROM meta WHERE name = 'synced_at'").fetchone()[0]
    assert store.claim(shards=2, shard=1, max_age=100, now=synced + 99) is None
    assert store.count() == 1
    reason = store.claim(shards=2, shard=1, max_age=100, now=synced + 101)
    assert reason is not None
    assert "more than 100s" in reason
    assert store.count() == 0
    store.apply([StateWrite("orgs", "d1", "a", b"x", b"v")], topic="t.state", offsets={1: 4})
    store.mark_synced(now=synced + 1000)
    assert store.claim(shards=2, shard=1, max_age=100, now=synced + 1050) is None
    assert store.count() == 1
    store.close()
