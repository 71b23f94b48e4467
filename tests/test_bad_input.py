"""Bad input from a OneRoster server: malformed records become dead letters, never a crash.

A tiny aiohttp server (``RawRoster``) serves a 1.2 ``users`` collection whose pages are written
as raw bytes, so a page can carry anything a broken server sends: a valid record beside a null,
a number, a sourcedId of the wrong type, an unparseable date, a 70 000 character name... The
sync must finish, dead-letter each malformed record (reason + raw payload, decoded here
independently through ``<prefix>.schemas`` like a stock consumer) and emit every valid record
around it exactly once (``tests/checker.py``).
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from producer.avro import Schemas
from producer.config import Config, config_from_mapping
from producer.errors import EncodingError
from producer.service import Service
from producer.sync import EntityResult
from producer.timestamps import parse_timestamp
from tests.checker import Decoder, Rebuilt, read_all, rebuild

pytestmark = pytest.mark.integration

BASE = "/ims/oneroster/rostering/v1p2"
DISTRICT = "bad"
STAMP = "2024-05-01T10:00:00.000Z"
#: A moment after STAMP and before any sane delta cursor moved past it.
NOW = "2025-01-01T00:00:00.000Z"


def user(sid: Any, **fields: Any) -> dict[str, Any]:
    """A valid 1.2 user (unless ``fields`` break it)."""
    record: dict[str, Any] = {
        "sourcedId": sid,
        "status": "active",
        "dateLastModified": STAMP,
        "username": f"u-{sid}",
        "givenName": "Ann",
        "familyName": "Lee",
        "enabledUser": True,
        "roles": [
            {
                "roleType": "primary",
                "role": "student",
                "org": {"sourcedId": "org-1", "type": "org"},
            }
        ],
    }
    record.update(fields)
    return record


def without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != key}


#: kind -> (raw record, the dead letter's reason, its sourced_id or None)
CORPUS: dict[str, tuple[Any, str, str | None]] = {
    "missing sourcedId": (without(user("x"), "sourcedId"), "users[sourcedId]: missing", None),
    "empty sourcedId": (user(""), "users[sourcedId]: empty", None),
    "blank sourcedId": (user("   "), "users[sourcedId]: empty", None),
    "null sourcedId": (user(None), "users[sourcedId]: missing", None),
    "int sourcedId": (user(42), "users[sourcedId]: not a string (int)", None),
    "object sourcedId": (user({"id": "a"}), "users[sourcedId]: not a string (dict)", None),
    "array sourcedId": (user(["a"]), "users[sourcedId]: not a string (list)", None),
    "1025-char sourcedId": (user("s" * 1025), "users[sourcedId]: longer than 1024", None),
    "missing status": (
        without(user("bad-no-status"), "status"),
        "users[status]: missing",
        "bad-no-status",
    ),
    "unknown status": (
        user("bad-status", status="archived"),
        "users[status]: unknown status (allowed: active, tobedeleted, inactive)",
        "bad-status",
    ),
    "int status": (user("bad-int-status", status=1), "users[status]: unknown", "bad-int-status"),
    "missing dateLastModified": (
        without(user("bad-no-dlm"), "dateLastModified"),
        "users[dateLastModified]: missing",
        "bad-no-dlm",
    ),
    "word date": (
        user("bad-word-dlm", dateLastModified="yesterday"),
        "users[dateLastModified]: not an ISO-8601 timestamp",
        "bad-word-dlm",
    ),
    "month 13 date": (
        user("bad-m13-dlm", dateLastModified="2024-13-45T99:99:99Z"),
        "users[dateLastModified]: not an ISO-8601 timestamp",
        "bad-m13-dlm",
    ),
    "30 February": (
        user("bad-feb30-dlm", dateLastModified="2024-02-30T00:00:00Z"),
        "users[dateLastModified]: not an ISO-8601 timestamp",
        "bad-feb30-dlm",
    ),
    "epoch-number date": (
        user("bad-int-dlm", dateLastModified=1700000000),
        "users[dateLastModified]: not an ISO-8601 timestamp",
        "bad-int-dlm",
    ),
    "100-digit fraction date": (
        user("bad-long-dlm", dateLastModified="2024-05-01T10:00:00." + "0" * 100 + "Z"),
        "users[dateLastModified]: not an ISO-8601 timestamp",
        "bad-long-dlm",
    ),
    "float name": (
        user("bad-float-name", givenName=1.5),
        "users[givenName]: not a string (float)",
        "bad-float-name",
    ),
    "bool name": (
        user("bad-bool-name", givenName=True),
        "users[givenName]: not a string (bool)",
        "bad-bool-name",
    ),
    "object name": (
        user("bad-obj-name", givenName={"first": "Ann"}),
        "users[givenName]: not a string (dict)",
        "bad-obj-name",
    ),
    "array name": (
        user("bad-list-name", givenName=["Ann"]),
        "users[givenName]: not a string (list)",
        "bad-list-name",
    ),
    "70k-char name": (
        user("bad-huge-name", givenName="A" * 70_000),
        "users[givenName]: longer than 65536 characters",
        "bad-huge-name",
    ),
    "word boolean": (
        user("bad-bool", enabledUser="maybe"),
        "users[enabledUser]: not a boolean (a string other than true or false)",
        "bad-bool",
    ),
    "int boolean": (
        user("bad-int-bool", enabledUser=1),
        "users[enabledUser]: not a boolean (int)",
        "bad-int-bool",
    ),
    "object where an array belongs": (
        user("bad-roles-obj", roles={"role": "student"}),
        "users[roles]: not an array (dict)",
        "bad-roles-obj",
    ),
    "string item where an object belongs": (
        user("bad-roles-item", roles=["student"]),
        "users[roles][0]: not an object (str)",
        "bad-roles-item",
    ),
    "role without roleType": (
        user("bad-role", roles=[{"role": "student"}]),
        "users[roles][0][roleType]: missing",
        "bad-role",
    ),
    "int GUIDRef sourcedId, nested": (
        user("bad-ref", roles=[{"roleType": "primary", "role": "x", "org": {"sourcedId": 7}}]),
        "users[roles][0][org][sourcedId]: not a string (int)",
        "bad-ref",
    ),
    "string where a GUIDRef belongs": (
        user("bad-org-str", primaryOrg="org-1"),
        "users[primaryOrg]: not an object (str)",
        "bad-org-str",
    ),
    "array nested in an array": (
        user("bad-nested", userIds=[[{"type": "x", "identifier": "y"}]]),
        "users[userIds][0]: not an object (list)",
        "bad-nested",
    ),
    "empty GUIDRef sourcedId": (
        user("bad-agent", agents=[{"sourcedId": ""}]),
        "users[agents][0][sourcedId]: empty",
        "bad-agent",
    ),
    "array metadata": (
        user("bad-metadata", metadata=["a"]),
        "users[metadata]: not an object (list)",
        "bad-metadata",
    ),
    "nested grades": (
        user("bad-grades", grades=[["5"]]),
        "users[grades][0]: not a string (list)",
        "bad-grades",
    ),
    "10001 grades": (
        user("bad-many", grades=["5"] * 10_001),
        "users[grades]: more than 10000 items",
        "bad-many",
    ),
    "1.1 orgs without role": (
        without(user("bad-legacy", orgs=[{"sourcedId": "org-1"}]), "roles"),
        "users[role]: missing (a 1.1 user with orgs needs a role)",
        "bad-legacy",
    ),
    "null record": (None, "users: not a JSON object (NoneType)", None),
    "number record": (42, "users: not a JSON object (int)", None),
    "string record": ("user", "users: not a JSON object (str)", None),
    "array record": ([user("bad-in-array")], "users: not a JSON object (list)", None),
}


_DELTA = re.compile(r"dateLastModified(>=?)'([^']*)'")


def _newer(item: bytes, op: str, bound: datetime) -> bool:
    """Whether a raw record passes ``dateLastModified<op>bound`` (unreadable ones do not)."""
    try:
        record = orjson.loads(item)
    except orjson.JSONDecodeError:
        return False
    stamp = record.get("dateLastModified") if isinstance(record, dict) else None
    moment = parse_timestamp(stamp) if isinstance(stamp, str) else None
    if moment is None:
        return False
    return moment >= bound if op == ">=" else moment > bound


class RawRoster:
    """Serves ``{entity: [raw JSON bytes of one record, ...]}`` as a OneRoster 1.2 server
    (bearer auth, limit/offset paging, ``X-Total-Count``, the ``dateLastModified>`` filter)."""

    def __init__(self, collections: dict[str, Sequence[bytes]]) -> None:
        self.collections = collections
        self.token = secrets.token_hex(8)
        self.url = ""

    async def _list(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"imsx_codeMajor": "failure"}, status=401)
        entity = request.match_info["entity"]
        items = self.collections.get(entity)
        if items is None:
            return web.json_response({"imsx_codeMajor": "failure"}, status=404)
        limit = int(request.query.get("limit", "100"))
        offset = int(request.query.get("offset", "0"))
        delta = _DELTA.fullmatch(request.query.get("filter", ""))
        if delta is not None:
            bound = parse_timestamp(delta[2])
            assert bound is not None
            items = [i for i in items if _newer(i, delta[1], bound)]
        chunk = items[offset : offset + limit]
        body = b'{"%s":[' % entity.encode() + b",".join(chunk) + b"]}"
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"X-Total-Count": str(len(items))},
        )

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get(BASE + "/{entity}", self._list)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self.url
        finally:
            await runner.cleanup()


def config_for(
    server: RawRoster, *, bootstrap: str, prefix: str, state_dir: Path, page_size: int = 7
) -> Config:
    """A one-district config (bearer auth, users + orgs) pointing at ``server``."""
    return config_from_mapping(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topic_prefix": prefix,
                "client_id": prefix,
                "partitions": 2,
                "replication_factor": 1,
                "compression": "lz4",
            },
            "sync": {"batch_size": 10},
            "state": {"dir": str(state_dir)},
            "http": {"listen": "127.0.0.1:0"},
            "districts": [
                {
                    "id": DISTRICT,
                    "base_url": server.url,
                    "version": "1.2",
                    "auth": "bearer",
                    "bearer": server.token,
                    "entities": ["orgs", "users"],
                    "page_size": page_size,
                    "concurrency": 1,
                    "request_timeout": "10s",
                    "max_retries": 1,
                }
            ],
        },
        {},
    )


ORGS = [
    orjson.dumps({"sourcedId": "org-1", "status": "active", "dateLastModified": STAMP, "name": "A"})
]


async def dead_letters(bootstrap: str, prefix: str) -> list[dict[str, Any]]:
    """The committed dead letters, decoded with the schemas of ``<prefix>.schemas``."""
    decoder = await Decoder.from_topic(bootstrap, prefix)
    out = []
    for _key, value, _headers in await read_all(bootstrap, f"{prefix}.deadletter"):
        assert value is not None
        out.append(decoder.decode(value))
    return out


class FailingSchemas(Schemas):
    """``Schemas`` whose record encoding fails for one sourcedId, as a value that normalises but
    does not fit the Avro schema would."""

    poison = "enc-fail"

    def encode_body(self, name: str, value: Any) -> bytes:
        if isinstance(value, dict) and value.get("sourcedId") == self.poison:
            raise EncodingError(f"{name}[givenName]: cannot be encoded (test poison)")
        return super().encode_body(name, value)


def failing_schemas() -> Schemas:
    """``FailingSchemas`` loaded like any ``Schemas`` (``load`` builds the subclass)."""
    return FailingSchemas.load()


async def test_corpus_of_malformed_records_dead_letters_each_and_emits_every_valid_one(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """39 kinds of malformed records, interleaved with 60 valid ones over 7-record pages, plus a
    sourcedId listed twice with different content, one listed twice identically, and a valid
    record whose Avro encoding fails: the sync completes; each malformed record has exactly one
    dead letter with its precise reason and raw JSON; every valid record is CREATED exactly
    once; a second full sync emits no event."""
    valid = [f"ok-{i:03d}" for i in range(60)]
    items: list[bytes] = []
    bad = list(CORPUS.values())
    for i, sid in enumerate(valid):
        items.append(orjson.dumps(user(sid, givenName=f"Valid{i}")))
        if i < len(bad):
            items.append(orjson.dumps(bad[i][0]))
    items += [
        orjson.dumps(user("dup-diff", givenName="First")),
        orjson.dumps(user("dup-diff", givenName="Second")),
        orjson.dumps(user("dup-same")),
        orjson.dumps(user("dup-same")),
        orjson.dumps(user(FailingSchemas.poison)),
        orjson.dumps(user("ok-last")),
    ]
    server = RawRoster({"orgs": ORGS, "users": items})
    async with server.serve():
        config = config_for(
            server, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path
        )
        async with Service(config) as service:
            service.encoder.schemas = failing_schemas()
            results = await service.sync(DISTRICT)
            users = next(r for r in results if r.entity == "users")
            assert users.fetched == len(items)
            assert users.rejected == len(CORPUS) + 2  # + the second dup-diff + the poison
            expected_keys = {*valid, "dup-diff", "dup-same", "ok-last"}
            assert users.created == len(expected_keys)

            letters = await dead_letters(kafka_bootstrap, unique_prefix)
            first = await rebuild(kafka_bootstrap, unique_prefix)

            again = await service.sync(DISTRICT, full=True)
            assert next(r for r in again if r.entity == "users").created == 0

    assert len(letters) == len(CORPUS) + 2
    assert {d["district_id"] for d in letters} == {DISTRICT}
    assert {d["entity"] for d in letters} == {"users"}
    by_raw: dict[bytes, list[dict[str, Any]]] = {}
    for letter in letters:
        by_raw.setdefault(letter["raw"], []).append(letter)
    for kind, (raw, reason, expected_sid) in CORPUS.items():
        found = by_raw.get(orjson.dumps(raw), [])
        assert len(found) == 1, kind
        assert found[0]["reason"].startswith(reason), (kind, found[0]["reason"])
        assert found[0]["sourced_id"] == expected_sid, kind
    dup = [d for d in letters if d["sourced_id"] == "dup-diff"]
    assert len(dup) == 1
    assert "appears twice in one listing with different content" in dup[0]["reason"]
    assert orjson.loads(dup[0]["raw"])["givenName"] == "Second"
    poison = [d for d in letters if d["sourced_id"] == FailingSchemas.poison]
    assert len(poison) == 1
    assert "does not fit its Avro schema" in poison[0]["reason"]
    assert orjson.loads(poison[0]["raw"])["sourcedId"] == FailingSchemas.poison

    assert first.violations == []
    assert first.keys("users", DISTRICT) == expected_keys
    assert first.keys("orgs", DISTRICT) == {"org-1"}
    assert first.ops == {"CREATED": len(expected_keys) + 1}
    assert first.record("users", DISTRICT, "dup-diff")["givenName"] == "First"
    final = await rebuild(kafka_bootstrap, unique_prefix)
    assert final.ops == first.ops
    assert final.violations == []


#: Pages that are valid JSON (RFC 8259) or at least what real servers send, each carrying one
#: bad record among valid ones, that the product cannot parse record by record today.
POISON_PAGES = {
    # JSON escapes are UTF-16 code units; an unpaired surrogate is legal JSON text, and Java
    # and JavaScript servers emit it. orjson refuses the whole document.
    "unpaired high surrogate": b'{"sourcedId":"bad-surrogate","status":"active",'
    b'"dateLastModified":"2024-05-01T10:00:00.000Z","givenName":"A\\ud800B"}',
    "unpaired low surrogate": b'{"sourcedId":"bad-low-surrogate","status":"active",'
    b'"dateLastModified":"2024-05-01T10:00:00.000Z","givenName":"\\udc00"}',
    # A number out of double range is grammatical JSON; orjson refuses the whole document.
    "number out of double range": b'{"sourcedId":"bad-1e400","status":"active",'
    b'"dateLastModified":"2024-05-01T10:00:00.000Z","givenName":1e400}',
}


async def sync_roster(
    users: list[bytes],
    *,
    bootstrap: str,
    prefix: str,
    state_dir: Path,
    then: list[bytes] | None = None,
) -> tuple[Rebuilt, list[dict[str, Any]], list[list[EntityResult]]]:
    """Serve ``users`` (and one org), sync once, and, given ``then``, serve those users and
    sync again; returns the rebuilt event stream, the dead letters and each sync's results."""
    server = RawRoster({"orgs": ORGS, "users": users})
    passes = []
    async with server.serve():
        config = config_for(server, bootstrap=bootstrap, prefix=prefix, state_dir=state_dir)
        async with Service(config) as service:
            passes.append(await service.sync(DISTRICT))
            if then is not None:
                server.collections["users"] = then
                passes.append(await service.sync(DISTRICT))
    return await rebuild(bootstrap, prefix), await dead_letters(bootstrap, prefix), passes


