"""docker-compose.yml stays valid for users with a Docker engine (none runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def resolved_compose() -> dict[str, Any]:
    """The file as `docker-compose config` (installed by .ci/run) resolves it."""
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("docker-compose is not installed (.ci/run installs it)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    run = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    resolved: dict[str, Any] = yaml.safe_load(run.stdout)
    return resolved


def test_compose_file_is_accepted_by_docker_compose() -> None:
    """`docker-compose config` accepts the file and resolves the three services, with the
    producer waiting for healthy Kafka and simulator services."""
    resolved = resolved_compose()
    assert set(resolved["services"]) == {"kafka", "simulator", "producer"}
    producer = resolved["services"]["producer"]
    assert producer["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "simulator": {"condition": "service_healthy"},
    }
    assert producer["environment"]["ONEROSTER_CDC_CONFIG"] == "/app/config/docker.toml"


def test_image_runs_as_a_user_that_owns_the_private_state_volume() -> None:
    """The Dockerfile switches to a non-root user before the entry point, and creates the
    state volume (where config/docker.toml puts ``[state] dir``) owned by that user, mode 0700."""
    import tomllib  # noqa: PLC0415

    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    user = users[-1]
    assert lines.index(f"USER {user}") < next(
        i for i, line in enumerate(lines) if line.startswith("ENTRYPOINT")
    )
    volume = yaml.safe_load(
        next(line for line in lines if line.startswith("VOLUME ")).removeprefix("VOLUME ")
    )[0]
    assert f"chown -R {user}:{user} {volume}" in dockerfile
    assert f"chmod -R 0700 {volume}" in dockerfile
    state_dir = tomllib.loads((ROOT / "config" / "docker.toml").read_text())["state"]["dir"]
    assert Path(state_dir).is_relative_to(volume)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounted = [str(v).split(":")[1] for v in compose["services"]["producer"].get("volumes", [])]
    assert volume not in mounted  # every replica its own anonymous volume (see below)


def test_producer_service_scales_out() -> None:
    """`docker compose up --scale producer=3` can start three replicas: the producer service has
    no fixed container name or hostname (each replica's group member id names its own
    container), publishes its HTTP port from a host range of at least three ports rather than
    one fixed port, and mounts no named volume (no two replicas share a state directory: each
    gets the image's anonymous volume)."""
    resolved = resolved_compose()
    producer = resolved["services"]["producer"]
    assert "container_name" not in producer
    assert "hostname" not in producer
    for port in producer.get("ports", []):
        published = str(port).rsplit(":", 1)[0].rpartition(":")[2]
        low, _, high = published.partition("-")
        assert high, f"a fixed host port clashes between replicas: {port}"
        assert int(high) - int(low) + 1 >= 3, port
    named = set(resolved.get("volumes") or {})
    for volume in producer.get("volumes", []):
        source = str(volume).split(":")[0]
        assert source not in named, f"replicas would share the named volume {source}"
        assert source.startswith("/"), volume  # a bind mount of the host's files ...
        assert str(volume).endswith(":ro"), volume  # ... read-only (the config)
