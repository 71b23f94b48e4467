"""An independent checker of what the producer committed.

It does not use ``producer.avro``: it reads the writer schemas from ``<prefix>.schemas`` (as a
stock consumer would), decodes single-object Avro with plain fastavro, reads every event topic
with ``isolation_level=read_committed`` and rebuilds the state per key, counting protocol
violations: an event for a key in the wrong state (CREATED for a live key, UPDATED or DELETED
for an unknown one) and a DELETED not followed by its tombstone.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastavro import parse_schema, schemaless_reader

from producer.kafka.reader import TopicReader, settled

if TYPE_CHECKING:
    from producer.model import Entity

#: The entity names (written out: the checker does not take the producer's word for them).
ENTITIES: tuple[Entity, ...] = (
    "orgs",
    "academicSessions",
    "courses",
    "classes",
    "users",
    "enrollments",
    "demographics",
)


async def read_all(
    bootstrap: str, topic: str, **options: Any
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every committed record of ``topic`` up to its end, in partition order (``options``: more
    consumer settings, e.g. SASL credentials). Transactions open when it is called are waited
    for first (``producer.kafka.reader.settled``)."""
    # A commit returns before its markers reach every partition: a reader started right after
    # one could stop short of it in some partitions (seen in CI once, in test_forget). A
    # transaction a killed producer left open holds the wait until it is fenced or times out:
    # after 10 s the read goes on up to what is stable then.
    await settled({"bootstrap_servers": bootstrap, **options}, [topic], seconds=10.0)
    reader = TopicReader(
        {"bootstrap_servers": bootstrap, **options}, topic, action=f"checker: {topic}"
    )
    async with reader:
        return [(m.key, m.value, dict(m.headers)) for m in await reader.read_all()]


class Decoder:
    """Single-object Avro decoding with schemas taken from the schemas topic."""

    def __init__(self, schemas: dict[bytes, Any]) -> None:
        self._schemas = schemas

    @classmethod
    async def from_topic(cls, bootstrap: str, prefix: str) -> Decoder:
        schemas = {}
        for key, value, _ in await read_all(bootstrap, f"{prefix}.schemas"):
            assert key is not None
            assert value is not None
            schemas[bytes.fromhex(key.decode())] = parse_schema(json.loads(value))
        return cls(schemas)

    def decode(self, data: bytes) -> dict[str, Any]:
        assert data[:2] == b"\xc3\x01", "not Avro single-object encoding"
        schema = self._schemas[data[2:10]]
        decoded = schemaless_reader(io.BytesIO(data[10:]), schema)
        assert isinstance(decoded, dict)
        return decoded


@dataclass
class Rebuilt:
    """State rebuilt from events, with counts and violations."""

    state: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    events: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    event_ids: Counter[str] = field(default_factory=Counter)
    envelopes: list[dict[str, Any]] = field(default_factory=list)

    def keys(self, entity: str, district: str) -> set[str]:
        prefix = f"{district}/"
        return {k[len(prefix) :] for k in self.state[entity] if k.startswith(prefix)}

    def record(self, entity: str, district: str, sourced_id: str) -> dict[str, Any]:
        return self.state[entity][f"{district}/{sourced_id}"]


