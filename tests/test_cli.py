"""The command line and the daemon, run as a user runs them: as subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from producer.kafka.reader import topic_partitions
from producer.simulator import DistrictSpec, Simulator
from tests.checker import ENTITIES, rebuild
from tests.conftest import ServeSimulator
from tests.harness import config_document, free_port, write_config

ROOT = Path(__file__).resolve().parent.parent


def cli_config(
    path: Path, sim: Simulator, *, bootstrap: str, prefix: str, http_port: int = 0, **sync: Any
) -> Path:
    """A TOML config file for ``sim``'s districts, polled every 2 s."""
    document = config_document(
        sim,
        bootstrap=bootstrap,
        prefix=prefix,
        state_dir=path.parent / "state",
        sync={"poll_interval": "2s", **sync},
        http_listen=f"127.0.0.1:{http_port}",
    )
    return write_config(path, document)


async def cli(*args: str, limit: float = 120.0) -> tuple[int, str, str]:
    """Run ``oneroster-cdc ARGS``; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "producer",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    return await serve_simulator([DistrictSpec(id="d1", version="1.2", size="tiny", seed=11)])


def test_check_config_names_the_bad_key_and_exits_2(tmp_path: Path) -> None:
    """`check-config` on a config with a bad value exits 2 and names the dotted key; a valid
    config exits 0."""
    import subprocess  # noqa: PLC0415

    bad = tmp_path / "bad.toml"
    bad.write_text('[sync]\npoll_interval = "soon"\n[kafka]\npartitions = 0\n')
    run = subprocess.run(
        [sys.executable, "-m", "producer", "--config", str(bad), "check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 2
    assert "sync.poll_interval" in run.stderr
    assert "kafka.partitions" in run.stderr
    good = subprocess.run(
        [sys.executable, "-m", "producer", "--config", "config/demo.toml", "check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "2 district(s)" in good.stdout


def test_a_bad_config_stops_run_with_exit_2(tmp_path: Path) -> None:
    """`run` refuses an unknown key with exit code 2 and a message naming it."""
    import subprocess  # noqa: PLC0415

    bad = tmp_path / "bad.toml"
    bad.write_text('[kafka]\nbootstrap = "x:1"\n')
    run = subprocess.run(
        [sys.executable, "-m", "producer", "--config", str(bad), "run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 2
    assert "kafka.bootstrap" in run.stderr


@pytest.mark.integration
async def test_sync_status_and_tail_agree(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """`sync --all` writes events, `status --json` shows a checkpoint per entity with the
    record counts, and `tail --from-beginning` decodes exactly the committed events."""
    config = cli_config(tmp_path / "c.toml", sim, bootstrap=kafka_bootstrap, prefix=unique_prefix)
    code, out, err = await cli("--config", str(config), "sync", "--all")
    assert code == 0, err
    truth = {e: len(sim.district("d1").truth_state(e)) for e in ENTITIES}

    code, out, err = await cli("--config", str(config), "status", "--json")
    assert code == 0, err
    rows = {r["entity"]: r for r in map(json.loads, out.splitlines())}
    assert set(rows) == set(ENTITIES)
    assert {e: rows[e]["records"] for e in ENTITIES} == truth
    assert all(r["cursor"] for r in rows.values())

    code, out, err = await cli(
        "--config", str(config), "tail", "users", "--from-beginning", "--json", "--timeout", "3"
    )
    assert code == 0, err
    envelopes = [json.loads(line) for line in out.splitlines()]
    assert {e["sourced_id"] for e in envelopes} == set(sim.district("d1").truth_state("users"))
    assert {e["op"] for e in envelopes} == {"CREATED"}

    code, out, err = await cli(
        "--config", str(config), "tail", "users", "--from-beginning", "--max", "3"
    )
    assert code == 0, err
    assert len(out.splitlines()) == 3
    assert all(" CREATED " in line for line in out.splitlines())


async def _wait_http(url: str, status: int, deadline: float) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        last: Any = None
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    last = (resp.status, await resp.text())
                    if resp.status == status:
                        return orjson.loads(last[1]) if "json" in resp.content_type else {}
            except aiohttp.ClientError as exc:
                last = exc
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never answered {status}; last: {last}")


async def _no_open_transactions(bootstrap: str, topics: list[str]) -> None:
    """Every partition's last stable offset equals its high watermark: nothing left open."""
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation)
        await consumer.start()
        try:
            ends: dict[Any, int] = {}
            for topic in topics:
                tps = await topic_partitions(consumer, topic)
                ends.update(await consumer.end_offsets(tps))
        finally:
            await consumer.stop()
        if isolation == "read_committed":
            committed = ends
        else:
            assert committed == ends


