"""Fuzzing (hypothesis) of the pure edges that take outside input: what the other test modules'
properties do not cover yet.

- normaliser: any Unicode (unpaired surrogates included, as stdlib ``json`` would hand them
  over), deep nesting, huge and odd keys; the outcome is a record that digests and encodes, or
  a rejection whose raw payload is JSON.
- filter builder: any field/operator/value, any combination, any cursor and timestamp format.
- OAuth 1.0a signer: any credentials, HTTP method, path and query; a header or ``AuthFailed``.
- config loader: any environment overrides over a valid document; secrets never appear in an
  error message or a repr.

Other properties live beside their modules (``test_normalise``, ``test_filters``,
``test_auth``, ``test_config``).
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import yarl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from producer import diff, errors
from producer.auth import OAuth1Signer
from producer.avro import RECORD_NAMES, Schemas
from producer.config import Config, config_from_mapping
from producer.errors import ConfigError
from producer.filters import Filter, FilterError, delta_filter, encode_query, predicate
from producer.model import ENTITIES, CanonicalRecord, Rejection, Secret
from producer.normalise import normalise
from producer.timestamps import DEFAULT_FORMAT, TimestampFormat, detect_format, parse_timestamp
from tests.test_normalise import assert_matches_reference

SCHEMAS = Schemas.load(history=False)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Every code point, unpaired surrogates included (hypothesis' default text excludes them).
_any_char = st.characters(codec=None) | st.integers(0xD800, 0xDFFF).map(chr)
_any_text = st.text(_any_char, max_size=12)

# ---- normaliser -------------------------------------------------------------------------------

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _any_text
)
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_any_text, inner, max_size=3),
    max_leaves=10,
)


def _nested(value: Any, depth: int) -> Any:
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


_FIELDS = ["givenName", "roles", "metadata", "primaryOrg", "grades", "userIds", "x-ext", "title"]
_record = st.fixed_dictionaries(
    {
        "sourcedId": st.one_of(_any_text, st.text(string.ascii_letters, min_size=1, max_size=6)),
        "status": st.sampled_from(["active", "tobedeleted", "inactive"]) | _any_text,
        "dateLastModified": st.sampled_from(
            ["2024-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z"]
        )
        | _any_text,
    },
    optional=dict.fromkeys(_FIELDS, _json),
)


def check_outcome(entity: str, out: CanonicalRecord | Rejection) -> None:
    """A record digests, encodes and decodes to itself; a rejection says where and keeps JSON."""
    if isinstance(out, Rejection):
        assert out.reason.startswith(entity)
        orjson.loads(out.raw)  # the dead letter's raw payload is JSON, whatever came in
        assert out.sourced_id is None or out.sourced_id.strip()
        return
    assert len(diff.digest(out.data)) > 0
    encoded = SCHEMAS.encode(RECORD_NAMES[out.entity], out.data)
    assert SCHEMAS.decode(encoded).value == out.data


@FUZZ
@given(entity=st.sampled_from(ENTITIES), raw=_record | _json)
def test_normalise_any_unicode_record_digests_and_encodes_or_is_rejected(
    entity: Any, raw: Any
) -> None:
    """Records with any code points (unpaired surrogates too) in values and keys never make
    normalise raise, and what it accepts can always be digested and Avro-encoded."""
    check_outcome(entity, normalise(entity, "d", raw))


@FUZZ
@given(entity=st.sampled_from(ENTITIES), raw=_record | _json)
def test_generated_normalisers_match_the_reference_on_any_unicode(entity: Any, raw: Any) -> None:
    """Any code points (unpaired surrogates too), in values and keys: the per-entity generated
    normaliser gives exactly the reference path's record or rejection."""
    assert_matches_reference(entity, raw)


@FUZZ
@given(
    entity=st.sampled_from(ENTITIES),
    field=st.sampled_from(_FIELDS),
    depth=st.integers(0, 300),
    leaf=_leaf,
)
def test_normalise_deeply_nested_values_are_handled(
    entity: Any, field: str, depth: int, leaf: Any
) -> None:
    """A value nested up to 300 levels in any field (orjson's own dump limit is 254) is
    accepted or rejected, never an exception."""
    raw = {
        "sourcedId": "s1",
        "status": "active",
        "dateLastModified": "2024-01-01T00:00:00Z",
        field: _nested(leaf, depth),
    }
    check_outcome(entity, normalise(entity, "d", raw))
    assert_matches_reference(entity, raw)


