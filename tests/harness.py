"""The tests' one config builder: configs (validated, or TOML files) that point the producer at
an in-process simulator under a unique topic prefix, and free loopback ports."""

from __future__ import annotations

import json
import socket
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
    kafka: dict[str, Any] | None = None,
) -> Config:
    """A validated config for ``sim``'s districts under a unique topic prefix."""
    document = config_document(
        sim,
        bootstrap=bootstrap,
        prefix=prefix,
        state_dir=state_dir,
        districts=districts,
        sync=sync,
        district_overrides=district_overrides,
        extra=extra,
        kafka=kafka,
    )
    return config_from_mapping(document, {})


def free_port(pair: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (with ``pair``: port+1 free too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair:
            return port
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port (pair) found")


# --------------------------------------------------------------------------- TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(values: Mapping[str, Any]) -> list[str]:
    return [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]


def dump_toml(document: Mapping[str, Any]) -> str:
    """A TOML document of tables (``dict``) and arrays of tables (``list`` of ``dict``)."""
    lines: list[str] = []
    for name, section in document.items():
        if isinstance(section, dict):
            lines += [f"[{name}]", *_toml_table(section), ""]
        else:
            for entry in section:
                lines += [f"[[{name}]]", *_toml_table(entry), ""]
    return "\n".join(lines)


def config_document(
    sim: Simulator,
    *,
    bootstrap: str,
    prefix: str,
    state_dir: Path,
    districts: Sequence[str] | None = None,
    sync: Mapping[str, Any] | None = None,
    district_overrides: Mapping[str, Any] | None = None,
    http_listen: str = "127.0.0.1:0",
    classlink: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    kafka: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config of ``sim``'s districts as a TOML-ready mapping (unique prefix and client id)."""
    ids = list(districts) if districts is not None else [d.spec.id for d in sim.districts]
    doc: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "client_id": prefix,
            "partitions": 3,
            "replication_factor": 1,
            "compression": "lz4",
            **(kafka or {}),
        },
        "sync": {
            "poll_interval": "1s",
            "full_sync_interval": "1h",
            "overlap": "5s",
            "jitter": "0s",
            "failure_backoff": "0.5s",
            "failure_backoff_max": "2s",
            "shutdown_grace": "2s",
            "batch_size": 200,
            **(sync or {}),
        },
        "state": {"dir": str(state_dir)},
        "http": {"listen": http_listen},
        **(extra or {}),
    }
    entries = []
    for district_id in ids:
        entry = district_entry(sim, district_id, **(district_overrides or {}))
        entry["client_secret"] = str(entry["client_secret"])
        entries.append(entry)
    if classlink is not None:
        doc["classlink"] = dict(classlink)
    if entries:
        doc["districts"] = entries
    return doc


def write_config(path: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as TOML to ``path``; returns the path."""
    path.write_text(dump_toml(document), encoding="utf-8")
    return path


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
