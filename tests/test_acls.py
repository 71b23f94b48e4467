"""Least privilege on a real broker with KRaft's StandardAuthorizer.

A separate broker (``scripts/kafka`` with ``KAFKA_AUTHORIZER=standard``, its own free ports and
data directory; the shared broker is not touched) authenticates PLAIN users over SASL_PLAINTEXT,
has ``allow.everyone.if.no.acl.found=false`` and one super user, the admin, who grants ACLs with
the Kafka admin API (CreateAcls/DeleteAcls through aiokafka). The ACL lists below are the ones
the README's "Data protection" section gives; these tests show each is enough and, for the
producer, that every single one is needed.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest

from producer.cli import _status
from producer.config import Config, KafkaConfig
from producer.errors import NotAuthorized
from producer.kafka.ownership import Ownership
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from producer.tail import tail
from tests.checker import read_all
from tests.harness import make_config
from tests.security_helpers import free_ports, own_broker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

USERS: Final = ("admin", "producer", "consumer", "ops")
ENTITIES: Final = ["orgs", "users", "demographics"]

# Kafka's enum codes (org.apache.kafka.common.acl / resource).
_RESOURCE: Final = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
_PATTERN: Final = {"literal": 3, "prefixed": 4}
_OPERATION: Final = {
    "Read": 3,
    "Write": 4,
    "Create": 5,
    "Describe": 8,
    "DescribeConfigs": 10,
    "IdempotentWrite": 12,
}
_ALLOW: Final = 3


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule for a principal, on any host."""

    resource: str
    name: str
    pattern: str
    operation: str

    def __str__(self) -> str:
        return f"{self.operation} on {self.resource} {self.name!r} ({self.pattern})"


def producer_acls(prefix: str, client_id: str) -> list[Acl]:
    """What the producer needs (README "Data protection"): Describe is implied by Write and
    Read, and a transactional producer needs no cluster IdempotentWrite (Kafka >= 3.0)."""
    topics = [Acl("topic", f"{prefix}.", "prefixed", op) for op in ("Create", "Write", "Read")]
    return [
        *topics,
        Acl("topic", f"{prefix}.", "prefixed", "DescribeConfigs"),
        Acl("transactional_id", f"{client_id}-shard-", "prefixed", "Write"),
    ]


def consumer_acls(prefix: str, group: str) -> list[Acl]:
    """A read_committed consumer of ``users`` in a consumer group: Read on the topic and on the
    group; nothing else (read_committed needs no extra right)."""
    return [
        Acl("topic", f"{prefix}.users", "literal", "Read"),
        Acl("group", group, "literal", "Read"),
    ]


def ops_acls(prefix: str) -> list[Acl]:
    """``status`` reads the checkpoints topic; ``tail users`` reads the users topic (no group)."""
    return [
        Acl("topic", f"{prefix}.checkpoints", "literal", "Read"),
        Acl("topic", f"{prefix}.users", "literal", "Read"),
    ]


@dataclass(frozen=True)
class AclBroker:
    """A running broker with the authorizer: PLAINTEXT (anonymous: no rights) and SASL."""

    plaintext: str
    sasl: str
    passwords: dict[str, str]

    def options(self, user: str) -> dict[str, Any]:
        """aiokafka client options that authenticate as ``user``."""
        return {
            "bootstrap_servers": self.sasl,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": user,
            "sasl_plain_password": self.passwords[user],
        }

    async def _admin(self, build: type[Any], principal: str, acls: list[Acl]) -> None:
        admin = AIOKafkaAdminClient(**self.options("admin"))
        await admin.start()
        try:
            for acl in acls:
                request = build(
                    _RESOURCE[acl.resource],
                    acl.name,
                    _PATTERN[acl.pattern],
                    f"User:{principal}",
                    "*",
                    _OPERATION[acl.operation],
                    _ALLOW,
                )
                response = await admin._send_request(request)
                results = getattr(response, "creation_responses", None)
                if results is None:
                    results = [r[:2] for r in response.filter_responses]
                for code, message in results:
                    assert code == 0, f"{acl}: error {code} {message}"
        finally:
            await admin.close()

    async def grant(self, principal: str, acls: list[Acl]) -> None:
        """Create ALLOW ACLs for ``principal`` as the admin."""
        await self._admin(CreateAclsRequest, principal, acls)

    async def revoke(self, principal: str, acls: list[Acl]) -> None:
        """Delete those ACLs again."""
        await self._admin(DeleteAclsRequest, principal, acls)


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclBroker]:
    """Starts the authorizer broker for this module and stops it (removing its data) after."""
    base = tmp_path_factory.mktemp("acl")
    port, cport, sport = free_ports(3)
    passwords = {user: secrets.token_hex(12) for user in USERS}
    settings = {
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(cport),
        "KAFKA_SASL_PLAINTEXT_PORT": str(sport),
        "KAFKA_AUTHORIZER": "standard",
        "KAFKA_PLAIN_USERS": ",".join(f"{u}:{p}" for u, p in passwords.items()),
        "KAFKA_ACL_ADMIN": "admin",
    }
    with own_broker(base / "data", settings) as plaintext:
        properties = (base / "data" / "server.properties").read_text()
        assert "super.users=User:admin\n" in properties
        assert "allow.everyone.if.no.acl.found=false\n" in properties
        yield AclBroker(plaintext, f"127.0.0.1:{sport}", passwords)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """One tiny 1.2 district (with demographics) on loopback."""
    simulator = Simulator([DistrictSpec(id="acl", version="1.2", size="tiny", seed=9)])
    async with simulator.serve():
        yield simulator


