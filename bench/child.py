"""Scenarios that need a fresh process: ``python -m bench.child memory CONFIG [DISTRICT]``.

``memory``: start the service from CONFIG with an empty state directory (a cold restore of
every key in its state topic), then, when DISTRICT is given, run a full sync of it on top;
print one JSON line with RSS figures (bytes) and the key count.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from pathlib import Path

import orjson
import structlog

from producer.config import load_config
from producer.service import Service


def rss() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak() -> int:
    """Peak resident set size of this process image so far, in bytes.

    ``VmHWM``, not ``getrusage``'s ``ru_maxrss``: Linux carries ``ru_maxrss`` across
    ``execve``, so a child of a large parent would report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def memory(config_path: Path, district_id: str | None) -> dict[str, object]:
    config = load_config(config_path, os.environ)
    baseline = rss()
    service = Service(config)
    started = time.monotonic()
    await service.start()
    restored = service.state_keys()
    out: dict[str, object] = {
        "baseline_rss": baseline,
        "restore_seconds": time.monotonic() - started,
        "restored_keys": restored,
        "rss_after_restore": rss(),
        "peak_after_restore": peak(),
    }
    if district_id:
        started = time.monotonic()
        results = await service.sync(district_id, full=True)
        out["sync_records"] = sum(r.fetched for r in results)
        out["sync_seconds"] = time.monotonic() - started
    out["keys"] = service.state_keys()
    out["rss_end"] = rss()
    out["peak_rss"] = peak()
    await service.close()
    return out


def main(argv: list[str]) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    if len(argv) < 2 or argv[0] != "memory":
        print(__doc__, file=sys.stderr)
        return 2
    result = asyncio.run(memory(Path(argv[1]), argv[2] if len(argv) > 2 else None))
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
