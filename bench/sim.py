"""The simulator in a child process, so it does not share the producer's event loop or core.

``SimProcess`` starts ``producer.simulator.Simulator`` in a spawned process and talks to it over
a pipe: the child answers with the districts' addresses and credentials, then executes commands
(mutate records, switch faults) until it is told to stop. Mutations run in the child's event
loop, between requests, exactly as a live source changes under a poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

#: A field per entity that the normaliser keeps, so an update is a real change.
MUTABLE_FIELD = {
    "orgs": "name",
    "academicSessions": "title",
    "courses": "title",
    "classes": "title",
    "users": "givenName",
    "enrollments": "endDate",
    "demographics": "cityOfBirth",
}


@dataclass(frozen=True, slots=True)
class SimDistrict:
    """What the parent needs to reach one simulated district."""

    id: str
    version: str
    base_url: str
    oneroster_url: str
    token_url: str
    auth: str
    client_id: str
    client_secret: str
    counts: dict[str, int]

    @property
    def records(self) -> int:
        return sum(self.counts.values())


def _value(entity: str, n: int) -> str:
    return "2027-06-30" if entity == "enrollments" and n % 2 else f"bench-{n}"


def _serve(specs: list[dict[str, Any]], conn: Connection) -> None:
    """Child process: serve the districts and execute the parent's commands."""
    import structlog  # noqa: PLC0415 - child-only imports

    from producer.simulator import DistrictSpec, Faults, Simulator  # noqa: PLC0415

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    sim = Simulator([DistrictSpec(**s) for s in specs])
    counter = 0

    def mutate(district_id: str, entity: str, indices: list[int]) -> list[str]:
        nonlocal counter
        d = sim.district(district_id)
        field = MUTABLE_FIELD[entity]
        sids = []
        for index in indices:
            record = d.store.get_index(entity, index)  # type: ignore[arg-type]
            if record is None:
                continue
            counter += 1
            d.update(entity, record["sourcedId"], **{field: _value(entity, counter)})
            sids.append(record["sourcedId"])
        return sids

    def command(msg: tuple[Any, ...]) -> Any:
        kind = msg[0]
        if kind == "mutate":  # ("mutate", district, {entity: [indices]})
            return {e: mutate(msg[1], e, idx) for e, idx in msg[2].items()}
        if kind == "faults":  # ("faults", district, Faults kwargs)
            sim.set_faults(msg[1], Faults(**msg[2]))
            return None
        raise ValueError(f"unknown command {kind!r}")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        async with sim.serve("127.0.0.1", 0):
            conn.send(
                [
                    SimDistrict(
                        id=d.id,
                        version=d.spec.version,
                        base_url=d.base_url,
                        oneroster_url=d.oneroster_url,
                        token_url=d.token_url,
                        auth=d.spec.auth_method,
                        client_id=d.spec.client_id,
                        client_secret=d.spec.client_secret,
                        counts=d.counts(),
                    )
                    for d in sim.districts
                ]
            )
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                if msg[0] == "stop":
                    return
                try:
                    conn.send(("ok", command(msg), time.time()))
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    conn.send(("error", repr(exc), time.time()))

    asyncio.run(run())


class SimProcess:
    """A simulator child process; use as a context manager."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        self._specs = specs
        self._ctx = mp.get_context("spawn")
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(specs, child), daemon=True)
        self._child = child
        self.districts: list[SimDistrict] = []

    def __enter__(self) -> SimProcess:
        self._proc.start()
        self._child.close()
        if not self._conn.poll(120):
            raise RuntimeError("the simulator did not start within 120 s")
        self.districts = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(("stop",))
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    def district(self, district_id: str) -> SimDistrict:
        return next(d for d in self.districts if d.id == district_id)

    def _call(self, *msg: Any) -> tuple[Any, float]:
        self._conn.send(msg)
        status, value, at = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"simulator command {msg[0]} failed: {value}")
        return value, at

    def mutate(
        self, district_id: str, plan: dict[str, list[int]]
    ) -> tuple[dict[str, list[str]], float]:
        """Update the records at ``plan[entity]`` indices; returns their sourcedIds and the
        child's wall time right after the last update."""
        value, at = self._call("mutate", district_id, plan)
        return value, at

    async def amutate(
        self, district_id: str, plan: dict[str, list[int]]
    ) -> tuple[dict[str, list[str]], float]:
        """``mutate`` without blocking the caller's event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.mutate, district_id, plan
        )

    def set_faults(self, district_id: str, **faults: Any) -> None:
        self._call("faults", district_id, faults)


def spread(counts: dict[str, int], share: float) -> dict[str, list[int]]:
    """Indices of ``share`` of each entity's records, evenly spread (at least one each)."""
    plan = {}
    for entity, count in counts.items():
        n = max(1, round(count * share))
        step = max(1, count // n)
        plan[entity] = list(range(0, count, step))[:n]
    return plan
