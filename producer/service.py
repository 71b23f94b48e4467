"""The orchestrator: wires config into sources, the state store, the writer and the sync engine.

``Service`` is the one place that builds components (one factory wires them); its
resources are entered in one ``AsyncExitStack`` so teardown runs in reverse:

1. Topics: create the missing ones, refuse a state topic that is not compacted.
2. Writer: start the transactional producer of this shard. Its start fences any older instance
   with the same ``transactional_id`` and aborts the transaction it left open, so what follows
   reads only committed data.
3. State: restore the local store from the state topic (warm: only the tail).
4. Checkpoints: read every committed checkpoint.
5. Schemas: publish to ``<prefix>.schemas`` (keyed by fingerprint) the schemas it lacks. Last,
   so a start that cannot read (a missing Read ACL) has written nothing.
Then the service is ready; ``poll`` runs one district's pass (the scheduler's ``DistrictRunner``).

The districts and their clients are ``producer.districts``; the metrics observer is
``producer.metrics.MetricsObserver``; the Kafka parts are ``producer.kafka``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Self

import structlog

from producer.avro import Schemas
from producer.checkpoints import Checkpoint, CheckpointBook
from producer.config import ClassLinkConfig, Config
from producer.districts import DistrictRegistry
from producer.events import Encoder
from producer.kafka.options import connection_options, consumer_options, producer_options
from producer.kafka.probe import BrokerProbe
from producer.kafka.reader import read_compacted
from producer.kafka.restore import load_checkpoints, restore_from_kafka
from producer.kafka.topics import TopicNames, TopicSettings, ensure_topics
from producer.kafka.writer import TransactionalWriter
from producer.metrics import Metrics, MetricsObserver
from producer.model import Entity
from producer.privacy import PrivacyRules
from producer.protocols import ClientEvent
from producer.state import StateStore
from producer.sync import DistrictSync, EntityResult

log = structlog.get_logger(__name__)


class Service:
    """The producer's components for one shard, started in order and closed in reverse."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.observer = MetricsObserver(self.metrics)
        self.topics = TopicNames(config.kafka.topic_prefix)
        self.schemas = Schemas.load()
        self.encoder = Encoder(self.schemas, self.topics)
        self.book = CheckpointBook()
        privacy = config.privacy
        self.privacy = PrivacyRules.parse(privacy.omit, privacy.hash, privacy.hash_key)
        self.ready = False
        self.restored = False
        self._stack = AsyncExitStack()
        self._store: StateStore | None = None
        self._writer: TransactionalWriter | None = None
        self._probe: BrokerProbe | None = None
        self.districts = DistrictRegistry(config, observer=self._client_event)
        self._syncs: dict[str, DistrictSync] = {}
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

    @property
    def store(self) -> StateStore:
        assert self._store is not None, "the service is not started"
        return self._store

    @property
    def writer(self) -> TransactionalWriter:
        assert self._writer is not None, "the service is not started"
        return self._writer

    async def start(self) -> None:
        """Steps 1-5 of the module docstring."""
        kafka = self.config.kafka
        consumer_cfg = consumer_options(kafka)
        # 1.
        await ensure_topics(
            connection_options(kafka, role="admin"),
            self.topics,
            TopicSettings.from_config(kafka),
        )
        self._store = StateStore(
            Path(self.config.state.dir) / f"{kafka.transactional_id}.sqlite",
            permissions=self.config.state.permissions,
        )
        self._stack.callback(self._store.close)
        # 2.
        self._writer = TransactionalWriter(
            producer_config=producer_options(kafka),
            transactional_id=kafka.transactional_id,
            state_topic=self.topics.state,
            store=self._store,
        )
        await self._writer.start()
        self._stack.push_async_callback(self._writer.close)
        # This instance now owns the store: listings a crashed predecessor left open are over.
        self._store.forget_seen()
        # 3.
        stats = await restore_from_kafka(
            self._store, topic=self.topics.state, consumer_config=consumer_cfg
        )
        self.restored = True
        keys = self._store.count()
        self.metrics.state_keys(keys)
        # 4.
        self.book = CheckpointBook(
            await load_checkpoints(
                self.encoder, topic=self.topics.checkpoints, consumer_config=consumer_cfg
            )
        )
        # 5.
        published = await read_compacted(
            consumer_cfg, self.topics.schemas, action=f"reading {self.topics.schemas} failed"
        )
        unpublished = self.encoder.schema_records(published)
        if unpublished:
            await self._writer.publish(unpublished)
        log.info("schemas_published", count=len(unpublished))
        self._probe = BrokerProbe(connection_options(kafka, role="health"))
        await self._probe.start()
        self._stack.push_async_callback(self._probe.close)
        self._stack.push_async_callback(self._close_clients)
        self.ready = True
        log.info(
            "service.started",
            transactional_id=kafka.transactional_id,
            state_keys=keys,
            restored=stats.records,
            restore_seconds=round(stats.seconds, 3),
            districts=len(self.districts.ids),
        )

    async def close(self) -> None:
        """Close everything in reverse order; idempotent."""
        self.ready = False
        await self._stack.aclose()

    async def _close_clients(self) -> None:
        self._syncs.clear()
        await self.districts.close()

    # -- readiness -----------------------------------------------------------------------------

    async def broker_reachable(self) -> bool:
        """True when the broker answers a metadata request."""
        return self._probe is not None and await self._probe.reachable()

    def state_restored(self) -> bool:
        return self.restored

    # -- districts -----------------------------------------------------------------------------

    @property
    def district_ids(self) -> list[str]:
        return self.districts.ids

    async def refresh_discovery(self, classlink: ClassLinkConfig) -> list[str]:
        """Replace the discovered districts with ClassLink's current list; returns all ids."""
        for district_id in await self.districts.refresh_discovery(classlink):
            self._syncs.pop(district_id, None)
            self.metrics.forget_district(district_id)
        return self.district_ids

    def district_sync(self, district_id: str) -> DistrictSync:
        """The sync engine of one district (built on first use)."""
        found = self._syncs.get(district_id)
        if found is not None:
            return found
        district = self.districts.get(district_id)
        engine = DistrictSync(
            district_id=district_id,
            source=self.districts.client(district_id),
            server=district.base_url,
            store=self.store,
            sink=self.writer,
            encoder=self.encoder,
            checkpoints=self.book,
            settings=self.config.sync,
            entities=district.entities,
            observer=self.observer,
            privacy=self.privacy,
        )
        self._syncs[district_id] = engine
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
    ) -> list[EntityResult]:
        """One pass; at most one at a time per district."""
        lock = self._locks.setdefault(district_id, asyncio.Lock())
        async with lock:
            try:
                results = await self.district_sync(district_id).sync(
                    full=full, entities=entities, confirm_deletes=confirm_deletes
                )
            except Exception as exc:
                self.metrics.error(district_id, exc)
                raise
        self.metrics.state_keys(self.store.count())
        return results

    async def last_full_sync(self, district_id: str) -> float | None:
        """Epoch seconds of the oldest last full sync over the district's entities (the
        scheduler's ``FullSyncHistory``); None when any entity never had one."""
        moments = []
        for entity in self.districts.get(district_id).entities:
            cp = self.book.get(district_id, entity)
            if cp.last_full_sync_at is None:
                return None
            moments.append(cp.last_full_sync_at.timestamp())
        return min(moments) if moments else None

    def checkpoints(self) -> list[Checkpoint]:
        return self.book.all()
