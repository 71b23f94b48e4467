"""Builds configs that point the producer at an in-process simulator (used by several tests)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from producer.config import Config, config_from_mapping
from producer.simulator import Simulator


def district_entry(sim: Simulator, district_id: str, **overrides: Any) -> dict[str, Any]:
    """The ``[[districts]]`` table of one simulated district."""
    entry = sim.district(district_id).producer_entry()
    tuning = {"page_size": 100, "concurrency": 4, "request_timeout": "5s", "max_retries": 8}
    return {**entry, **tuning, **overrides}


def make_config(
    sim: Simulator,
    *,
    bootstrap: str,
    prefix: str,
    state_dir: Path,
    districts: list[str] | None = None,
    sync: dict[str, Any] | None = None,
    district_overrides: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """A validated config for ``sim``'s districts under a unique topic prefix."""
    ids = districts if districts is not None else [d.spec.id for d in sim.districts]
    data: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "client_id": prefix,
            "partitions": 3,
            "replication_factor": 1,
            "compression": "lz4",
        },
        "sync": {"overlap": "5s", "batch_size": 200, **(sync or {})},
        "state": {"dir": str(state_dir)},
        "http": {"listen": "127.0.0.1:0"},
        "districts": [district_entry(sim, i, **(district_overrides or {})) for i in ids],
        **(extra or {}),
    }
    return config_from_mapping(data, {})


def write_config_file(
    path: Path,
    *,
    bootstrap: str,
    prefix: str,
    districts: Sequence[Mapping[str, Any]] = (),
    sync: Mapping[str, Any] | None = None,
    listen: str = "127.0.0.1:0",
    classlink_host: str | None = None,
) -> Path:
    """A TOML config file, as a user writes one (JSON values are valid TOML values); with
    ``classlink_host``, ``[classlink]`` reads its api_key from ``$SIM_CLASSLINK_KEY``."""
    lines = [
        "[kafka]",
        f"bootstrap_servers = {json.dumps(bootstrap)}",
        f"topic_prefix = {json.dumps(prefix)}",
        f"client_id = {json.dumps(prefix)}",
        "partitions = 2",
        "replication_factor = 1",
        "[sync]",
        *(f"{k} = {json.dumps(v)}" for k, v in {"overlap": "5s", **(sync or {})}.items()),
        "[state]",
        f"dir = {json.dumps(str(path.parent / 'state'))}",
        "[http]",
        f"listen = {json.dumps(listen)}",
    ]
    if classlink_host is not None:
        lines += [
            "[classlink]",
            'api_key = "env:SIM_CLASSLINK_KEY"',
            f"host = {json.dumps(classlink_host)}",
        ]
    for entry in districts:
        lines.append("[[districts]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
