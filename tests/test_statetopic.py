"""The state-topic record format on its own (no Kafka): what the writer sends for a store
write, and what a restore makes of it."""

from __future__ import annotations

from producer.avro import RECORD_NAMES
from producer.kafka.reader import header
from producer.kafka.statetopic import rows_from_messages, state_key, state_message
from producer.state import StateWrite


def test_a_state_message_carries_what_a_restore_needs_and_reads_back_as_its_write() -> None:
    """An upsert is (key, value, headers) with the schema, entity, digest and, when known, the
    raw digest; a delete is a tombstone with the entity; ``rows_from_messages`` turns the
    messages back into the writes' rows and deletes. Each upsert has a header list of its own
    (the shared per-entity part is copied)."""
    writes = [
        StateWrite("users", "d1", "u/1", b"dig-1", b"value-1", b"raw-1"),
        StateWrite("enrollments", "d1", "e1", b"dig-2", b"value-2"),
        StateWrite("users", "d2", "u2", None, None),
    ]
    messages = [state_message(w) for w in writes]
    key, value, headers = messages[0]
    assert key == state_key("users", "d1", "u/1").encode() == b"users/d1/u/1"
    assert value == b"value-1"
    assert dict(headers) == {
        "content-type": b"application/avro; encoding=single-object",
        "schema": RECORD_NAMES["users"].encode(),
        "entity": b"users",
        "digest": b"dig-1",
        "raw-digest": b"raw-1",
    }
    assert header(messages[1][2], "raw-digest") is None
    assert header(messages[1][2], "schema") == RECORD_NAMES["enrollments"].encode()
    assert messages[2] == (b"users/d2/u2", None, [("entity", b"users")])
    again = state_message(writes[0])[2]
    assert again == headers
    assert again is not headers
    upserts, deletes = rows_from_messages(messages)
    assert upserts == [
        ("users", "d1", "u/1", b"dig-1", b"value-1", b"raw-1"),
        ("enrollments", "d1", "e1", b"dig-2", b"value-2", None),
    ]
    assert deletes == [("users", "d2", "u2")]
