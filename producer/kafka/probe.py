"""Does the broker answer? Readiness (``/readyz``) and ``demo``'s "is a broker up" check."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient


class BrokerProbe:
    """A long-lived admin client that asks the cluster for its brokers."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = options
        self._admin: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(**self._options)
        await admin.start()
        self._admin = admin

    async def close(self) -> None:
        """Stop the admin client; idempotent, never raises."""
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def reachable(self) -> bool:
        """True when the broker answers a metadata request (errors propagate)."""
        if self._admin is None:
            return False
        cluster = await self._admin.describe_cluster()
        return bool(cluster.get("brokers"))


async def broker_answers(
    options: Mapping[str, Any], *, seconds: float = 5.0, request_timeout_ms: int = 3000
) -> bool:
    """One-off: True when a broker answers within ``seconds``; any failure is False."""
    probe = BrokerProbe({**options, "request_timeout_ms": request_timeout_ms})
    reachable = False
    with contextlib.suppress(Exception):  # any failure means "not reachable"
        async with asyncio.timeout(seconds):
            await probe.start()
            reachable = await probe.reachable()
    await probe.close()
    return reachable
