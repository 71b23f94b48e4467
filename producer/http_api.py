"""The operator's HTTP endpoints: ``/healthz``, ``/readyz`` and ``/metrics``.

- ``/healthz`` answers 200 while the event loop is alive: a ``Heartbeat`` task beats every few
  seconds, and a heartbeat older than its limit (a wedged loop, a dead task) answers 503.
- ``/readyz`` answers 200 only when every readiness check passes (broker reachable, state
  restored ...), else 503 with a JSON body naming the failing checks. It also sets the
  ``oneroster_ready`` gauge.
- ``/metrics`` serves ``Metrics.render()`` in the Prometheus text format.

``HttpServer`` is an async context manager; port 0 binds a free port, exposed as ``port``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, Self

import orjson
import structlog
from aiohttp import web

from producer.config import parse_listen
from producer.errors import ClientClosed
from producer.metrics import CONTENT_TYPE, Metrics
from producer.protocols import SecondsClock, Sleep

log = structlog.get_logger(__name__)

#: A named readiness check: returns (or resolves to) whether the condition holds.
CheckFunction = Callable[[], bool | Awaitable[bool]]

_JSON: Final = "application/json"


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one health or readiness check."""

    name: str
    ok: bool
    detail: str = ""


class ReadinessProbe(Protocol):
    """Says whether the daemon can do its work (broker reachable, state restored ...)."""

    async def readiness(self) -> Sequence[Check]: ...


class HealthSource(ReadinessProbe, Protocol):
    """Liveness and readiness, as the HTTP endpoints ask for them."""

    def liveness(self) -> Check: ...


class Heartbeat:
    """A cheap liveness record: ``run()`` beats every ``interval``; ``check()`` judges its age."""

    def __init__(self, *, clock: SecondsClock = time.monotonic, max_age: float = 30.0) -> None:
        self._clock = clock
        self.max_age = max_age
        self._last = clock()

    def beat(self) -> None:
        """Record that the loop is alive now."""
        self._last = self._clock()

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last

    def check(self) -> Check:
        """``ok`` while the last beat is younger than ``max_age``."""
        age = self.age()
        return Check("heartbeat", age <= self.max_age, f"last beat {age:.1f}s ago")

    async def run(self, interval: float = 5.0, *, sleep: Sleep = asyncio.sleep) -> None:
        """Beat forever (run it as a task; cancel it to stop)."""
        while True:
            self.beat()
            await sleep(interval)


class ChecksProbe:
    """A ``ReadinessProbe`` over named check functions, each bounded by ``timeout`` seconds.

    A check that raises or times out fails with the exception's class name as detail (never its
    message, which might carry a secret).
    """

    def __init__(self, checks: Mapping[str, CheckFunction], *, timeout: float = 2.0) -> None:
        self._checks = dict(checks)
        self._timeout = timeout

    async def _run(self, name: str, check: CheckFunction) -> Check:
        try:
            async with asyncio.timeout(self._timeout):
                result = check()
                ok = await result if inspect.isawaitable(result) else result
        except TimeoutError:
            return Check(name, ok=False, detail=f"no answer within {self._timeout}s")
        except Exception as exc:  # noqa: BLE001 a failing check is an answer, not a crash
            return Check(name, ok=False, detail=type(exc).__name__)
        return Check(name, ok=bool(ok), detail="" if ok else "not yet")

    async def readiness(self) -> Sequence[Check]:
        return await asyncio.gather(*(self._run(n, c) for n, c in self._checks.items()))


class Health:
    """The daemon's ``HealthSource``: a heartbeat for liveness, a probe for readiness."""

    def __init__(self, heartbeat: Heartbeat, probe: ReadinessProbe) -> None:
        self.heartbeat = heartbeat
        self._probe = probe

    def liveness(self) -> Check:
        return self.heartbeat.check()

    async def readiness(self) -> Sequence[Check]:
        return [self.heartbeat.check(), *await self._probe.readiness()]


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


def _checks_body(checks: Sequence[Check]) -> dict[str, object]:
    return {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}


class HttpServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``listen`` ("host:port", port 0: any)."""

    def __init__(self, listen: str, metrics: Metrics, health: HealthSource) -> None:
        self._host, self._requested_port = parse_listen(listen)
        self._metrics = metrics
        self._health = health
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0)."""
        if self._port is None:
            raise RuntimeError("the HTTP server is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        check = self._health.liveness()
        status = 200 if check.ok else 503
        return _json(status, {"status": "ok" if check.ok else "failing", **_checks_body([check])})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self._health.readiness()
        ready = all(c.ok for c in checks)
        self._metrics.ready(ready)
        body: dict[str, object] = {"status": "ready" if ready else "not ready"}
        body["checks"] = _checks_body(checks)
        body["failing"] = [c.name for c in checks if not c.ok]
        return _json(200 if ready else 503, body)

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        """Bind and serve; ``port`` is known afterwards."""
        if self._closed:
            raise ClientClosed("the HTTP server was closed; build a new one")
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])
        log.info("http.started", host=self._host, port=self._port)

    async def close(self) -> None:
        """Stop serving; idempotent."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("http.stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
