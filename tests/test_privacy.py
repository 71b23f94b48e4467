"""Field minimisation (``[privacy]``): omitted fields never leave the source, hashed ones are
stable keyed HMACs, across snapshot, delta and full sync, in every topic and the state store."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from producer.avro import Schemas
from producer.config import config_from_mapping
from producer.errors import ConfigError
from producer.model import Secret
from producer.normalise import normalise
from producer.privacy import PrivacyRules, schema_fields
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import ENTITIES, read_all, read_decoded, rebuild
from tests.harness import make_config

KEY = "privacy-test-hmac-key-0123456789"
RULES = PrivacyRules.parse(
    ["users.email", "users.extensions_json", "demographics.*"],
    ["users.username", "users.identifier"],
    Secret(KEY),
)


def mac(value: str) -> str:
    """The expected HMAC-SHA256 hex of ``value`` under ``KEY``."""
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- rules on raw records


def test_apply_omits_hashes_and_keeps_the_rest() -> None:
    """Omitted keys disappear, hashed strings and integers become the HMAC of their text,
    nulls stay null, unknown keys go with ``extensions_json``, and the input is not changed."""
    raw = {
        "sourcedId": "u1",
        "status": "active",
        "dateLastModified": "2024-01-01T00:00:00Z",
        "givenName": "Ada",
        "email": "ada@example.org",
        "username": "ada.l",
        "identifier": 12345,
        "vendorExtra": {"secret": "x"},
        "roles": [],
    }
    out = RULES.apply("users", raw)
    assert out == {
        "sourcedId": "u1",
        "status": "active",
        "dateLastModified": "2024-01-01T00:00:00Z",
        "givenName": "Ada",
        "username": mac("ada.l"),
        "identifier": mac("12345"),
        "roles": [],
    }
    assert raw["email"] == "ada@example.org"
    assert RULES.apply("users", {**raw, "username": None})["username"] is None
    assert "username" not in RULES.apply("users", {**raw, "username": ["not", "text"]})
    assert RULES.apply("orgs", raw) is raw  # no rule for orgs: the same object


def test_a_1_1_user_keeps_its_roles_when_extensions_are_omitted() -> None:
    """``role``/``orgs`` of a 1.1 user are what its roles are built from, not extensions."""
    raw = {
        "sourcedId": "u1",
        "status": "active",
        "dateLastModified": "2024-01-01T00:00:00Z",
        "role": "student",
        "orgs": [{"sourcedId": "s1", "type": "org"}],
    }
    record = normalise("users", "d", RULES.apply("users", raw))
    assert not isinstance(record, type(None))
    assert record.data["roles"][0]["role"] == "student"  # type: ignore[union-attr]


def test_a_renamed_field_is_omitted_under_its_oneroster_name() -> None:
    """``enrollments.schoolClass`` (the schema's name) omits the raw ``class`` key."""
    rules = PrivacyRules.parse(["enrollments.schoolClass"], [], None)
    raw = {"sourcedId": "e1", "class": {"sourcedId": "c1"}, "user": {"sourcedId": "u1"}}
    assert rules.apply("enrollments", raw) == {"sourcedId": "e1", "user": {"sourcedId": "u1"}}


def test_demographics_star_leaves_only_the_required_fields() -> None:
    """``demographics.*`` omits every optional field: only key, status and date remain."""
    raw = {
        "sourcedId": "g1",
        "status": "active",
        "dateLastModified": "2024-01-01T00:00:00Z",
        "birthDate": "2012-03-04",
        "sex": "female",
        "asian": "true",
        "metadata": {"note": "x"},
        "custom": 1,
    }
    assert RULES.apply("demographics", raw) == {
        "sourcedId": "g1",
        "status": "active",
        "dateLastModified": "2024-01-01T00:00:00Z",
    }
    required = {f for f, kind in schema_fields("demographics").items() if kind == "required"}
    assert required == {"sourcedId", "status", "dateLastModified"}


def test_a_rejected_record_is_dead_lettered_filtered() -> None:
    """A record that fails normalisation after the rules carries the filtered raw JSON, and the
    reason names the field and the rule, not the value."""
    raw = {
        "sourcedId": "u1",
        "status": "active",
        "dateLastModified": "2024-01-01T00:00:00Z",
        "email": "ada@example.org",
        "username": "ada.l",
        "enabledUser": "Ada Lovelace",
    }
    rejection = normalise("users", "d", RULES.apply("users", raw))
    assert rejection.reason == (  # type: ignore[union-attr]
        "users[enabledUser]: not a boolean (a string other than true or false)"
    )
    dumped = orjson.loads(rejection.raw)  # type: ignore[union-attr]
    assert "email" not in dumped
    assert dumped["username"] == mac("ada.l")


@pytest.mark.parametrize(
    ("privacy", "key", "message"),
    [
        ({"omit": ["users.birthDate"]}, "privacy.omit[0]", "demographics has it"),
        ({"omit": ["users.sourcedId"]}, "privacy.omit[0]", "required by the users schema"),
        ({"omit": ["orgs.name", "pupils.x"]}, "privacy.omit[1]", "unknown entity 'pupils'"),
        ({"omit": ["email"]}, "privacy.omit[0]", "not <entity>.<field>"),
        ({"hash": ["users.roles"], "hash_key": KEY}, "privacy.hash[0]", "only string fields"),
        ({"hash": ["users.metadata_json"], "hash_key": KEY}, "privacy.hash[0]", "only string"),
        ({"hash": ["users.*"], "hash_key": KEY}, "privacy.hash[0]", "not '*'"),
        (
            {"hash": ["users.email"], "omit": ["users.email"], "hash_key": KEY},
            "privacy.hash",
            "both omitted and hashed",
        ),
        ({"hash": ["users.email"]}, "privacy.hash_key", "is required with hash"),
        ({"hash": ["users.email"], "hash_key": "short"}, "privacy.hash_key", "shorter than 16"),
    ],
)
def test_bad_rules_are_config_errors_naming_the_entry(
    privacy: dict[str, Any], key: str, message: str
) -> None:
    """Rules are checked against the schemas when the config loads (so by check-config too)."""
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"privacy": privacy}, {})
    assert caught.value.key == key
    assert message in str(caught.value)


