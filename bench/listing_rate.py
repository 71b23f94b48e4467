"""Manual benchmark: list a large simulated district under injected faults.

Runs the simulator in a child process (so the client's RSS is measured alone), lists one
collection with ``OneRosterClient`` and prints records/s, peak RSS and RSS over time, and checks
that every record arrived exactly once (a one-byte counter per record index, so the check does
not itself grow memory like a set of ids would).

    .venv/bin/python bench/listing_rate.py                      # ~1M enrollments, 10% faults
    .venv/bin/python bench/listing_rate.py --students 20000 --fault-rate 0.1 --version 1.1
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, cast

import aiohttp
import structlog

from producer.auth import Authenticator, OAuth1Signer, OAuth2ClientCredentials
from producer.client import OneRosterClient
from producer.model import Entity, Secret
from producer.retry import RetryPolicy
from producer.simulator import DistrictSpec, Faults, Simulator
from producer.simulator.data import Dataset
from producer.simulator.faults import RANDOM_KINDS

#: Every random fault kind except ``shift_offsets`` (a real data change: a listing that sees it
#: is rightly marked incomplete, and "exactly once" no longer applies).
FAULT_KINDS = tuple(sorted(RANDOM_KINDS - {"shift_offsets"}))


def serve(args: argparse.Namespace, conn: Connection) -> None:
    """Child process: run the simulator until the parent closes the pipe."""
    kinds = tuple(k for k in FAULT_KINDS if not (k == "token_expired" and args.version == "1.1"))
    spec = DistrictSpec(
        id="bench",
        version=args.version,
        size=args.students,
        max_page_size=args.max_page_size,
        faults=Faults(rate=args.fault_rate, kinds=kinds, seed=args.seed, hang=30.0, retry_after=1),
    )
    sim = Simulator([spec], frozen_clock=True)

    async def run() -> None:
        async with sim.serve("127.0.0.1", 0):
            district = sim.district("bench")
            conn.send(
                {
                    "base_url": district.base_url,
                    "token_url": district.token_url,
                    "client_id": district.spec.client_id,
                    "client_secret": district.spec.client_secret,
                    "auth": district.spec.auth_method,
                    "count": district.counts()[args.entity],
                }
            )
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(run())


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def bench(args: argparse.Namespace, info: dict[str, Any]) -> None:
    """List the collection once and report."""
    count: int = info["count"]
    seen = bytearray(count)
    events: dict[str, int] = {}

    def observe(event: str, fields: Any) -> None:
        if event == "request.retry":
            key = f"retry:{fields['error']}"
            events[key] = events.get(key, 0) + 1

    async with aiohttp.ClientSession() as session:
        auth: Authenticator
        if info["auth"] == "oauth2":
            auth = OAuth2ClientCredentials(
                session=session,
                token_url=info["token_url"],
                client_id=info["client_id"],
                client_secret=Secret(info["client_secret"]),
            )
        else:
            auth = OAuth1Signer(
                client_id=info["client_id"], client_secret=Secret(info["client_secret"])
            )
        client = OneRosterClient(
            district_id="bench",
            base_url=info["base_url"],
            version=args.version,
            auth=auth,
            page_size=args.page_size,
            concurrency=args.concurrency,
            request_timeout=args.timeout,
            retry=RetryPolicy(attempts=10, base_delay=0.05, max_delay=2.0, max_retry_after=2.0),
            session=session,
            observer=observe,
        )
        samples: list[tuple[int, float]] = []
        started = time.monotonic()
        async with client:
            listing = client.listing(cast(Entity, args.entity))
            async for page in listing:
                for record in page.records:
                    index = Dataset.index_of(args.entity, record["sourcedId"])
                    assert index is not None
                    seen[index] = min(255, seen[index] + 1)
                if listing.pages % max(1, count // args.page_size // 10) == 0:
                    samples.append((listing.records, rss_mb()))
        elapsed = time.monotonic() - started

    missing = seen.count(0)
    dupes = sum(1 for c in seen if c > 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"entity={args.entity} version={args.version} records={listing.records} of {count}")
    print(f"complete={listing.complete} missing={missing} duplicated={dupes}")
    print(f"elapsed={elapsed:.1f}s rate={listing.records / elapsed:,.0f} records/s")
    over_time = [(n, round(m)) for n, m in samples]
    print(f"peak_rss={peak:.0f} MiB  rss_over_time(records, MiB)={over_time}")
    print(f"retries={dict(sorted(events.items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=150_000, help="district size (students)")
    parser.add_argument("--entity", default="enrollments")
    parser.add_argument("--version", choices=["1.1", "1.2"], default="1.2")
    parser.add_argument("--fault-rate", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--max-page-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout (s)")
    parser.add_argument("--log", action="store_true", help="show the client's logs")
    args = parser.parse_args()
    if not args.log:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(args, child), daemon=True)
    proc.start()
    try:
        info = parent.recv()
        print(f"simulator ready at {info['base_url']} ({datetime.now(UTC):%H:%M:%S} UTC)")
        asyncio.run(bench(args, info))
    finally:
        parent.send("stop")
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()


if __name__ == "__main__":
    main()
