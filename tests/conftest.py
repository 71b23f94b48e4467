"""The tests' shared fixtures: the real Kafka broker, unique topics and prefixes, an HTTP session,
simulators on loopback, the CI rule for integration tests and the timeouts of long tests.

The broker is a real single-node Apache Kafka (``scripts/kafka``). ``KAFKA_BOOTSTRAP`` points
the tests at a running one (``.ci/run`` and ``make check`` start it); without it the session
starts its own on port 19092 and stops it at the end. When ``CI=true`` and no broker answers,
integration tests fail loudly; elsewhere they skip with the reason.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from producer.simulator import DistrictSpec, Simulator
from tests.oneroster_fake import FakeServer

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka"
OWN_BROKER_PORT = 19092


def kafka_version() -> str:
    """The Kafka version pinned in scripts/kafka.pom.xml."""
    out = subprocess.run([str(KAFKA_SCRIPT), "version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def broker_answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a Kafka Metadata request (v4) to ``host:port`` returns at least one broker."""
    host, _, port = bootstrap.split(",", maxsplit=1)[0].rpartition(":")
    client = b"pytest-probe"
    body = struct.pack(">hhih", 3, 4, 11, len(client)) + client + struct.pack(">i?", -1, False)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            buf = b""
            while len(buf) < 4:
                chunk = sock.recv(4 - len(buf))
                if not chunk:
                    return False
                buf += chunk
            size = struct.unpack(">i", buf)[0]
            resp = b""
            while len(resp) < size:
                chunk = sock.recv(size - len(resp))
                if not chunk:
                    return False
                resp += chunk
    except OSError:
        return False
    corr, _throttle, nbrokers = struct.unpack(">iii", resp[:12])
    return bool(corr == 11 and nbrokers >= 1)


#: The timeout of tests marked integration or slow, or using the broker (unit tests get the
#: pyproject default); a test's own ``@pytest.mark.timeout`` wins.
LONG_TIMEOUT = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give long tests their longer timeout."""
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        long = item.get_closest_marker("integration") or item.get_closest_marker("slow")
        if long or "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT))


def pytest_report_header(config: pytest.Config) -> list[str]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", f"(own broker on 127.0.0.1:{OWN_BROKER_PORT})")
    return [f"kafka: Apache Kafka {kafka_version()} (scripts/kafka), bootstrap {bootstrap}"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the Kafka broker is unavailable: {reason}", pytrace=False)
    pytest.skip(f"Kafka broker unavailable: {reason}")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker: ``KAFKA_BOOTSTRAP``, or one this session starts."""
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        if not broker_answers(given):
            _unavailable(f"KAFKA_BOOTSTRAP={given} does not answer a Metadata request")
        yield given
        return
    env = {**os.environ, "KAFKA_PORT": str(OWN_BROKER_PORT)}
    started = subprocess.run(
        [str(KAFKA_SCRIPT), "start"], env=env, capture_output=True, text=True, check=False
    )
    bootstrap = f"127.0.0.1:{OWN_BROKER_PORT}"
    if started.returncode != 0 or not broker_answers(bootstrap):
        _unavailable(f"scripts/kafka start failed: {started.stderr[-2000:]}")
    try:
        yield bootstrap
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, check=False)


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def topic_factory(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> AsyncIterator[TopicFactory]:
    """Creates uniquely named topics (``t-<test>-<random>``) and deletes them afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []
    base = request.node.name.replace("[", "-").replace("]", "")[:40]

    async def make(
        suffix: str = "", *, partitions: int = 1, configs: dict[str, str] | None = None
    ) -> str:
        name = f"t-{base}-{suffix}-{uuid.uuid4().hex[:8]}".replace("--", "-")
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
        created.append(name)
        return name

    try:
        yield make
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed afterwards."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """The scriptable OneRoster server of the client tests (``tests/oneroster_fake.py``)."""
    async with FakeServer() as fake:
        yield fake


ServeSimulator = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def serve_simulator() -> AsyncIterator[ServeSimulator]:
    """Starts simulators on loopback (``await serve_simulator(specs, **options)``) and stops
    them afterwards."""
    async with AsyncExitStack() as stack:

        async def serve(specs: list[DistrictSpec], **options: Any) -> Simulator:
            simulator = Simulator(specs, **options)
            await stack.enter_async_context(simulator.serve())
            return simulator

        yield serve


@pytest.fixture
def unique_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses, for tests that let the producer create its topics."""
    return f"it{uuid.uuid4().hex[:10]}"