def _deep_user() -> bytes:
    """A user carrying an extension nested 1000 arrays deep (a page orjson still parses)."""
    depth = 1000
    deep = b"[" * depth + b"1" + b"]" * depth
    return orjson.dumps(user("bad-deep"))[:-1] + b',"deep":' + deep + b"}"


#: One bad record among valid ones, and the sourcedId its dead letter names (None when the
#: record cannot be parsed at all).
BAD_AMONG_VALID: dict[str, tuple[Callable[[], bytes], str | None]] = {
    **{kind: (functools.partial(bytes, raw), None) for kind, raw in POISON_PAGES.items()},
    # An incompressible photo in its metadata, far past the bounds (a cut raw is fine).
    "2 MB record": (
        lambda: orjson.dumps(user("bad-2mb", metadata={"photo": secrets.token_urlsafe(1_500_000)})),
        "bad-2mb",
    ),
    "nested 1000 deep": (_deep_user, "bad-deep"),
}


@pytest.mark.parametrize("kind", sorted(BAD_AMONG_VALID))
async def test_one_bad_record_among_valid_ones_is_dead_lettered_not_the_page(
    kind: str, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A page holding one record that cannot be carried (an unpaired surrogate escape, a number
    beyond double range, 2 MB of incompressible metadata, an extension nested 1000 deep) among
    valid ones: the valid records are emitted and the bad one has exactly one dead letter."""
    make, sourced_id = BAD_AMONG_VALID[kind]
    items = [orjson.dumps(user(f"ok-{i}")) for i in range(3)]
    items.insert(1, make())
    rebuilt, letters, _ = await sync_roster(
        items, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path
    )
    assert rebuilt.keys("users", DISTRICT) == {"ok-0", "ok-1", "ok-2"}
    assert len(letters) == 1
    if sourced_id is not None:
        assert [d["sourced_id"] for d in letters] == [sourced_id]


def test_the_deep_record_page_itself_parses() -> None:
    """The 1000-deep record is within what the JSON parser accepts: the page parses, so it is
    the normaliser that must refuse it."""
    page = b'{"users":[' + orjson.dumps(user("ok")) + b"," + _deep_user() + b"]}"
    assert orjson.loads(page)


async def test_records_dated_year_one_sync_then_delta(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A server that stamps every record 0001-01-01T00:00:00 (a default date): the snapshot
    and the following delta both complete, and a changed record is UPDATED once."""
    items = [
        orjson.dumps(user(f"ok-{i}", dateLastModified="0001-01-01T00:00:00")) for i in range(3)
    ]
    changed = orjson.dumps(user("ok-0", givenName="Changed", dateLastModified=STAMP))
    rebuilt, _, _ = await sync_roster(
        items,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path,
        then=[changed, *items[1:]],
    )
    assert rebuilt.ops == {"CREATED": 4, "UPDATED": 1}


async def test_a_future_dated_record_does_not_blind_the_deltas(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A valid record stamped 9999-12-31 among ordinary ones (a source clock or data-entry
    error): the next delta still sees an ordinary record's change."""
    items = [orjson.dumps(user(f"ok-{i}")) for i in range(3)]
    items.append(orjson.dumps(user("future", dateLastModified="9999-12-31T23:59:59Z")))
    changed = orjson.dumps(user("ok-0", givenName="Changed", dateLastModified=NOW))
    rebuilt, _, passes = await sync_roster(
        items,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path,
        then=[changed, *items[1:]],
    )
    assert {r.mode for r in passes[1]} == {"DELTA"}
    assert rebuilt.events[("users", f"{DISTRICT}/ok-0", "UPDATED")] == 1
