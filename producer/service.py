"""The orchestrator: wires config into sources, the state store, the writer and the sync engine.

``Service`` is the one place that builds components (STYLE.md: one factory wires them); its
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
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
import structlog

from producer.auth import Authenticator, BearerToken, OAuth1Signer, OAuth2ClientCredentials
from producer.avro import Schemas
from producer.checkpoints import Checkpoint, CheckpointBook
from producer.client import OneRosterClient
from producer.config import DEFAULT_ENTITIES, ClassLinkConfig, Config, DistrictConfig
from producer.discovery import (
    DirectOAuth1,
    DiscoveredDistrict,
    ProxyBearer,
    bearer_reader,
    discover,
)
from producer.errors import ConfigError
from producer.events import Encoder
from producer.kafka.options import (
    connection_options,
    consumer_options,
    producer_options,
    topic_settings,
)
from producer.kafka.probe import BrokerProbe
from producer.kafka.reader import read_compacted
from producer.kafka.restore import load_checkpoints, restore_from_kafka
from producer.kafka.topics import TopicNames, ensure_topics
from producer.kafka.writer import TransactionalWriter
from producer.metrics import Metrics
from producer.model import Entity
from producer.privacy import PrivacyRules
from producer.retry import RetryPolicy
from producer.state import StateStore
from producer.sync import DistrictSync, EntityResult, SyncSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Source:
    """One district as the service polls it: from the config or from ClassLink discovery."""

    id: str
    base_url: str
    version: str
    entities: tuple[Entity, ...]
    config: DistrictConfig | None = None
    discovered: DiscoveredDistrict | None = None


class MetricsObserver:
    """Feeds the sync engine's and the client's events into ``Metrics``."""

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
            cursor = datetime.fromisoformat(result.cursor.replace("Z", "+00:00"))
            m.cursor_lag(d, e, max(0.0, (datetime.now(UTC) - cursor).total_seconds()))

    def mass_delete_held(self, district_id: str, entity: str, count: int) -> None:
        self._m.mass_delete_held(district_id, entity)

    def client_event(self, event: str, fields: Mapping[str, object]) -> None:
        district = str(fields.get("district_id", ""))
        if event == "request.retry":
            self._m.retry(district, str(fields.get("error") or fields.get("status") or "error"))
        elif event == "page.fetched":
            latency = fields.get("latency")
            if isinstance(latency, int | float):
                self._m.page(district, float(latency))
            records = fields.get("records")
            if isinstance(records, int):
                self._m.records_fetched(district, str(fields.get("entity", "")), records)


def _ssl_context(cafile: Path | None, verify: bool) -> ssl.SSLContext | bool:
    if not verify:
        return False
    if cafile is None:
        return True
    return ssl.create_default_context(cafile=str(cafile))


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
        self._sources: dict[str, Source] = {}
        self._clients: dict[str, OneRosterClient] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._syncs: dict[str, DistrictSync] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        for district in config.districts:
            self._sources[district.id] = Source(
                district.id, district.base_url, district.version, district.entities, district
            )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
            connection_options(kafka, role="admin"), self.topics, topic_settings(kafka)
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
            districts=len(self._sources),
        )

    async def close(self) -> None:
        """Close everything in reverse order; idempotent."""
        self.ready = False
        await self._stack.aclose()

    async def _close_clients(self) -> None:
        self._syncs.clear()
        for district_id in list(self._clients):
            await self._close_client(district_id)

    async def _close_client(self, district_id: str) -> None:
        client = self._clients.pop(district_id, None)
        if client is not None:
            await client.close()
        session = self._sessions.pop(district_id, None)
        if session is not None:
            await session.close()

    # -- readiness -----------------------------------------------------------------------------

    async def broker_reachable(self) -> bool:
        """True when the broker answers a metadata request."""
        return self._probe is not None and await self._probe.reachable()

    def state_restored(self) -> bool:
        return self.restored

    # -- districts -----------------------------------------------------------------------------

    @property
    def district_ids(self) -> list[str]:
        return sorted(self._sources)

    def source(self, district_id: str) -> Source:
        try:
            return self._sources[district_id]
        except KeyError:
            raise ConfigError(
                "districts", f"unknown district {district_id!r}; known: {self.district_ids}"
            ) from None

    async def refresh_discovery(self, classlink: ClassLinkConfig) -> list[str]:
        """Replace the discovered districts with ClassLink's current list; returns all ids."""
        async with aiohttp.ClientSession() as session:
            found = await discover(
                session,
                host=classlink.host,
                api_key=classlink.api_key,
                access=classlink.access,
                observer=self.observer.client_event,
            )
        static = {d.id for d in self.config.districts}
        current = {d.id: d for d in found if d.id not in static}
        for district_id in [
            i for i, s in self._sources.items() if s.discovered and i not in current
        ]:
            await self.forget(district_id)
        for district in current.values():
            known = self._sources.get(district.id)
            if known is None or known.discovered != district:
                await self.forget(district.id)
                self._sources[district.id] = Source(
                    district.id,
                    district.base_url,
                    district.version,
                    DEFAULT_ENTITIES,
                    discovered=district,
                )
        return self.district_ids

    async def forget(self, district_id: str) -> None:
        """Drop a district's client (it was removed or changed)."""
        self._sources.pop(district_id, None)
        self._syncs.pop(district_id, None)
        await self._close_client(district_id)
        self.metrics.forget_district(district_id)

    def _client(self, source: Source) -> OneRosterClient:
        client = self._clients.get(source.id)
        if client is not None:
            return client
        cfg = source.config
        verify = cfg.verify_tls if cfg else True
        tls = _ssl_context(cfg.ssl_cafile if cfg else None, verify)
        concurrency = cfg.concurrency if cfg else 4
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(8, 2 * concurrency), ssl=tls)
        )
        client = OneRosterClient(
            district_id=source.id,
            base_url=source.base_url,
            version=source.version,  # type: ignore[arg-type]
            auth=self._auth(source, session),
            page_size=cfg.page_size if cfg else 1000,
            concurrency=concurrency,
            request_timeout=cfg.request_timeout if cfg else 60.0,
            retry=RetryPolicy(attempts=(cfg.max_retries if cfg else 5) + 1),
            session=session,
            observer=self.observer.client_event,
        )
        self._clients[source.id] = client
        self._sessions[source.id] = session
        return client

    def _auth(self, source: Source, session: aiohttp.ClientSession) -> Authenticator:
        if source.discovered is not None:
            auth = source.discovered.auth
            if isinstance(auth, ProxyBearer):
                classlink = self.config.classlink
                if classlink is None:
                    return BearerToken(auth.token)
                # After a 401 the tenant's bearer is read again from /applications (rotation).
                reread = bearer_reader(
                    session,
                    host=classlink.host,
                    api_key=classlink.api_key,
                    tenant_id=source.discovered.tenant_id,
                )
                return BearerToken(reread, initial=auth.token)
            assert isinstance(auth, DirectOAuth1)
            return OAuth1Signer(client_id=auth.client_id, client_secret=auth.client_secret)
        cfg = source.config
        assert cfg is not None
        if cfg.auth == "oauth2":
            assert cfg.token_url
            assert cfg.client_id
            assert cfg.client_secret
            return OAuth2ClientCredentials(
                session=session,
                token_url=cfg.token_url,
                client_id=cfg.client_id,
                client_secret=cfg.client_secret,
                scopes=cfg.scopes,
                credentials_in=cfg.token_auth,
            )
        if cfg.auth == "oauth1":
            assert cfg.client_id
            assert cfg.client_secret
            return OAuth1Signer(
                client_id=cfg.client_id,
                client_secret=cfg.client_secret,
                signature_method=cfg.signature_method,
            )
        assert cfg.bearer is not None
        return BearerToken(cfg.bearer)

    def district_sync(self, district_id: str) -> DistrictSync:
        """The sync engine of one district (built on first use)."""
        found = self._syncs.get(district_id)
        if found is not None:
            return found
        source = self.source(district_id)
        sync_cfg = self.config.sync
        engine = DistrictSync(
            district_id=district_id,
            source=self._client(source),
            server=source.base_url,
            store=self.store,
            sink=self.writer,
            encoder=self.encoder,
            checkpoints=self.book,
            settings=SyncSettings(
                overlap=sync_cfg.overlap,
                mass_delete_threshold=sync_cfg.mass_delete_threshold,
                batch_size=sync_cfg.batch_size,
            ),
            entities=source.entities,
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
        for entity in self.source(district_id).entities:
            cp = self.book.get(district_id, entity)
            if cp.last_full_sync_at is None:
                return None
            moments.append(cp.last_full_sync_at.timestamp())
        return min(moments) if moments else None

    def checkpoints(self) -> list[Checkpoint]:
        return self.book.all()
