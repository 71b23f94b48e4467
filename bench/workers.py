"""``sync.workers`` measured: a snapshot (and the no-change full re-read after it) of one
district in process and with 1 and 2 worker processes, the modes interleaved round by round.

    .venv/bin/python -m bench.workers --students 5000 --rounds 3 [--modes 0,1,2] [--out DIR]

The simulator runs in a child process of its own. Each run gets a fresh topic prefix and state
directory and a ``Service`` with ``sync.workers`` set; its pool is started (every worker
spawned) before the clock starts, so the figures are the steady state of a daemon, whose pool
starts once. Per run: records/s (wall), the CPU seconds (user + system, from ``/proc``) of the
event loop's process, of the workers, of the simulator and of the whole machine (``/proc/stat``,
which includes the broker and anything else running), and the CPU µs per record of the producer
(event loop + workers). ``--boundary`` also prints what crossing the process boundary costs
per record for one page of users (JSON bytes out, pickled results back).

The machine is shared, so compare figures within a round; wall time is noise under load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import structlog

from bench.run import ROOT, config_data, ensure_kafka
from bench.sim import SimProcess
from producer.config import config_from_mapping
from producer.privacy import NO_RULES
from producer.service import Service
from producer.workers import _prepare_in_worker, _received, prepare

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_cpu() -> float:
    """CPU seconds every core has spent busy (not idle or iowait) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / _TICKS


async def warm(service: Service, workers: int) -> None:
    """Spawn every worker of the pool (one task each, concurrently) before measuring."""
    if service.workers is None:
        return
    slow = [{"sourcedId": f"w{i}", "status": "active"} for i in range(20_000)]
    await asyncio.gather(
        *(
            service.workers.prepare("orgs", "warm", slow, [None] * len(slow), NO_RULES)
            for _ in range(workers)
        )
    )


async def one_run(
    sim: SimProcess, bootstrap: str, work: Path, district_id: str, workers: int
) -> dict[str, Any]:
    """A snapshot and a no-change full re-read with ``sync.workers = workers``."""
    district = sim.district(district_id)
    tag = f"bench-wk-{uuid.uuid4().hex[:6]}"
    data = config_data(bootstrap, tag, work / f"state-{tag}", [district], workers=workers)
    config = config_from_mapping(data, {})
    out: dict[str, Any] = {"workers": workers}
    async with Service(config) as service:
        await warm(service, workers)
        pids = service.workers.pids() if service.workers is not None else []
        for name in ("snapshot", "nochange"):
            before_workers = sum(process_cpu(p) for p in pids)
            before_sim, before_machine = process_cpu(sim.pid), machine_cpu()
            started, cpu = time.monotonic(), time.process_time()
            results = await service.sync(district.id, full=True)
            seconds, cpu = time.monotonic() - started, time.process_time() - cpu
            worker_cpu = sum(process_cpu(p) for p in pids) - before_workers
            fetched = sum(r.fetched for r in results)
            out[name] = {
                "records": fetched,
                "seconds": round(seconds, 3),
                "rate": round(fetched / seconds),
                "loop_cpu": round(cpu, 3),
                "worker_cpu": round(worker_cpu, 3),
                "sim_cpu": round(process_cpu(sim.pid) - before_sim, 3),
                "machine_cpu": round(machine_cpu() - before_machine, 3),
                "us_per_record": round((cpu + worker_cpu) / fetched * 1e6, 1),
                "loop_us_per_record": round(cpu / fetched * 1e6, 1),
            }
    return out


async def boundary(sim: SimProcess, bootstrap: str, work: Path, district_id: str) -> dict[str, Any]:
    """µs per record of crossing the process boundary, for the first page of users."""
    district = sim.district(district_id)
    tag = f"bench-wk-{uuid.uuid4().hex[:6]}"
    config = config_from_mapping(config_data(bootstrap, tag, work / f"state-{tag}", [district]), {})
    async with Service(config) as service:
        listing = service.districts.client(district_id).listing("users")
        first = await anext(aiter(listing))
        await listing.aclose()
    records = first.records
    n = len(records)

    def per_record(fn: Any, rounds: int = 20) -> float:
        started = time.process_time()
        for _ in range(rounds):
            fn()
        return round((time.process_time() - started) / rounds / n * 1e6, 2)

    text = orjson.dumps(records)
    stored: list[bytes | None] = [None] * n
    sent = _prepare_in_worker("users", district_id, text, stored, NO_RULES)
    blob = pickle.dumps(sent, pickle.HIGHEST_PROTOCOL)
    return {
        "records": n,
        "page_out_json_us": per_record(lambda: orjson.dumps(records)),
        "page_out_pickle_us": per_record(lambda: pickle.dumps(records, 5)),
        "worker_json_in_us": per_record(lambda: orjson.loads(text)),
        "worker_results_dump_us": per_record(lambda: pickle.dumps(sent, 5)),
        "loop_results_load_us": per_record(
            lambda: _received("users", district_id, pickle.loads(blob))
        ),
        "results_bytes_per_record": round(len(blob) / n),
        "worker_page_us": per_record(
            lambda: _prepare_in_worker("users", district_id, text, stored, NO_RULES), rounds=3
        ),
        "in_process_page_us": per_record(
            lambda: prepare("users", district_id, records, stored, NO_RULES), rounds=3
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="0,1,2", help="sync.workers values, comma-separated")
    parser.add_argument("--boundary", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=None, help="state directories (tmp)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    modes = [int(m) for m in args.modes.split(",")]
    bootstrap = ensure_kafka()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out
    spec = {"id": "bench", "version": "1.2", "size": args.students, "seed": 1}
    runs: list[dict[str, Any]] = []
    crossing: dict[str, Any] = {}
    with SimProcess([spec]) as sim:
        if args.boundary:
            crossing = asyncio.run(boundary(sim, bootstrap, work, "bench"))
            print("boundary (µs per record):", json.dumps(crossing))
        for round_no in range(args.rounds):
            for workers in modes:
                found = asyncio.run(one_run(sim, bootstrap, work, "bench", workers))
                found["round"] = round_no
                runs.append(found)
                for name in ("snapshot", "nochange"):
                    r = found[name]
                    print(
                        f"round {round_no} workers={workers} {name}: {r['records']} records, "
                        f"{r['rate']:,}/s, CPU loop {r['loop_cpu']:.2f} s + workers "
                        f"{r['worker_cpu']:.2f} s = {r['us_per_record']} µs/record "
                        f"(loop {r['loop_us_per_record']}), simulator {r['sim_cpu']:.2f} s, "
                        f"machine {r['machine_cpu']:.2f} s",
                        flush=True,
                    )
    for name in ("snapshot", "nochange"):
        for workers in modes:
            mine = [r[name] for r in runs if r["workers"] == workers]
            print(
                f"median {name} workers={workers}: "
                f"{statistics.median(r['rate'] for r in mine):,.0f} records/s, "
                f"{statistics.median(r['us_per_record'] for r in mine)} µs/record "
                f"(loop {statistics.median(r['loop_us_per_record'] for r in mine)}), machine "
                f"{statistics.median(r['machine_cpu'] for r in mine):.2f} s"
            )
    path = args.out / "workers.json"
    report = {"students": args.students, "boundary": crossing, "runs": runs}
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
