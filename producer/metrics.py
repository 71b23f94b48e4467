"""Prometheus metrics, owned by one ``Metrics`` object with its own registry (no globals).

Components receive the ``Metrics`` instance and call its small typed methods; ``/metrics`` serves
``render()``. Labels are district ids, entity names, operation names and error *class* names,
never messages or secrets.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from producer.model import Op, SyncMode
from producer.protocols import ClientEvent, PageFetched, RequestRetried
from producer.timestamps import parse_timestamp

if TYPE_CHECKING:
    from producer.sync import EntityResult

#: ``Content-Type`` of ``render()``.
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_Metric = Counter | Gauge | Histogram
_M = TypeVar("_M", Counter, Gauge, Histogram)
_PAGE_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SYNC_BUCKETS: Final = (0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0)


def _kind(kind: str | BaseException | type[BaseException]) -> str:
    """An error label: the class name for exceptions, never the message (it may hold secrets)."""
    if isinstance(kind, BaseException):
        return type(kind).__name__
    if isinstance(kind, type):
        return kind.__name__
    return kind


class Metrics:
    """Every metric of the daemon, registered in a private ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._records = Counter(
            "oneroster_records_fetched",
            "Records fetched from OneRoster servers.",
            ["district", "entity"],
            registry=r,
        )
        self._events = Counter(
            "oneroster_events",
            "Change events committed to Kafka.",
            ["district", "entity", "op"],
            registry=r,
        )
        self._deadletters = Counter(
            "oneroster_deadletters",
            "Records sent to the dead-letter topic.",
            ["district", "entity"],
            registry=r,
        )
        self._errors = Counter(
            "oneroster_errors",
            "Failed polls and requests, by error class.",
            ["district", "kind"],
            registry=r,
        )
        self._retries = Counter(
            "oneroster_retries",
            "Retried requests, by reason.",
            ["district", "reason"],
            registry=r,
        )
        self._mass_delete_held = Counter(
            "oneroster_mass_delete_held",
            "Full syncs whose deletes the mass-delete guard held back.",
            ["district", "entity"],
            registry=r,
        )
        self._page_seconds = Histogram(
            "oneroster_page_seconds",
            "Time to fetch one page.",
            ["district"],
            buckets=_PAGE_BUCKETS,
            registry=r,
        )
        self._sync_seconds = Histogram(
            "oneroster_sync_seconds",
            "Time to sync one entity of one district.",
            ["district", "entity", "mode"],
            buckets=_SYNC_BUCKETS,
            registry=r,
        )
        self._last_success = Gauge(
            "oneroster_last_success_timestamp_seconds",
            "Unix time of the last successful sync.",
            ["district", "entity"],
            registry=r,
        )
        self._cursor_lag = Gauge(
            "oneroster_cursor_lag_seconds",
            "Now minus the delta cursor (the newest dateLastModified committed).",
            ["district", "entity"],
            registry=r,
        )
        self._state_keys = Gauge(
            "oneroster_state_keys", "Keys in the local state store.", registry=r
        )
        self._ready = Gauge("oneroster_ready", "1 when /readyz answers 200.", registry=r)
        self._shards_owned = Gauge(
            "oneroster_shards_owned", "Shards this instance owns now.", registry=r
        )
        self._rebalances = Counter(
            "oneroster_rebalances",
            "Group rebalances this instance went through (assignments received).",
            registry=r,
        )
        self._shard_restore_seconds = Gauge(
            "oneroster_shard_restore_seconds",
            "Seconds the last restore of a shard took (state and checkpoints).",
            ["shard"],
            registry=r,
        )
        self._district_series: dict[str, set[tuple[_Metric, tuple[str, ...]]]] = {}
        self._children: dict[tuple[_Metric, tuple[str, ...]], _Metric] = {}

    def _child(self, metric: _M, *values: str) -> _M:
        """The series of ``metric`` with label ``values`` (the first is the district), looked up
        once: ``labels()`` costs more than the update itself, and the fan-out updates a dozen
        series per entity pass."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
            self._district_series.setdefault(values[0], set()).add(key)
        return child  # type: ignore[return-value]

    # ----------------------------------------------------------------- counters

    def records_fetched(self, district: str, entity: str, n: int = 1) -> None:
        """``n`` records came back from the server."""
        child = self._child(self._records, district, entity)
        if n:
            child.inc(n)

    def events(self, district: str, entity: str, op: Op, n: int = 1) -> None:
        """``n`` events of kind ``op`` were committed."""
        child = self._child(self._events, district, entity, op)
        if n:
            child.inc(n)

    def deadletters(self, district: str, entity: str, n: int = 1) -> None:
        """``n`` records went to the dead-letter topic."""
        child = self._child(self._deadletters, district, entity)
        if n:
            child.inc(n)

    def error(self, district: str, kind: str | BaseException | type[BaseException]) -> None:
        """One failure, labelled by error class (an exception is reduced to its class name)."""
        self._child(self._errors, district, _kind(kind)).inc()

    def retry(self, district: str, reason: str) -> None:
        """One retried request (``reason`` e.g. ``"429"``, ``"timeout"``, ``"5xx"``)."""
        self._child(self._retries, district, reason).inc()

    def mass_delete_held(self, district: str, entity: str) -> None:
        """The mass-delete guard held back a full sync's deletes."""
        self._child(self._mass_delete_held, district, entity).inc()

    # ----------------------------------------------------------------- histograms

    def page(self, district: str, seconds: float) -> None:
        """One page took ``seconds`` to fetch."""
        self._child(self._page_seconds, district).observe(seconds)

    def sync(self, district: str, entity: str, mode: SyncMode, seconds: float) -> None:
        """A sync of one entity took ``seconds``."""
        self._child(self._sync_seconds, district, entity, mode).observe(seconds)

    # ----------------------------------------------------------------- gauges

    def last_success(self, district: str, entity: str, timestamp: float) -> None:
        """A sync of one entity succeeded at unix time ``timestamp``."""
        self._child(self._last_success, district, entity).set(timestamp)

    def cursor_lag(self, district: str, entity: str, seconds: float) -> None:
        """How far the committed delta cursor is behind now."""
        self._child(self._cursor_lag, district, entity).set(seconds)

    def state_keys(self, n: int) -> None:
        """Keys held by the local state store."""
        self._state_keys.set(n)

    def shards_owned(self, n: int) -> None:
        """How many shards this instance owns."""
        self._shards_owned.set(n)

    def rebalance(self) -> None:
        """One assignment received from the group."""
        self._rebalances.inc()

    def shard_restored(self, shard: int, seconds: float) -> None:
        """The last restore of ``shard`` took ``seconds``."""
        self._shard_restore_seconds.labels(str(shard)).set(seconds)

    def ready(self, ready: bool) -> None:
        """Whether the daemon is ready (``/readyz``)."""
        self._ready.set(1 if ready else 0)

    # ----------------------------------------------------------------- lifecycle

    def forget_district(self, district: str) -> None:
        """Drop every series of a district that was removed from the config."""
        for metric, values in self._district_series.pop(district, set()):
            metric.remove(*values)
            self._children.pop((metric, values), None)

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class MetricsObserver:
    """Feeds the sync engine's results and the source client's events into ``Metrics`` (the
    engine's ``SyncObserver``; ``client_event`` is a ``ClientObserver``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def pass_done(self, result: EntityResult) -> None:
        m = self._m
        d, e = result.district_id, result.entity
        m.events(d, e, "CREATED", result.created)
        m.events(d, e, "UPDATED", result.updated)
        m.events(d, e, "DELETED", result.deleted)
        m.deadletters(d, e, result.rejected)
        m.sync(d, e, result.mode, result.seconds)
        if result.skipped is None:
            m.last_success(d, e, time.time())
        if result.cursor is not None:
            cursor = parse_timestamp(result.cursor)
            if cursor is not None:
                m.cursor_lag(d, e, max(0.0, (datetime.now(UTC) - cursor).total_seconds()))

    def mass_delete_held(self, district_id: str, entity: str, count: int) -> None:
        self._m.mass_delete_held(district_id, entity)

    def client_event(self, event: ClientEvent) -> None:
        if isinstance(event, RequestRetried):
            self._m.retry(
                event.district_id, event.error or (str(event.status) if event.status else "error")
            )
        elif isinstance(event, PageFetched):
            self._m.page(event.district_id, event.latency)
            self._m.records_fetched(event.district_id, event.entity, event.records)
