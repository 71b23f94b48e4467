"""The topics as consumers see them: one description that renders the README's topic table and
the AsyncAPI 3.0 document ``docs/asyncapi.yaml``.

Topic names and configs come from ``producer.kafka.topics`` (what the producer creates), value
schemas from ``schemas/`` (``producer.avro``), keys and headers from here.
``python -m producer.contract`` rewrites ``docs/asyncapi.yaml``; tests assert that the committed
file and the README's table equal what this module renders, and ``make check`` validates the
document with the AsyncAPI parser (``contract/asyncapi``).

Avro payloads are the self-contained schemas the producer publishes to ``<prefix>.schemas``
(each named type defined at its first use), without type ``aliases``: AsyncAPI's Avro
meta-schema accepts only unqualified alias names, while ours are the full names of schema 0.1.0
(which readers of 0.1.0 data need, and find in ``schemas/`` and in the schemas topic).

Public API::

    TOPICS: tuple[TopicDoc, ...]
    readme_table() -> str
    asyncapi(schemas) -> dict[str, Any]
    to_yaml(document) -> str
    ASYNCAPI_PATH
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from producer import __version__
from producer.avro import (
    CHANGE_NAMES,
    CHECKPOINT,
    DEAD_LETTER,
    NAMESPACE,
    RECORD_NAMES,
    Schemas,
)
from producer.config import KafkaConfig
from producer.kafka.topics import TopicNames, TopicSettings, topic_specs
from producer.model import ENTITIES, Entity

ASYNCAPI_PATH: Final = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
AVRO_FORMAT: Final = "application/vnd.apache.avro;version=1.9.0"
AVRO_CONTENT_TYPE: Final = "application/avro; encoding=single-object"
PREFIX: Final = "{prefix}"


@dataclass(frozen=True, slots=True)
class Header:
    """One Kafka header of a message: its name, description and fixed value when it has one."""

    name: str
    description: str
    const: str | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicDoc:
    """One topic (or, for events, one topic per entity) as a consumer meets it."""

    #: AsyncAPI channel id and the topic's suffix after ``<prefix>.``.
    suffix: str
    title: str
    key: str
    key_pattern: str
    #: Full names of the Avro value schemas (several for the state topic).
    values: tuple[str, ...]
    value_text: str
    headers: tuple[Header, ...]
    #: What a null value (tombstone) means here; None when the topic has none.
    tombstone: str | None


def _common_headers(extra: tuple[Header, ...] = ()) -> tuple[Header, ...]:
    return (
        Header("content-type", "How the value is encoded.", AVRO_CONTENT_TYPE),
        Header("schema", "Full name of the value's Avro schema."),
        *extra,
    )


_OP = Header(
    "op", "The change; `TOMBSTONE` on the tombstone after a DELETED event.", None,
    ("CREATED", "UPDATED", "DELETED", "TOMBSTONE"),
)  # fmt: skip
_EVENT_KEY = "`<district_id>/<sourcedId>`"
_EVENT_PATTERN = "^[A-Za-z0-9._-]+/.+$"


def _event_topic(entity: Entity) -> TopicDoc:
    name = CHANGE_NAMES[entity]
    return TopicDoc(
        suffix=entity,
        title=f"Change events of {entity}",
        key=_EVENT_KEY,
        key_pattern=_EVENT_PATTERN,
        values=(name,),
        value_text=f"change envelope `{name}`",
        headers=_common_headers((_OP,)),
        tombstone="follows every DELETED event on the same key",
    )


TOPICS: Final[tuple[TopicDoc, ...]] = (
    *(_event_topic(e) for e in ENTITIES),
    TopicDoc(
        suffix="state",
        title="The latest canonical record per key",
        key="`<entity>/<district_id>/<sourcedId>`",
        key_pattern="^[A-Za-z]+/[A-Za-z0-9._-]+/.+$",
        values=tuple(RECORD_NAMES.values()),
        value_text=(
            f"the latest canonical record `{NAMESPACE}.<Entity>` (`SchoolClass` for classes)"
        ),
        headers=_common_headers(
            (
                Header("entity", "The OneRoster collection, e.g. `users`; also on tombstones."),
                Header("digest", "16 bytes: BLAKE2b of the record without dateLastModified."),
                Header("raw-digest", "16 bytes: BLAKE2b of the source JSON, when known."),
            )
        ),
        tombstone="the record was deleted",
    ),
    TopicDoc(
        suffix="checkpoints",
        title="Sync progress per district and entity",
        key="`<district_id>/<entity>`",
        key_pattern="^[A-Za-z0-9._-]+/[A-Za-z]+$",
        values=(CHECKPOINT,),
        value_text=(
            f"`{CHECKPOINT}`: cursor, last full/delta sync, cumulative counts, held deletes, "
            "`delta_supported`"
        ),
        headers=_common_headers(
            (
                Header(
                    "shards",
                    "The shard count (`kafka.shards`, decimal) the checkpoint was written for; "
                    "it sits in partition `shard_of(district_id)`.",
                ),
            )
        ),
        tombstone=None,
    ),
    TopicDoc(
        suffix="deadletter",
        title="Records that could not be normalised or encoded",
        key="`<district_id>/<sourcedId or empty>`",
        key_pattern="^[A-Za-z0-9._-]+/.*$",
        values=(DEAD_LETTER,),
        value_text=f"`{DEAD_LETTER}`: reason, raw JSON bytes, received_at, sync_id",
        headers=_common_headers(),
        tombstone=None,
    ),
    TopicDoc(
        suffix="schemas",
        title="Every writer schema, by fingerprint",
        key="fingerprint (16 hex digits)",
        key_pattern="^[0-9a-f]{16}$",
        values=(),
        value_text="the writer schema's JSON",
        headers=(
            Header("content-type", "The value is JSON.", "application/json"),
            Header("schema", "Full name of the type the schema describes."),
        ),
        tombstone=None,
    ),
)


def _cleanup_text(topic: TopicDoc) -> str:
    """The cleanup column: the policy the producer creates the topic with."""
    specs = topic_specs(TopicNames(PREFIX), TopicSettings.from_config(KafkaConfig()))
    configs = specs[f"{PREFIX}.{topic.suffix}"][1]
    text = configs["cleanup.policy"]
    if "retention.ms" in configs:
        text += ", retention `kafka.event_retention` (default forever: replay is a use case)"
    return text


def readme_table() -> str:
    """The README's topic table (Markdown)."""
    events = [t for t in TOPICS if t.suffix in ENTITIES]
    rows = [
        "| topic | cleanup | key | value |",
        "| --- | --- | --- | --- |",
        "| `<prefix>.<entity>` ({}) | {} | {} | change envelope `{}.<Entity>Change`; a DELETED "
        "event is followed by a tombstone (null value) on the same key; headers {} |".format(
            ", ".join(f"`{t.suffix}`" for t in events),
            _cleanup_text(events[0]),
            _EVENT_KEY,
            NAMESPACE,
            ", ".join(f"`{h.name}`" for h in events[0].headers),
        ),
    ]
    for t in TOPICS:
        if t in events:
            continue
        extra = f"; tombstone: {t.tombstone}" if t.tombstone else ""
        rows.append(
            f"| `<prefix>.{t.suffix}` | {_cleanup_text(t)} | {t.key} | {t.value_text}{extra}; "
            f"headers {', '.join(f'`{h.name}`' for h in t.headers)} |"
        )
    return "\n".join(rows) + "\n"


