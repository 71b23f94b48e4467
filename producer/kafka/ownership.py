"""Which shards this instance owns: Kafka's group protocol decides (issue 12).

Instances with the same ``kafka.client_id`` form the consumer group ``<client_id>``. Each
subscribes to ``<prefix>.checkpoints`` (one partition per shard) with aiokafka's
``StickyPartitionAssignor``: the partitions assigned to a member are the shards it owns, and a
join or a leave moves only the shards that must move. The consumer reads nothing: every
assigned partition is paused at once (no fetching, no offset commits), and a loop keeps calling
``getmany`` so that ``max_poll_interval`` is honoured and the group keeps the member.

aiokafka 0.14 has no cooperative protocol: a rebalance is eager. Before any member gets its new
assignment, every member's ``shards_revoked`` runs with ALL the shards it owned (it must stop
their polls and close their writers before it returns: the heartbeat keeps running meanwhile,
and the group waits up to the rebalance timeout). Then ``shards_assigned`` gets the new set,
often the same shards again (sticky); it must not block (aiokafka calls it before the heartbeat
restarts), so the listener starts the shards in a task of its own.

A member that stops heartbeating for ``kafka.session_timeout`` (a crash, a SIGSTOP, a lost
network) is dropped from the group and its shards move to the others, whose writers fence it.
When it wakes, its next heartbeat learns the generation changed: aiokafka revokes its shards and
rejoins. ``request_rejoin`` forces that when the instance learned it first (a fenced commit).

The consumer's ``client_id`` is ``<client_id>@<hostname>:<pid>``, so the group's description
(``kafka-consumer-groups --describe``, ``producer.kafka.fleet``) names the instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError

from producer.config import KafkaConfig
from producer.errors import BrokerUnavailable, NotAuthorized
from producer.kafka.authz import denied
from producer.kafka.options import connection_options

log = structlog.get_logger(__name__)


class ShardListener(Protocol):
    """What the owner of the shards (the daemon) does when the group moves them."""

    async def shards_revoked(self, shards: frozenset[int]) -> None:
        """Stop and close these shards before returning (eager: all the owned ones)."""
        ...

    def shards_assigned(self, shards: frozenset[int]) -> None:
        """The shards owned from now on; must not block (start them in a task)."""
        ...

    def group_failed(self, error: NotAuthorized) -> None:
        """The group refused this member (a missing ACL): it owns nothing and never will."""
        ...


def member_client_id(client_id: str) -> str:
    """The consumer's client id: ``<client_id>@<hostname>:<pid>`` names the instance."""
    return f"{client_id}@{socket.gethostname()}:{os.getpid()}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's listener, forwarding partition numbers to the ``Ownership``."""

    def __init__(self, ownership: Ownership) -> None:
        self._ownership = ownership

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._ownership._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._ownership._assigned(assigned)


class Ownership:
    """This instance's membership of the group ``<client_id>``; see the module docstring."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        listener: ShardListener,
        *,
        rebalance_timeout: float,
    ) -> None:
        self.group_id = kafka.client_id
        self.topic = topic
        self.member = member_client_id(kafka.client_id)
        self._listener = listener
        options: dict[str, Any] = connection_options(kafka, role="group")
        options["client_id"] = self.member
        self._options = options
        self._consumer = AIOKafkaConsumer(
            **options,
            group_id=self.group_id,
            partition_assignment_strategy=(StickyPartitionAssignor,),
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=int(kafka.session_timeout * 1000),
            heartbeat_interval_ms=int(kafka.heartbeat_interval * 1000),
            rebalance_timeout_ms=int(max(rebalance_timeout, kafka.session_timeout) * 1000),
            max_poll_interval_ms=int(max(rebalance_timeout, 300.0) * 1000),
        )
        #: The shards the group gave this instance (its last assignment); empty before the first.
        self.owned: frozenset[int] = frozenset()
        #: Assignments received so far (0: the group has not answered yet).
        self.assignments = 0
        #: Revocations received so far.
        self.revocations = 0
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join the group (in the background) and keep polling."""
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await _quiet_stop(self._consumer)
            refused = denied(exc, operation="Read", topic=self.topic, options=self._options)
            if refused is not None:
                raise refused from exc
            raise BrokerUnavailable(f"cannot join the group {self.group_id!r}: {exc}") from exc
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        self._loop_task = asyncio.create_task(self._poll(), name=f"group:{self.group_id}")
        log.info("group.joining", group=self.group_id, member=self.member, topic=self.topic)

    async def _poll(self) -> None:
        """Keep calling ``getmany`` (nothing arrives: every partition is paused) so the
        consumer counts as alive; errors are logged and the loop goes on."""
        while True:
            try:
                found = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                refused = denied(exc, operation="Read", topic=self.topic, options=self._options)
                if refused is not None:
                    log.error("group.not_authorized", group=self.group_id, error=str(refused))
                    self._listener.group_failed(refused)
                    return
                log.warning("group.poll_failed", group=self.group_id, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if found:  # fetched before the pause took effect: not ours to read
                self._consumer.pause(*found)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        self.revocations += 1
        shards = frozenset(tp.partition for tp in revoked if tp.topic == self.topic)
        self.owned = frozenset()
        try:
            await self._listener.shards_revoked(shards)
        except Exception as exc:  # aiokafka would only log it; say what failed
            log.exception("shards.revoke_failed", shards=sorted(shards), error=repr(exc))

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignments += 1
        self._consumer.pause(*assigned)
        self.owned = frozenset(tp.partition for tp in assigned if tp.topic == self.topic)
        self._listener.shards_assigned(self.owned)

    def request_rejoin(self) -> None:
        """Rejoin the group now (revoke everything, then take the new assignment): after a
        fenced commit, when the group's heartbeat has not noticed the change yet."""
        # aiokafka has no public call for it; its coordinator's request_rejoin is what a failed
        # heartbeat calls (the member keeps its id; the revoke callback runs first).
        self._consumer._coordinator.request_rejoin()
        log.info("group.rejoin_requested", group=self.group_id, member=self.member)

    async def close(self) -> None:
        """Stop polling and leave the group; idempotent. The caller stops its shards first
        (leaving runs no revoke callback of ours that could still matter)."""
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _quiet_stop(self._consumer)
        self.owned = frozenset()


async def _quiet_stop(consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(15):
            await consumer.stop()
