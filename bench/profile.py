"""Profile the snapshot and the no-change re-read with pyinstrument.

    .venv/bin/python -m bench.profile --students 5000 --out bench/results/profile
    .venv/bin/python -m bench.profile --fanout 100 --rounds 3

Runs the simulator in a child process (so only the producer is profiled), then one full sync
(snapshot) and a second full sync (nothing changed) of one district, each under its own
pyinstrument profiler; writes ``<out>/<scenario>.txt`` (call tree) and ``.html``, and prints
the top functions by own time. Needs ``pyinstrument`` (``pip install pyinstrument``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path

import structlog

from bench.run import ROOT, config_data, ensure_kafka
from bench.sim import SimProcess
from producer.config import config_from_mapping
from producer.service import Service


async def profile(students: int, out: Path, interval: float) -> None:
    from pyinstrument import Profiler  # noqa: PLC0415 - optional, bench only

    bootstrap = ensure_kafka()
    spec = {"id": "bench", "version": "1.2", "size": students, "seed": 1}
    with SimProcess([spec]) as sim:
        district = sim.district("bench")
        tag = f"bench-prof-{uuid.uuid4().hex[:6]}"
        config = config_from_mapping(
            config_data(bootstrap, tag, out / f"state-{tag}", [district]), {}
        )
        async with Service(config) as service:
            for name in ("snapshot", "nochange"):
                profiler = Profiler(interval=interval, async_mode="enabled")
                started = time.monotonic()
                profiler.start()
                results = await service.sync(district.id, full=True)
                profiler.stop()
                seconds = time.monotonic() - started
                fetched = sum(r.fetched for r in results)
                print(f"{name}: {fetched} records in {seconds:.1f} s = {fetched / seconds:,.0f}/s")
                (out / f"{name}.txt").write_text(
                    profiler.output_text(unicode=False, color=False, show_all=False)
                )
                (out / f"{name}.html").write_text(profiler.output_html())


async def profile_fanout(districts: int, rounds: int, out: Path, interval: float) -> None:
    """Snapshot ``districts`` tiny districts, then profile ``rounds`` no-change delta polls of
    every district (what the fan-out daemon does each poll interval), 8 at a time."""
    from pyinstrument import Profiler  # noqa: PLC0415 - optional, bench only

    bootstrap = ensure_kafka()
    specs = [
        {"id": f"d{n:04d}", "version": "1.2", "size": "tiny", "seed": n} for n in range(districts)
    ]
    with SimProcess(specs) as sim:
        tag = f"bench-prof-fan-{uuid.uuid4().hex[:6]}"
        config = config_from_mapping(
            config_data(bootstrap, tag, out / f"state-{tag}", sim.districts), {}
        )
        async with Service(config) as service:
            slots = asyncio.Semaphore(8)

            async def poll(district_id: str, full: bool) -> None:
                async with slots:
                    await service.sync(district_id, full=full)

            await asyncio.gather(*(poll(d.id, True) for d in sim.districts))
            profiler = Profiler(interval=interval, async_mode="enabled")
            started, cpu = time.monotonic(), time.process_time()
            profiler.start()
            for _ in range(rounds):
                await asyncio.gather(*(poll(d.id, False) for d in sim.districts))
            profiler.stop()
            passes = rounds * districts * len(sim.districts[0].counts)
            cpu = time.process_time() - cpu
            print(
                f"fan-out: {passes} no-change entity passes in {time.monotonic() - started:.1f} s,"
                f" {cpu:.1f} s CPU = {cpu / passes * 1000:.2f} ms CPU per pass"
            )
            (out / "fanout.txt").write_text(
                profiler.output_text(unicode=False, color=False, show_all=False)
            )
            (out / "fanout.html").write_text(profiler.output_html())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile")
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument(
        "--fanout", type=int, metavar="N", help="profile no-change polls of N tiny districts"
    )
    parser.add_argument("--rounds", type=int, default=3, help="poll rounds with --fanout")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    if args.fanout:
        asyncio.run(profile_fanout(args.fanout, args.rounds, args.out, args.interval))
    else:
        asyncio.run(profile(args.students, args.out, args.interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
