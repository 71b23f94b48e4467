"""Mutations over the lazy base data, the simulated clock and the ground-truth change log.

A district's records are its :class:`~producer.simulator.data.Dataset` plus an overlay: a dict
of changed or created records by index and a sorted list of hard-deleted indices. Created
records get indices past the base count, so sourcedId order stays index order. Every mutation
stamps ``dateLastModified`` with the simulated clock (always at or after the start, which is
after every base record) and appends a :class:`TruthChange` to the shared log.
"""

from __future__ import annotations

import time
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from producer.model import Entity
from producer.simulator.data import Dataset, format_ts
from producer.simulator.filters import Filter, sort_key

Op = Literal["created", "updated", "deleted"]


class SimClock:
    """The simulated clock: wall time (or a frozen instant) plus an offset moved by tests."""

    def __init__(self, start: datetime | None = None, *, frozen: bool = False) -> None:
        self.start = (start or datetime.now(UTC)).astimezone(UTC)
        self.frozen = frozen
        self._wall0 = time.monotonic()
        self._offset = 0.0

    def now(self) -> datetime:
        """The current simulated time (UTC)."""
        elapsed = 0.0 if self.frozen else time.monotonic() - self._wall0
        return self.start + timedelta(seconds=elapsed + self._offset)

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        self._offset += seconds
        return self.now()


@dataclass(frozen=True, slots=True)
class TruthChange:
    """One real change, as the producer should eventually report it.

    ``op`` is ``deleted`` both for ``status=tobedeleted`` (``record`` holds the tobedeleted
    record, ``reason="tobedeleted"``) and for a hard delete (``record`` is None, ``reason="hard"``).
    """

    seq: int
    district: str
    entity: Entity
    sourced_id: str
    op: Op
    record: dict[str, Any] | None
    at: datetime
    reason: str | None = None


@dataclass(slots=True)
class TruthLog:
    """The ordered ground-truth change log shared by all districts of a simulator."""

    changes: list[TruthChange] = field(default_factory=list)

    def append(
        self,
        *,
        district: str,
        entity: Entity,
        sourced_id: str,
        op: Op,
        record: dict[str, Any] | None,
        at: datetime,
        reason: str | None = None,
    ) -> TruthChange:
        change = TruthChange(
            len(self.changes) + 1, district, entity, sourced_id, op, record, at, reason
        )
        self.changes.append(change)
        return change


@dataclass(frozen=True, slots=True)
class View:
    """A served collection: an entity, the base index range it covers and a record test."""

    entity: Entity
    kind: str | None  # org/session type or user role the collection is limited to

    def accepts(self, record: dict[str, Any]) -> bool:
        if self.kind is None:
            return True
        if self.entity == "users":
            if "role" in record:
                return bool(record["role"] == self.kind)
            return any(r.get("role") == self.kind for r in record.get("roles", ()))
        return bool(record.get("type") == self.kind)


VIEWS: Final[dict[str, View]] = {
    "orgs": View("orgs", None),
    "schools": View("orgs", "school"),
    "academicSessions": View("academicSessions", None),
    "terms": View("academicSessions", "term"),
    "gradingPeriods": View("academicSessions", "gradingPeriod"),
    "courses": View("courses", None),
    "classes": View("classes", None),
    "users": View("users", None),
    "students": View("users", "student"),
    "teachers": View("users", "teacher"),
    "enrollments": View("enrollments", None),
    "demographics": View("demographics", None),
}


