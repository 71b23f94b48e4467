"""The README's topic table and docs/asyncapi.yaml come from producer/contract.py, and the
AsyncAPI parser (with its Avro schema parser) accepts the document."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from producer.avro import CHANGE_NAMES, CHECKPOINT, DEAD_LETTER, RECORD_NAMES, Schemas
from producer.config import KafkaConfig
from producer.contract import ASYNCAPI_PATH, TOPICS, asyncapi, readme_table, to_yaml
from producer.kafka.topics import TopicNames, TopicSettings, topic_specs
from producer.model import ENTITIES

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / "contract" / "asyncapi"
SCHEMAS = Schemas.load(history=False)


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed to validate docs/asyncapi.yaml"
    assert (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "the AsyncAPI parser is not installed: run `make install` (npm ci in contract/asyncapi)"
    )
    return subprocess.run(
        [node, str(VALIDATOR / "validate.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_asyncapi_document_is_the_generated_one():
    """docs/asyncapi.yaml is exactly what ``python -m producer.contract`` writes now."""
    assert ASYNCAPI_PATH.read_text(encoding="utf-8") == to_yaml(asyncapi(SCHEMAS))


def test_readme_topic_table_is_the_generated_one_and_links_the_document():
    """The README shows the table rendered from the same description, and links the document."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_table() in readme
    assert "(docs/asyncapi.yaml)" in readme


def test_asyncapi_yaml_is_plain_yaml_of_the_document():
    """The hand-rolled YAML writer round-trips through a YAML parser to the same data."""
    assert yaml.safe_load(to_yaml(asyncapi(SCHEMAS))) == asyncapi(SCHEMAS)


def test_every_topic_the_producer_creates_has_a_channel_with_its_configs():
    """One channel per topic the producer creates, with its cleanup policy and retention, and
    a receive operation that reads committed records only."""
    doc = asyncapi(SCHEMAS)
    specs = topic_specs(TopicNames("{prefix}"), TopicSettings.from_config(KafkaConfig()))
    by_address = {c["address"]: c for c in doc["channels"].values()}
    assert set(by_address) == set(specs)
    for address, (_partitions, configs) in specs.items():
        config = by_address[address]["bindings"]["kafka"]["topicConfiguration"]
        assert config["cleanup.policy"] == configs["cleanup.policy"].split(",")
        if "retention.ms" in configs:
            assert config["retention.ms"] == int(configs["retention.ms"])
    for cid in doc["channels"]:
        binding = doc["operations"][f"receive.{cid}"]["bindings"]["kafka"]
        assert binding["x-isolation.level"] == "read_committed"


def test_every_value_schema_is_a_payload_equal_to_schemas_dir_but_aliases():
    """Each Avro value schema appears as a payload: the self-contained schema of schemas/
    minus type aliases (AsyncAPI's Avro meta-schema rejects qualified alias names)."""
    doc = asyncapi(SCHEMAS)
    payloads = doc["components"]["schemas"]
    names = [*CHANGE_NAMES.values(), *RECORD_NAMES.values(), CHECKPOINT, DEAD_LETTER]
    assert set(payloads) == {n.rpartition(".")[2] for n in names}
    for name in names:
        payload = payloads[name.rpartition(".")[2]]
        assert payload["schemaFormat"].startswith("application/vnd.apache.avro")
        original = json.loads(SCHEMAS.get(name).json)
        assert original.get("aliases"), name
        assert "aliases" not in json.dumps(payload["schema"]).replace('"aliases": ["class"]', "")
        assert [f["name"] for f in payload["schema"]["fields"]] == list(SCHEMAS.get(name).fields)


def test_event_channels_carry_headers_keys_and_tombstones():
    """Each entity's channel names its envelope and a tombstone message, the `op` header and
    the `<district_id>/<sourcedId>` key."""
    doc = asyncapi(SCHEMAS)
    messages = doc["components"]["messages"]
    for entity in ENTITIES:
        channel = doc["channels"][entity]
        change = CHANGE_NAMES[entity].rpartition(".")[2]
        assert set(channel["messages"]) == {change, "Tombstone"}
        msg = messages[f"{entity}.{change}"]
        assert msg["headers"]["properties"]["schema"]["const"] == CHANGE_NAMES[entity]
        assert msg["headers"]["properties"]["op"]["enum"] == ["CREATED", "UPDATED", "DELETED"]
        assert msg["bindings"]["kafka"]["key"]["pattern"]
        tomb = messages[f"{entity}.Tombstone"]
        assert tomb["headers"]["properties"]["op"]["enum"] == ["TOMBSTONE"]
    assert len(TOPICS) == len(doc["channels"])


def test_asyncapi_parser_accepts_the_document():
    """@asyncapi/parser with the Avro schema parser finds no error in docs/asyncapi.yaml."""
    done = _validate(ASYNCAPI_PATH)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(TOPICS)} channels" in done.stdout


def test_asyncapi_parser_rejects_a_broken_document(tmp_path):
    """The validation can fail: an unknown cleanup policy and an Avro field without a type are
    errors."""
    doc = asyncapi(SCHEMAS)
    doc["channels"]["state"]["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] = [
        "compacted"
    ]
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(to_yaml(doc), encoding="utf-8")
    done = _validate(broken)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cleanup.policy" in done.stderr

    doc = asyncapi(SCHEMAS)
    del doc["components"]["schemas"]["Checkpoint"]["schema"]["fields"][0]["type"]
    broken.write_text(to_yaml(doc), encoding="utf-8")
    assert _validate(broken).returncode == 1
