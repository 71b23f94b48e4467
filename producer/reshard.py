"""``oneroster-cdc reshard [--shards N]``: move a deployment's state and checkpoints into the
sharded layout of N shards (``producer.kafka.layout``), in transactions, safe to run again.

1. Refuse while the group ``<client_id>`` has live members (``fleet.require_no_live_group``).
2. Fence the old writers: ``<client_id>-shard-0`` (the 0.1.0 writer; reshard then writes under
   it, so a later start fences reshard in turn) and, when the checkpoints were written for M
   shards, ``<client_id>-shard-1`` .. ``-shard-(M-1)``. What they left open is aborted, so
   everything read next is committed data.
3. Grow ``<prefix>.state`` to N partitions if it has fewer (shrinking is refused: Kafka cannot
   remove partitions; use a new ``kafka.topic_prefix``).
4. Move the state, partition by partition: the latest record of each key (read_committed); a
   live record outside its district's shard partition s is written to s and tombstoned where it
   was, in the same transaction (``batch`` keys a transaction).
5. Grow ``<prefix>.checkpoints`` to N partitions and move the checkpoints likewise, each written
   with the header ``shards: N`` (one already in its shard's partition is rewritten in place to
   gain it).
6. Check the result with ``layout.inspect_layout``.

The state moves before the checkpoints topic grows and its records move: until the last step
is done, the checkpoints are not in the sharded layout, so ``run`` and the one-shot commands
refuse to start on a half-moved deployment, and running ``reshard`` again redoes what is left
(a moved key is not moved twice: its stray is a tombstone). Event topics, dead letters and
schemas are not touched: consumers see no duplicate and no gap, and ``run`` then continues
from the committed cursors.

Memory: the state topic is read one partition at a time, twice (the latest offset of each key,
then the records to move), so reshard holds the keys of one partition, not their values; the
checkpoints topic (one record per district and entity) is read whole. For the checkpoints, a
record already in its shard's partition stands against a stray of the same key elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import structlog

from producer.checkpoints import split_checkpoint_key
from producer.config import Config, KafkaConfig
from producer.errors import BrokerUnavailable, NotShardedLayout, ReshardRefused
from producer.kafka.fleet import require_no_live_group
from producer.kafka.layout import (
    Latest,
    group_by_key,
    inspect_layout,
    latest_records,
    partition_counts,
    standing,
)
from producer.kafka.mover import Mover, Placed, fence, grow_partitions
from producer.kafka.options import connection_options, consumer_options, producer_options
from producer.kafka.reader import READ_TO_END, TopicReader, header, settled
from producer.kafka.shards import SHARDS_HEADER, shard_of, transactional_id
from producer.kafka.topics import TopicNames

log = structlog.get_logger(__name__)

#: Keys moved in one transaction.
DEFAULT_BATCH = 2000


@dataclass(frozen=True, slots=True)
class Move:
    """What one key needs: ``copy`` written to partition ``shard`` (None: nothing), and a
    tombstone in each partition of ``strays`` (live records outside the shard)."""

    key: bytes
    shard: int
    copy: Latest | None
    strays: tuple[Latest, ...]


@dataclass(slots=True)
class TopicReport:
    """What reshard did to one topic."""

    topic: str
    partitions_before: int | None
    partitions_after: int | None
    moved: int = 0
    stamped: int = 0
    tombstoned: int = 0
    transactions: int = 0

    def describe(self) -> str:
        if self.partitions_before is None:
            return f"{self.topic}: does not exist yet (`run` creates it in the sharded layout)"
        grown = (
            f"grown from {self.partitions_before} to {self.partitions_after} partitions"
            if self.partitions_after != self.partitions_before
            else f"{self.partitions_after} partitions (unchanged)"
        )
        stamped = f", {self.stamped} given the shards header in place" if self.stamped else ""
        return (
            f"{self.topic}: {grown}; {self.moved} record(s) moved to their shard's partition"
            f"{stamped}, {self.tombstoned} stray(s) tombstoned, in {self.transactions} "
            "transaction(s)"
        )


@dataclass(slots=True)
class ReshardReport:
    """What ``reshard`` did."""

    shards: int
    fenced: list[str] = field(default_factory=list)
    topics: list[TopicReport] = field(default_factory=list)
    checkpoints: int = 0

    @property
    def changed(self) -> bool:
        return any(
            t.moved or t.stamped or t.tombstoned or t.partitions_before != t.partitions_after
            for t in self.topics
        )


def state_district(key: bytes) -> str:
    """The district of a state-topic key ``<entity>/<district>/<sourcedId>``."""
    return key.decode().split("/", 2)[1]


def checkpoint_district(key: bytes) -> str:
    """The district of a checkpoints-topic key ``<district>/<entity>``."""
    return split_checkpoint_key(key.decode())[0]


def plan_moves(
    records: Iterable[Latest],
    shards: int,
    *,
    district_of: Callable[[bytes], str],
    stamp: bool,
) -> Iterator[Move]:
    """The moves that put every live record in its district's shard partition (with the
    ``shards`` header when ``stamp``); nothing for a key already in place."""
    for key, found in group_by_key(records).items():
        home = shard_of(district_of(key), shards)
        winner = standing(found, home)
        strays = tuple(r for r in found if r.partition != home and r.value is not None)
        misplaced = winner is not None and (
            winner.partition != home or (stamp and winner.shards_header != shards)
        )
        copy = winner if misplaced and winner is not None and winner.value is not None else None
        if copy is not None or strays:
            yield Move(key, home, copy, strays)


def placed(move: Move, topic: str, shards: int, *, stamp: bool) -> list[Placed]:
    """The records of a move: the copy in its shard, then a tombstone for each stray (a state
    tombstone keeps the ``entity`` header, as the writer's do)."""
    out: list[Placed] = []
    if move.copy is not None:
        headers = list(move.copy.headers)
        if stamp:
            headers = [(k, v) for k, v in headers if k != SHARDS_HEADER]
            headers.append((SHARDS_HEADER, str(shards).encode()))
        out.append(Placed(topic, move.shard, move.key, move.copy.value, headers))
    for stray in move.strays:
        entity = header(stray.headers, "entity")
        kept = [] if entity is None else [("entity", entity)]
        out.append(Placed(topic, stray.partition, move.key, None, kept))
    return out


class _Batches:
    """Moves gathered into transactions of ``batch`` keys, counted in ``report``."""

    def __init__(
        self, mover: Mover, report: TopicReport, shards: int, *, stamp: bool, batch: int
    ) -> None:
        self._mover = mover
        self._report = report
        self._shards = shards
        self._stamp = stamp
        self._batch = batch
        self._pending: list[Placed] = []
        self._keys = 0

    async def add(self, move: Move) -> None:
        report = self._report
        if move.copy is not None:
            if move.copy.partition == move.shard:
                report.stamped += 1
            else:
                report.moved += 1
        report.tombstoned += len(move.strays)
        self._pending.extend(placed(move, report.topic, self._shards, stamp=self._stamp))
        self._keys += 1
        if self._keys >= self._batch:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending, self._keys = self._pending, [], 0
        if not pending:
            return
        report = self._report
        await self._mover.commit(pending)
        report.transactions += 1
        log.info(
            "reshard.transaction_committed",
            topic=report.topic,
            records=len(pending),
            moved=report.moved,
            tombstoned=report.tombstoned,
        )


async def _move_checkpoints(batches: _Batches, config: Config, topic: str, shards: int) -> None:
    """Every key of the (small) checkpoints topic at once: ``plan_moves`` with the header."""
    records = await latest_records(
        consumer_options(config.kafka), topic, action=f"reshard: reading {topic}"
    )
    for move in plan_moves(records.values(), shards, district_of=checkpoint_district, stamp=True):
        await batches.add(move)
    await batches.flush()


async def _move_state(batches: _Batches, config: Config, topic: str, shards: int) -> None:
    """Partition by partition, in two reads of it (memory: the keys of one partition, not
    their values): the latest offset of each key, then the live latest records outside their
    shard, each moved to its shard. A key's record in its shard's partition can only have been
    written by a reshard that tombstoned its stray in the same transaction (or, afterwards, by
    the sharded layout's writer, which the checkpoints keep from starting before the move is
    done), so a live stray always moves."""

    def home(key: bytes) -> int:
        return shard_of(state_district(key), shards)

    for partition in range(shards):
        async with TopicReader(
            consumer_options(config.kafka),
            topic,
            action=f"reshard: reading {topic} partition {partition}",
            partitions=[partition],
            **READ_TO_END,
        ) as reader:
            end = await reader.end_offsets()
            latest: dict[bytes, int] = {}
            await reader.seek_to_beginning()
            async for chunk in reader.to_end(until=end):
                for m in chunk.messages:
                    if m.key is not None:
                        latest[m.key] = -1 if m.value is None else m.offset
            strays = {k: o for k, o in latest.items() if o >= 0 and home(k) != partition}
            del latest
            if not strays:
                continue
            await reader.seek_to_beginning()
            async for chunk in reader.to_end(until=end):
                for m in chunk.messages:
                    if m.key is not None and strays.get(m.key) == m.offset:
                        record = Latest(m.partition, m.offset, m.key, m.value, list(m.headers))
                        await batches.add(Move(m.key, home(m.key), record, (record,)))
        await batches.flush()


async def _settled(kafka: KafkaConfig, topics: list[str], seconds: float = 60.0) -> None:
    """Wait until the transactions open on ``topics`` have their markers (``settled``)."""
    if not await settled(consumer_options(kafka), topics, seconds=seconds):
        raise BrokerUnavailable(
            f"a transaction on {', '.join(topics)} stayed open for {seconds:.0f}s"
        )


async def reshard(config: Config, *, shards: int, batch: int = DEFAULT_BATCH) -> ReshardReport:
    """Steps 1-6 of the module docstring; returns what was done.

    Raises:
        GroupLive: instances of the group are running.
        ReshardRefused: a topic has more partitions than ``shards``.
        NotShardedLayout: the layout is still not right afterwards (a concurrent writer).
        BrokerUnavailable, NotAuthorized, Fenced: Kafka refused; run it again once fixed.
    """
    kafka = config.kafka
    topics = TopicNames(kafka.topic_prefix)
    admin = connection_options(kafka, role="admin")
    await require_no_live_group(kafka, "oneroster-cdc reshard")  # 1.
    counts = await partition_counts(admin, [topics.state, topics.checkpoints])
    for name, count in counts.items():
        if count > shards:
            raise ReshardRefused(
                f"topic {name!r} has {count} partitions: the deployment cannot go down to "
                f"{shards} shards (Kafka cannot remove partitions). Keep --shards {count} or "
                "more, or snapshot anew under a new kafka.topic_prefix"
            )
    report = ReshardReport(shards=shards)
    # 2. The old layout's shard count, from the checkpoints' headers (none: 0.1.0, one shard).
    old = 1
    if topics.checkpoints in counts:
        before = await latest_records(
            consumer_options(kafka), topics.checkpoints, action="reshard: reading the layout"
        )
        old = max([old, *(r.shards_header or 1 for r in before.values())])
    producing = producer_options(kafka)
    report.fenced = [transactional_id(kafka.client_id, n) for n in range(old)]
    await fence(producing, report.fenced[1:])
    async with Mover(producing, report.fenced[0]) as mover:  # fences shard-0 as it starts
        # What the fenced writers left open is being aborted: read once the markers landed.
        await _settled(kafka, list(counts))
        for topic, stamp in ((topics.state, False), (topics.checkpoints, True)):
            had = counts.get(topic)
            topic_report = TopicReport(topic, had, had)
            report.topics.append(topic_report)
            if had is None:
                continue
            if had < shards:  # 3. / 5.
                await grow_partitions(admin, topic, shards)
                topic_report.partitions_after = shards
                log.info("reshard.topic_grown", topic=topic, partitions=shards, before=had)
            await mover.await_partitions(topic, shards)
            batches = _Batches(mover, topic_report, shards, stamp=stamp, batch=batch)
            move = _move_checkpoints if stamp else _move_state
            await move(batches, config, topic, shards)
    # 6. Once our commits' markers reached every partition (read_committed sees them).
    await _settled(kafka, list(counts))
    layout = await inspect_layout(kafka, shards=shards)
    if not layout.ok:
        raise NotShardedLayout(
            f"after resharding, the layout is still not that of {shards} shards: "
            f"{'; '.join(layout.problems)}. Did an instance start meanwhile? Stop it and run "
            "`oneroster-cdc reshard` again"
        )
    report.checkpoints = layout.checkpoints
    log.info(
        "reshard.done",
        shards=shards,
        fenced=report.fenced,
        moved={t.topic: t.moved for t in report.topics},
        stamped={t.topic: t.stamped for t in report.topics},
    )
    return report