@pytest.mark.integration
async def test_daemon_serves_health_metrics_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """`run` answers /healthz and /readyz, exposes the named metric series, writes events,
    and on SIGTERM mid-snapshot exits 0 with one summary line and no open transaction."""
    simulator = Simulator([DistrictSpec(id="d1", version="1.2", size=150, seed=12)])
    async with simulator.serve():
        port = free_port()
        config = cli_config(
            tmp_path / "c.toml",
            simulator,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            http_port=port,
            batch_size=20,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "producer",
            "--config",
            str(config),
            "--log-format",
            "json",
            "run",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            await _wait_http(f"{base}/healthz", 200, deadline)
            ready = await _wait_http(f"{base}/readyz", 200, deadline)
            assert ready["status"] == "ready"
            async with aiohttp.ClientSession() as session:
                while time.monotonic() < deadline:
                    async with session.get(f"{base}/metrics") as resp:
                        text = await resp.text()
                    if 'oneroster_records_fetched_total{district="d1"' in text:
                        break
                    await asyncio.sleep(0.1)
            for series in (
                "oneroster_records_fetched_total",
                "oneroster_page_seconds",
                "oneroster_state_keys",
                "oneroster_ready",
            ):
                assert series in text
            proc.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert [e for e in events if e["event"] == "daemon.stopped"], "no summary line"
    topics = [f"{unique_prefix}.{e}" for e in ENTITIES] + [
        f"{unique_prefix}.state",
        f"{unique_prefix}.checkpoints",
    ]
    await _no_open_transactions(kafka_bootstrap, topics)
    rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
    assert rebuilt.violations == []
    assert rebuilt.ops["CREATED"] > 0


@pytest.mark.integration
async def test_demo_brings_events_to_kafka(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """`demo --duration` against a running broker starts the simulator and the daemon, prints
    committed events (snapshot and the mutator's deltas) and exits 0."""
    env = {
        **os.environ,
        "ONEROSTER_CDC__KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ONEROSTER_CDC__KAFKA__TOPIC_PREFIX": unique_prefix,
        "ONEROSTER_CDC__KAFKA__CLIENT_ID": unique_prefix,
        "ONEROSTER_CDC__STATE__DIR": str(tmp_path / "state"),
        "ONEROSTER_CDC__HTTP__LISTEN": "127.0.0.1:0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "producer",
        "--log-level",
        "WARNING",
        "demo",
        "--duration",
        "25",
        "--port",
        str(free_port()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert " CREATED " in text
    assert " UPDATED users " in text, text[-2000:]
    assert "demo: done: created=" in text


def test_command_of_skips_global_options() -> None:
    """The early signal handler finds the sub-command after global options and their values."""
    from producer.launch import command_of  # noqa: PLC0415

    assert command_of(["--config", "run", "--log-level", "INFO", "sync", "--all"]) == "sync"
    assert command_of(["--log-format=json", "run"]) == "run"
    assert command_of(["--help"]) is None


#: Run in a child: SIGTERM to itself exactly while ``producer.cli`` is being imported (the program
#: is loading, only launch.py's early handler is installed), then run the entry point.
_SIGTERM_WHILE_LOADING = """
import importlib.abc, os, signal, sys

class SignalOnLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "producer.cli":
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.meta_path.insert(0, SignalOnLoad())
sys.argv = ["oneroster-cdc", *sys.argv[1:]]
from producer.launch import main
sys.exit(main())
"""


@pytest.mark.parametrize("phase", ["loading", "waiting for the broker"])
def test_sigterm_while_the_daemon_is_still_loading_exits_0(tmp_path: Path, phase: str) -> None:
    """A SIGTERM while the program loads, or while the daemon waits for an unreachable broker
    (after its first start_retry), ends `run` with exit 0, never "killed by signal"."""
    import subprocess  # noqa: PLC0415

    config = tmp_path / "c.toml"
    config.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:1"\n[http]\nenabled = false\n')
    args = ["--config", str(config), "--log-format", "json", "run"]
    if phase == "loading":
        command = [sys.executable, "-c", _SIGTERM_WHILE_LOADING, *args]
    else:
        command = [sys.executable, "-m", "producer", *args]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, text=True
    )
    seen: list[str] = []
    if phase != "loading":
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "daemon.start_retry" in line:
                break
        proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, ("".join(seen) + err)[-2000:]
