"""Soak: the daemon (a subprocess) against 50 small simulated districts under continuous change.

    python -m bench.soak [--minutes 10] [--districts 50] [--size 20] [--rate 5]
                         [--bootstrap 127.0.0.1:9092] [--out bench/results/soak-<UTC>.json]

Needs a running broker (``scripts/kafka start``). What it does:

1. Serves ``--districts`` simulated districts (half OneRoster 1.2 with OAuth2, half 1.1 with
   OAuth 1.0a) of ``--size`` students each, in this process.
2. Writes a config (fresh topic prefix, polls every ``--poll`` seconds, full syncs every
   ``--full`` seconds) and starts ``python -m producer run`` on it.
3. For ``--minutes``: mutates ``--rate`` records a second (creates, updates, ``tobedeleted``
   and hard deletes across users and enrollments, random districts), and every ``--sample``
   seconds reads the daemon's ``/proc/<pid>/status`` (VmRSS, VmHWM, Threads), counts
   ``/proc/<pid>/fd`` (all, and sockets) and its CPU seconds, and scrapes ``/metrics``.
4. Stops mutating, waits (at most ``--settle`` seconds) until the committed change stream,
   rebuilt by ``tests/checker.py``, equals the simulator's truth for every district, then sends
   SIGTERM and times the graceful shutdown.

Writes every sample and a summary to ``--out`` (JSON) and prints the summary. Hard deletes show
up only at a full sync, so the settle phase may wait for one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `producer` and `tests` importable
    sys.path.insert(0, str(REPO))

from producer.simulator import DistrictSpec, Simulator  # noqa: E402
from tests.checker import ENTITIES, rebuild  # noqa: E402

PAGE = 4096


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(
    sim: Simulator, path: Path, *, bootstrap: str, prefix: str, http_port: int, args: Any
) -> None:
    """The daemon's TOML config for every simulated district."""
    sections: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        sections.append(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))

    table(
        "kafka",
        {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "client_id": prefix,
            "partitions": 3,
            "replication_factor": 1,
            "compression": "lz4",
        },
    )
    table(
        "sync",
        {
            "poll_interval": f"{args.poll}s",
            "full_sync_interval": f"{args.full}s",
            "overlap": "5s",
            "jitter": "2s",
            "batch_size": 500,
            "max_concurrent_districts": 4,
            "failure_backoff": "2s",
            "failure_backoff_max": "30s",
            "shutdown_grace": "20s",
        },
    )
    table("state", {"dir": str(path.parent / "state")})
    table("http", {"listen": f"127.0.0.1:{http_port}"})
    for d in sim.districts:
        entry: dict[str, Any] = {
            **d.producer_entry(),
            "page_size": 100,
            "concurrency": 2,
            "request_timeout": "10s",
            "max_retries": 3,
        }
        sections.append(
            "[[districts]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in entry.items())
        )
    path.write_text("\n".join(sections), encoding="utf-8")


def sample_process(pid: int) -> dict[str, Any]:
    """RSS, peak RSS, threads, open fds and sockets, CPU seconds of ``pid`` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def kb(name: str) -> int:
        return int(fields[name].split()[0])

    fds = sockets = 0
    for fd in os.scandir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            if os.readlink(fd.path).startswith("socket:"):
                sockets += 1
        except OSError:
            pass
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_kb": kb("VmRSS"),
        "hwm_kb": kb("VmHWM"),
        "threads": int(fields["Threads"].strip()),
        "fds": fds,
        "sockets": sockets,
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
    }


_METRIC = re.compile(r"^(oneroster_[a-z_]+?)(?:_total)?(?:\{([^}]*)\})? ([0-9.e+-]+)$")


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Sums of a few counters from ``/metrics`` (empty when it does not answer)."""
    wanted = ("oneroster_events", "oneroster_errors", "oneroster_retries", "oneroster_deadletters")
    out: dict[str, float] = dict.fromkeys(wanted, 0.0)
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match and match[1] in out and not line.startswith(f"{match[1]}_created"):
            out[match[1]] += float(match[3])
    return out


