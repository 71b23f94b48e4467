"""The orchestrator: wires config into sources, the shards' state stores and writers, and the
sync engines.

A deployment has ``kafka.shards`` shards (``producer.kafka.shards``): district d belongs to
shard ``shard_of(d)``, whose state and checkpoints are partition ``shard_of(d)`` of the state
and checkpoints topics. ``Service`` keeps the shared parts and a dict of the ``Shard`` objects
it owns; each shard has its own transactional writer (``<client_id>-shard-<n>``), its own SQLite
file (``<state.dir>/<client_id>-shard-<n>.sqlite``), its checkpoints and its districts' engines.

``Service(config)`` used directly (the one-shot commands, tests) owns every shard. The daemon
builds it with ``own_all=False`` and lets the consumer group decide (``assign``/``release``).

Start (shared parts; resources entered in one ``AsyncExitStack`` so teardown runs in reverse):

1. Layout: refuse state and checkpoints topics not in the sharded layout of ``kafka.shards``
   (``producer.kafka.layout.check_layout``: partition counts, and every live checkpoint with
   the ``shards`` header in its shard's partition), naming ``oneroster-cdc reshard``.
2. Topics: create the missing ones; refuse a state or checkpoints topic that is not compacted or
   whose partition count is not ``kafka.shards``.
3. Schemas: read ``<prefix>.schemas`` (keyed by fingerprint) to know which schemas it lacks.
4. With ``own_all``: ``assign`` every shard.

``assign`` starts each shard (``Shard.start``), the shards concurrently:

a. Writer: start the shard's transactional producer. Its start fences any older owner of the
   shard and aborts the transaction it left open, so what follows reads only committed data.
b. State: claim the shard's SQLite file (wiped if written for another layout or too old), then
   restore it from partition n of the state topic (warm: only the tail).
c. Checkpoints: read partition n of the checkpoints topic.
Then the schemas the topic lacks are published through the first started shard's writer (last,
so a start that cannot read, e.g. a missing Read ACL, has written nothing).
``poll`` runs one district's pass (the scheduler's ``DistrictRunner``).

With ``sync.workers`` (``producer.workers``) the service owns one ``WorkerPool`` shared by every
engine: its processes start with the first page any pass hands over, and ``close`` stops them
(last). The districts and their clients are ``producer.districts``; the metrics observer is
``producer.metrics.MetricsObserver``; the Kafka parts are ``producer.kafka``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Self

import structlog

from producer.avro import Schemas
from producer.checkpoints import Checkpoint, CheckpointBook
from producer.config import ClassLinkConfig, Config
from producer.districts import DistrictRegistry
from producer.errors import CdcError
from producer.events import Encoder, OutRecord
from producer.kafka.layout import check_layout
from producer.kafka.options import connection_options, consumer_options, producer_options
from producer.kafka.probe import BrokerProbe
from producer.kafka.reader import read_compacted
from producer.kafka.restore import RestoreStats, load_checkpoints, restore_from_kafka
from producer.kafka.shards import shard_of, transactional_id
from producer.kafka.topics import TopicNames, TopicSettings, ensure_topics
from producer.kafka.writer import TransactionalWriter
from producer.metrics import Metrics, MetricsObserver
from producer.model import Entity
from producer.privacy import PrivacyRules
from producer.protocols import ClientEvent
from producer.state import StateStore
from producer.sync import DistrictSync, EntityResult
from producer.workers import WorkerPool, resolve_workers

log = structlog.get_logger(__name__)


class NotOwned(CdcError):
    """A district's shard is not owned by this instance (another instance polls it)."""


