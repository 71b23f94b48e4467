"""Builds configs that point the producer at an in-process simulator (used by several tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from producer.config import Config, config_from_mapping
from producer.simulator import Simulator
from producer.simulator.auth import ALL_SCOPES


def district_entry(sim: Simulator, district_id: str, **overrides: Any) -> dict[str, Any]:
    """The ``[[districts]]`` table of one simulated district."""
    d = sim.district(district_id)
    spec = d.spec
    entry: dict[str, Any] = {
        "id": district_id,
        "base_url": d.base_url,
        "version": spec.version,
        "auth": spec.auth_method,
        "client_id": spec.client_id,
        "client_secret": spec.client_secret,
        "page_size": 100,
        "concurrency": 4,
        "request_timeout": "5s",
        "max_retries": 8,
    }
    if spec.auth_method == "oauth2":
        entry["token_url"] = d.token_url
        entry["scopes"] = list(ALL_SCOPES)
    return {**entry, **overrides}


def make_config(
    sim: Simulator,
    *,
    bootstrap: str,
    prefix: str,
    state_dir: Path,
    districts: list[str] | None = None,
    sync: dict[str, Any] | None = None,
    district_overrides: dict[str, Any] | None = None,
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
    }
    return config_from_mapping(data, {})