def test_hash_key_is_a_secret_from_env_and_never_in_errors() -> None:
    """``hash_key = "env:NAME"`` resolves from the environment; the config repr hides it."""
    config = config_from_mapping(
        {"privacy": {"hash": ["users.email"], "hash_key": "env:CDC_HASH"}}, {"CDC_HASH": KEY}
    )
    assert config.privacy.hash_key is not None
    assert config.privacy.hash_key.reveal() == KEY
    assert KEY not in repr(config)
    assert KEY not in config.model_dump_json()


# --------------------------------------------------------------------------- end to end


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """One tiny 1.2 district with demographics, on loopback."""
    simulator = Simulator([DistrictSpec(id="p1", version="1.2", size="tiny", seed=5)])
    async with simulator.serve():
        yield simulator


def truth_users(sim: Simulator) -> dict[str, dict[str, Any]]:
    """The simulator's current users of p1, by sourcedId."""
    return sim.district("p1").truth_state("users")


def assert_minimised(
    texts: dict[str, bytes], records: list[dict[str, Any]], users: dict[str, dict[str, Any]]
) -> None:
    """No email, raw username or demographic value in any text; every decoded user record has
    no email and the HMAC of its username; every demographics record only its required fields."""
    for where, blob in texts.items():
        for sid, user in users.items():
            assert user["email"].encode() not in blob, (where, sid)
            assert f'"{user["username"]}"'.encode() not in blob, (where, sid)
    for record in records:
        if "givenName" in record:
            known = users.get(record["sourcedId"])
            assert record["email"] is None
            assert record["extensions_json"] is None
            if known is not None:
                assert record["username"] == mac(known["username"])
        elif "birthDate" in record:
            optional = {k: v for k, v in record.items() if k not in ("sourcedId", "status")}
            assert all(v in (None, []) for k, v in optional.items() if k != "dateLastModified")


