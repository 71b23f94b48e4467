"""The benchmark harness runs end to end at size S (issue 7); no speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Every result the harness writes at size S, each with the field that carries its figure.
FIGURES = {
    "http": "rate",
    "snapshot": "rate",
    "nochange": "rate",
    "delta": "seconds",
    "latency": "p99",
    "produce_aiokafka": "rate",
    "produce_librdkafka": "rate",
    "restore": "cold_rate",
    "memory": "peak_rss",
    "peer": "speedup",
    "fanout": "core_share",
}


def run_bench(bootstrap: str, tmp_path: Path, module: str, args: list[str], timeout: int) -> Path:
    """Run ``python -m MODULE ARGS`` against ``bootstrap`` (bounded); its output directory."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out), "--work", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_harness_runs_every_scenario_at_size_s(kafka_bootstrap, tmp_path):
    """`python -m bench --size S` measures every scenario and writes the JSON and the table."""
    out = run_bench(kafka_bootstrap, tmp_path, "bench", ["--size", "S"], timeout=140)
    report = json.loads((out / "bench-S.json").read_text())
    results = report["results"]
    missing = {
        name: results.get(name)
        for name, key in FIGURES.items()
        if not isinstance((results.get(name) or {}).get(key), int | float)
    }
    assert not missing
    assert all(g["value"] is not None for g in report["goals"]), report["goals"]
    assert set(report["machine"]) >= {"cores", "ram_gib", "python", "kafka"}
    table = (out / "bench-S.md").read_text()
    assert "| goal | value | target | met |" in table


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_scale_out_bench_runs_at_a_small_size(kafka_bootstrap, tmp_path):
    """`python -m bench.scale` with 12 districts and 2,000 keys per shard produces every figure:
    fan-out CPU of one and of two instances with the capacity ratio, one shard's restore
    against the whole state's, and a handover after a SIGKILL."""
    argv = ["--districts", "12", "--poll", "2", "--window", "4", "--settle", "1"]
    argv += ["--shards", "2", "--keys-per-shard", "2000", "--session-timeout", "6"]
    out = run_bench(kafka_bootstrap, tmp_path, "bench.scale", argv, timeout=280)
    report = json.loads((out / "scale.json").read_text())
    fan, ho = report["results"]["fanout"], report["results"]["handover"]
    assert fan["one"]["core_share"] > 0
    assert len(fan["two"]) == 2
    assert all(f["core_share"] > 0 and f["districts"] > 0 for f in fan["two"].values())
    assert sum(f["districts"] for f in fan["two"].values()) == 12
    assert fan["capacity_ratio"] > 0
    one, whole = ho["restore"]["one"]["keys"], ho["restore"]["all"]["keys"]
    assert 2000 <= one < whole  # shard 0's synthetic keys and its tiny districts' records
    assert whole >= 4000
    assert ho["restore"]["one"]["partitions"] == [0]
    assert ho["committed"] == ho["districts_moved"] > 0
    assert ho["first_commit_seconds"] > 0
    assert set(report["machine"]) >= {"cores", "ram_gib", "python", "kafka"}
    assert "| handover" in (out / "scale.md").read_text()


@pytest.mark.integration
@pytest.mark.timeout(200)
def test_workers_bench_runs_at_a_small_size(kafka_bootstrap, tmp_path):
    """`python -m bench.workers` on a small district, in process and with one worker, produces
    records/s and the CPU of the event loop, the workers, the simulator and the machine for the
    snapshot and the no-change re-read, and the boundary costs."""
    argv = ["--students", "60", "--rounds", "1", "--modes", "0,1", "--boundary"]
    out = run_bench(kafka_bootstrap, tmp_path, "bench.workers", argv, timeout=180)
    report = json.loads((out / "workers.json").read_text())
    assert [r["workers"] for r in report["runs"]] == [0, 1]
    for run in report["runs"]:
        for name in ("snapshot", "nochange"):
            figures = run[name]
            assert figures["records"] > 500
            assert figures["rate"] > 0
            assert figures["loop_cpu"] > 0
            assert figures["machine_cpu"] > 0
    assert report["runs"][0]["snapshot"]["worker_cpu"] == 0
    assert report["runs"][1]["snapshot"]["worker_cpu"] > 0
    assert report["boundary"]["loop_results_load_us"] > 0
