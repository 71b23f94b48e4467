"""Builds configs that point the producer at an in-process simulator (used by several tests)."""

from __future__ import annotations

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
