"""Secrets never leak: sentinel credentials are hunted in everything the producer emits.

Sentinel secrets (``SENTINEL-...``, with characters that URL-encoding changes) are configured
as OAuth2 client secrets (Basic and form-body token auth), an OAuth 1.0a consumer secret (given
through ``env:``), the ClassLink API key, and a wrong client secret that the server rejects.
The simulator also issues bearer tokens (OAuth2 access tokens, ClassLink tenant bearers). The
daemon runs as a subprocess through faults (expired tokens, 5xx, truncated JSON, 429) and a
record that becomes a dead letter; the CLI runs ``sync``, ``status`` and ``check-config``; the
service runs in-process to capture an exception. Every captured text is then scanned for each
secret in raw, URL-encoded, JSON-escaped and Basic-header (base64) forms: the subprocesses'
stdout and stderr, ``/metrics``, ``/readyz``, ``/healthz``, every record (key, value, headers)
of every topic under the prefix, the decoded change events and dead letters, and the exception
texts (``str``, ``repr``, traceback) and config dumps.

Sentinel personal values (a family name and email on every user of one district, a personal
string in a field that makes a record a dead letter) must show up in the topics, the data path,
and in no log line, CLI output, metric, HTTP answer or error message: logs carry sourcedIds,
counts and reasons that name a field and a rule, never a value; a truncated page is described
by its size, not quoted.
"""

from __future__ import annotations

import base64
import functools
import json
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from producer.config import load_config
from producer.errors import CdcError
from producer.service import Service
from producer.simulator import DistrictSpec, Faults, Simulator
from tests.checker import read_all, read_decoded, rebuild
from tests.harness import config_document, write_config
from tests.reliability_helpers import DaemonProcess, eventually, http_get, run_cli

pytestmark = pytest.mark.integration

SECRETS = {
    "sec12": "SENTINEL-cs12+a/b=c&d e",
    "sec12b": "SENTINEL-cs12b+f/g=h&i",
    "sec11": "SENTINEL-cs11+j/k=l&m",
    "secbad": "SENTINEL-wrong+n/o=p&q",
}
CLASSLINK_KEY = "SENTINEL-classlink+r/s=t&u"
#: Personal values given to every user of district sec12 (and to a record that dead-letters):
#: they belong in the topics (the data path) and nowhere else.
PERSONAL = {
    "family name": "Piisentinelfamily",
    "email": "pii.sentinel.mail@sec12.example.org",
    "bad boolean": "Piisentinel Boolean",
}
ENV = {"SEC11_SECRET": SECRETS["sec11"]}


def forms(secret: str, client_id: str | None = None) -> set[str]:
    """The ways a secret could show up in text."""
    out = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
    }
    if client_id is not None:
        quoted = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
        for pair in (f"{client_id}:{secret}", quoted):
            out.add(base64.b64encode(pair.encode()).decode())
    return out


def leaks(texts: dict[str, str], needles: dict[str, set[str]]) -> list[str]:
    """``where: which secret`` for every text containing a form of a secret."""
    found = []
    for where, text in texts.items():
        for name, variants in needles.items():
            if any(v in text for v in variants):
                found.append(f"{where}: {name}")
    return found


