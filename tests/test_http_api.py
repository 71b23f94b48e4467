"""Tests for producer.http_api: health and readiness endpoints flip with their sources."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import pytest

from producer.errors import ClientClosed
from producer.http_api import Check, ChecksProbe, Health, Heartbeat, HttpServer
from producer.metrics import Metrics


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProbe:
    """A readiness probe whose answers the test sets."""

    def __init__(self) -> None:
        self.broker = False
        self.state = False

    async def readiness(self) -> Sequence[Check]:
        return [Check("broker", self.broker), Check("state", self.state, "restoring")]


@pytest.fixture
async def served():
    """A running server on a free port with a fake clock and probe; closed afterwards."""
    clock, probe, metrics = FakeClock(), FakeProbe(), Metrics()
    heartbeat = Heartbeat(clock=clock, max_age=10.0)
    async with (
        HttpServer("127.0.0.1:0", metrics, Health(heartbeat, probe)) as server,
        aiohttp.ClientSession(base_url=server.url) as http,
    ):
        yield http, clock, probe, metrics, heartbeat


async def test_port_zero_binds_a_free_port(served):
    """listen port 0 binds a real port, exposed for clients."""
    http, *_ = served
    async with http.get("/healthz") as response:
        assert response.status == 200


async def test_healthz_follows_heartbeat(served):
    """/healthz is 200 while the heartbeat is recent, 503 once it is older than max_age."""
    http, clock, _probe, _metrics, heartbeat = served
    clock.now += 9
    async with http.get("/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    clock.now += 2
    async with http.get("/healthz") as response:
        assert response.status == 503
        assert (await response.json())["heartbeat"]["ok"] is False
    heartbeat.beat()
    async with http.get("/healthz") as response:
        assert response.status == 200


async def test_readyz_names_failing_checks_and_flips(served):
    """/readyz is 503 naming each failing check until all pass, then 200; the gauge follows."""
    http, _clock, probe, metrics, _heartbeat = served
    async with http.get("/readyz") as response:
        body = await response.json()
        assert response.status == 503
        assert body["failing"] == ["broker", "state"]
        assert body["checks"]["state"] == {"ok": False, "detail": "restoring"}
    assert b"oneroster_ready 0.0" in metrics.render()
    probe.broker = True
    async with http.get("/readyz") as response:
        assert response.status == 503
        assert (await response.json())["failing"] == ["state"]
    probe.state = True
    async with http.get("/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"
    assert b"oneroster_ready 1.0" in metrics.render()


async def test_metrics_endpoint_serves_text(served):
    """/metrics serves the registry in the Prometheus text format."""
    http, _clock, _probe, metrics, _heartbeat = served
    metrics.events("d1", "users", "UPDATED", 3)
    async with http.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert 'oneroster_events_total{district="d1",entity="users",op="UPDATED"} 3.0' in text


async def test_checks_probe_failures_and_timeouts():
    """ChecksProbe runs sync and async checks; errors fail by class name, hangs time out."""

    async def hangs() -> bool:
        await asyncio.sleep(10)
        return True

    def raises() -> bool:
        raise ConnectionError("password=hunter2")

    async def fine() -> bool:
        return True

    probe = ChecksProbe(
        {"ok": fine, "sync": lambda: True, "hang": hangs, "boom": raises, "no": lambda: False},
        timeout=0.05,
    )
    checks = {c.name: c for c in await probe.readiness()}
    assert checks["ok"].ok
    assert checks["sync"].ok
    assert not checks["hang"].ok
    assert "0.05" in checks["hang"].detail
    assert checks["boom"] == Check("boom", ok=False, detail="ConnectionError")
    assert not checks["no"].ok


async def test_heartbeat_run_beats():
    """Heartbeat.run refreshes the beat each interval."""
    clock = FakeClock()
    heartbeat = Heartbeat(clock=clock, max_age=5.0)
    clock.now += 100
    assert not heartbeat.check().ok
    beats = asyncio.Event()

    async def sleep(_seconds: float) -> None:
        beats.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(heartbeat.run(1.0, sleep=sleep))
    await beats.wait()
    assert heartbeat.check().ok
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_close_is_idempotent_and_refuses_reuse():
    """close() twice is fine; a closed server cannot be started again."""
    server = HttpServer("127.0.0.1:0", Metrics(), Health(Heartbeat(), FakeProbe()))
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    await server.start()
    assert server.port > 0
    await server.close()
    await server.close()
    with pytest.raises(ClientClosed):
        await server.start()