@FUZZ
@given(
    entity=st.sampled_from(ENTITIES),
    keys=st.lists(st.text(_any_char, max_size=300), max_size=4),
    size=st.sampled_from([0, 1, 65_536, 65_537]),
)
def test_normalise_odd_keys_and_boundary_string_sizes(
    entity: Any, keys: list[str], size: int
) -> None:
    """Unknown keys of any text and strings at the length bound either way give a record that
    encodes or a rejection naming the field."""
    raw: dict[str, Any] = {k: k for k in keys}
    raw |= {"sourcedId": "s1", "status": "active", "dateLastModified": "2024-01-01"}
    raw["title" if entity in ("classes", "courses", "academicSessions") else "givenName"] = (
        "x" * size
    )
    check_outcome(entity, normalise(entity, "d", raw))
    assert_matches_reference(entity, raw)


# ---- filter builder ---------------------------------------------------------------------------

_values = st.one_of(
    _any_text,
    st.datetimes(
        min_value=datetime(1000, 1, 2),  # noqa: DTZ001 -- hypothesis bounds are naive
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001 -- hypothesis bounds are naive
        timezones=st.none() | st.just(UTC) | st.timezones(),  # type: ignore[arg-type]
    ),
    st.integers(),
    st.none(),
    st.binary(max_size=4),
)
_field_names = st.one_of(
    _any_text,
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}(\.[A-Za-z_][A-Za-z0-9_]{0,4})?", fullmatch=True),
)
_ops = st.sampled_from(["=", "!=", ">", ">=", "<", "<=", "~", "==", "", " =", "like"]) | _any_text


@FUZZ
@given(field=_field_names, op=_ops, value=_values)
def test_predicate_builds_or_raises_filter_error(field: Any, op: Any, value: Any) -> None:
    """Any field, operator and value: a Filter whose text starts with the field, or FilterError
    (nothing else: no TypeError, no OverflowError from odd datetimes)."""
    try:
        built = predicate(field, op, value)
    except FilterError:
        return
    assert str(built).startswith(f"{field}{op}'")


def _tree(leaves: list[Filter], joins: list[bool]) -> Filter:
    out = leaves[0]
    for leaf, use_and in zip(leaves[1:], joins, strict=False):
        out = out & leaf if use_and else out | leaf
    return out


@FUZZ
@given(
    values=st.lists(st.text(max_size=10), min_size=1, max_size=5),
    joins=st.lists(st.booleans(), max_size=4),
)
def test_combined_filters_are_one_operator_or_filter_error(
    values: list[str], joins: list[bool]
) -> None:
    """Any chain of & and |: a filter of every predicate joined by the one operator used, or
    FilterError exactly when both operators were used."""
    leaves = [predicate("f", "=", v) for v in values][: len(joins) + 1]
    used = set(joins[: len(leaves) - 1])
    try:
        combined = _tree(leaves, joins)
    except FilterError:
        assert len(used) == 2
        return
    assert len(used) < 2
    assert combined.clauses == tuple(str(leaf) for leaf in leaves)
    assert combined.joiner == (None if not used else ("AND" if True in used else "OR"))
    assert encode_query([("filter", str(combined))]).startswith("filter=")


@FUZZ
@given(
    cursor=st.datetimes(
        min_value=datetime(1, 1, 2),  # noqa: DTZ001 -- hypothesis bounds are naive
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001 -- hypothesis bounds are naive
        timezones=st.just(UTC),
    ),
    sample=st.sampled_from(
        [
            "2024-01-01",
            "2024-01-01T00:00:00Z",
            "2024-01-01 00:00:00.123+05:30",
            "2024-01-01T00:00:00.123456789-0800",
            "2024-01-01T00:00:00",
        ]
    )
    | _any_text,
)
def test_delta_filter_any_cursor_in_any_detected_format(cursor: datetime, sample: str) -> None:
    """A delta filter for any UTC cursor, in the format detected from any sample value (or the
    default), never raises and encodes as a strict query component."""
    fmt = detect_format(sample) or DEFAULT_FORMAT
    text = delta_filter(cursor, fmt)
    assert text.startswith("dateLastModified>")
    assert encode_query([("filter", text)]).isascii()


