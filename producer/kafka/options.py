"""aiokafka client options from the ``[kafka]`` section: connection, security, compression.

The single place where config becomes keyword arguments for ``AIOKafkaProducer``,
``AIOKafkaConsumer`` and ``AIOKafkaAdminClient``.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from producer.config import KafkaConfig
from producer.kafka.topics import MAX_MESSAGE_BYTES


def connection_options(cfg: KafkaConfig, *, role: str) -> dict[str, Any]:
    """Options every client shares: bootstrap servers, client id, TLS and SASL."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(cfg.bootstrap_servers),
        "client_id": f"{cfg.client_id}-{role}",
        "security_protocol": cfg.security_protocol,
    }
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(cfg.ssl_cafile) if cfg.ssl_cafile else None
        )
        options["ssl_context"] = context
    if cfg.security_protocol.startswith("SASL_"):
        assert cfg.sasl_password is not None
        options["sasl_mechanism"] = cfg.sasl_mechanism
        options["sasl_plain_username"] = cfg.sasl_username
        options["sasl_plain_password"] = cfg.sasl_password.reveal()
    return options


def producer_options(cfg: KafkaConfig) -> dict[str, Any]:
    """Options of the transactional producer: batching for throughput, compression."""
    return {
        **connection_options(cfg, role="producer"),
        "compression_type": None if cfg.compression == "none" else cfg.compression,
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "max_request_size": MAX_MESSAGE_BYTES,
        "request_timeout_ms": 30_000,
    }


def consumer_options(cfg: KafkaConfig) -> dict[str, Any]:
    """Options of the restore and checkpoint consumers (no group: partitions are assigned)."""
    return connection_options(cfg, role="consumer")
