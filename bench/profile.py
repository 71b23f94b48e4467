"""Profile the snapshot and the no-change re-read with pyinstrument.

    .venv/bin/python -m bench.profile --students 5000 --out bench/results/profile [--bare]
    .venv/bin/python -m bench.profile --fanout 100 --rounds 3 [--warmup 1] [--cpu] [--pause 20]

Runs the simulator in a child process (so only the producer is profiled), then one full sync
(snapshot) and a second full sync (nothing changed) of one district, each under its own
pyinstrument profiler; writes ``<out>/<scenario>.txt`` (call tree) and ``.html``, and prints
the top functions by own time. Needs ``pyinstrument`` (``pip install pyinstrument``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time
import uuid
from pathlib import Path

import structlog

from bench.run import ROOT, config_data, ensure_kafka
from bench.sim import SimProcess
from producer.config import config_from_mapping
from producer.service import Service


async def profile(students: int, out: Path, interval: float, *, bare: bool = False) -> None:
    """``bare``: no profiler, only the CPU and wall time of each pass (no pyinstrument
    overhead in the CPU figure)."""
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
                started, cpu = time.monotonic(), time.process_time()
                if not bare:
                    profiler.start()
                results = await service.sync(district.id, full=True)
                if bare:
                    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
                    fetched = sum(r.fetched for r in results)
                    print(
                        f"{name}: {fetched} records in {seconds:.2f} s = "
                        f"{fetched / seconds:,.0f}/s, {cpu / fetched * 1e6:.1f} us CPU per record"
                        f" ({cpu / seconds:.2f} of a core)"
                    )
                    continue
                profiler.stop()
                seconds, cpu = time.monotonic() - started, time.process_time() - cpu
                fetched = sum(r.fetched for r in results)
                print(
                    f"{name}: {fetched} records in {seconds:.1f} s = {fetched / seconds:,.0f}/s,"
                    f" {cpu / fetched * 1e6:.1f} us CPU per record (under pyinstrument)"
                )
                (out / f"{name}.txt").write_text(
                    profiler.output_text(unicode=False, color=False, show_all=False)
                )
                (out / f"{name}.html").write_text(profiler.output_html())


class CpuProfiler:
    """cProfile counting process CPU time (not wall time), so waits and other processes on a
    shared machine do not count; ``output_text`` lists functions by own CPU time."""

    def __init__(self) -> None:
        self._profile = cProfile.Profile(time.process_time)

    def start(self) -> None:
        self._profile.enable()

    def stop(self) -> None:
        self._profile.disable()

    def output_text(self, limit: int = 60) -> str:
        stream = io.StringIO()
        stats = pstats.Stats(self._profile, stream=stream)
        stats.sort_stats("tottime").print_stats(limit)
        stats.sort_stats("cumulative").print_stats(limit)
        return stream.getvalue()


async def profile_fanout(
    districts: int,
    rounds: int,
    out: Path,
    interval: float,
    *,
    warmup: int = 1,
    cpu: bool = False,
    pause: float = 0.0,
) -> None:
    """Snapshot ``districts`` tiny districts, poll them ``warmup`` times unprofiled (the first
    delta round after a snapshot commits every checkpoint once; later ones are the steady state),
    then profile ``rounds`` no-change delta polls of every district (what the fan-out daemon
    does each poll interval), 8 at a time. ``cpu``: cProfile on process CPU time instead of
    pyinstrument (wall time), written to ``fanout-cpu.txt``. ``pause``: seconds of idleness
    before each round, as between the daemon's polls (longer than aiohttp's 15 s keep-alive,
    idle connections are closed by then); the CPU per pass counts the pauses' CPU too."""
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
            for _ in range(warmup):
                await asyncio.gather(*(poll(d.id, False) for d in sim.districts))
            profiler: Profiler | CpuProfiler = (
                CpuProfiler() if cpu else Profiler(interval=interval, async_mode="enabled")
            )
            started, used = time.monotonic(), time.process_time()
            profiler.start()
            for _ in range(rounds):
                await asyncio.sleep(pause)
                await asyncio.gather(*(poll(d.id, False) for d in sim.districts))
            profiler.stop()
            passes = rounds * districts * len(sim.districts[0].counts)
            used = time.process_time() - used
            print(
                f"fan-out: {passes} no-change entity passes in {time.monotonic() - started:.1f} s,"
                f" {used:.1f} s CPU = {used / passes * 1000:.2f} ms CPU per pass"
                + (" (under cProfile)" if cpu else "")
            )
            if isinstance(profiler, CpuProfiler):
                (out / "fanout-cpu.txt").write_text(profiler.output_text())
                return
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
    parser.add_argument(
        "--warmup", type=int, default=1, help="unprofiled poll rounds before them (--fanout)"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="--fanout: cProfile on CPU time, not pyinstrument"
    )
    parser.add_argument(
        "--pause", type=float, default=0.0, help="--fanout: idle seconds before each round"
    )
    parser.add_argument(
        "--bare", action="store_true", help="no profiler: CPU and wall time of each pass only"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    if args.fanout:
        asyncio.run(
            profile_fanout(
                args.fanout,
                args.rounds,
                args.out,
                args.interval,
                warmup=args.warmup,
                cpu=args.cpu,
                pause=args.pause,
            )
        )
    else:
        asyncio.run(profile(args.students, args.out, args.interval, bare=args.bare))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
