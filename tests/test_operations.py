"""One-shot commands as operators and their scripts run them (subprocesses of `oneroster-cdc`
against the simulator and the real broker), including the outside servers' quirks."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.harness import district_entry, free_port, make_config, write_config_file
from tests.test_cli import ROOT, cli

SHA1_ONLY = frozenset({"oauth1_sha1_only"})
CORE_SCOPE = "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.integration
async def test_sync_all_and_a_classlink_district_run_discovery(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """With only `[classlink]` configured, `sync --all --json` discovers the tenant and syncs
    every entity of `classlink-<tenant_id>`; `sync --district classlink-<tenant_id>` works too,
    and an unknown district exits 2 naming the known ones."""
    sim = Simulator(
        [DistrictSpec(id="cl", version="1.1", size="tiny", seed=3)],
        classlink_api_key="sim-key-0123",
    )
    async with sim.serve():
        config = write_config_file(
            tmp_path / "c.toml", bootstrap=kafka_bootstrap, prefix=unique_prefix,
            classlink_host=sim.url,
        )  # fmt: skip
        env = {"SIM_CLASSLINK_KEY": "sim-key-0123"}
        district = f"classlink-{sim.district('cl').tenant_id}"
        code, out, err = await cli("--config", str(config), "sync", "--all", "--json", env=env)
        assert code == 0, err[-3000:]
        rows = json_lines(out)
        assert {r["district"] for r in rows} == {district}
        assert {r["status"] for r in rows} == {"ok"}
        users = next(r for r in rows if r["entity"] == "users")
        assert users["created"] == len(sim.district("cl").truth_state("users"))

        code, out, err = await cli(
            "--config", str(config), "sync", "--district", district, "--entity", "users", "--json",
            env=env,
        )  # fmt: skip
        assert code == 0, err[-3000:]
        assert [(r["district"], r["entity"], r["status"]) for r in json_lines(out)] == [
            (district, "users", "ok")
        ]
        code, _out, err = await cli(
            "--config", str(config), "sync", "--district", "nowhere", env=env
        )
        assert code == 2
        assert "nowhere" in err
        assert district in err


@pytest.mark.integration
async def test_a_failed_district_is_a_json_row_and_an_error_event_naming_the_key(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """Against an HMAC-SHA1-only OAuth 1.0a server signed with the default HMAC-SHA256, `sync
    --all --json --log-format json` finishes the good district, prints a `failed` row for the
    other, logs an error-level `sync.district_failed` JSON event and exits 1; the error names
    `signature_method` and does not repeat itself. With `signature_method = "HMAC-SHA1"` the
    same server syncs."""
    sim = Simulator(
        [
            DistrictSpec(id="good", version="1.2", size="tiny", seed=4),
            DistrictSpec(id="sha1", version="1.1", size="tiny", seed=5, quirks=SHA1_ONLY),
        ]
    )
    async with sim.serve():
        districts = [district_entry(sim, "good"), district_entry(sim, "sha1")]
        config = write_config_file(
            tmp_path / "c.toml", bootstrap=kafka_bootstrap, prefix=unique_prefix,
            districts=districts,
        )  # fmt: skip
        code, out, err = await cli(
            "--config", str(config), "--log-format", "json", "sync", "--all", "--json"
        )
        assert code == 1, err[-3000:]
        rows = json_lines(out)
        assert {r["entity"] for r in rows if r["district"] == "good"} >= {"orgs", "users"}
        assert all(r["status"] == "ok" for r in rows if r["district"] == "good")
        [failed] = [r for r in rows if r["district"] == "sha1"]
        assert failed["status"] == "failed"
        assert failed["entity"] == "orgs"
        assert failed["error_type"] == "AuthFailed"
        assert "signature_method" in failed["error"]
        assert "HMAC-SHA1" in failed["error"]
        assert "invalid_signature: invalid_signature" not in failed["error"]
        events = json_lines(err)
        [event] = [e for e in events if e["event"] == "sync.district_failed"]
        assert event["level"] == "error"
        assert event["district"] == "sha1"
        assert "signature_method" in event["error"]

        districts[1]["signature_method"] = "HMAC-SHA1"
        write_config_file(
            tmp_path / "c.toml", bootstrap=kafka_bootstrap, prefix=unique_prefix,
            districts=districts,
        )  # fmt: skip
        code, out, err = await cli("--config", str(config), "sync", "--district", "sha1", "--json")
        assert code == 0, err[-3000:]
        assert {r["status"] for r in json_lines(out)} == {"ok"}


@pytest.mark.integration
async def test_piped_tables_are_whole_status_shows_ages_and_json_iso_times(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """Piped (not a terminal), `sync` and `status` print every character of a long district id
    and of every entity name; `status` says ages ("... ago") and cursor lag, `status --json`
    ISO-8601 UTC times; no aiokafka INFO line reaches stderr of `status` or `tail`."""
    long_id = "mjx-oakridge-unified-school-district-number-42-north-campus"
    sim = Simulator([DistrictSpec(id=long_id, version="1.2", size="tiny", seed=6)])
    async with sim.serve():
        config = write_config_file(
            tmp_path / "c.toml", bootstrap=kafka_bootstrap, prefix=unique_prefix,
            districts=[district_entry(sim, long_id)],
        )  # fmt: skip
        code, out, err = await cli("--config", str(config), "sync", "--all")
        assert code == 0, err[-3000:]
        lines = out.splitlines()
        assert len([line for line in lines if line.startswith(long_id)]) == 7
        assert any("academicSessions" in line for line in lines)
        assert "…" not in out

        code, out, err = await cli("--config", str(config), "status")
        assert code == 0, err[-3000:]
        assert len([line for line in out.splitlines() if line.startswith(long_id)]) == 7
        assert re.search(r"\d+ s ago", out), out
        assert "enrollments" in out
        assert "…" not in out
        assert "aiokafka" not in err
        assert "Updating subscribed topics" not in err

        code, out, err = await cli("--config", str(config), "status", "--json")
        assert code == 0, err[-3000:]
        rows = json_lines(out)
        iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        assert all(iso.match(r["last_full_sync_at"]) for r in rows)
        assert all(isinstance(r["cursor_lag_seconds"], float) for r in rows)

        code, out, err = await cli(
            "--config", str(config), "tail", "users", "--from-beginning", "--max", "1"
        )
        assert code == 0, err[-3000:]
        assert "aiokafka" not in err
        assert "Updating subscribed topics" not in err


@pytest.mark.integration
async def test_mass_delete_floor_lets_small_deletes_through_and_holds_an_emptied_entity(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """One class of seven vanishes (over the 10 % share, under `mass_delete_min`): the full
    sync deletes it. Both orgs vanish (fewer than the floor, but every stored key): the deletes
    are held, with the `confirm-deletes` command in the result."""
    sim = Simulator([DistrictSpec(id="small", version="1.2", size="tiny", seed=7)])
    async with sim.serve():
        config = write_config_file(
            tmp_path / "c.toml", bootstrap=kafka_bootstrap, prefix=unique_prefix,
            districts=[district_entry(sim, "small")],
        )  # fmt: skip
        code, _out, err = await cli("--config", str(config), "sync", "--all")
        assert code == 0, err[-3000:]
        d = sim.district("small")
        classes = sorted(d.truth_state("classes"))
        assert len(classes) == 7
        d.hard_delete("classes", classes[0])
        code, out, err = await cli(
            "--config", str(config), "sync", "--all", "--full", "--entity", "classes", "--json"
        )
        assert code == 0, err[-3000:]
        [row] = json_lines(out)
        assert (row["deleted"], row["held_deletes"]) == (1, 0)

        for sid in sorted(d.truth_state("orgs")):
            d.hard_delete("orgs", sid)
        code, out, err = await cli(
            "--config", str(config), "sync", "--all", "--full", "--entity", "orgs", "--json"
        )
        assert code == 0, err[-3000:]
        [row] = json_lines(out)
        assert (row["deleted"], row["held_deletes"]) == (0, 2)
        assert row["confirm_command"] == (
            "oneroster-cdc confirm-deletes --district small --entity orgs"
        )


def test_check_config_no_secrets_validates_everything_but_the_secrets(tmp_path: Path) -> None:
    """The shipped example exits 2 without its `env:` secrets, and 0 with `--no-secrets`;
    `--no-secrets` still reports every other problem (each key named) and never a secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEROSTER_CDC")}

    example = ["--config", "config/oneroster-cdc.toml"]
    strict = subprocess.run(
        [sys.executable, "-m", "producer", *example, "check-config"],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert strict.returncode == 2
    assert "environment variable" in strict.stderr
    relaxed = subprocess.run(
        [sys.executable, "-m", "producer", *example, "check-config", "--no-secrets"],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert relaxed.returncode == 0, relaxed.stderr
    assert "not resolved" in relaxed.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[sync]\nmass_delete_min = -1\n[http]\nlisten = "nowhere"\n[[districts]]\n'
        'id = "a"\nbase_url = "http://127.0.0.1:1"\nauth = "oauth1"\nclient_id = "k"\n'
        'client_secret = "env:NOT_SET_ANYWHERE"\nsignature_method = "MD5"\n'
        '[[districts]]\nid = "b"\nbase_url = "http://127.0.0.1:1"\nauth = "bearer"\n'
        'bearer = "file:"\n'
    )
    run = subprocess.run(
        [sys.executable, "-m", "producer", "--config", str(bad), "check-config", "--no-secrets"],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    for key in (
        "sync.mass_delete_min",
        "http.listen",
        "districts[0].signature_method",
        "districts[1].bearer",
    ):
        assert key in run.stderr, run.stderr
    assert "NOT_SET_ANYWHERE" not in run.stderr


@pytest.mark.integration
async def test_outside_server_quirks_scope_filter_and_singular_demographic(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A server that requires a scope refuses a token request without one: the failure names
    `scopes`; with the core and demographics scopes the same server syncs. A server that answers
    an unparseable delta filter with an empty list is noticed (`sync.delta_filter_unanswered`)
    and listed in full, so an update is not missed. A singular `demographic` key on
    single-record GETs is read."""
    spec = DistrictSpec(
        id="outside",
        version="1.2",
        size="tiny",
        seed=8,
        quirks=frozenset({"scope_required", "filter_empty_list", "singular_demographic"}),
    )
    sim = Simulator([spec])
    async with sim.serve():
        entry = district_entry(sim, "outside")
        entry["scopes"] = []
        config = write_config_file(
            tmp_path / "c.toml", bootstrap=kafka_bootstrap, prefix=unique_prefix,
            districts=[entry],
        )  # fmt: skip
        code, out, err = await cli("--config", str(config), "sync", "--all", "--json")
        assert code == 1
        [failed] = json_lines(out)
        assert failed["status"] == "failed"
        assert "scopes" in failed["error"]
        assert "a scope is required" in failed["error"]

        entry["scopes"] = [CORE_SCOPE, CORE_SCOPE.replace("roster-core", "roster-demographics")]
        write_config_file(
            tmp_path / "c.toml", bootstrap=kafka_bootstrap, prefix=unique_prefix,
            districts=[entry],
        )  # fmt: skip
        code, out, err = await cli("--config", str(config), "sync", "--all", "--json")
        assert code == 0, err[-3000:]
        d = sim.district("outside")
        user = sorted(d.truth_state("users"))[0]
        d.update("users", user, familyName="Renamed")
        code, out, err = await cli(
            "--config", str(config), "--log-format", "json", "sync", "--all", "--json"
        )
        assert code == 0, err[-3000:]
        users = next(r for r in json_lines(out) if r["entity"] == "users")
        assert (users["mode"], users["updated"]) == ("FULL", 1)
        assert any(e["event"] == "sync.delta_filter_unanswered" for e in json_lines(err))

        cfg = make_config(
            sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path / "s2",
            district_overrides={"scopes": entry["scopes"]},
        )  # fmt: skip
        service = Service(cfg)
        client = service.districts.client("outside")
        try:
            sid = sorted(d.truth_state("demographics"))[0]
            record = await client.fetch_one("demographics", sid)
        finally:
            await service.districts.close()
        assert record is not None
        assert record["sourcedId"] == sid


async def test_demo_probe_of_a_missing_broker_logs_nothing() -> None:
    """`demo`'s broker probe answers False for a port nobody listens on and logs nothing (no
    aiokafka "Unable connect" error before the demo starts its own broker)."""
    from producer.config import config_from_mapping  # noqa: PLC0415
    from producer.kafka.options import connection_options  # noqa: PLC0415
    from producer.kafka.probe import broker_answers  # noqa: PLC0415
    from producer.logs import configure_logging  # noqa: PLC0415

    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    try:
        config = config_from_mapping(
            {"kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"}}, {}
        )
        assert await broker_answers(connection_options(config.kafka, role="demo")) is False
    finally:
        configure_logging("json", "INFO", stream=sys.stderr)
    assert stream.getvalue() == ""