async def rebuild(bootstrap: str, prefix: str) -> Rebuilt:
    """Replay every event topic under ``prefix`` into a ``Rebuilt``."""
    decoder = await Decoder.from_topic(bootstrap, prefix)
    out = Rebuilt()
    for entity in ENTITIES:
        records = await read_all(bootstrap, f"{prefix}.{entity}")
        awaiting_tombstone: set[str] = set()
        for raw_key, value, _headers in records:
            assert raw_key is not None
            key = raw_key.decode()
            if value is None:
                if key not in awaiting_tombstone:
                    out.violations.append(f"{entity} {key}: tombstone without a DELETED before it")
                awaiting_tombstone.discard(key)
                continue
            if key in awaiting_tombstone:
                out.violations.append(f"{entity} {key}: DELETED not followed by its tombstone")
                awaiting_tombstone.discard(key)
            env = decoder.decode(value)
            out.envelopes.append(env)
            op = env["op"]
            out.events[(entity, key, op)] += 1
            out.ops[op] += 1
            out.event_ids[env["event_id"]] += 1
            live = out.state[entity]
            if op == "CREATED":
                if key in live:
                    out.violations.append(f"{entity} {key}: CREATED while live")
                live[key] = env["after"]
            elif op == "UPDATED":
                if key not in live:
                    out.violations.append(f"{entity} {key}: UPDATED while unknown")
                live[key] = env["after"]
            else:
                if key not in live:
                    out.violations.append(f"{entity} {key}: DELETED while unknown")
                live.pop(key, None)
                awaiting_tombstone.add(key)
        out.violations.extend(
            f"{entity} {k}: DELETED not followed by its tombstone" for k in awaiting_tombstone
        )
    duplicates = [i for i, n in out.event_ids.items() if n > 1]
    out.violations.extend(f"event_id {i} seen more than once" for i in duplicates)
    return out


# --------------------------------------------------------------------------------------------
# Comparison with the simulator's ground truth (used by the reliability tests).
#
# A poller sees a source at moments, not every write: two updates between polls are one
# UPDATED event. So the expected changes are derived from *truth snapshots* taken at moments
# the test knows the producer had caught up with (the test mutates, waits until the committed
# state equals the truth, and snapshots again). Between two consecutive snapshots each key makes
# at most one change: CREATED (new), UPDATED (record differs) or DELETED (gone or tobedeleted).
# Every change is identified by (entity, key, op, stamp), where ``stamp`` is the
# ``dateLastModified`` of the record after a CREATED/UPDATED and of the record before a DELETED.

#: entity -> "<district>/<sourcedId>" -> active record as served
TruthSnapshot = dict[str, dict[str, dict[str, Any]]]

#: Fields compared between the rebuilt state and the truth (all entities / extra per entity).
STATE_FIELDS = ("sourcedId", "status", "dateLastModified")
EXTRA_STATE_FIELDS: dict[str, tuple[str, ...]] = {"users": ("givenName", "familyName")}


@dataclass(frozen=True, order=True)
class TruthChange:
    """One change as the checker identifies it."""

    entity: str
    key: str
    op: str
    stamp: str


def truth_snapshot(sim: Any, entities: tuple[str, ...] = ENTITIES) -> TruthSnapshot:
    """The active records of every district of a ``producer.simulator.Simulator``, now."""
    snap: TruthSnapshot = {e: {} for e in entities}
    for district in sim.districts:
        for entity in entities:
            for sid, record in district.truth_state(entity).items():
                snap[entity][f"{district.spec.id}/{sid}"] = dict(record)
    return snap


def expected_changes(snapshots: list[TruthSnapshot]) -> Counter[TruthChange]:
    """The changes a producer must emit to go from nothing through each snapshot in turn."""
    out: Counter[TruthChange] = Counter()
    previous: TruthSnapshot = {}
    for snap in snapshots:
        for entity, now in snap.items():
            before = previous.get(entity, {})
            for key, record in now.items():
                old = before.get(key)
                if old is None:
                    out[TruthChange(entity, key, "CREATED", str(record["dateLastModified"]))] += 1
                elif old != record:
                    out[TruthChange(entity, key, "UPDATED", str(record["dateLastModified"]))] += 1
            for key, old in before.items():
                if key not in now:
                    out[TruthChange(entity, key, "DELETED", str(old["dateLastModified"]))] += 1
        previous = snap
    return out


