"""Shards: how a deployment's districts are split between instances.

A deployment has a fixed number of shards (``kafka.shards``). A district's shard is Kafka's
default partitioner applied to its id: ``(murmur2(utf8(district_id)) & 0x7fffffff) % shards``,
so any tool (a Java ``Utils.toPositive(Utils.murmur2(bytes)) % shards``, a consumer, an
operator's script) computes the same number. Shard ``n`` is partition ``n`` of the state and
checkpoints topics (those topics have exactly ``shards`` partitions), and its transactional
producer is ``<client_id>-shard-<n>``. Event topics keep Kafka's default partitioning by the
event key.
"""

from __future__ import annotations

from typing import Final

from aiokafka.partitioner import murmur2

#: Header on every checkpoint record of the sharded layout: the shard count it was written
#: for (decimal ASCII). A checkpoint without it was written by the unsharded 0.1.0 layout.
SHARDS_HEADER: Final = "shards"


def shard_of(district_id: str, shards: int) -> int:
    """The shard (= state and checkpoints partition) of a district."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    hashed: int = murmur2(district_id.encode())
    return (hashed & 0x7FFFFFFF) % shards


def transactional_id(client_id: str, shard: int) -> str:
    """The transactional id of a shard's producer."""
    return f"{client_id}-shard-{shard}"
