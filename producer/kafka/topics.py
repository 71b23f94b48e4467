"""Topic names and their configs; creating missing topics and refusing misconfigured ones.

<prefix>.<entity>      change events, history kept (retention configurable, default unlimited)
<prefix>.state         compacted: latest canonical record per key, tombstone on delete
<prefix>.checkpoints   compacted: per district and entity, the sync cursor and counts
<prefix>.deadletter    records that could not be normalised, with reason and raw JSON
<prefix>.schemas       compacted: every Avro schema we write, keyed by its fingerprint
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
)
from aiokafka.protocol.metadata import MetadataRequest

from producer.config import KafkaConfig
from producer.errors import BrokerAuthFailed, BrokerUnavailable, NotAuthorized, TopicMisconfigured
from producer.kafka.authz import AUTHORIZATION_CODES, principal_of
from producer.model import ENTITIES, Entity

log = structlog.get_logger(__name__)

#: ``max.message.bytes`` of every topic we create: a large roster record must fit (the sync
#: dead-letters anything over half of it).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The topic names under one prefix."""

    prefix: str

    def events(self, entity: Entity) -> str:
        return f"{self.prefix}.{entity}"

    @property
    def state(self) -> str:
        return f"{self.prefix}.state"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}.checkpoints"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def schemas(self) -> str:
        return f"{self.prefix}.schemas"

    def all(self) -> list[str]:
        return [
            *(self.events(e) for e in ENTITIES),
            self.state,
            self.checkpoints,
            self.deadletter,
            self.schemas,
        ]


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """How topics are created: partition counts and retention (from ``[kafka]``, whose class
    holds the defaults)."""

    #: Partitions of the event and dead-letter topics.
    partitions: int
    #: -1: as many replicas as there are brokers, at most 3.
    replication_factor: int
    #: ``retention.ms`` of event and dead-letter topics; -1 keeps history forever.
    event_retention_ms: int
    #: ``delete.retention.ms`` of the state topic: a cold restore must finish well within it,
    #: or it could miss a delete whose tombstone the cleaner already removed.
    state_delete_retention_ms: int
    #: Partitions of the state and checkpoints topics: one per shard (``kafka.shards``).
    shards: int = 1

    @classmethod
    def from_config(cls, cfg: KafkaConfig) -> TopicSettings:
        """The settings ``[kafka]`` asks for."""
        return cls(
            partitions=cfg.partitions,
            replication_factor=cfg.replication_factor,
            event_retention_ms=-1
            if cfg.event_retention is None
            else int(cfg.event_retention * 1000),
            state_delete_retention_ms=int(cfg.state_delete_retention * 1000),
            shards=cfg.shards,
        )


def topic_specs(
    names: TopicNames, settings: TopicSettings
) -> dict[str, tuple[int, dict[str, str]]]:
    """Partitions and configs of every topic, by name."""
    large = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    compacted = {"cleanup.policy": "compact", **large}
    history = {
        "cleanup.policy": "delete",
        "retention.ms": str(settings.event_retention_ms),
        **large,
    }
    specs: dict[str, tuple[int, dict[str, str]]] = {
        names.events(e): (settings.partitions, history) for e in ENTITIES
    }
    specs[names.deadletter] = (settings.partitions, history)
    specs[names.state] = (
        settings.shards,
        {**compacted, "delete.retention.ms": str(settings.state_delete_retention_ms)},
    )
    specs[names.checkpoints] = (settings.shards, compacted)
    specs[names.schemas] = (1, compacted)
    return specs


async def ensure_topics(
    admin_config: dict[str, Any],
    names: TopicNames,
    settings: TopicSettings,
    *,
    check_shards: bool = True,
) -> list[str]:
    """Create the topics that are missing; refuse a state or checkpoint topic that is not
    compacted, or (``check_shards``) whose partition count is not ``settings.shards``.
    Returns the names created."""
    admin = AIOKafkaAdminClient(**admin_config)
    specs = topic_specs(names, settings)
    try:
        await admin.start()
        existing = await _existing(admin, list(specs))
        missing = [n for n in specs if n not in existing]
        if missing:
            replicas = settings.replication_factor
            if replicas < 1:  # "broker default": up to 3 replicas, as many as there are brokers
                replicas = min(3, len((await admin.describe_cluster())["brokers"]))
            # Another instance may create them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(
                    [NewTopic(n, specs[n][0], replicas, topic_configs=specs[n][1]) for n in missing]
                )
                for name, code, *_ in response.topic_errors:
                    if code in AUTHORIZATION_CODES:
                        raise NotAuthorized(
                            "Create", f"topic {name!r}", principal=principal_of(admin_config)
                        )
            log.info("topics_created", topics=missing)
        sharded = [names.state, names.checkpoints]
        await _check_compacted(admin, sharded, admin_config)
        if check_shards:
            _check_shard_partitions(await _partition_counts(admin, sharded), settings.shards)
    except KafkaError as exc:
        await diagnose_authentication(admin_config)
        raise BrokerUnavailable(f"could not check or create topics: {exc}") from exc
    finally:
        await admin.close()
    return missing