def config_as(user: str, broker: AclBroker, sim: Simulator, prefix: str, state_dir: Path) -> Config:
    """A config that talks SASL_PLAINTEXT/PLAIN to ``broker`` as ``user``."""
    base = make_config(
        sim,
        bootstrap=broker.sasl,
        prefix=prefix,
        state_dir=state_dir,
        district_overrides={"entities": ENTITIES},
    )
    section = {
        **base.kafka.model_dump(exclude={"transactional_id"}),
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": user,
        "sasl_password": broker.passwords[user],
    }
    return base.model_copy(update={"kafka": KafkaConfig.model_validate(section)})


class GroupOutcome:
    """A ``ShardListener`` that keeps the first assignment or refusal of the group."""

    def __init__(self) -> None:
        self.done: asyncio.Future[frozenset[int] | NotAuthorized] = (
            asyncio.get_running_loop().create_future()
        )

    async def shards_revoked(self, shards: frozenset[int]) -> None:
        """Nothing to stop: this listener runs no shard."""

    def shards_assigned(self, shards: frozenset[int]) -> None:
        if not self.done.done():
            self.done.set_result(shards)

    def group_failed(self, error: NotAuthorized) -> None:
        if not self.done.done():
            self.done.set_result(error)


async def join_group(config: Config) -> frozenset[int] | NotAuthorized:
    """The daemon's group membership (``producer.kafka.ownership``) as ``config``'s principal:
    the shards the group assigns, or the refusal."""
    outcome = GroupOutcome()
    ownership = Ownership(
        config.kafka, f"{config.kafka.topic_prefix}.checkpoints", outcome, rebalance_timeout=10
    )
    await ownership.start()
    try:
        async with asyncio.timeout(60):
            return await outcome.done
    finally:
        await ownership.close()


async def committed(broker: AclBroker, prefix: str) -> dict[str, int]:
    """Committed records per topic under ``prefix``, read as the admin (topics that do not
    exist are left out)."""
    admin = AIOKafkaAdminClient(**broker.options("admin"))
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith(f"{prefix}."))
    finally:
        await admin.close()
    options = broker.options("admin")
    bootstrap = options.pop("bootstrap_servers")
    return {t: len(await read_all(bootstrap, t, **options)) for t in topics}


