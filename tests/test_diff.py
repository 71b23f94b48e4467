"""The differ: digests, change detection, deterministic event ids and encoded events."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.avro import CHANGE_NAMES, RECORD_NAMES, Schemas, body_of
from producer.diff import Change, absent, diff, digest, event_id
from producer.events import SourceInfo, encode, envelope
from producer.model import CanonicalRecord
from producer.normalise import normalise

SCHEMAS = Schemas.load(history=False)
SOURCE = SourceInfo("1.2", "https://sis.example", "DELTA", "sync-1", 1_700_000_000_000)


def _user(**over: Any) -> CanonicalRecord:
    raw = {
        "sourcedId": "u-1",
        "status": "active",
        "dateLastModified": "2024-03-01T10:00:00Z",
        "enabledUser": "true",
        "givenName": "Jane",
        "familyName": "Doe",
        "email": "jane@example.org",
        "roles": [{"roleType": "primary", "role": "student", "org": {"sourcedId": "s1"}}],
    }
    raw.update(over)
    out = normalise("users", "d1", raw)
    assert isinstance(out, CanonicalRecord), out
    return out


def _prior(rec: CanonicalRecord) -> tuple[bytes, dict[str, Any]]:
    return digest(rec.data), rec.data


def test_digest_ignores_date_last_modified_and_key_order():
    """A record only touched (new dateLastModified) or reordered keeps its 16-byte digest."""
    a = _user()
    b = _user(dateLastModified="2025-01-01T00:00:00Z")
    assert len(digest(a.data)) == 16
    assert digest(a.data) == digest(b.data)
    assert digest(dict(reversed(list(a.data.items())))) == digest(a.data)
    assert digest(_user(email="x@example.org").data) != digest(a.data)


def test_new_active_record_is_created_with_its_valued_fields():
    """An active record for an unknown key is CREATED; changed_fields lists the set fields."""
    change = diff(_user(), None)
    assert change is not None
    assert change.op == "CREATED"
    assert change.before is None
    assert change.after == _user().data
    assert change.key == "d1/u-1"
    assert change.digest == digest(_user().data)
    assert "email" in change.changed_fields
    assert "dateLastModified" not in change.changed_fields
    assert "middleName" not in change.changed_fields
    assert list(change.changed_fields) == sorted(change.changed_fields)


def test_touched_record_is_unchanged():
    """Same content with a newer dateLastModified emits nothing."""
    assert diff(_user(dateLastModified="2024-05-01T00:00:00Z"), _prior(_user())) is None


def test_update_lists_the_differing_top_level_fields():
    """An UPDATED change carries before, after and the sorted differing fields."""
    old = _user()
    new = _user(email="new@example.org", givenName="Janet", dateLastModified="2024-04-01")
    change = diff(new, _prior(old))
    assert change is not None
    assert change.op == "UPDATED"
    assert change.before == old.data
    assert change.after == new.data
    assert change.changed_fields == ("email", "givenName")
    assert change.prior_digest == digest(old.data)


def test_update_without_prior_data_has_no_changed_fields():
    """When the store only knows the prior digest, the update has before=None and no fields."""
    change = diff(_user(email="n@x.org"), (digest(_user().data), None))
    assert change is not None
    assert change.op == "UPDATED"
    assert change.before is None
    assert change.changed_fields == ()


def test_tobedeleted_known_record_is_deleted():
    """status=tobedeleted for a known key is DELETED with the prior image and no after."""
    change = diff(_user(status="tobedeleted"), _prior(_user()))
    assert change is not None
    assert (change.op, change.delete_reason, change.status) == (
        "DELETED",
        "tobedeleted",
        "tobedeleted",
    )
    assert change.before == _user().data
    assert change.after is None
    assert change.digest is None


def test_tobedeleted_unknown_record_emits_nothing():
    """A tobedeleted record for a key the state never had emits nothing."""
    assert diff(_user(status="inactive"), None) is None


def test_absent_from_full_sync_is_deleted_from_the_prior():
    """absent() deletes a key from its prior state with the absent_from_full_sync reason."""
    prior = _user()
    change = absent("users", "d1", "u-1", _prior(prior))
    assert change.op == "DELETED"
    assert change.delete_reason == "absent_from_full_sync"
    assert change.before == prior.data
    assert change.date_last_modified == prior.data["dateLastModified"]
    assert absent("users", "d1", "u-1", (b"x" * 16, None)).date_last_modified == ""


def test_event_id_is_deterministic_and_change_specific():
    """The same change gets the same id; another change, or a re-creation, gets another one."""
    first = diff(_user(), None)
    again = diff(_user(), None)
    assert first is not None
    assert again is not None
    assert first.event_id == again.event_id
    recreated = diff(_user(dateLastModified="2024-09-09"), None)
    assert recreated is not None
    assert recreated.event_id != first.event_id
    ids = {
        event_id("d", "users", "u", op, prior_digest=None, new_digest=b"1", date_last_modified="t")
        for op in ("CREATED", "UPDATED")
    }
    assert len(ids) == 2


def test_envelope_carries_source_info():
    """The envelope names the source version, server, sync mode and id, and the record's
    dateLastModified and status."""
    change = diff(_user(), None)
    assert change is not None
    env = envelope(change, SourceInfo("1.1", None, "FULL", "s9", datetime(2024, 1, 1, tzinfo=UTC)))
    assert env["source"] == {
        "version": "1.1",
        "server": None,
        "dateLastModified": "2024-03-01T10:00:00.000Z",
        "status": "active",
        "sync_mode": "FULL",
        "sync_id": "s9",
        "delete_reason": None,
    }
    assert env["emitted_at"] == 1_704_067_200_000


@pytest.mark.parametrize("kind", ["created", "updated", "deleted", "absent"])
def test_encode_gives_event_and_state_that_decode(kind):
    """encode() returns an event that decodes to the envelope and a state value (a tombstone,
    None, for deletes); the state bytes equal encoding the record on its own."""
    old, new = _user(), _user(email="n@x.org")
    change: Change | None = {
        "created": lambda: diff(new, None),
        "updated": lambda: diff(new, _prior(old)),
        "deleted": lambda: diff(_user(status="tobedeleted"), _prior(old)),
        "absent": lambda: absent("users", "d1", "u-1", _prior(old)),
    }[kind]()
    assert change is not None
    out = encode(SCHEMAS, change, SOURCE)
    decoded = SCHEMAS.decode(out.event)
    assert decoded.name == CHANGE_NAMES["users"]
    assert decoded.value["op"] == change.op
    assert decoded.value["after"] == change.after
    assert decoded.value["before"] == change.before
    assert ("op", change.op.encode()) in out.event_headers
    if change.after is None:
        assert out.state is None
    else:
        assert out.state == SCHEMAS.encode(RECORD_NAMES["users"], change.after)


def test_encode_reuses_a_given_before_body():
    """A prior state value's body spliced as before gives the same bytes as re-encoding it."""
    old = _user()
    change = diff(_user(email="n@x.org"), _prior(old))
    assert change is not None
    state = SCHEMAS.encode(RECORD_NAMES["users"], old.data)
    assert (
        encode(SCHEMAS, change, SOURCE, before_body=body_of(state)).event
        == encode(SCHEMAS, change, SOURCE).event
    )