def _strip_aliases(node: Any) -> Any:
    """``node`` without type-level ``aliases`` (field aliases are unqualified and stay)."""
    if isinstance(node, list):
        return [_strip_aliases(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strip_aliases(v) for k, v in node.items()}
    if node.get("type") in ("record", "enum", "fixed"):
        out.pop("aliases", None)
    if "fields" in node:
        out["fields"] = [{**f, "type": _strip_aliases(f["type"])} for f in node["fields"]]
    return out


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _headers_schema(headers: tuple[Header, ...], *, tombstone: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for h in headers:
        prop: dict[str, Any] = {"type": "string", "description": h.description}
        if h.const is not None:
            prop["const"] = h.const
        if h.values:
            prop["enum"] = ["TOMBSTONE"] if tombstone else list(h.values[:-1])
        props[h.name] = prop
    return {"type": "object", "properties": props}


def _message(topic: TopicDoc, value: str | None) -> dict[str, Any]:
    key = {
        "type": "string",
        "description": topic.key.replace("`", ""),
        "pattern": topic.key_pattern,
    }
    msg: dict[str, Any] = {
        "bindings": {"kafka": {"key": key, "bindingVersion": "0.5.0"}},
    }
    if value is None and topic.suffix == "schemas":
        msg.update(
            name="Schema",
            title="An Avro schema",
            contentType="application/json",
            summary="The self-contained JSON of one writer schema; the key is its fingerprint.",
            headers=_headers_schema(topic.headers),
            payload={"type": "object", "description": "Avro schema JSON"},
        )
    elif value is None:
        msg.update(
            name="Tombstone",
            title="Tombstone",
            summary=f"A null value: {topic.tombstone}.",
            headers=_headers_schema(
                tuple(h for h in topic.headers if h.name in ("op", "entity")), tombstone=True
            ),
            payload={"type": "null"},
        )
    else:
        msg.update(
            name=_short(value),
            title=_short(value),
            contentType=AVRO_CONTENT_TYPE,
            summary=f"`{value}` in Avro single-object encoding.",
            headers=_headers_schema(topic.headers),
            payload={"$ref": f"#/components/schemas/{_short(value)}"},
        )
        msg["headers"]["properties"]["schema"]["const"] = value
        msg["headers"]["required"] = ["content-type", "schema"]
    return msg


def _channel_id(topic: TopicDoc) -> str:
    return topic.suffix


def asyncapi(schemas: Schemas) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every topic, as plain data."""
    specs = topic_specs(TopicNames(PREFIX), TopicSettings.from_config(KafkaConfig()))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    payloads: dict[str, Any] = {}
    for topic in TOPICS:
        address = f"{PREFIX}.{topic.suffix}"
        partitions, configs = specs[address]
        config: dict[str, Any] = {"cleanup.policy": configs["cleanup.policy"].split(",")}
        for name in ("retention.ms", "delete.retention.ms", "max.message.bytes"):
            if name in configs:
                config[name] = int(configs[name])
        binding: dict[str, Any] = {"topicConfiguration": config, "bindingVersion": "0.5.0"}
        if topic.suffix in ("checkpoints", "schemas"):
            binding["partitions"] = partitions
        refs: dict[str, Any] = {}
        for value in (*topic.values, *([None] if topic.tombstone or not topic.values else [])):
            msg = _message(topic, value)
            msg_id = f"{topic.suffix}.{msg['name']}"
            messages[msg_id] = msg
            refs[msg["name"]] = {"$ref": f"#/components/messages/{msg_id}"}
            if value is not None:
                payloads[_short(value)] = {
                    "schemaFormat": AVRO_FORMAT,
                    "schema": _strip_aliases(json.loads(schemas.get(value).json)),
                }
        cid = _channel_id(topic)
        channels[cid] = {
            "address": address,
            "title": topic.title,
            "description": f"Key {topic.key}. Value: {topic.value_text}."
            + (f" A null value (tombstone) {topic.tombstone}." if topic.tombstone else ""),
            "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
            "messages": refs,
            "bindings": {"kafka": binding},
        }
        operations[f"receive.{cid}"] = {
            "action": "receive",
            "title": f"Read {address}",
            "summary": "Read committed records only: the producer writes in transactions.",
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{m}"} for m in refs],
            "bindings": {
                "kafka": {"x-isolation.level": "read_committed", "bindingVersion": "0.5.0"}
            },
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "oneroster-cdc change stream",
            "version": __version__,
            "description": (
                "What a downstream service receives from oneroster-cdc: OneRoster roster changes "
                "as Avro events, one topic per entity, plus the state, checkpoint, dead-letter "
                "and schema topics. Generated by `python -m producer.contract` from the topic "
                'descriptions and `schemas/*.avsc`; see the README, section "Topics and the '
                'event contract". Every Avro value is single-object encoded: C3 01, the 8-byte '
                "little-endian CRC-64-AVRO fingerprint of the writer schema (the key of its "
                "record in `<prefix>.schemas`, as 16 hex digits), then the Avro body. Consumers "
                "must use isolation.level=read_committed. The payload schemas omit the "
                "type aliases of `schemas/` (the 0.1.0 full names, which AsyncAPI's Avro "
                "meta-schema does not accept); readers of 0.1.0 data take the schemas from "
                "`schemas/` or `<prefix>.schemas`."
            ),
        },
        "defaultContentType": AVRO_CONTENT_TYPE,
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The broker of `kafka.bootstrap_servers`.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": {
                "prefix": {
                    "description": "`kafka.topic_prefix` of the producer.",
                    "default": "oneroster",
                }
            },
            "messages": messages,
            "schemas": payloads,
        },
    }


_PLAIN_KEY: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_.$-]*")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)  # a double-quoted YAML scalar


def _yaml(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{_key(str(k))}:")
                lines.extend(_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{_key(str(k))}: {_empty_or_scalar(v)}")
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                sub = _yaml(item, indent + 1)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_empty_or_scalar(item)}")
    return lines


def _key(name: str) -> str:
    return name if _PLAIN_KEY.fullmatch(name) else _scalar(name)


def _empty_or_scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(document: dict[str, Any]) -> str:
    """Block-style YAML (scalars double-quoted, as in JSON) of plain data."""
    header = (
        "# Generated by `python -m producer.contract` from the topic descriptions and schemas/."
    )
    return (
        "\n".join(
            [header, "# Do not edit: tests/test_contract_docs.py checks it.", *_yaml(document, 0)]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Write ``docs/asyncapi.yaml`` (or to the path given)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else ASYNCAPI_PATH
    path.write_text(to_yaml(asyncapi(Schemas.load(history=False))), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