async def test_exact_acls_let_the_producer_sync_and_readers_read_only_their_topics(
    acl_broker: AclBroker, sim: Simulator, unique_prefix: str, tmp_path: Path
) -> None:
    """With exactly the listed ACLs: the producer creates its topics, syncs and restarts (a
    restore reads the state back); a read_committed consumer in a group reads every users
    event; ``status`` and ``tail users`` work for an operator; and the users-only principals
    are refused the demographics topic with an error naming Read on it."""
    prefix = unique_prefix
    await acl_broker.grant("producer", producer_acls(prefix, prefix))
    config = config_as("producer", acl_broker, sim, prefix, tmp_path / "state")
    async with Service(config) as service:
        assert await service.broker_reachable()  # /readyz needs no ACL of its own
        results = await service.sync("acl")
    created: dict[str, int] = {r.entity: r.created for r in results}
    assert all(created[e] > 0 for e in ENTITIES), created
    async with Service(config) as service:  # warm restart: restore + checkpoints as producer
        assert service.checkpoint("acl", "users").record_count == created["users"]
        assert service.state_keys() == sum(created.values())
    # ``run`` joins the group <client_id>: refused without Read on it, then given every shard.
    refused = await join_group(config)
    assert isinstance(refused, NotAuthorized)
    assert f"Read on group {prefix!r}" in str(refused)
    await acl_broker.grant("producer", [Acl("group", prefix, "literal", "Read")])
    assert await join_group(config) == frozenset(range(config.kafka.shards))

    group = f"{prefix}-readers"
    await acl_broker.grant("consumer", consumer_acls(prefix, group))
    consumer = AIOKafkaConsumer(
        f"{prefix}.users",
        group_id=group,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **acl_broker.options("consumer"),
    )
    await consumer.start()
    try:
        seen: set[bytes] = set()
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=300)
            seen.update(m.key for part in batch.values() for m in part if m.key)
            if len(seen) >= created["users"]:
                break
        await consumer.commit()  # committing offsets needs only Read on the group
    finally:
        await consumer.stop()
    assert len(seen) == created["users"]

    await acl_broker.grant("ops", ops_acls(prefix))
    ops = config_as("ops", acl_broker, sim, prefix, tmp_path / "ops-state")
    out = io.StringIO()
    assert await _status(ops, True, out) == 0
    assert sum(1 for line in out.getvalue().splitlines() if '"district":"acl"' in line) == 3
    out = io.StringIO()
    printed = await tail(
        ops, "users", from_beginning=True, district=None, as_json=False, limit=3,
        idle_timeout=10, out=out,
    )  # fmt: skip
    assert printed == 0
    assert out.getvalue().count("CREATED users acl/") == 3

    reader = config_as("consumer", acl_broker, sim, prefix, tmp_path / "reader-state")
    for who in (reader, ops):
        with pytest.raises(NotAuthorized) as caught:
            await tail(
                who, "demographics", from_beginning=True, district=None, as_json=False,
                limit=1, idle_timeout=5, out=io.StringIO(),
            )  # fmt: skip
        assert caught.value.operation == "Read"
        assert caught.value.resource == f"topic '{prefix}.demographics'"
        assert f"User:{who.kafka.sasl_username}" in str(caught.value)


@pytest.mark.parametrize("missing", range(5), ids=lambda i: str(producer_acls("p", "c")[i]))
async def test_each_producer_acl_is_needed_and_its_absence_is_named(
    acl_broker: AclBroker, sim: Simulator, unique_prefix: str, tmp_path: Path, missing: int
) -> None:
    """Without any one of the producer's ACLs the service fails at start with a non-retriable
    ``NotAuthorized`` naming the missing operation and resource, and commits nothing. Create is
    needed when the topics do not exist yet (a fresh prefix); the others on a restart of a
    producer that has synced before (Read: the restore of the state)."""
    prefix = unique_prefix
    acls = producer_acls(prefix, prefix)
    dropped = acls[missing]
    config = config_as("producer", acl_broker, sim, prefix, tmp_path / "state")
    if dropped.operation != "Create":
        await acl_broker.grant("producer", acls)
        async with Service(config) as service:
            await service.sync("acl")
        await acl_broker.revoke("producer", [dropped])
        sim.advance_clock(60)
        district = sim.district("acl")
        district.update("users", sorted(district.truth_state("users"))[0], givenName="Changed")
    else:
        await acl_broker.grant("producer", [a for a in acls if a != dropped])
    before = await committed(acl_broker, prefix)
    with pytest.raises(NotAuthorized) as caught:
        async with Service(config) as service:
            await service.sync("acl")
    error = caught.value
    assert error.retriable is False
    assert error.operation == dropped.operation
    kind = dropped.resource.replace("_", " ")
    assert error.resource.startswith(f"{kind} '{dropped.name}"), error.resource
    assert f"Kafka denied {dropped.operation} on {kind} '{dropped.name}" in str(error)
    assert "User:producer" in str(error)
    assert await committed(acl_broker, prefix) == before
