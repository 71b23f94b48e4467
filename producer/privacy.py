"""Field minimisation: fields a deployment keeps out of the stream, or replaces by a keyed hash.

``[privacy]`` lists fields as ``<entity>.<field>`` with the field names of the canonical Avro
records (``users.email``, ``demographics.birthDate``); ``<entity>.*`` means every optional field
of the entity. ``omit`` drops a field; ``hash`` replaces a string field by the lowercase hex
HMAC-SHA256 of its value under ``hash_key`` (a secret), so consumers can still join on it
(the same value gives the same hash in every record, district and topic) without seeing it.

The rules apply to each raw source record **before** it is normalised (``PrivacyRules.apply``,
called by the sync engine wherever a source record enters), so an omitted or hashed value never
reaches the canonical record, the state topic and store, the change events, the dead letters
(whose raw JSON is the filtered record) or the logs. The raw digest that lets a re-read skip
normalising is taken of the filtered record too: a change confined to an omitted field is no
change at all, and a change of the rules makes the next listing of each record re-normalise it
(an UPDATED event without the field).

Checks (``check_rules``, run when the config is loaded, hence by ``check-config``): the entity
exists, the field is one of its schema's fields, a field required by the schema (``sourcedId``,
``status``, ``dateLastModified``) is never omitted or hashed, only nullable string fields are
hashed, no field is both omitted and hashed, and ``hash`` needs ``hash_key``.

Raw keys per canonical field: the field's OneRoster name (``schoolClass`` is ``class``);
``metadata_json`` is the raw ``metadata``;
``extensions_json`` stands for every raw key the entity's schema does not know; a user's
``roles`` includes the OneRoster 1.1 ``role`` and ``orgs`` it is built from. A hashed raw value
that is an integer is hashed as its decimal text (as the normaliser reads it); one that is
neither a string nor an integer cannot be hashed and is dropped, as if omitted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final, Literal

from producer.model import ENTITIES, RENAMED_FIELDS, Entity, Secret
from producer.normalise import known_keys

FieldKind = Literal["required", "string", "optional"]

#: Canonical fields whose raw form has other keys (``extensions_json`` is handled apart).
_RAW_KEYS: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("users", "roles"): frozenset({"roles", "role", "orgs"}),
}
_EXTENSIONS: Final = "extensions_json"
_METADATA: Final = "metadata_json"
#: Strings that hold JSON documents (from raw objects): omitted, never hashed.
_JSON_FIELDS: Final = frozenset({_METADATA, _EXTENSIONS})
#: A shorter ``hash_key`` is refused: a guessable key lets anyone hash candidate values (names,
#: emails) and compare.
MIN_KEY_CHARS: Final = 16


@cache
def schema_fields(entity: Entity) -> Mapping[str, FieldKind]:
    """The fields of an entity's canonical record, by name, and what rules they admit:
    ``required`` (neither), ``string`` (omit or hash), ``optional`` (omit only)."""
    from producer.avro import RECORD_NAMES, Schemas  # noqa: PLC0415 - only for config checks

    info = Schemas.load(history=False).get(RECORD_NAMES[entity])
    out: dict[str, FieldKind] = {}
    for spec in info.parsed["fields"]:
        kind = spec["type"]
        if isinstance(kind, list) and "null" in kind:
            text = kind in (["null", "string"], ["string", "null"])
            text = text and spec["name"] not in _JSON_FIELDS
            out[spec["name"]] = "string" if text else "optional"
        elif isinstance(kind, dict) and kind.get("type") == "array":
            out[spec["name"]] = "optional"  # an omitted array is empty
        else:
            out[spec["name"]] = "required"
    return out


def _entity_of(text: str) -> tuple[Entity, str]:
    name, dot, fld = text.partition(".")
    if not dot or not fld:
        raise ValueError(f"{text!r} is not <entity>.<field>, e.g. 'users.email', 'demographics.*'")
    for entity in ENTITIES:
        if entity == name:
            return entity, fld
    raise ValueError(f"{text!r}: unknown entity {name!r}; allowed: {', '.join(ENTITIES)}")


def expand_entry(text: str, *, hashing: bool) -> tuple[Entity, list[str]]:
    entity, fld = _entity_of(text)
    fields = schema_fields(entity)
    if fld == "*":
        if hashing:
            raise ValueError(f"{text!r}: hash names single string fields, not '*'")
        return entity, [f for f, kind in fields.items() if kind != "required"]
    kind = fields.get(fld)
    if kind is None:
        elsewhere = [e for e in ENTITIES if fld in schema_fields(e)]
        hint = f" ({' and '.join(elsewhere)} {'have' if len(elsewhere) > 1 else 'has'} it)"
        allowed = ", ".join(f for f, k in fields.items() if k != "required")
        raise ValueError(
            f"{text!r}: {entity} has no field {fld!r}{hint if elsewhere else ''}; "
            f"allowed: {allowed}, *"
        )
    if kind == "required":
        raise ValueError(
            f"{text!r}: {fld} is required by the {entity} schema (keys, status and the delta "
            "cursor depend on it) and cannot be omitted or hashed"
        )
    if hashing and kind != "string":
        strings = ", ".join(f for f, k in fields.items() if k == "string")
        raise ValueError(f"{text!r}: only string fields can be hashed; {entity} has: {strings}")
    return entity, [fld]


def check_rules(
    omit: Iterable[str], hashed: Iterable[str]
) -> tuple[dict[Entity, frozenset[str]], dict[Entity, frozenset[str]]]:
    """Validate ``omit`` and ``hash`` entries against the schemas; ``ValueError`` names the first
    bad entry. Returns the canonical field names per entity."""
    rules: list[dict[Entity, set[str]]] = [{}, {}]
    for i, entries in enumerate((omit, hashed)):
        for text in entries:
            entity, fields = expand_entry(text, hashing=i == 1)
            rules[i].setdefault(entity, set()).update(fields)
    for entity, names in rules[1].items():
        both = names & rules[0].get(entity, set())
        if both:
            raise ValueError(
                f"{entity}.{sorted(both)[0]} is both omitted and hashed; list it in one of them"
            )
    return (
        {e: frozenset(f) for e, f in rules[0].items()},
        {e: frozenset(f) for e, f in rules[1].items()},
    )


@dataclass(frozen=True, slots=True)
class _EntityRules:
    #: Raw keys dropped.
    drop: frozenset[str]
    #: Raw keys whose value is replaced by its HMAC.
    hashed: frozenset[str]
    #: Drop every raw key the schema does not know (``extensions_json`` omitted or hashed).
    drop_unknown: bool
    known: frozenset[str]


@dataclass(frozen=True)
class PrivacyRules:
    """The ``[privacy]`` rules, ready to apply to raw records."""

    omit: Mapping[Entity, frozenset[str]] = field(default_factory=dict)
    hashed: Mapping[Entity, frozenset[str]] = field(default_factory=dict)
    key: Secret | None = None
    _by_entity: dict[Entity, _EntityRules] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.hashed and self.key is None:
            raise ValueError("hashing fields needs a hash_key")
        for entity in {*self.omit, *self.hashed}:
            omit, hashed = self.omit.get(entity, frozenset()), self.hashed.get(entity, frozenset())
            self._by_entity[entity] = _EntityRules(
                drop=frozenset(k for f in omit for k in _raw_keys(entity, f)),
                hashed=frozenset(k for f in hashed for k in _raw_keys(entity, f)),
                drop_unknown=_EXTENSIONS in omit,
                known=known_keys(entity),
            )

    @classmethod
    def parse(cls, omit: Iterable[str], hashed: Iterable[str], key: Secret | None) -> PrivacyRules:
        """Rules from ``[privacy]`` entries (validated by ``check_rules``)."""
        omitted, hashed_fields = check_rules(omit, hashed)
        return cls(omitted, hashed_fields, key)

    @property
    def active(self) -> bool:
        """True when any rule is set."""
        return bool(self._by_entity)

    def describe(self) -> str:
        """The rules in a line (field names only), e.g. for ``check-config``."""
        parts = [
            f"{verb} {e}.{f}"
            for verb, rules in (("omit", self.omit), ("hash", self.hashed))
            for e in ENTITIES
            for f in sorted(rules.get(e, ()))
        ]
        return ", ".join(parts) or "none"

    def digest(self, value: str) -> str:
        """The lowercase hex HMAC-SHA256 of ``value`` (UTF-8) under the hash key."""
        assert self.key is not None
        return hmac.new(
            self.key.reveal().encode(), value.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()

    def apply(self, entity: Entity, raw: Any) -> Any:
        """``raw`` without its omitted fields and with its hashed fields replaced (a new object;
        ``raw`` itself is returned when no rule concerns the entity or it is not an object)."""
        rules = self._by_entity.get(entity)
        if rules is None or type(raw) is not dict:
            return raw
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key in rules.drop or (rules.drop_unknown and key not in rules.known):
                continue
            if key in rules.hashed and value is not None:
                if isinstance(value, str):
                    out[key] = self.digest(value)
                elif isinstance(value, int) and not isinstance(value, bool):
                    out[key] = self.digest(str(value))
                # else: neither text nor a number: cannot be hashed, so never carried
                continue
            out[key] = value
        return out


NO_RULES: Final = PrivacyRules()


def _raw_keys(entity: Entity, canonical: str) -> frozenset[str]:
    if canonical == _METADATA:
        return frozenset({"metadata"})
    if canonical == _EXTENSIONS:
        return frozenset()  # every unknown key: ``_EntityRules.drop_unknown``
    return _RAW_KEYS.get((entity, canonical), frozenset({RENAMED_FIELDS.get(canonical, canonical)}))