class Selection:
    """The records of one listing request, addressable by position for offset paging."""

    def __init__(
        self,
        total: int,
        positions: Callable[[int, int], list[int]],
        fetch: Callable[[int], dict[str, Any] | None],
    ) -> None:
        self.total = total
        self._positions = positions
        self._fetch = fetch

    def page(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Records at positions ``offset .. offset+limit`` (fewer at the end)."""
        stop = min(self.total, offset + limit)
        if offset >= stop:
            return []
        out = []
        for index in self._positions(offset, stop):
            rec = self._fetch(index)
            if rec is not None:
                out.append(rec)
        return out


class DistrictStore:
    """The live records of one district: base data, overlay, mutations and truth."""

    def __init__(self, dataset: Dataset, clock: SimClock, log: TruthLog) -> None:
        self.data = dataset
        self.clock = clock
        self.log = log
        self.revision = 0
        self._overlay: dict[str, dict[int, dict[str, Any]]] = {e: {} for e in dataset.counts()}
        self._deleted: dict[str, list[int]] = {e: [] for e in dataset.counts()}
        self._created: dict[str, list[int]] = {e: [] for e in dataset.counts()}
        self._next: dict[str, int] = dataset.counts()
        self._cache: dict[tuple[Any, ...], list[int]] = {}

    # -- reads --------------------------------------------------------------------------------
    def base_range(self, view: View) -> tuple[int, int]:
        """Index range of the base records that ``view`` covers."""
        data = self.data
        if view.entity == "orgs" and view.kind == "school":
            return 1, data.count("orgs")
        if view.entity == "academicSessions" and view.kind == "term":
            return 1, 3
        if view.entity == "academicSessions" and view.kind == "gradingPeriod":
            return 3, 7
        if view.entity == "users" and view.kind is not None:
            return data.user_ranges()[f"{view.kind}s"]
        return 0, data.count(view.entity)

    def get_index(self, entity: Entity, index: int) -> dict[str, Any] | None:
        """The live record at ``index`` or None (hard-deleted or never existed)."""
        over = self._overlay[entity].get(index)
        if over is not None:
            return over
        if index >= self.data.count(entity) or index < 0:
            return None
        deleted = self._deleted[entity]
        pos = bisect_left(deleted, index)
        if pos < len(deleted) and deleted[pos] == index:
            return None
        return self.data.record(entity, index)

    def get(self, entity: Entity, sourced_id: str) -> dict[str, Any] | None:
        """The live record with ``sourced_id`` (any status) or None."""
        index = self.data.index_of(entity, sourced_id)
        return None if index is None else self.get_index(entity, index)

    def iter_entity(self, entity: Entity) -> Iterator[dict[str, Any]]:
        """Every live record of ``entity`` in sourcedId order (any status)."""
        for index in self._live_indices(VIEWS[entity]):
            rec = self.get_index(entity, index)
            if rec is not None:
                yield rec

    def _live_indices(self, view: View) -> Iterator[int]:
        lo, hi = self.base_range(view)
        deleted = set(self._deleted[view.entity])
        for index in range(lo, hi):
            if index not in deleted:
                yield index
        for index in self._created[view.entity]:
            rec = self._overlay[view.entity].get(index)
            if rec is not None and view.accepts(rec):
                yield index

    def select(
        self, view: View, flt: Filter | None, sort: str | None, descending: bool
    ) -> Selection:
        """The records of a listing, filtered and ordered, ready for offset paging."""
        entity = view.entity

        def fetch(index: int) -> dict[str, Any] | None:
            return self.get_index(entity, index)

        if flt is None and sort in (None, "sourcedId"):
            return self._fast_selection(view, descending, fetch)
        key = (view, flt.text if flt else None, sort, descending, self.revision)
        indices = self._cache.get(key)
        if indices is None:
            indices = self._scan(view, flt, sort, descending)
            if len(self._cache) >= 8:  # each entry may hold a large district's index list
                self._cache.clear()
            self._cache[key] = indices
        found = indices
        return Selection(len(found), lambda a, b: found[a:b], fetch)

    def _fast_selection(
        self, view: View, descending: bool, fetch: Callable[[int], dict[str, Any] | None]
    ) -> Selection:
        lo, hi = self.base_range(view)
        all_deleted = self._deleted[view.entity]
        deleted = all_deleted[bisect_left(all_deleted, lo) : bisect_left(all_deleted, hi)]
        deleted_set = set(deleted)
        created = [i for i in self._created[view.entity] if view.accepts(fetch(i) or {})]
        base_live = hi - lo - len(deleted)
        total = base_live + len(created)

        def ascending(a: int, b: int) -> list[int]:
            out: list[int] = []
            if a < base_live:
                index = lo + a
                for d in deleted:
                    if d <= index:
                        index += 1
                    else:
                        break
                while len(out) < min(b, base_live) - a:
                    if index not in deleted_set:
                        out.append(index)
                    index += 1
            start = max(a, base_live) - base_live
            out.extend(created[start : b - base_live] if b > base_live else [])
            return out

        def positions(a: int, b: int) -> list[int]:
            if not descending:
                return ascending(a, b)
            return ascending(total - b, total - a)[::-1]

        return Selection(total, positions, fetch)

    def _scan(
        self, view: View, flt: Filter | None, sort: str | None, descending: bool
    ) -> list[int]:
        entity = view.entity
        after = flt.modified_after() if flt is not None else None
        candidates: Iterator[int] | list[int]
        recent = None if after is None else self.data.recent(entity, after)
        if recent is not None:
            # Only base records the age permutation places after the threshold, and mutated
            # or created records, can match: no scan of the whole entity.
            lo, hi = self.base_range(view)
            deleted = set(self._deleted[entity])
            overlay = self._overlay[entity]
            base = {i for i in recent if lo <= i < hi and i not in deleted}
            base.update(i for i in overlay if lo <= i < hi)
            candidates = sorted(base) + [i for i in self._created[entity] if i not in base]
        else:
            candidates = self._live_indices(view)
        hits: list[tuple[tuple[int, str], int]] = []
        for index in candidates:
            rec = self.get_index(entity, index)
            if rec is None or not view.accepts(rec) or (flt is not None and not flt.matches(rec)):
                continue
            hits.append((sort_key(rec, sort) if sort else (0, ""), index))
        if sort and sort != "sourcedId":
            hits.sort(key=lambda h: h[0])
        else:
            hits.sort(key=lambda h: h[1])
        ordered = [index for _, index in hits]
        return ordered[::-1] if descending else ordered

    # -- mutations ----------------------------------------------------------------------------
    def _stamp(self) -> tuple[datetime, str]:
        now = self.clock.now()
        return now, format_ts(now)

    def _put(self, entity: Entity, index: int, record: dict[str, Any]) -> None:
        self._overlay[entity][index] = record
        self.revision += 1

    def _log(  # noqa: PLR0917 - private shorthand for the log's keyword-only append
        self,
        entity: Entity,
        sourced_id: str,
        op: Op,
        record: dict[str, Any] | None,
        at: datetime,
        reason: str | None = None,
    ) -> None:
        self.log.append(
            district=self.data.district_id,
            entity=entity,
            sourced_id=sourced_id,
            op=op,
            record=record,
            at=at,
            reason=reason,
        )

    def create(self, entity: Entity, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create a record modelled on a base record; ``fields`` override its values.

        The sourcedId is the next free one unless ``fields`` names an unused generated-format
        id past the base records (e.g. demographics sharing a created user's sourcedId).
        ValueError for any other sourcedId.
        """
        base_count = self.data.count(entity)
        fields = dict(fields or {})
        wanted = fields.pop("sourcedId", None)
        if wanted is None:
            index = self._next[entity]
        else:
            found = self.data.index_of(entity, str(wanted))
            if found is None or found < base_count or found in self._overlay[entity]:
                raise ValueError(f"{entity}: cannot create sourcedId {wanted!r} (taken or foreign)")
            index = found
        self._next[entity] = max(self._next[entity], index + 1)
        template = self.data.record(entity, index % base_count)
        now, stamp = self._stamp()
        record = {**template, **fields}
        record.update(
            sourcedId=self.data.sourced_id(entity, index), status="active", dateLastModified=stamp
        )
        insort(self._created[entity], index)
        self._put(entity, index, record)
        self._log(entity, record["sourcedId"], "created", record, now)
        return record

    def update(self, entity: Entity, sourced_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Change fields of a live record and bump its ``dateLastModified``; KeyError if gone."""
        index = self.data.index_of(entity, sourced_id)
        current = None if index is None else self.get_index(entity, index)
        if current is None or index is None:
            raise KeyError(f"{entity}/{sourced_id} does not exist")
        now, stamp = self._stamp()
        record = {**current, **{k: v for k, v in fields.items() if k != "sourcedId"}}
        record["dateLastModified"] = stamp
        self._put(entity, index, record)
        was_active = current.get("status") == "active"
        is_active = record.get("status") == "active"
        op: Op
        reason = None
        if is_active:
            op = "updated" if was_active else "created"
        else:
            op, reason = "deleted", "tobedeleted"
        self._log(entity, sourced_id, op, record, now, reason)
        return record

    def mark_tobedeleted(self, entity: Entity, sourced_id: str) -> dict[str, Any]:
        """Set ``status=tobedeleted`` (a soft delete the delta filter can see)."""
        return self.update(entity, sourced_id, {"status": "tobedeleted"})

    def hard_delete(self, entity: Entity, sourced_id: str) -> None:
        """Remove a record entirely (only a full listing can notice); KeyError if gone."""
        index = self.data.index_of(entity, sourced_id)
        current = None if index is None else self.get_index(entity, index)
        if current is None or index is None:
            raise KeyError(f"{entity}/{sourced_id} does not exist")
        self._overlay[entity].pop(index, None)
        if index < self.data.count(entity):
            insort(self._deleted[entity], index)
        else:
            self._created[entity].remove(index)
        self.revision += 1
        self._log(entity, sourced_id, "deleted", None, self.clock.now(), "hard")

    # -- truth --------------------------------------------------------------------------------
    def truth_state(self, entity: Entity) -> dict[str, dict[str, Any]]:
        """Every active record of ``entity`` as served (without quirks), by sourcedId."""
        return {
            rec["sourcedId"]: rec for rec in self.iter_entity(entity) if rec["status"] == "active"
        }
