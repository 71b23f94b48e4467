"""``oneroster-cdc simulate``: serve simulated districts until SIGINT/SIGTERM.

``producer.cli`` calls :func:`add_arguments` and :func:`run`; ``python -m producer.simulator``
does the same on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Final

from producer.model import Version
from producer.simulator.auth import SCOPE_CORE, SCOPE_DEMOGRAPHICS
from producer.simulator.district import District, DistrictSpec
from producer.simulator.faults import KINDS, Faults
from producer.simulator.quirks import QUIRKS
from producer.simulator.server import Simulator

NAMES: Final = ("springfield", "shelbyville", "ogdenville", "north-haverbrook", "capital-city")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    parser.add_argument("--districts", type=int, default=2, help="number of districts")
    parser.add_argument(
        "--size", default="small", help="tiny | small | medium | large | a number of students"
    )
    parser.add_argument("--seed", type=int, default=1, help="data seed (district n uses seed+n)")
    parser.add_argument(
        "--versions", default="1.2,1.1", help="OneRoster versions, cycled over the districts"
    )
    parser.add_argument("--admin", action="store_true", help="enable the /_admin endpoints")
    parser.add_argument("--write-config", type=Path, metavar="PATH", help="write a producer config")
    parser.add_argument("--max-page-size", type=int, default=1000, help="largest page served")
    parser.add_argument(
        "--classlink-api-key", default="classlink-sim-key", help="bearer for GET /applications"
    )
    parser.add_argument(
        "--faults", default="", help=f"comma-separated fault kinds: {', '.join(sorted(KINDS))}"
    )
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of requests hit")
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault stream")
    parser.add_argument(
        "--quirks", default="", help=f"comma-separated quirks: {', '.join(sorted(QUIRKS))}"
    )


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def specs_from_args(args: argparse.Namespace) -> list[DistrictSpec]:
    """The district specs the options describe (ValueError on a bad option)."""
    versions = _split(args.versions) or ("1.2",)
    for v in versions:
        if v not in ("1.1", "1.2"):
            raise ValueError(f"--versions: unknown version {v!r} (use 1.1 and/or 1.2)")
    faults = Faults(rate=args.fault_rate, kinds=_split(args.faults), seed=args.fault_seed)
    specs = []
    for n in range(args.districts):
        name = NAMES[n] if n < len(NAMES) else f"district-{n + 1}"
        version: Version = "1.1" if versions[n % len(versions)] == "1.1" else "1.2"
        specs.append(
            DistrictSpec(
                id=name,
                version=version,
                size=args.size,
                seed=args.seed + n,
                max_page_size=args.max_page_size,
                quirks=frozenset(_split(args.quirks)),
                faults=faults,
            )
        )
    return specs


def _q(value: object) -> str:
    # A JSON string, number or string array is valid TOML.
    return json.dumps(value)


def config_toml(sim: Simulator) -> str:
    """A producer config (the README's config format) pointing at the simulator's districts."""
    lines = [
        "# Written by `oneroster-cdc simulate --write-config`: the producer, pointed at it.",
        "[kafka]",
        'bootstrap_servers = "127.0.0.1:9092"',
        'topic_prefix = "oneroster"',
        'client_id = "oneroster-cdc"',
        "",
        "[sync]",
        'poll_interval = "30s"',
        'full_sync_interval = "24h"',
        'overlap = "5m"',
        "mass_delete_threshold = 0.10",
        "batch_size = 1000",
        "",
        "[state]",
        'dir = "./state"',
        "",
        "[http]",
        'listen = "127.0.0.1:8080"',
    ]
    for d in sim.districts:
        entry = d.producer_entry(scopes=(SCOPE_CORE, SCOPE_DEMOGRAPHICS))
        entry["page_size"] = min(1000, d.spec.max_page_size)
        entry["concurrency"] = 4
        if d.spec.auth_method == "oauth2":
            entry["token_auth"] = "basic"  # noqa: S105 - a mode name, not a password
        else:
            entry["signature_method"] = "HMAC-SHA256"
        lines += ["", "[[districts]]", *(f"{key} = {_q(value)}" for key, value in entry.items())]
    return "\n".join(lines) + "\n"


def _describe(sim: Simulator, root: str) -> str:
    out = [f"OneRoster simulator listening on {root}"]
    for d in sim.districts:
        spec = d.spec
        counts = ", ".join(f"{k}={v}" for k, v in d.counts().items())
        out.append(f"\n[{d.id}] OneRoster {spec.version} ({spec.auth_method}): {d.oneroster_url}")
        out.append(f"  {counts}")
        if spec.auth_method == "oauth2":
            out.append(
                f"  TOKEN=$(curl -s -u {spec.client_id}:{spec.client_secret} "
                f"-d grant_type=client_credentials {d.token_url} | "
                "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
            )
            out.append(
                f'  curl -s -H "Authorization: Bearer $TOKEN" "{d.oneroster_url}/users?limit=2"'
            )
        else:
            out.append(
                f"  OAuth 1.0a: client_id={spec.client_id} client_secret={spec.client_secret}"
            )
            if spec.classlink and sim.classlink_api_key:
                out.append(
                    f'  curl -s -H "Authorization: Bearer {d.bearer}" "{d.proxy_url}/users?limit=2"'
                )
    if sim.classlink_api_key:
        out.append(
            f'\nClassLink: curl -s -H "Authorization: Bearer {sim.classlink_api_key}" '
            f"{root}/applications"
        )
    if sim.admin:
        out.append(f"Admin: curl -s {root}/_admin/clock")
    return "\n".join(out)


async def _serve(args: argparse.Namespace, sim: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim.serve(args.host, args.port) as root:
        if args.write_config is not None:
            args.write_config.write_text(config_toml(sim), encoding="utf-8")
            print(f"wrote producer config to {args.write_config}")
        print(_describe(sim, root), flush=True)
        await stop.wait()
    print("simulator stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 on a bad option."""
    try:
        sim = Simulator(
            specs_from_args(args), classlink_api_key=args.classlink_api_key, admin=args.admin
        )
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(args, sim))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m producer.simulator``."""
    parser = argparse.ArgumentParser(prog="oneroster-cdc simulate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["District", "add_arguments", "config_toml", "main", "run", "specs_from_args"]