async def topic_texts(bootstrap: str, prefix: str) -> dict[str, str]:
    """Every record of every topic under ``prefix``, keys, values and headers, as text."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith(f"{prefix}."))
    finally:
        await admin.close()
    out = {}
    for topic in topics:
        parts = []
        for key, value, headers in await read_all(bootstrap, topic):
            parts.append((key or b"").decode("latin-1"))
            parts.append((value or b"").decode("latin-1"))
            parts.extend(f"{k}={v.decode('latin-1')}" for k, v in headers.items())
        out[f"topic {topic}"] = "\n".join(parts)
    return out


def _is_district(district: str, line: dict[str, Any]) -> bool:
    """Whether a JSON log line is about ``district``."""
    return bool(line.get("district") == district)


@pytest.mark.timeout(240)
async def test_sentinel_secrets_appear_nowhere(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """No sentinel secret, access token or tenant bearer appears, in any encoding, in logs,
    CLI output, HTTP endpoints, Kafka records, decoded events, dead letters or exceptions."""
    faults = Faults(
        rate=0.4,
        kinds=("token_expired", "server_error", "truncated_json", "rate_limit"),
        seed=4,  # draws an expired token among the first faults
    )
    sim = Simulator(
        [
            DistrictSpec(id="sec12", client_secret=SECRETS["sec12"], faults=faults, seed=71),
            DistrictSpec(id="sec12b", client_secret=SECRETS["sec12b"], seed=72),
            DistrictSpec(
                id="sec11", version="1.1", client_secret=SECRETS["sec11"], classlink=False, seed=73
            ),
            DistrictSpec(id="secproxy", version="1.1", seed=74),
            DistrictSpec(id="secbad", seed=75),
        ],
        classlink_api_key=CLASSLINK_KEY,
    )
    logs = tmp_path / "logs"
    async with sim.serve() as root:
        sec12 = sim.district("sec12")
        sec12.create("users", {"givenName": 1.5})  # not a string: a dead letter
        for n, sid in enumerate(sorted(sec12.truth_state("users"))):
            sec12.update(
                "users",
                sid,
                familyName=f"{PERSONAL['family name']}{n}",
                email=f"{n}.{PERSONAL['email']}",
            )
        sec12.create(  # a dead letter whose bad value is itself personal
            "users",
            {"enabledUser": PERSONAL["bad boolean"], "familyName": PERSONAL["family name"]},
        )
        doc = config_document(
            sim,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path / "state",
            districts=["sec12", "sec12b", "sec11", "secbad"],
            sync={"failure_backoff": "5s", "failure_backoff_max": "10s"},
            district_overrides={"entities": ["orgs", "users"], "page_size": 20, "max_retries": 3},
            classlink={"api_key": CLASSLINK_KEY, "host": root, "access": "proxy"},
        )
        by_id = {d["id"]: d for d in doc["districts"]}
        by_id["sec12"]["page_size"] = 5
        by_id["sec12b"]["token_auth"] = "body"
        by_id["sec11"]["client_secret"] = "env:SEC11_SECRET"
        by_id["secbad"]["client_secret"] = SECRETS["secbad"]
        config_path = write_config(tmp_path / "secrets.toml", doc)
        proxy_id = f"classlink-{sim.district('secproxy').tenant_id}"

        daemon = DaemonProcess(config_path, logs, env=ENV)
        texts: dict[str, str] = {}
        try:
            daemon.start()
            url = await daemon.http_url()
            for district in ("sec12", "sec12b", "sec11", proxy_id):
                await daemon.wait_log(
                    "poll.finished", within=120, where=functools.partial(_is_district, district)
                )
            await daemon.wait_log(
                "poll.failed", within=60, where=lambda x: x.get("district") == "secbad"
            )
            for path in ("/metrics", "/readyz", "/healthz"):
                status, body = await http_get(url + path)
                assert status in (200, 503), (path, status)
                texts[f"http {path}"] = body
            assert await daemon.terminate() == 0
        finally:
            daemon.close()
        texts["daemon output"] = daemon.all_output()

        for args in (
            ("sync", "--district", "secbad"),
            ("sync", "--district", "sec12", "--district", "sec11", "--full"),
            ("status", "--json"),
            ("check-config",),
        ):
            done = await run_cli(config_path, *args, logs=logs, env=ENV)
            texts[f"cli {' '.join(args)} (rc {done.returncode})"] = done.stdout + done.stderr
        assert "rc 1" in next(k for k in texts if k.startswith("cli sync --district secbad"))

        config = load_config(config_path, ENV)
        texts["config repr"] = repr(config)
        texts["config dump"] = config.model_dump_json()
        async with Service(config) as service:
            with pytest.raises(CdcError) as caught:
                await service.sync("secbad")
        exc = caught.value
        texts["exception"] = "\n".join(
            [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        )

        texts.update(await topic_texts(kafka_bootstrap, unique_prefix))
        rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
        texts["decoded events"] = json.dumps(rebuilt.envelopes, default=str)
        dead = await read_decoded(kafka_bootstrap, unique_prefix, f"{unique_prefix}.deadletter")
        texts["decoded dead letters"] = json.dumps(
            dead, default=lambda v: v.decode("latin-1") if isinstance(v, bytes) else str(v)
        )
        tokens = list(sim.tokens._tokens)
        fired = dict(sec12.plan.fired)
        tenant_bearer = sim.district("secproxy").bearer

    assert dead, "the scenario produced no dead letter to inspect"
    assert "token_expired" in fired, fired
    assert rebuilt.ops["CREATED"] > 0
    assert any(e["district_id"] == proxy_id for e in rebuilt.envelopes)
    assert tokens, "no OAuth2 token was issued"
    needles = {name: forms(secret, f"{name}-client") for name, secret in SECRETS.items()}
    needles["classlink api key"] = forms(CLASSLINK_KEY)
    needles["tenant bearer"] = forms(tenant_bearer)
    for n, token in enumerate(tokens):
        needles[f"access token {n}"] = forms(token)
    assert len(texts["daemon output"]) > 1000
    # Control: the scan finds the secrets where they are meant to be (the config file).
    control = leaks({"config file": config_path.read_text()}, needles)
    assert {c.split(": ", 1)[1] for c in control} == {*SECRETS, "classlink api key"} - {"sec11"}
    assert leaks(texts, needles) == []
    # Personal values travel the data path (topics), never logs, metrics or error messages.
    personal = {name: forms(value) for name, value in PERSONAL.items()}
    data_path = {k: v for k, v in texts.items() if k.startswith(("topic ", "decoded "))}
    assert {c.split(": ", 1)[1] for c in leaks(data_path, personal)} == set(PERSONAL)
    others = {k: v for k, v in texts.items() if k not in data_path}
    assert leaks(others, personal) == []


@pytest.mark.timeout(120)
async def test_sasl_password_appears_nowhere_when_the_broker_refuses(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A SASL_PLAINTEXT config (sentinel password, given through ``env:``) against a broker
    that does not speak SASL: the daemon retries its start and reports not ready (or stops
    with an error), and neither its output, ``/readyz``, ``/metrics``, ``check-config`` nor the
    config's dumps show the password."""
    password = "SENTINEL-sasl+v/w=x&y z"
    env = {"SASL_SECRET": password}
    sim = Simulator([DistrictSpec(id="sasl", seed=81)])
    logs = tmp_path / "logs"
    async with sim.serve():
        doc = config_document(
            sim,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path / "state",
            district_overrides={"entities": ["orgs"]},
        )
        doc["kafka"].update(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username="cdc",
            sasl_password="env:SASL_SECRET",
        )
        config_path = write_config(tmp_path / "sasl.toml", doc)
        texts: dict[str, str] = {}
        daemon = DaemonProcess(config_path, logs, env=env)
        try:
            daemon.start()
            url = await daemon.http_url()

            def retried_or_stopped() -> bool:
                events = {line.get("event") for line in daemon.lines()}
                return "daemon.start_retry" in events or not daemon.running()

            await eventually(retried_or_stopped, within=60, interval=0.2)
            if daemon.running():  # still retrying: it must say it is not ready
                for path in ("/readyz", "/metrics"):
                    status, body = await http_get(url + path)
                    texts[f"http {path} ({status})"] = body
                assert await daemon.terminate() in (0, 1)
            else:  # the refusal is final: the daemon stopped with an error
                assert daemon.proc is not None
                assert daemon.proc.returncode != 0
                texts["http /readyz (503)"] = "(the daemon stopped)"
        finally:
            daemon.close()
        texts["daemon output"] = daemon.all_output()
        checked = await run_cli(config_path, "check-config", logs=logs, env=env)
        texts["check-config"] = checked.stdout + checked.stderr
        config = load_config(config_path, env)
        texts["config repr"] = repr(config)
        texts["config dump"] = config.model_dump_json()
    assert checked.returncode == 0, checked.stderr
    assert any(k.startswith("http /readyz (503)") for k in texts), list(texts)
    needles = {"sasl password": forms(password, "cdc")}
    assert leaks(texts, needles) == []
