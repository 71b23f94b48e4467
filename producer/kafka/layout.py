"""Is a deployment's state in the sharded layout that ``kafka.shards`` asks for?

The sharded layout (release 0.3.0; ``producer.kafka.shards``): the ``<prefix>.state`` and
``<prefix>.checkpoints`` topics have exactly ``shards`` partitions, and every live checkpoint
(the latest record of its key in a partition, not a tombstone) carries the header
``shards: <n>`` with n = ``shards`` and sits in partition ``shard_of(district, shards)``.

Only the checkpoints are read (their headers and partitions; values are not decoded): they are
small, and ``oneroster-cdc reshard`` moves the state records before the checkpoints, so a
checkpoint in place means its district's state was moved before it. Topics that do not exist
yet, or a checkpoints topic with no live record, are a valid fresh layout.

``check_layout`` raises ``NotShardedLayout`` (not retriable) naming ``oneroster-cdc reshard``;
``run``, ``sync``, ``confirm-deletes`` and ``forget`` refuse to start on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from aiokafka.protocol.metadata import MetadataRequest

from producer.checkpoints import split_checkpoint_key
from producer.config import KafkaConfig
from producer.errors import BrokerUnavailable, NotAuthorized, NotShardedLayout
from producer.kafka.authz import TOPIC_DENIED, principal_of
from producer.kafka.options import connection_options, consumer_options
from producer.kafka.reader import READ_TO_END, Headers, TopicReader, header
from producer.kafka.shards import SHARDS_HEADER, shard_of
from producer.kafka.topics import TopicNames, diagnose_authentication

#: How many misplaced checkpoints a message names (the count says how many there are).
EXAMPLES = 3


@dataclass(frozen=True, slots=True)
class Latest:
    """The latest record of a key in one partition."""

    partition: int
    offset: int
    key: bytes
    value: bytes | None
    headers: Headers
    #: Record time, epoch milliseconds (0 when unknown).
    timestamp: int = 0

    @property
    def shards_header(self) -> int | None:
        """The ``shards`` header as a number; None when absent or not a number."""
        raw = header(self.headers, SHARDS_HEADER)
        if raw is None or not raw.isdigit():
            return None
        return int(raw)


@dataclass(frozen=True, slots=True)
class Layout:
    """What ``check_layout`` found: the partition counts (None: the topic does not exist), the
    live checkpoints read, and the problems (empty: the sharded layout of ``shards``)."""

    shards: int
    state_partitions: int | None
    checkpoint_partitions: int | None
    checkpoints: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def partition_counts(
    options: Mapping[str, Any], topics: Sequence[str], *, seconds: float = 10.0
) -> dict[str, int]:
    """The partition count of each of ``topics`` that exists (metadata asked by name, never
    creating a topic). A topic the broker does not know is left out; one it knows but cannot
    describe yet (just created: no leader elected) is asked for again, for up to ``seconds``."""
    admin = AIOKafkaAdminClient(**options)
    counts: dict[str, int] = {}
    try:
        await admin.start()
        pending = list(topics)
        deadline = asyncio.get_running_loop().time() + seconds
        while pending:
            request = MetadataRequest(pending, allow_auto_topic_creation=False)
            response = (await admin._send_request(request)).to_object()
            unsettled = []
            for entry in response["topics"]:
                code, name = entry["error_code"], entry["topic"]
                if code == TOPIC_DENIED:
                    raise NotAuthorized(
                        "Describe", f"topic {name!r}", principal=principal_of(options)
                    )
                if code == 0 and entry["partitions"]:
                    counts[name] = len(entry["partitions"])
                elif code != UnknownTopicOrPartitionError.errno:
                    unsettled.append(name)
            if not unsettled or asyncio.get_running_loop().time() > deadline:
                break
            pending = unsettled
            await asyncio.sleep(0.1)
    except KafkaError as exc:
        await diagnose_authentication(dict(options))
        raise BrokerUnavailable(f"reading the partitions of {', '.join(topics)}: {exc}") from exc
    finally:
        await admin.close()
    return counts


async def latest_records(
    consumer_config: Mapping[str, Any], topic: str, *, action: str
) -> dict[tuple[int, bytes], Latest]:
    """The latest committed record of every key, per partition (tombstones included)."""
    out: dict[tuple[int, bytes], Latest] = {}
    async with TopicReader(consumer_config, topic, action=action, **READ_TO_END) as reader:
        for m in await reader.read_all():
            if m.key is not None:
                stamp = getattr(m, "timestamp", None)
                out[m.partition, m.key] = Latest(
                    m.partition, m.offset, m.key, m.value, list(m.headers), int(stamp or 0)
                )
    return out


def group_by_key(records: Iterable[Latest]) -> dict[bytes, list[Latest]]:
    """The records of each key, one per partition that holds it."""
    out: dict[bytes, list[Latest]] = {}
    for record in records:
        out.setdefault(record.key, []).append(record)
    return out


def standing(found: Sequence[Latest], home: int) -> Latest | None:
    """Of a key's latest records (one per partition), the one that counts: the record in its
    shard's partition ``home`` (live or a tombstone) when there is one, as the sharded layout
    reads it; else the newest live record in another partition (not moved yet); else None."""
    own = next((r for r in found if r.partition == home), None)
    if own is not None:
        return own
    live = [r for r in found if r.value is not None]
    return max(live, key=lambda r: r.timestamp) if live else None


def current_checkpoints(records: Iterable[Latest], shards: int) -> dict[bytes, Latest]:
    """The live checkpoint of each key in any layout (``standing``): before, during and after
    a reshard, a moved checkpoint is not lost to the tombstone it left behind."""
    out: dict[bytes, Latest] = {}
    for key, found in group_by_key(records).items():
        district, _entity = split_checkpoint_key(key.decode())
        record = standing(found, shard_of(district, shards))
        if record is not None and record.value is not None:
            out[key] = record
    return out


def checkpoint_problem(record: Latest, shards: int) -> str | None:
    """Why a live checkpoint is not in the sharded layout of ``shards``; None when it is."""
    district, _entity = split_checkpoint_key(record.key.decode())
    home = shard_of(district, shards)
    found = record.shards_header
    if found is None:
        return f"{record.key.decode()!r} has no {SHARDS_HEADER!r} header"
    if found != shards:
        return f"{record.key.decode()!r} was written for {found} shards"
    if record.partition != home:
        return f"{record.key.decode()!r} is in partition {record.partition}, its shard is {home}"
    return None


def _count_problem(topic: str, count: int, shards: int) -> str:
    if count < shards:
        return f"topic {topic!r} has {count} partition(s), kafka.shards = {shards}"
    return (
        f"topic {topic!r} has {count} partitions, more than kafka.shards = {shards} (set "
        f"kafka.shards = {count} if it was resharded to {count}; shards cannot shrink: use a "
        "new kafka.topic_prefix)"
    )


async def inspect_layout(kafka: KafkaConfig, *, shards: int | None = None) -> Layout:
    """The layout of ``kafka``'s state and checkpoints topics against ``shards`` (default
    ``kafka.shards``), problems listed, nothing raised for them."""
    wanted = kafka.shards if shards is None else shards
    topics = TopicNames(kafka.topic_prefix)
    counts = await partition_counts(
        connection_options(kafka, role="admin"), [topics.state, topics.checkpoints]
    )
    problems = [
        _count_problem(name, counts[name], wanted)
        for name in (topics.state, topics.checkpoints)
        if name in counts and counts[name] != wanted
    ]
    live = 0
    if topics.checkpoints in counts:
        found = await latest_records(
            consumer_options(kafka),
            topics.checkpoints,
            action=f"checking the layout of {topics.checkpoints}",
        )
        misplaced: list[str] = []
        for record in found.values():
            if record.value is None:
                continue
            live += 1
            why = checkpoint_problem(record, wanted)
            if why is not None:
                misplaced.append(why)
        if misplaced:
            shown = "; ".join(sorted(misplaced)[:EXAMPLES])
            more = f" (and {len(misplaced) - EXAMPLES} more)" if len(misplaced) > EXAMPLES else ""
            problems.append(
                f"{len(misplaced)} of {live} checkpoint(s) are not in it: {shown}{more}"
            )
    return Layout(
        shards=wanted,
        state_partitions=counts.get(topics.state),
        checkpoint_partitions=counts.get(topics.checkpoints),
        checkpoints=live,
        problems=problems,
    )


async def check_layout(kafka: KafkaConfig, *, shards: int | None = None) -> Layout:
    """The layout, when it is the sharded layout of ``shards`` (default ``kafka.shards``).

    Raises:
        NotShardedLayout: it is not (another partition count, a checkpoint without the
            ``shards`` header, with another count, or outside its shard's partition); the
            message names ``oneroster-cdc reshard``.
        BrokerUnavailable, NotAuthorized: the topics could not be read.
    """
    layout = await inspect_layout(kafka, shards=shards)
    if layout.problems:
        raise NotShardedLayout(
            f"the topics of prefix {kafka.topic_prefix!r} are not in the sharded layout of "
            f"kafka.shards = {layout.shards}: {'; '.join(layout.problems)}. Stop every "
            f"instance, then run `oneroster-cdc reshard --shards {layout.shards}` (README "
            '"Upgrading to the sharded layout")'
        )
    return layout
