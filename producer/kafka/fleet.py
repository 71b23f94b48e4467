"""Who runs: the consumer group ``<client_id>`` of the daemons, as the broker describes it.

Instances with the same ``kafka.client_id`` form the group ``<client_id>`` and own the
partitions of ``<prefix>.checkpoints`` the group assigns them (shard n = partition n). The
broker's description of the group (admin ``DescribeGroups``) names each member's client id and
host and carries its assignment in the consumer protocol's encoding, decoded here into shard
numbers. ``status`` shows it; ``sync``, ``confirm-deletes``, ``forget`` and ``reshard`` refuse
to run while the group has members (``require_no_live_group``).

This module uses only the admin client: it imports nothing of the daemon's own group code.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    GroupAuthorizationFailedError,
    KafkaError,
    NotCoordinatorError,
    for_code,
)

from producer.config import KafkaConfig
from producer.errors import BrokerUnavailable, GroupLive, NotAuthorized
from producer.kafka.authz import principal_of
from producer.kafka.options import connection_options
from producer.kafka.topics import TopicNames

#: Group errors that pass while a broker starts or moves its coordinator: asked again.
_TRANSIENT: Final = (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
)


@dataclass(frozen=True, slots=True)
class Member:
    """A live member of the group: an instance, and the shards the group assigned it."""

    member_id: str
    #: ``<client_id>@<hostname>:<pid>`` for a daemon of this release.
    client_id: str
    #: The address the broker sees, e.g. ``/10.0.0.7``.
    host: str
    shards: tuple[int, ...]

    def describe(self) -> str:
        shards = ", ".join(map(str, self.shards)) or "none yet"
        return f"{self.client_id} (host {self.host}, shards {shards})"


@dataclass(frozen=True, slots=True)
class Fleet:
    """The group's state (``Stable``, ``PreparingRebalance``, ``CompletingRebalance``, ``Empty``
    or ``Dead`` for a group that does not exist) and its members."""

    group: str
    state: str
    members: tuple[Member, ...]

    @property
    def live(self) -> bool:
        """Whether any instance is in the group now."""
        return bool(self.members)

    def owner(self, shard: int) -> Member | None:
        """The member the group assigned ``shard`` to, if any."""
        return next((m for m in self.members if shard in m.shards), None)

    def describe(self) -> str:
        """The members, for messages."""
        return "; ".join(m.describe() for m in self.members)


def decode_assignment(raw: bytes, topic: str) -> tuple[int, ...]:
    """The partitions of ``topic`` in a consumer-protocol member assignment (empty while the
    group rebalances)."""
    if not raw:
        return ()
    assignment = ConsumerProtocolMemberAssignment.decode(raw)
    return tuple(
        sorted(p for name, partitions in assignment.assignment if name == topic for p in partitions)
    )


async def describe_fleet(kafka: KafkaConfig, *, attempts: int = 20) -> Fleet:
    """The group ``<client_id>`` as the broker describes it now.

    Raises:
        NotAuthorized: the principal may not describe the group (grant Describe, implied by
            Read, on group ``<client_id>``).
        BrokerUnavailable: the broker or the group's coordinator did not answer.
    """
    group = kafka.client_id
    topic = TopicNames(kafka.topic_prefix).checkpoints
    options = connection_options(kafka, role="admin")
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()
        for attempt in range(attempts):
            try:
                return _fleet(group, topic, await _describe(admin, group))
            except _TRANSIENT:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.25)
        raise AssertionError("unreachable")  # pragma: no cover
    except GroupAuthorizationFailedError as exc:
        raise NotAuthorized(
            "Describe", f"group {group!r}", principal=principal_of(options)
        ) from exc
    except KafkaError as exc:
        raise BrokerUnavailable(f"describing the consumer group {group!r}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _describe(admin: AIOKafkaAdminClient, group: str) -> Any:
    node = await admin.find_coordinator(group)
    responses = await admin.describe_consumer_groups([group], group_coordinator_id=node)
    for response in responses:
        for entry in response.groups:
            if entry[1] == group:
                return entry
    raise BrokerUnavailable(f"the broker did not describe the consumer group {group!r}")


def _fleet(group: str, topic: str, entry: Any) -> Fleet:
    code, _name, state, _ptype, _protocol, members, *_ = entry
    if code:
        raise for_code(code)(f"describing group {group!r}")
    return Fleet(
        group=group,
        state=state,
        members=tuple(
            Member(member_id, client_id, host, decode_assignment(assignment, topic))
            for member_id, client_id, host, _metadata, assignment in members
        ),
    )


async def require_no_live_group(kafka: KafkaConfig, command: str) -> Fleet:
    """The fleet, when no instance is in the group; else ``GroupLive`` naming the members.

    A one-shot command owns every shard without the group: beside live daemons the group would
    keep assigning (and re-fencing) the shards it writes, so it refuses instead.
    """
    fleet = await describe_fleet(kafka)
    if fleet.live:
        raise GroupLive(
            f"{len(fleet.members)} instance(s) of group {fleet.group!r} are running "
            f"({fleet.describe()}): `{command}` writes to every shard and would fence them "
            "(or be fenced) mid-command. Stop the daemons (or scale them to 0) first, then run "
            "it again"
        )
    return fleet
