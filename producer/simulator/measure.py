"""Measure a simulated district: start-up time, listing throughput and peak RSS.

``python -m producer.simulator.measure [--size large] [--entity users] [--limit 1000]
[--max-records N]`` starts one 1.2 district, pages through a collection over HTTP (client in
the same process) and prints seconds, records per second and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import aiohttp
import orjson

from producer.simulator.district import DistrictSpec
from producer.simulator.server import Simulator


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _measure(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    sim = Simulator([DistrictSpec(id="bench", size=args.size, max_page_size=args.limit)])
    d = sim.district("bench")
    print(f"built {args.size}: {d.counts()} in {time.perf_counter() - began:.3f}s")
    print(f"peak RSS after start-up: {_rss_mib():.0f} MiB")
    async with sim.serve() as _, aiohttp.ClientSession() as http:
        form = {
            "grant_type": "client_credentials",
            "client_id": d.spec.client_id,
            "client_secret": d.spec.client_secret,
        }
        async with http.post(d.token_url, data=form) as resp:
            headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
        offset, seen = 0, 0
        began = time.perf_counter()
        while seen < args.max_records:
            url = f"{d.oneroster_url}/{args.entity}?limit={args.limit}&offset={offset}"
            async with http.get(url, headers=headers) as resp:
                page = orjson.loads(await resp.read())
            records = next(iter(page.values()))
            if not records:
                break
            seen += len(records)
            offset += len(records)
        took = time.perf_counter() - began
        print(f"listed {seen} {args.entity} in {took:.1f}s: {seen / took:,.0f} records/s")
        sim.advance_clock(1)
        for i in range(100):
            d.update("users", d.store.data.sourced_id("users", i * 997), familyName="Changed")
        since = d.clock.start.strftime("%Y-%m-%dT%H:%M:%SZ")
        began = time.perf_counter()
        url = f"{d.oneroster_url}/users?filter=dateLastModified%3E%27{since}%27&limit=1000"
        async with http.get(url, headers=headers) as resp:
            delta = len((await resp.json())["users"])
        print(f"delta listing of {delta} changed users in {time.perf_counter() - began:.3f}s")
    print(f"peak RSS: {_rss_mib():.0f} MiB")


def main() -> None:
    """Parse options and run the measurement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="large")
    parser.add_argument("--entity", default="users")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--max-records", type=int, default=10**9)
    asyncio.run(_measure(parser.parse_args()))


if __name__ == "__main__":
    main()