class Mutator:
    """Random changes across the districts, counted by kind."""

    def __init__(self, sim: Simulator, seed: int) -> None:
        self.sim = sim
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}

    def one(self) -> None:
        d = self.rng.choice(self.sim.districts)
        kind = self.rng.choices(
            ["update_user", "create_user", "tobedeleted_user", "update_enrollment", "hard_delete"],
            weights=[50, 20, 10, 15, 5],
        )[0]
        users = sorted(d.truth_state("users"))
        if kind == "create_user" or not users:
            d.create("users", {"givenName": f"Soak{self.rng.randrange(10**6)}"})
            kind = "create_user"
        elif kind == "update_user":
            d.update("users", self.rng.choice(users), familyName=f"F{self.rng.randrange(10**6)}")
        elif kind == "tobedeleted_user":
            d.mark_tobedeleted("users", self.rng.choice(users))
        else:
            enrollments = sorted(d.truth_state("enrollments"))
            if not enrollments:
                return
            sid = self.rng.choice(enrollments)
            if kind == "update_enrollment":
                d.update("enrollments", sid, primary=self.rng.choice(["true", "false"]))
            else:
                d.hard_delete("enrollments", sid)
        self.counts[kind] = self.counts.get(kind, 0) + 1


async def matches_truth(bootstrap: str, prefix: str, sim: Simulator) -> tuple[bool, int, int]:
    """(committed state == truth for every district, violations, events read)."""
    rebuilt = await rebuild(bootstrap, prefix)
    same = all(
        rebuilt.keys(entity, d.spec.id) == set(d.truth_state(entity))
        for d in sim.districts
        for entity in ENTITIES
    )
    return same, len(rebuilt.violations), sum(rebuilt.ops.values())


