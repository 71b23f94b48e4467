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


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_harness_runs_every_scenario_at_size_s(kafka_bootstrap, tmp_path):
    """`python -m bench --size S` measures every scenario and writes the JSON and the table."""
    out = tmp_path / "out"
    env = {**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "S", "--out", str(out), "--work", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
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