async def topic_blobs(bootstrap: str, prefix: str) -> dict[str, bytes]:
    """Raw keys and values of every topic under ``prefix``."""
    names = [f"{prefix}.{e}" for e in ENTITIES]
    names += [f"{prefix}.state", f"{prefix}.deadletter", f"{prefix}.checkpoints"]
    out = {}
    for topic in names:
        parts = [(k or b"") + b"\n" + (v or b"") for k, v, _ in await read_all(bootstrap, topic)]
        out[topic] = b"\n".join(parts)
    return out


def store_records(path: Path) -> tuple[bytes, list[dict[str, Any]]]:
    """The state store's file contents (database and WAL) and its decoded records."""
    schemas = Schemas.load()
    blob = b"".join(p.read_bytes() for p in path.parent.iterdir())
    with sqlite3.connect(path) as db:
        values = [row[0] for row in db.execute("SELECT value FROM records")]
    return blob, [schemas.decode(v).value for v in values]


@pytest.mark.integration
async def test_omitted_absent_and_hashed_stable_across_snapshot_delta_and_full(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """With users.email, users' extensions and demographics.* omitted and username/identifier
    hashed: after a snapshot, a delta and a full sync no topic, event, dead letter or the
    state store holds an email, a raw username or a demographic value; usernames are the same
    HMAC throughout; a change to an omitted field only emits nothing; a bad record's dead
    letter is filtered the same way."""
    privacy = {
        "omit": ["users.email", "users.extensions_json", "demographics.*"],
        "hash": ["users.username", "users.identifier"],
        "hash_key": KEY,
    }
    config = make_config(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path / "state",
        extra={"privacy": privacy},
    )
    district = sim.district("p1")
    store_path = tmp_path / "state" / f"{unique_prefix}-shard-0.sqlite"
    async with Service(config) as service:
        await service.sync("p1")
        first = await rebuild(kafka_bootstrap, unique_prefix)
        assert first.keys("demographics", "p1"), "the district has demographics"
        assert first.ops["CREATED"] > 0
        hashes = {
            sid: first.record("users", "p1", sid)["username"] for sid in first.keys("users", "p1")
        }

        sim.advance_clock(60)
        sids = sorted(truth_users(sim))
        district.update("users", sids[0], email="changed.only@example.org")  # omitted only
        district.update("users", sids[1], givenName="Renamed")
        created = district.create("users", {"givenName": "New", "username": "new.user"})
        bad = district.create(
            "users",
            {"enabledUser": "not-a-bool", "email": "bad.one@example.org", "username": "bad.u"},
        )
        demo = sorted(district.truth_state("demographics"))[0]
        district.update("demographics", demo, birthDate="2001-02-03")  # omitted only

        await service.sync("p1")
        delta = await rebuild(kafka_bootstrap, unique_prefix)
        assert delta.ops - first.ops == {"CREATED": 1, "UPDATED": 1}
        changed = [e for e in delta.envelopes if e["op"] == "UPDATED"]
        assert [(e["sourced_id"], e["changed_fields"]) for e in changed] == [
            (sids[1], ["givenName"])
        ]
        assert delta.record("users", "p1", created["sourcedId"])["username"] == mac("new.user")

        results = await service.sync("p1", full=True)
        assert {r.mode for r in results} == {"FULL"}
        full = await rebuild(kafka_bootstrap, unique_prefix)
        assert full.ops == delta.ops  # the full sync finds nothing new
        for sid, value in hashes.items():
            assert full.record("users", "p1", sid)["username"] == value

    users = truth_users(sim)
    dead = [
        d
        for d in await read_decoded(kafka_bootstrap, unique_prefix, f"{unique_prefix}.deadletter")
        if d is not None
    ]
    assert [d["sourced_id"] for d in dead] == [bad["sourcedId"]] * len(dead)
    assert dead
    for letter in dead:
        raw = orjson.loads(letter["raw"])
        assert "email" not in raw
        assert raw["username"] == mac("bad.u")
        assert letter["reason"] == (
            "users[enabledUser]: not a boolean (a string other than true or false)"
        )
    state = [
        d
        for d in await read_decoded(kafka_bootstrap, unique_prefix, f"{unique_prefix}.state")
        if d is not None
    ]
    events = [r for e in full.envelopes for r in (e["before"], e["after"]) if r is not None]
    store_blob, stored = store_records(store_path)
    texts = await topic_blobs(kafka_bootstrap, unique_prefix)
    texts["state store files"] = store_blob
    assert_minimised(texts, [*state, *events, *stored], users)
    # Control: the omitted values were there to be dropped.
    assert all(u["email"] for u in users.values())
    assert any(u.get("birthDate") for u in district.truth_state("demographics").values())


def test_check_config_validates_privacy_fields_against_the_schemas(tmp_path: Path) -> None:
    """``check-config`` exits 2 naming ``privacy.omit[1]`` for a field the schema lacks, and on
    a valid config lists the rules it will apply (field names only, never the key)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    def check(privacy: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "c.toml"
        path.write_text(f"[privacy]\n{privacy}\n")
        return subprocess.run(
            [sys.executable, "-m", "producer", "--config", str(path), "check-config"],
            capture_output=True,
            text=True,
            check=False,
            env={"CDC_HASH": KEY, "PATH": ""},
        )

    bad = check('omit = ["users.email", "users.birthDate"]')
    assert bad.returncode == 2
    assert "privacy.omit[1]" in bad.stderr
    assert "users has no field 'birthDate' (demographics has it)" in bad.stderr
    good = check('omit = ["demographics.*"]\nhash = ["users.email"]\nhash_key = "env:CDC_HASH"')
    assert good.returncode == 0, good.stderr
    assert "omit demographics.birthDate" in good.stdout
    assert "hash users.email" in good.stdout
    assert KEY not in good.stdout + good.stderr


@pytest.mark.integration
async def test_rules_added_later_apply_on_the_next_full_sync(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A deployment that synced without rules and then omits ``users.email``: a record is
    re-normalised when next listed (a delta's overlap, then the full sync lists all), so after
    a delta and a full sync every user has had exactly one UPDATED event whose
    ``changed_fields`` is ``["email"]`` and whose ``after`` has no email, and nothing else was
    emitted (as the README's "Changing the rules" says)."""

    def config(privacy: dict[str, Any]) -> Any:
        return make_config(
            sim,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path / "state",
            district_overrides={"entities": ["orgs", "users"]},
            extra={"privacy": privacy},
        )

    async with Service(config({})) as service:
        await service.sync("p1")
    before = await rebuild(kafka_bootstrap, unique_prefix)
    users = before.keys("users", "p1")
    assert all(before.record("users", "p1", sid)["email"] for sid in users)
    async with Service(config({"omit": ["users.email"]})) as service:
        await service.sync("p1")  # re-reads only the overlap: those users are updated now
        await service.sync("p1", full=True)  # lists everything: the rest are updated now
    after = await rebuild(kafka_bootstrap, unique_prefix)
    assert after.ops - before.ops == {"UPDATED": len(users)}
    updates = [e for e in after.envelopes if e["op"] == "UPDATED"]
    assert {e["sourced_id"] for e in updates} == users
    assert all(e["changed_fields"] == ["email"] for e in updates)
    assert all(e["after"]["email"] is None for e in updates)