@FUZZ
@given(value=_json | _values | st.builds(TimestampFormat))
def test_detect_format_and_parse_timestamp_take_anything(value: Any) -> None:
    """Server values of any type: detected or None, parsed (aware UTC) or None."""
    fmt = detect_format(value)
    assert fmt is None or isinstance(fmt, TimestampFormat)
    moment = parse_timestamp(value)
    assert moment is None or moment.utcoffset() is not None


@pytest.mark.parametrize(
    "value",
    [
        "\ud800",
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
        datetime(999, 1, 1, tzinfo=UTC),
    ],
    ids=["unpaired surrogate", "year 1 at +05:00", "year 9999 at -05:00", "year 999"],
)
def test_predicate_values_are_sendable_iso_or_a_filter_error(value: Any) -> None:
    """Every Filter the builder returns can be put in a query string and writes datetimes as
    ISO 8601 (four-digit year); anything else is a FilterError."""
    try:
        built = predicate("dateLastModified", ">", value)
    except FilterError:
        return
    encode_query([("filter", str(built))])
    if isinstance(value, datetime):
        assert re.fullmatch(r"dateLastModified>'\d{4}-\d\d-\d\dT.*'", str(built))


# ---- OAuth 1.0a signer ------------------------------------------------------------------------


@FUZZ
@given(
    client_id=_any_text,
    secret=_any_text,
    method=st.sampled_from(["GET", "get", "POST"]) | _any_text,
    signature=st.sampled_from(["HMAC-SHA256", "HMAC-SHA1"]),
    path=st.lists(_any_text, max_size=3),
    query=st.lists(st.tuples(_any_text, _any_text), max_size=3),
)
def test_oauth1_signer_any_credentials_method_path_and_query(
    client_id: str,
    secret: str,
    method: str,
    signature: Any,
    path: list[str],
    query: list[tuple[str, str]],
) -> None:
    """Whatever the credentials (empty, control characters, surrogates), method, path and query,
    ``sign`` returns an OAuth header or raises AuthFailed, and the secret is never in the
    error."""
    assume("\x00" not in secret or len(secret) > 1)
    try:
        url = yarl.URL("https://h.example/ims/oneroster/v1p1").joinpath(*path).with_query(query)
    except (ValueError, TypeError, UnicodeError):
        return  # yarl refuses the URL itself: nothing to sign
    signer = OAuth1Signer(
        client_id=client_id, client_secret=Secret(secret), signature_method=signature
    )
    outcome = attempt(lambda: signer.sign(method, url), errors.AuthFailed)
    if isinstance(outcome, errors.AuthFailed):
        assert len(secret) < 4 or secret not in str(outcome)
        return
    assert outcome["Authorization"].startswith("OAuth ")
    assert 'oauth_signature="' in outcome["Authorization"]


# ---- config loader ----------------------------------------------------------------------------

SECRET = "S3cr3t-" + secrets.token_hex(8)


def attempt(build: Callable[[], Any], error: type[Exception]) -> Any:
    """What ``build`` returns, or the ``error`` it raised (anything else propagates)."""
    try:
        return build()
    except error as exc:
        return exc


def _base() -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic_prefix": "fz"},
        "districts": [
            {
                "id": "d-1",
                "base_url": "https://sis.example",
                "auth": "oauth2",
                "client_id": "cid",
                "client_secret": SECRET,
                "token_url": "https://sis.example/oauth/token",
            },
            {"id": "d.2", "base_url": "http://h:1", "auth": "bearer", "bearer": "env:BEARER"},
        ],
    }


