"""Scenario 7 alone, at any scale and with any ``[sync]`` settings: the daemon's CPU while it
polls many tiny districts in which nothing changes.

    .venv/bin/python -m bench.fanout [--districts 300] [--poll 20] [--window 60] [--settle 30]
                                     [--entity-intervals orgs=5m academicSessions=5m ...]

``oneroster-cdc run`` runs as its own process against one simulator process; once every
district/entity has synced once, ``--settle`` seconds pass (longer than ``--poll``, so the first
delta round after the snapshots, which commits every checkpoint once, is over), then the
daemon's user + system CPU is read over ``--window`` seconds. 300 districts polled every 20 s
make the same request rate as 1,000 every 60 s. Prints the core share and the CPU per entity
pass (visited entities only).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.run import SIZES, ensure_kafka, run_fanout

ENTITIES = 7


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--districts", type=int, default=300)
    parser.add_argument("--poll", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--entity-intervals", nargs="*", default=[], metavar="ENTITY=DURATION")
    args = parser.parse_args()
    intervals = dict(item.split("=", 1) for item in args.entity_intervals)
    size = SIZES["M"].__class__(
        **{
            **{f: getattr(SIZES["M"], f) for f in SIZES["M"].__slots__},
            "name": "F",
            "fanout_districts": args.districts,
            "fanout_poll": args.poll,
            "fanout_window": args.window,
            "fanout_settle": args.settle,
        }
    )
    load = os.getloadavg()
    results: dict[str, Any] = {}
    sync = {"entity_intervals": intervals} if intervals else {}
    with tempfile.TemporaryDirectory() as tmp:
        run_fanout(size, ensure_kafka(), Path(tmp), results, **sync)
    out = results["fanout"]
    polls = args.districts * out["window"] / args.poll
    print(
        f"{args.districts} districts, poll {args.poll:g} s, entity_intervals {intervals or 'none'};"
        f" load average {load[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(
        f"daemon CPU {out['cpu_seconds']:.1f} s over {out['window']:.0f} s ="
        f" {out['core_share']:.1%} of one core; {out['cpu_seconds'] / polls * 1e3:.2f} ms per"
        f" district poll ({out['cpu_seconds'] / (polls * ENTITIES) * 1e3:.2f} ms per entity of a"
        f" poll); errors: {out['error_series']} series"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