def _slope_mb_per_hour(samples: list[dict[str, Any]]) -> float | None:
    """Least-squares RSS slope over the second half of the run (the first half warms up)."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return None
    xs = [s["t"] for s in half]
    ys = [s["rss_kb"] / 1024 for s in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    kafka = subprocess.run(
        [str(REPO / "scripts" / "kafka"), "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kafka": kafka,
        "platform": platform.platform(),
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:  # noqa: PLR0915 - one linear scenario
    sim = Simulator(
        [
            DistrictSpec(
                id=f"soak{n:02d}", version="1.2" if n % 2 == 0 else "1.1", size=args.size, seed=n
            )
            for n in range(args.districts)
        ]
    )
    prefix = f"soak{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="oneroster-soak-"))
    http_port = _free_port()
    samples: list[dict[str, Any]] = []
    mutator = Mutator(sim, seed=args.seed)
    async with sim.serve(), aiohttp.ClientSession() as session:
        config = workdir / "soak.toml"
        write_config(
            sim, config, bootstrap=args.bootstrap, prefix=prefix, http_port=http_port, args=args
        )
        log_file = (workdir / "daemon.log").open("wb")
        cmd = [sys.executable, "-m", "producer", "--config", str(config)]
        cmd += ["--log-format", "json", "--log-level", args.log_level, "run"]
        daemon = subprocess.Popen(  # noqa: ASYNC220 - returns at once; polled, never awaited
            cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT
        )
        started = time.monotonic()
        print(f"soak: daemon pid {daemon.pid}, {args.districts} districts, prefix {prefix}")
        print(f"soak: logs {workdir / 'daemon.log'}; {args.minutes} min of changes")
        end = started + args.minutes * 60
        next_sample = started
        interval = 1.0 / args.rate if args.rate > 0 else None
        next_change = started
        try:
            while time.monotonic() < end:
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited early with code {daemon.returncode}")
                now = time.monotonic()
                if now >= next_sample:
                    sample = {"t": round(now - started, 1), **sample_process(daemon.pid)}
                    sample.update(await scrape(session, f"http://127.0.0.1:{http_port}/metrics"))
                    sample["mutations"] = sum(mutator.counts.values())
                    samples.append(sample)
                    next_sample += args.sample
                    if len(samples) % 12 == 1:
                        print(
                            f"soak: t={sample['t']:.0f}s rss={sample['rss_kb'] // 1024} MiB "
                            f"fds={sample['fds']} sockets={sample['sockets']} "
                            f"events={sample.get('oneroster_events', 0):.0f} "
                            f"mutations={sample['mutations']}"
                        )
                if interval is not None and now >= next_change:
                    mutator.one()
                    next_change += interval
                await asyncio.sleep(0.05)

            settle_started = time.monotonic()
            converged, violations, events = False, -1, 0
            while time.monotonic() - settle_started < args.settle:
                await asyncio.sleep(10)
                converged, violations, events = await matches_truth(args.bootstrap, prefix, sim)
                if converged:
                    break
            settle_seconds = time.monotonic() - settle_started
            final = sample_process(daemon.pid)
        finally:
            stop_started = time.monotonic()
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            # Wait without blocking the loop: the simulator in this process must keep answering
            # the daemon's in-flight polls during its graceful shutdown.
            for _ in range(900):
                if daemon.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                daemon.kill()
            code = daemon.wait()
            shutdown_seconds = time.monotonic() - stop_started
            log_file.close()

    warm = next((s for s in samples if s["t"] >= 60), samples[-1])
    rss = [s["rss_kb"] / 1024 for s in samples]
    fds = [s["fds"] for s in samples]
    socks = [s["sockets"] for s in samples]
    summary = {
        "machine": machine(),
        "minutes": args.minutes,
        "districts": args.districts,
        "size_students": args.size,
        "mutations": mutator.counts,
        "mutations_total": sum(mutator.counts.values()),
        "samples": len(samples),
        "rss_mib": {
            "at_60s": round(warm["rss_kb"] / 1024, 1),
            "last": round(rss[-1], 1),
            "max": round(max(rss), 1),
            "peak_hwm": round(final["hwm_kb"] / 1024, 1),
            "slope_second_half_mib_per_hour": _round(_slope_mb_per_hour(samples)),
        },
        "fds": {"at_60s": warm["fds"], "last": fds[-1], "max": max(fds)},
        "sockets": {"at_60s": warm["sockets"], "last": socks[-1], "max": max(socks)},
        "threads_last": samples[-1]["threads"],
        "cpu_seconds": round(final["cpu_s"], 1),
        "events_committed": events,
        "errors_counted": samples[-1].get("oneroster_errors"),
        "retries_counted": samples[-1].get("oneroster_retries"),
        "converged_to_truth": converged,
        "settle_seconds": round(settle_seconds, 1),
        "checker_violations": violations,
        "shutdown_exit_code": code,
        "shutdown_seconds": round(shutdown_seconds, 1),
        "topic_prefix": prefix,
        "daemon_log": str(workdir / "daemon.log"),
    }
    return {"summary": summary, "samples": samples}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--districts", type=int, default=50)
    parser.add_argument("--size", type=int, default=20, help="students per district")
    parser.add_argument("--rate", type=float, default=5.0, help="mutations per second")
    parser.add_argument("--poll", type=float, default=10.0, help="poll interval, seconds")
    parser.add_argument("--full", type=float, default=180.0, help="full sync interval, seconds")
    parser.add_argument("--sample", type=float, default=5.0, help="sampling interval, seconds")
    parser.add_argument("--settle", type=float, default=300.0, help="max catch-up wait, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="WARNING", help="the daemon's log level")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / f"soak-{stamp}.json"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(soak(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result["summary"], indent=1))
    print(f"soak: samples and summary in {args.out}")
    ok = result["summary"]["converged_to_truth"] and result["summary"]["checker_violations"] == 0
    return 0 if ok and result["summary"]["shutdown_exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
