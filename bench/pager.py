"""The pager against a serial pager where the network, not the server, is the bottleneck.

    .venv/bin/python -m bench.pager [--size medium] [--latency 0.25] [--concurrency 4 8]
                                    [--work-ms 0] [--entities users enrollments ...]

The simulator (a child process) adds ``--latency`` seconds to every request (its ``latency``
fault at rate 1.0), chosen to dominate its own serving time per page (measured first, with no
latency). Then, one after the other: the serial pager of scenario 8 (one request at a time,
limit/offset until a short page) and ``OneRosterClient`` listings at each concurrency.
``--work-ms`` makes the consumer of each page (in both pagers) burn that much CPU, as the sync
engine does while it normalises, diffs and encodes a page, so the pager's overlap of fetching
with processing shows (the bound below assumes no work).

Prints, per pager: records/s, its speed-up over the serial pager, and the bound of that
speed-up for these entities (a listing at concurrency ``c`` cannot beat ``c`` times the serial
pager; the first page of each entity is fetched alone, because its total decides the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
from typing import Any

import structlog

from bench.scenarios import our_pager, serial_pager
from bench.sim import SimDistrict, SimProcess

PAGE_SIZE = 1000


def round_trips(counts: dict[str, int], entities: list[str], concurrency: int | None) -> int:
    """Sequential request rounds to list ``entities``: serially (``concurrency`` None: every
    page, plus the empty page after a full last one), or at ``concurrency`` (the first page,
    then the rest ``concurrency`` at a time)."""
    rounds = 0
    for entity in entities:
        pages = max(1, math.ceil(counts[entity] / PAGE_SIZE))
        if concurrency is None:
            rounds += pages + (1 if counts[entity] % PAGE_SIZE == 0 else 0)
        else:
            rounds += 1 + math.ceil((pages - 1) / concurrency)
    return rounds


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    spec = {"id": "pager", "version": "1.2", "size": args.size, "seed": 1}
    with SimProcess([spec]) as sim:
        district: SimDistrict = sim.district("pager")
        entities = args.entities or list(district.counts)
        # The simulator's own time per page, with no added latency.
        plain = await serial_pager(district, entities, PAGE_SIZE)
        serial_rounds = round_trips(district.counts, entities, None)
        own = plain.seconds / serial_rounds
        sim.set_faults(district.id, rate=1.0, kinds=("latency",), latency=args.latency)
        try:
            serial = await serial_pager(district, entities, PAGE_SIZE, work=args.work_ms / 1000)
            ours = {}
            for c in args.concurrency:
                ours[c] = await our_pager(
                    district, entities, PAGE_SIZE, c, work=args.work_ms / 1000
                )
        finally:
            sim.set_faults(district.id)
    return {
        "records": serial.count,
        "entities": {e: district.counts[e] for e in entities},
        "server_seconds_per_page": own,
        "latency": args.latency,
        "work_seconds_per_page": args.work_ms / 1000,
        "serial_rate": serial.rate,
        "ours": {
            c: {
                "rate": f.rate,
                "speedup": f.rate / serial.rate,
                "bound": serial_rounds / round_trips(district.counts, entities, c),
            }
            for c, f in ours.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="medium")
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--entities", nargs="*")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load = os.getloadavg()
    out = asyncio.run(measure(args))
    pages = sum(math.ceil(n / PAGE_SIZE) for n in out["entities"].values())
    print(
        f"{out['records']:,} records, {pages} pages; simulator"
        f" {out['server_seconds_per_page'] * 1000:.0f} ms per page unloaded,"
        f" {out['latency'] * 1000:.0f} ms added per request,"
        f" consumer {out['work_seconds_per_page'] * 1000:.0f} ms CPU per page;"
        f" load average {load[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"serial pager: {out['serial_rate']:,.0f} records/s")
    for c, fig in out["ours"].items():
        print(
            f"ours, concurrency {c}: {fig['rate']:,.0f} records/s, {fig['speedup']:.2f}x serial"
            f" (bound {fig['bound']:.2f}x: {fig['speedup'] / fig['bound']:.2f} of it)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