async def diagnose_authentication(options: dict[str, Any]) -> None:
    """Raise ``BrokerAuthFailed`` when a failed connection was the broker refusing our SASL
    credentials (aiokafka's clients only log that and report "unable to bootstrap")."""
    if not options.get("sasl_mechanism"):
        return
    servers = options["bootstrap_servers"]
    for server in [servers] if isinstance(servers, str) else servers:
        host, _, port = str(server).rpartition(":")
        try:
            conn = await create_conn(
                host,
                int(port),
                request_timeout_ms=10_000,
                ssl_context=options.get("ssl_context"),
                security_protocol=options["security_protocol"],
                sasl_mechanism=options["sasl_mechanism"],
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
        except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
            raise BrokerAuthFailed(
                f"Kafka broker {server} refused SASL authentication ({options['sasl_mechanism']}"
                f" as {options.get('sasl_plain_username')!r}): check kafka.sasl_username, "
                "kafka.sasl_password and kafka.sasl_mechanism"
            ) from exc
        except (KafkaError, OSError):
            continue  # not an authentication problem: the caller reports it
        conn.close()


async def _existing(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Which of ``topics`` exist, with their partition counts: metadata asked by name, for
    these topics only (not the whole cluster's), and never creating one
    (``allow_auto_topic_creation=False``). A topic this principal may not describe counts as
    missing (its creation then says why)."""
    request = MetadataRequest(topics, allow_auto_topic_creation=False)
    response = await admin._send_request(request)
    return {
        t["topic"]: len(t["partitions"])
        for t in response.to_object()["topics"]
        if t["error_code"] == 0
    }


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """The partition count of each of ``topics`` (which exist). Right after creation a topic's
    metadata may not be ready yet (an error code, no partitions): ask again for a few
    seconds."""
    counts: dict[str, int] = {}
    for _ in range(50):
        counts.update(await _existing(admin, [t for t in topics if t not in counts]))
        if len(counts) == len(topics):
            break
        await asyncio.sleep(0.1)
    return counts


def _check_shard_partitions(counts: dict[str, int], shards: int) -> None:
    """Refuse a state or checkpoints topic whose partition count is not the shard count: a
    district's records live in the partition of its shard, so the count is the layout."""
    for name, found in counts.items():
        if found != shards:
            raise TopicMisconfigured(
                f"topic {name!r} has {found} partition(s) but kafka.shards = {shards}: the "
                "state and checkpoints topics need one partition per shard. Set kafka.shards "
                f"to {found} if that is this deployment's shard count, or move the deployment "
                f"to {shards} shards with `oneroster-cdc reshard --shards {shards}` (stop the "
                "daemons first)"
            )


async def _check_compacted(
    admin: AIOKafkaAdminClient, topics: list[str], options: dict[str, Any]
) -> None:
    policies = await _cleanup_policies(admin, topics, options)
    for name in topics:
        policy = policies.get(name)
        if policy is None or "compact" not in policy:
            raise TopicMisconfigured(
                f"topic {name!r} exists with cleanup.policy={policy!r}, but it must be "
                f"compacted: run `kafka-configs --alter --entity-type topics --entity-name "
                f"{name} --add-config cleanup.policy=compact` or use another topic_prefix"
            )


async def _cleanup_policies(
    admin: AIOKafkaAdminClient, topics: list[str], options: dict[str, Any]
) -> dict[str, str]:
    """``cleanup.policy`` by topic. Right after creation a topic may not be described yet
    (the resource carries an error code): ask again for a few seconds. A denied describe is
    ``NotAuthorized`` at once."""
    policies: dict[str, str] = {}
    for _ in range(50):
        wanted = [t for t in topics if t not in policies]
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in wanted]
        for response in await admin.describe_configs(resources):
            for code, _msg, _rtype, name, entries in response.resources:
                if code in AUTHORIZATION_CODES:
                    raise NotAuthorized(
                        "DescribeConfigs", f"topic {name!r}", principal=principal_of(options)
                    )
                if code == 0:
                    policies[name] = next((e[1] for e in entries if e[0] == "cleanup.policy"), "")
        if len(policies) == len(topics):
            break
        await asyncio.sleep(0.1)
    return policies