@settings(max_examples=100, deadline=None)
@given(
    email=st.text(max_size=10),
    name=st.text(max_size=10),
    touched=st.sampled_from(["2024-03-01T10:00:00Z", "2025-06-01"]),
)
def test_property_diff_is_idempotent(email, name, touched):
    """Applying a change and diffing the same record again emits nothing; the change's digest is
    what the state must store."""
    old = _user()
    new = _user(email=email, givenName=name, dateLastModified=touched)
    change = diff(new, _prior(old))
    if change is None:
        assert digest(new.data) == digest(old.data)
        return
    assert change.changed_fields
    assert change.digest is not None
    assert diff(new, (change.digest, new.data)) is None


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_fast_uuid5_equals_the_standard_library(name: str) -> None:
    """The hand-rolled UUID5 of event ids is exactly ``uuid.uuid5`` with the event namespace,
    for any name, so event ids keep their documented derivation."""
    import uuid  # noqa: PLC0415

    from producer.diff import _EVENT_NS, _uuid5  # noqa: PLC0415

    assert _uuid5(name) == str(uuid.uuid5(_EVENT_NS, name))


def test_an_enrollment_keeps_the_digest_schema_0_1_0_gave_it():
    """Digests hash ``schoolClass`` under its OneRoster name ``class`` (its 0.1.0 name), so the
    rename emits no UPDATED for enrollments that did not change after an upgrade."""
    rec = normalise(
        "enrollments",
        "d",
        {
            "sourcedId": "e-1",
            "status": "active",
            "dateLastModified": "2024-03-01T10:00:00Z",
            "user": {"sourcedId": "u-1"},
            "class": {"sourcedId": "c-1"},
            "role": "student",
        },
    )
    assert isinstance(rec, CanonicalRecord)
    assert rec.data["schoolClass"] == {"sourcedId": "c-1", "type": "class"}
    as_in_0_1_0 = {("class" if k == "schoolClass" else k): v for k, v in rec.data.items()}
    del as_in_0_1_0["dateLastModified"]
    expected = hashlib.blake2b(
        orjson.dumps(as_in_0_1_0, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()
    assert digest(rec.data) == expected