def observed_changes(rebuilt: Rebuilt) -> Counter[TruthChange]:
    """The changes the committed events describe."""
    out: Counter[TruthChange] = Counter()
    for env in rebuilt.envelopes:
        image = env["before"] if env["op"] == "DELETED" else env["after"]
        stamp = str((image or {}).get("dateLastModified", ""))
        key = f"{env['district_id']}/{env['sourced_id']}"
        out[TruthChange(env["entity"], key, env["op"], stamp)] += 1
    return out


@dataclass
class TruthComparison:
    """Lost, duplicated and spurious changes, and where the final state differs from the truth."""

    lost: list[TruthChange] = field(default_factory=list)
    duplicated: list[TruthChange] = field(default_factory=list)
    spurious: list[TruthChange] = field(default_factory=list)
    state_mismatches: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    expected: int = 0
    observed: int = 0

    @property
    def counts(self) -> dict[str, int]:
        return {
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "spurious": len(self.spurious),
            "state_mismatches": len(self.state_mismatches),
            "violations": len(self.violations),
        }

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def describe(self, limit: int = 10) -> str:
        parts = [f"{self.counts} (expected {self.expected} changes, observed {self.observed})"]
        for name in ("lost", "duplicated", "spurious", "state_mismatches", "violations"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}: {items[:limit]}")
        return "; ".join(parts)


def state_mismatches(rebuilt: Rebuilt, snapshot: TruthSnapshot) -> list[str]:
    """Keys missing, extra, or with different compared fields, rebuilt state vs ``snapshot``."""
    out: list[str] = []
    for entity, truth in snapshot.items():
        live = rebuilt.state.get(entity, {})
        out.extend(
            f"{entity} {key}: in the truth, not in the committed state"
            for key in sorted(set(truth) - set(live))
        )
        out.extend(
            f"{entity} {key}: in the committed state, not in the truth"
            for key in sorted(set(live) - set(truth))
        )
        fields = STATE_FIELDS + EXTRA_STATE_FIELDS.get(entity, ())
        out.extend(
            f"{entity} {key}: {name} is {live[key].get(name)!r}, truth {truth[key][name]!r}"
            for key in sorted(set(live) & set(truth))
            for name in fields
            if name in truth[key] and live[key].get(name) != truth[key][name]
        )
    return out


def compare_with_truth(rebuilt: Rebuilt, snapshots: list[TruthSnapshot]) -> TruthComparison:
    """Compare committed events with the changes the snapshots imply, and the rebuilt state
    with the last snapshot."""
    expected = expected_changes(snapshots)
    observed = observed_changes(rebuilt)
    result = TruthComparison(
        expected=sum(expected.values()),
        observed=sum(observed.values()),
        violations=list(rebuilt.violations),
    )
    for change, n in sorted(observed.items()):
        wanted = expected.get(change, 0)
        if n > wanted:
            target = result.duplicated if wanted else result.spurious
            target.extend([change] * (n - wanted if wanted else n))
    for change, n in sorted(expected.items()):
        got = observed.get(change, 0)
        if got < n:
            result.lost.extend([change] * (n - got))
    if snapshots:
        result.state_mismatches = state_mismatches(rebuilt, snapshots[-1])
    return result


async def read_decoded(bootstrap: str, prefix: str, topic: str) -> list[dict[str, Any] | None]:
    """Every committed value of ``topic`` decoded with the schemas topic (None for tombstones)."""
    decoder = await Decoder.from_topic(bootstrap, prefix)
    return [
        None if value is None else decoder.decode(value)
        for _, value, _ in await read_all(bootstrap, topic)
    ]


async def read_checkpoints(bootstrap: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The latest committed checkpoint per key (``<district>/<entity>`` or as the producer keys
    them), decoded."""
    decoder = await Decoder.from_topic(bootstrap, prefix)
    out: dict[str, dict[str, Any]] = {}
    for key, value, _ in await read_all(bootstrap, f"{prefix}.checkpoints"):
        if key is None:
            continue
        if value is None:
            out.pop(key.decode(), None)
        else:
            out[key.decode()] = decoder.decode(value)
    return out
