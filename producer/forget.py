"""``oneroster-cdc forget --district ID``: erase a district from the stream's current state.

For every record of the district that the state holds, in entity order and in transactions of
``batch_size`` records (``TransactionalWriter.commit``, so each batch is all-or-nothing and the
local store follows only what committed):

1. a DELETED event (``before`` = the last published record, ``source.delete_reason`` null: the
   operator, not the source, removed it; ``sync_mode`` FULL) followed by a tombstone on the same
   key in ``<prefix>.<entity>``;
2. a tombstone for its key in ``<prefix>.state``;
3. in the last transaction, a tombstone for each of the district's checkpoints in
   ``<prefix>.checkpoints`` (its cursors and counts), so it is new to the producer again.

After compaction nothing of the district remains in the state and checkpoint topics, and the
local store has no row of it. Event history and dead letters are not rewritten (Kafka cannot):
they age out with ``kafka.event_retention``; consumers apply the DELETED events and tombstones to
erase their copies.

The command runs through ``Service``, owning every shard; like ``confirm-deletes`` it refuses
while daemons of the deployment run (the CLI checks their group first). Everything goes through
the shard of the district: its store, its writer (state and checkpoint tombstones land in its
partition). A
district the config still lists is refused unless forced: its next poll would snapshot it again.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from producer import diff as differ
from producer.errors import EncodingError
from producer.events import Batch, OutRecord, SourceInfo
from producer.model import ENTITIES, Entity
from producer.service import Service

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class ForgetResult:
    """What ``forget_district`` erased: keys per entity and checkpoints."""

    district_id: str
    sync_id: str
    deleted: dict[Entity, int] = field(default_factory=dict)
    checkpoints: int = 0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


async def forget_district(service: Service, district_id: str, *, batch_size: int) -> ForgetResult:
    """Tombstone every record and checkpoint of ``district_id`` (steps in the module docstring);
    ``service`` must be started (its store restored, its checkpoints read)."""
    shard = service.shard_for(district_id)
    store, writer, encoder = shard.store, shard.writer, service.encoder
    result = ForgetResult(district_id, uuid.uuid4().hex)
    batch = Batch()
    with structlog.contextvars.bound_contextvars(district=district_id, sync_id=result.sync_id):
        for entity in ENTITIES:
            sids = list(store.sourced_ids(entity, district_id))
            for start in range(0, len(sids), batch_size):
                chunk = sids[start : start + batch_size]
                source = SourceInfo("", None, "FULL", result.sync_id, datetime.now(UTC))
                for sid, stored in sorted(store.get_many(entity, district_id, chunk).items()):
                    before, before_body = encoder.prior(stored.value)
                    change = dataclasses.replace(
                        differ.absent(entity, district_id, sid, (stored.digest, before)),
                        delete_reason=None,
                    )
                    # 1. and 2.: the DELETED event, its tombstone and the state tombstone.
                    why = encoder.add_change(batch, change, source, before_body=before_body)
                    if why is not None:  # the record was published, so it encodes: a bug
                        raise EncodingError(f"forget {entity}/{sid}: {why}")
                result.deleted[entity] = result.deleted.get(entity, 0) + len(chunk)
                if len(batch.state) >= batch_size:
                    await writer.commit(batch)
                    batch = Batch()
        # 3.
        for cp in shard.book.all():
            if cp.district_id == district_id:
                batch.events.append(OutRecord(encoder.topics.checkpoints, cp.key.encode(), None))
                result.checkpoints += 1
        await writer.commit(batch)
        shard.book.drop(district_id)
        service.metrics.state_keys(service.state_keys())
        log.info(
            "forget.done",
            records=result.total,
            checkpoints=result.checkpoints,
            **{f"{e}_deleted": n for e, n in result.deleted.items()},
        )
    return result