_env_names = st.one_of(
    st.sampled_from(
        [
            "ONEROSTER_CDC__KAFKA__SASL_PASSWORD",
            "ONEROSTER_CDC__KAFKA__SECURITY_PROTOCOL",
            "ONEROSTER_CDC__KAFKA__BOOTSTRAP_SERVERS",
            "ONEROSTER_CDC__SYNC__POLL_INTERVAL",
            "ONEROSTER_CDC__SYNC__BATCH_SIZE",
            "ONEROSTER_CDC__DISTRICTS__D_1__CLIENT_SECRET",
            "ONEROSTER_CDC__DISTRICTS__D_1__ENTITIES",
            "ONEROSTER_CDC__DISTRICTS__D_2__BEARER",
            "ONEROSTER_CDC__DISTRICTS__D_2__PAGE_SIZE",
            "ONEROSTER_CDC__DISTRICTS__NOPE__ID",
            "ONEROSTER_CDC__HTTP__LISTEN",
            "ONEROSTER_CDC__",
            "ONEROSTER_CDC____",
            "BEARER",
        ]
    ),
    st.text(string.ascii_uppercase + "_", max_size=20).map(lambda s: "ONEROSTER_CDC__" + s),
)
_env_values = st.one_of(
    st.sampled_from(["", "[", "[1, 2]", '["users"]', "users,orgs", "5m", "-1", "true"]),
    st.text(max_size=10),
    st.sampled_from(["SASL_SSL", "SCRAM-SHA-512", "env:NOPE", "file:/nonexistent/x"]),
)


@FUZZ
@given(
    env=st.dictionaries(_env_names, _env_values, max_size=4),
    secret_in=st.sampled_from(["", "KAFKA__SASL_PASSWORD", "DISTRICTS__D_1__CLIENT_SECRET"]),
)
def test_config_any_environment_overrides_load_or_raise_config_error(
    env: dict[str, str], secret_in: str
) -> None:
    """Any set of override variables over a valid document (the bearer's env variable
    always set, the secret also given through an override of a secret key): a Config or a
    ConfigError naming a key; the secret is in neither message nor repr nor dump."""
    environ = {"BEARER": "b-" + SECRET, **env}
    if secret_in:
        environ["ONEROSTER_CDC__" + secret_in] = SECRET
    outcome = attempt(lambda: config_from_mapping(_base(), environ), ConfigError)
    assert SECRET not in str(outcome)
    assert SECRET not in repr(outcome)
    if isinstance(outcome, ConfigError):
        assert outcome.key
    else:
        assert isinstance(outcome, Config)
        assert SECRET not in str(outcome.model_dump())


_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.text(max_size=8),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
_district_keys = st.sampled_from(
    [
        "id",
        "base_url",
        "version",
        "auth",
        "client_id",
        "token_url",
        "token_auth",
        "scopes",
        "signature_method",
        "page_size",
        "entities",
        "ssl_cafile",
        "verify_tls",
        "request_timeout",
        "bearer",
        "unknown",
    ]
)


@FUZZ
@given(
    changes=st.dictionaries(_district_keys, _junk, max_size=3),
    secret_as=st.sampled_from(["client_secret", "sasl_password", "both"]),
)
def test_config_errors_never_show_the_secret(changes: dict[str, Any], secret_as: str) -> None:
    """Breaking any other keys of a district that holds a secret (and SASL settings that hold
    one too) gives a ConfigError that never contains the secret."""
    doc = _base()
    doc["districts"][0].update(changes)
    if secret_as in ("sasl_password", "both"):
        doc["kafka"] |= {"sasl_password": SECRET, "sasl_mechanism": "PLAIN"}
    outcome = attempt(lambda: config_from_mapping(doc, {"BEARER": "b"}), ConfigError)
    assert SECRET not in str(outcome)
    assert SECRET not in repr(outcome)


def test_timezones_far_from_utc_at_the_edges_of_time_do_not_break_the_filter() -> None:
    """Cursor moments at the first and last representable days, in any offset, still give a
    filter (the builder converts to UTC without overflowing)."""
    for moment in (datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)):
        for hours in (-14, 0, 14):
            local = moment.astimezone(timezone(timedelta(hours=hours)))
            assert delta_filter(local).startswith("dateLastModified>'")
