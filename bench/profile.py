"""Profile the snapshot and the no-change re-read with pyinstrument.

    .venv/bin/python -m bench.profile --students 5000 --out bench/results/profile

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile")
    parser.add_argument("--interval", type=float, default=0.001)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    asyncio.run(profile(args.students, args.out, args.interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
