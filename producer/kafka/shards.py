"""Shards: how a deployment's districts are split between instances, and Kafka's default
partitioner.

A deployment has a fixed number of shards (``kafka.shards``). A district's shard is Kafka's
default partitioner applied to its id: ``(murmur2(utf8(district_id)) & 0x7fffffff) % shards``,
so any tool (a Java ``Utils.toPositive(Utils.murmur2(bytes)) % shards``, a consumer, an
operator's script) computes the same number. Shard ``n`` is partition ``n`` of the state and
checkpoints topics (those topics have exactly ``shards`` partitions), and its transactional
producer is ``<client_id>-shard-<n>``. Event topics keep Kafka's default partitioning by the
event key (``partition_of``).

``murmur2`` is Kafka's (``org.apache.kafka.common.utils.Utils.murmur2``, as aiokafka's
``aiokafka.partitioner.murmur2`` computes it) reading the key four bytes at a time: about half
the CPU of aiokafka's byte-by-byte loop, which the writer would otherwise run for every event.
"""

from __future__ import annotations

import functools
import struct
from typing import Final

#: Header on every checkpoint record of the sharded layout: the shard count it was written
#: for (decimal ASCII). A checkpoint without it was written by the unsharded 0.1.0 layout.
SHARDS_HEADER: Final = "shards"

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` (seed ``0x9747b28c``), as an unsigned 32-bit int."""
    length = len(data)
    h = _SEED ^ length
    for word in struct.unpack_from(f"<{length >> 2}I", data):  # little-endian 32-bit words
        k = (word * _M) & _MASK
        h = ((h * _M) & _MASK) ^ (((k ^ (k >> 24)) * _M) & _MASK)
    extra = length & 3
    if extra:
        tail = length - extra
        if extra == 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` in a topic of ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@functools.lru_cache(maxsize=65_536)
def shard_of(district_id: str, shards: int) -> int:
    """The shard (= state and checkpoints partition) of a district (remembered: the writer,
    a restore and a reshard ask for the same few districts a million times)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    return partition_of(district_id.encode(), shards)


def transactional_id(client_id: str, shard: int) -> str:
    """The transactional id of a shard's producer."""
    return f"{client_id}-shard-{shard}"