class Shard:
    """One shard this instance owns: its writer, its SQLite store, its committed checkpoints
    and the sync engines of its districts. Started by ``start`` (steps a-c of the module
    docstring), closed by ``close`` (the open transaction, if any, is aborted; the SQLite file
    is kept for the next warm restore)."""

    def __init__(self, number: int, config: Config, topics: TopicNames, encoder: Encoder) -> None:
        self.number = number
        self.config = config
        self.topics = topics
        self.encoder = encoder
        self.transactional_id = transactional_id(config.kafka.client_id, number)
        self.path = Path(config.state.dir) / f"{self.transactional_id}.sqlite"
        self.book = CheckpointBook()
        self.engines: dict[str, DistrictSync] = {}
        self.restored = False
        self.restore_stats: RestoreStats | None = None
        self.restore_seconds = 0.0
        self._store: StateStore | None = None
        self._writer: TransactionalWriter | None = None
        self._stack = AsyncExitStack()

    def __repr__(self) -> str:
        return f"Shard({self.number}, restored={self.restored})"

    @property
    def store(self) -> StateStore:
        assert self._store is not None, f"shard {self.number} is not started"
        return self._store

    @property
    def writer(self) -> TransactionalWriter:
        assert self._writer is not None, f"shard {self.number} is not started"
        return self._writer

    async def start(self) -> None:
        """Writer (fencing), store (claimed, restored from partition n), checkpoints of
        partition n; on failure everything opened so far is closed again."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        started = time.monotonic()
        kafka = self.config.kafka
        consumer_cfg = consumer_options(kafka)
        store = StateStore(self.path, permissions=self.config.state.permissions)
        self._store = store
        self._stack.callback(store.close)
        # Tombstones older than delete.retention.ms may be compacted away: a file older than
        # half of it is rebuilt rather than trusted to have seen every delete.
        wiped = store.claim(
            shards=kafka.shards, shard=self.number, max_age=kafka.state_delete_retention / 2
        )
        if wiped is not None:
            log.warning("state_store_wiped", shard=self.number, path=str(self.path), reason=wiped)
        # a.
        writer = TransactionalWriter(
            producer_config=producer_options(kafka),
            transactional_id=self.transactional_id,
            state_topic=self.topics.state,
            checkpoints_topic=self.topics.checkpoints,
            shards=kafka.shards,
            shard=self.number,
            store=store,
        )
        await writer.start()
        self._writer = writer
        self._stack.push_async_callback(writer.close)
        # This instance now owns the shard: listings a crashed predecessor left open are over.
        store.forget_seen()
        # b.
        self.restore_stats = await restore_from_kafka(
            store,
            topic=self.topics.state,
            consumer_config=consumer_cfg,
            shard=self.number,
            shards=kafka.shards,
        )
        # c.
        self.book = CheckpointBook(
            await load_checkpoints(
                self.encoder,
                topic=self.topics.checkpoints,
                consumer_config=consumer_cfg,
                shard=self.number,
                shards=kafka.shards,
            )
        )
        self.restore_seconds = time.monotonic() - started
        self.restored = True

    async def close(self) -> None:
        """Abort an open transaction and stop the writer, close the store; idempotent."""
        self.restored = False
        self.engines.clear()
        await self._stack.aclose()


class Service:
    """The producer's shared components and the shards it owns, started in order and closed in
    reverse."""

    def __init__(
        self, config: Config, *, metrics: Metrics | None = None, own_all: bool = True
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.observer = MetricsObserver(self.metrics)
        self.topics = TopicNames(config.kafka.topic_prefix)
        self.schemas = Schemas.load()
        self.encoder = Encoder(self.schemas, self.topics)
        privacy = config.privacy
        self.privacy = PrivacyRules.parse(privacy.omit, privacy.hash, privacy.hash_key)
        workers = resolve_workers(config.sync.workers)
        #: ``sync.workers`` processes for the per-record work of pages (None: in process);
        #: started with the first page, stopped by ``close``.
        self.workers = WorkerPool(workers) if workers else None
        #: Whether this service owns every shard (no group), or those ``assign`` gives it.
        self.own_all = own_all
        self.shards: dict[int, Shard] = {}
        self.ready = False
        self._started = False
        self._stack = AsyncExitStack()
        self._probe: BrokerProbe | None = None
        self._unpublished: list[OutRecord] = []
        self.districts = DistrictRegistry(config, observer=self._client_event)
        self._locks: dict[str, asyncio.Lock] = {}

    def _client_event(self, event: ClientEvent) -> None:
        """Forwards the source clients' events to whichever observer the service has now."""
        self.observer.client_event(event)

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Steps 1-4 of the module docstring."""
        kafka = self.config.kafka
        # 1.
        await check_layout(kafka)
        # 2.
        await ensure_topics(
            connection_options(kafka, role="admin"),
            self.topics,
            TopicSettings.from_config(kafka),
        )
        # 3.
        published = await read_compacted(
            consumer_options(kafka),
            self.topics.schemas,
            action=f"reading {self.topics.schemas} failed",
        )
        self._unpublished = self.encoder.schema_records(published)
        self._probe = BrokerProbe(connection_options(kafka, role="health"))
        await self._probe.start()
        self._stack.push_async_callback(self._probe.close)
        self._stack.push_async_callback(self._close_clients)
        self._started = True
        # 4.
        if self.own_all:
            await self.assign(range(kafka.shards))
        self.ready = True
        log.info(
            "service.started",
            shards=kafka.shards,
            owned=sorted(self.shards),
            state_keys=self.state_keys(),
            districts=len(self.districts.ids),
        )

    async def assign(self, numbers: Iterable[int]) -> list[Shard]:
        """Start the shards ``numbers`` this service does not own yet (concurrently; steps a-c
        of the module docstring), then publish the schemas the topic lacks. On failure the
        shards started by this call are closed again and the first error is raised."""
        assert self._started, "the service is not started"
        wanted = [Shard(n, self.config, self.topics, self.encoder) for n in numbers]
        wanted = [s for s in wanted if s.number not in self.shards]
        results = await asyncio.gather(*(s.start() for s in wanted), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(s.close() for s in wanted))
            raise failures[0]
        for shard in wanted:
            self.shards[shard.number] = shard
            self.metrics.shard_restored(shard.number, shard.restore_seconds)
            stats = shard.restore_stats
            log.info(
                "shard.started",
                shard=shard.number,
                transactional_id=shard.transactional_id,
                state_keys=shard.store.count(),
                restored=stats.records if stats else 0,
                checkpoints=len(shard.book.all()),
                restore_seconds=round(shard.restore_seconds, 3),
            )
        if wanted and self._unpublished:
            await wanted[0].writer.publish(self._unpublished)
            log.info("schemas_published", count=len(self._unpublished))
            self._unpublished = []
        self.metrics.shards_owned(len(self.shards))
        self.metrics.state_keys(self.state_keys())
        return wanted

    async def release(self, numbers: Iterable[int]) -> None:
        """Close the shards ``numbers`` (an open transaction is aborted; the SQLite files are
        kept); their districts' engines are dropped."""
        closing = [self.shards.pop(n) for n in list(numbers) if n in self.shards]
        await asyncio.gather(*(s.close() for s in closing))
        self.metrics.shards_owned(len(self.shards))
        self.metrics.state_keys(self.state_keys())

    async def close(self) -> None:
        """Close the shards, then everything else in reverse order; idempotent."""
        self.ready = False
        await self.release(list(self.shards))
        await self._stack.aclose()
        if self.workers is not None:
            await self.workers.close()

    async def _close_clients(self) -> None:
        await self.districts.close()

    # -- readiness -----------------------------------------------------------------------------

    async def broker_reachable(self) -> bool:
        """True when the broker answers a metadata request."""
        return self._probe is not None and await self._probe.reachable()

    @property
    def restored(self) -> bool:
        """Every owned shard is restored (the shared parts started)."""
        return self._started and all(s.restored for s in self.shards.values())

    def state_restored(self) -> bool:
        return self.restored

    def state_keys(self) -> int:
        """Keys in the owned shards' stores."""
        return sum(s.store.count() for s in self.shards.values() if s.restored)

    # -- shards --------------------------------------------------------------------------------

    def shard_number(self, district_id: str) -> int:
        """The shard of a district (``producer.kafka.shards.shard_of``)."""
        return shard_of(district_id, self.config.kafka.shards)

    def owns(self, district_id: str) -> bool:
        """Whether this service owns the district's shard."""
        return self.shard_number(district_id) in self.shards

    def shard_for(self, district_id: str) -> Shard:
        """The owned shard of a district; ``NotOwned`` when another instance owns it."""
        number = self.shard_number(district_id)
        found = self.shards.get(number)
        if found is None:
            raise NotOwned(
                f"district {district_id!r} is in shard {number}, which this instance does not "
                f"own (it owns {sorted(self.shards) or 'none'})"
            )
        return found

    def store_for(self, district_id: str) -> StateStore:
        """The state store of the district's shard."""
        return self.shard_for(district_id).store

    def writer_for(self, district_id: str) -> TransactionalWriter:
        """The writer of the district's shard."""
        return self.shard_for(district_id).writer

    def book_for(self, district_id: str) -> CheckpointBook:
        """The committed checkpoints of the district's shard."""
        return self.shard_for(district_id).book

    # -- districts -----------------------------------------------------------------------------

    @property
    def district_ids(self) -> list[str]:
        """Every district, static and discovered, whoever owns its shard."""
        return self.districts.ids

    @property
    def owned_district_ids(self) -> list[str]:
        """The districts whose shard this service owns (the ones it polls)."""
        return [d for d in self.districts.ids if self.owns(d)]

    async def refresh_discovery(self, classlink: ClassLinkConfig) -> list[str]:
        """Replace the discovered districts with ClassLink's current list; returns all ids."""
        for district_id in await self.districts.refresh_discovery(classlink):
            for shard in self.shards.values():
                shard.engines.pop(district_id, None)
            self.metrics.forget_district(district_id)
        return self.district_ids

    def district_sync(self, district_id: str) -> DistrictSync:
        """The sync engine of one district (built on first use); ``NotOwned`` when another
        instance owns its shard."""
        shard = self.shard_for(district_id)
        found = shard.engines.get(district_id)
        if found is not None:
            return found
        district = self.districts.get(district_id)
        engine = DistrictSync(
            district_id=district_id,
            source=self.districts.client(district_id),
            server=district.base_url,
            store=shard.store,
            sink=shard.writer,
            encoder=self.encoder,
            checkpoints=shard.book,
            settings=self.config.sync,
            entities=district.entities,
            observer=self.observer,
            privacy=self.privacy,
            workers=self.workers,
        )
        shard.engines[district_id] = engine
        return engine

    # -- work ----------------------------------------------------------------------------------

    async def poll(self, district_id: str, *, full: bool) -> None:
        """One pass over every entity of a district (the scheduler's ``DistrictRunner``)."""
        await self.sync(district_id, full=full)

    async def sync(
        self,
        district_id: str,
        *,
        full: bool = False,
        entities: Sequence[Entity] | None = None,
        confirm_deletes: bool = False,
        progress: list[EntityResult] | None = None,
    ) -> list[EntityResult]:
        """One pass; at most one at a time per district (``progress``: see ``DistrictSync``)."""
        lock = self._locks.setdefault(district_id, asyncio.Lock())
        async with lock:
            try:
                results = await self.district_sync(district_id).sync(
                    full=full,
                    entities=entities,
                    confirm_deletes=confirm_deletes,
                    progress=progress,
                )
            except Exception as exc:
                self.metrics.error(district_id, exc)
                raise
        self.metrics.state_keys(self.state_keys())
        return results

    async def last_full_sync(self, district_id: str) -> float | None:
        """Epoch seconds of the oldest last full sync over the district's entities (the
        scheduler's ``FullSyncHistory``); None when any entity never had one."""
        moments = []
        book = self.book_for(district_id)
        for entity in self.districts.get(district_id).entities:
            cp = book.get(district_id, entity)
            if cp.last_full_sync_at is None:
                return None
            moments.append(cp.last_full_sync_at.timestamp())
        return min(moments) if moments else None

    def checkpoints(self) -> list[Checkpoint]:
        """The committed checkpoints of every owned shard."""
        found = [cp for shard in self.shards.values() for cp in shard.book.all()]
        return sorted(found, key=lambda c: (c.district_id, c.entity))

    def checkpoint(self, district_id: str, entity: Entity) -> Checkpoint:
        """The committed checkpoint of a district and entity (its shard must be owned)."""
        return self.book_for(district_id).get(district_id, entity)
