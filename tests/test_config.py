"""Tests for producer.config: loading, overrides, secrets, durations and error messages."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    config_from_mapping,
    describe_errors,
    district_env_name,
    load_config,
    parse_duration,
    parse_listen,
    resolve_config_path,
)
from producer.errors import ConfigError
from producer.model import ENTITIES, Secret
from producer.simulator.cli import add_arguments, specs_from_args

REPO = Path(__file__).resolve().parent.parent

DISTRICT = """
[[districts]]
id = "springfield-usd"
base_url = "https://sis.springfield.example/"
version = "1.2"
auth = "oauth2"
client_id = "cid"
client_secret = "env:SPRINGFIELD_SECRET"
token_url = "https://sis.springfield.example/oauth/token"
"""


@pytest.fixture
def write(tmp_path):
    """Write a TOML document to a file and return its path."""

    def _write(text: str, name: str = "c.toml") -> Path:
        path: Path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


def error_of(path: Path | None, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return info.value


def test_example_and_demo_files_load():
    """The shipped config files are valid (their env: secrets given)."""
    env = {"SPRINGFIELD_SECRET": "s3cret-value", "CLASSLINK_API_KEY": "ck-123456"}
    for name in ("oneroster-cdc.toml", "demo.toml", "docker.toml"):
        config = load_config(REPO / "config" / name, env)
        assert config.districts, name


def test_defaults_and_typed_values(write):
    """A minimal file loads with typed defaults; durations become seconds, URLs lose the slash."""
    config = load_config(write(DISTRICT), {"SPRINGFIELD_SECRET": "abcd"})
    assert config.sync.poll_interval == 60.0
    assert config.sync.full_sync_interval == 86400.0
    assert config.kafka.bootstrap_servers == ("127.0.0.1:9092",)
    assert config.kafka.transactional_id == "oneroster-cdc-shard-0"
    assert config.kafka.event_retention is None
    district = config.district("springfield-usd")
    assert district.base_url == "https://sis.springfield.example"
    assert district.client_secret == Secret("abcd")
    assert district.entities == ENTITIES
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)


def test_transactional_id_follows_client_id(write):
    """Without an explicit transactional_id it is derived from client_id and shard 0."""
    config = load_config(write('[kafka]\nclient_id = "cdc-a"\n'), {})
    assert config.kafka.transactional_id == "cdc-a-shard-0"


def test_config_is_frozen(write):
    """Sections cannot be changed after loading."""
    config = load_config(write(DISTRICT), {"SPRINGFIELD_SECRET": "abcd"})
    with pytest.raises(ValueError, match="frozen"):
        config.sync.poll_interval = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("24h", 86400),
        ("1d", 86400),
        ("1h30m", 5400),
        ("250ms", 0.25),
        (12, 12),
        ("1.5", 1.5),
        (" 2w ", 1209600),
    ],
)
def test_durations(text, seconds):
    """Durations accept number+unit strings, combinations and bare numbers of seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5x", "m5", "", "-3s", "5 m x", True, None, [1]])
def test_bad_durations(bad):
    """Anything else is rejected with a message saying what is allowed."""
    with pytest.raises(ValueError, match="allowed"):
        parse_duration(bad)


def test_bad_duration_names_key(write):
    """A bad duration in the file names its dotted key and the allowed form."""
    err = error_of(write('[sync]\npoll_interval = "5 minutes"\n'))
    assert err.key == "sync.poll_interval"
    assert '"5m"' in str(err)


def test_unknown_key_lists_allowed(write):
    """An unknown key is refused, naming the key and the keys allowed there."""
    err = error_of(write('[kafka]\nbootstrap_server = "x:1"\n'))
    assert err.key == "kafka.bootstrap_server"
    assert "allowed:" in str(err)
    assert "bootstrap_servers" in str(err)


def test_unknown_section(write):
    """An unknown top-level table is refused with the list of sections."""
    err = error_of(write("[kakfa]\n"))
    assert err.key == "kakfa"
    assert "kafka" in str(err)


def test_literal_names_allowed_values(write):
    """A value outside a fixed set names the allowed values."""
    err = error_of(write('[kafka]\ncompression = "brotli"\n'))
    assert err.key == "kafka.compression"
    assert "'zstd'" in str(err)
    assert "'brotli'" in str(err)


def test_oauth2_requires_credentials(write):
    """Cross-field: oauth2 without client_secret names districts[0].client_secret."""
    text = DISTRICT.replace('client_secret = "env:SPRINGFIELD_SECRET"\n', "")
    err = error_of(write(text))
    assert err.key == "districts[0].client_secret"
    assert "oauth2" in str(err)
    assert "springfield-usd" in str(err)


def test_bearer_requires_token_and_refuses_oauth_keys(write):
    """auth = bearer needs `bearer` and refuses keys only OAuth uses."""
    base = '[[districts]]\nid = "a"\nbase_url = "http://h"\nauth = "bearer"\n'
    assert error_of(write(base)).key == "districts[0].bearer"
    err = error_of(write(base + 'bearer = "tok-1234"\nclient_id = "x"\n'))
    assert err.key == "districts[0].client_id"
    assert "'oauth2'" in str(err)


def test_oauth1_needs_no_token_url(write):
    """auth = oauth1 loads with consumer key and secret, and rejects a token_url."""
    base = (
        '[[districts]]\nid = "a"\nbase_url = "http://h"\nauth = "oauth1"\nversion = 1.1\n'
        'client_id = "k"\nclient_secret = "sekrit"\n'
    )
    config = load_config(write(base), {})
    assert config.districts[0].version == "1.1"
    assert config.districts[0].signature_method == "HMAC-SHA256"
    assert error_of(write(base + 'token_url = "http://h/t"\n')).key == "districts[0].token_url"


def test_sasl_requires_mechanism_and_credentials(write):
    """security_protocol SASL_SSL without sasl_mechanism names kafka.sasl_mechanism."""
    err = error_of(write('[kafka]\nsecurity_protocol = "SASL_SSL"\n'))
    assert err.key == "kafka.sasl_mechanism"
    err = error_of(write('[kafka]\nsasl_username = "u"\n'))
    assert err.key == "kafka.sasl_username"
    assert "PLAINTEXT" in str(err)


def test_duplicate_district_ids(write):
    """Two districts with one id are refused."""
    err = error_of(write(DISTRICT + DISTRICT), {"SPRINGFIELD_SECRET": "abcd"})
    assert err.key == "districts"
    assert "twice" in str(err)


def test_bad_entities_and_threshold(write):
    """Entities must come from ENTITIES; mass_delete_threshold must lie in 0..1."""
    err = error_of(
        write(DISTRICT + 'entities = ["users", "teachers"]\n'), {"SPRINGFIELD_SECRET": "abcd"}
    )
    assert err.key == "districts[0].entities[1]"
    assert "'enrollments'" in str(err)
    err = error_of(write("[sync]\nmass_delete_threshold = 1.5\n"))
    assert err.key == "sync.mass_delete_threshold"
    assert "1.5" in str(err)


def test_env_secret_missing_names_key_and_variable(write):
    """client_secret = "env:NAME" with NAME unset names both the key and the variable."""
    err = error_of(write(DISTRICT))
    assert err.key == "districts[0].client_secret"
    assert "SPRINGFIELD_SECRET" in str(err)


def test_file_secret_relative_to_config(write, tmp_path):
    """ "file:PATH" reads the file (trailing newline stripped), relative to the config file."""
    (tmp_path / "secret.txt").write_text("from-a-file\n", encoding="utf-8")
    text = DISTRICT.replace("env:SPRINGFIELD_SECRET", "file:secret.txt")
    config = load_config(write(text), {})
    assert config.districts[0].client_secret == Secret("from-a-file")
    err = error_of(write(DISTRICT.replace("env:SPRINGFIELD_SECRET", "file:missing.txt")))
    assert err.key == "districts[0].client_secret"
    assert "missing.txt" in str(err)


def test_secret_never_in_repr_or_str(write):
    """Resolved secrets appear in no repr, str or dump of the config, nor in error messages."""
    env = {"SPRINGFIELD_SECRET": "top-secret-value-1"}
    config = load_config(write(DISTRICT + '[classlink]\napi_key = "classlink-key-2"\n'), env)
    dumps = (config.model_dump_json(), str(config.model_dump()))
    for text in (
        repr(config),
        str(config),
        repr(config.districts[0]),
        str(config.classlink),
        *dumps,
    ):
        assert "top-secret-value-1" not in text
        assert "classlink-key-2" not in text
    assert {s.reveal() for s in config.secrets()} == {"top-secret-value-1", "classlink-key-2"}
    err = error_of(write(DISTRICT + "page_size = 0\n"), env)
    assert "top-secret-value-1" not in str(err)
    err = error_of(write(DISTRICT.replace('"env:SPRINGFIELD_SECRET"', "12345678")))
    assert "12345678" not in str(err)


def test_section_env_overrides(write):
    """ONEROSTER_CDC__<SECTION>__<KEY> overrides the file, with TOML-like coercion."""
    env = {
        "SPRINGFIELD_SECRET": "abcd",
        "ONEROSTER_CDC__KAFKA__BOOTSTRAP_SERVERS": "b1:9092, b2:9093",
        "ONEROSTER_CDC__KAFKA__PARTITIONS": "12",
        "ONEROSTER_CDC__SYNC__POLL_INTERVAL": "30s",
        "ONEROSTER_CDC__HTTP__ENABLED": "false",
        "ONEROSTER_CDC__STATE__DIR": "/var/lib/cdc",
    }
    config = load_config(write(DISTRICT + '[sync]\npoll_interval = "5m"\n'), env)
    assert config.kafka.bootstrap_servers == ("b1:9092", "b2:9093")
    assert config.kafka.partitions == 12
    assert config.sync.poll_interval == 30.0
    assert config.http.enabled is False
    assert config.state.dir == Path("/var/lib/cdc")


def test_district_env_overrides(write):
    """ONEROSTER_CDC__DISTRICTS__<ID>__<KEY> addresses a district by its id (upper case, _)."""
    assert district_env_name("springfield-usd") == "SPRINGFIELD_USD"
    env = {
        "ONEROSTER_CDC__DISTRICTS__SPRINGFIELD_USD__CLIENT_SECRET": "env:OTHER",
        "OTHER": "indirect-value",
        "ONEROSTER_CDC__DISTRICTS__SPRINGFIELD_USD__SCOPES": '["a", "b"]',
        "ONEROSTER_CDC__DISTRICTS__SPRINGFIELD_USD__PAGE_SIZE": "250",
    }
    district = load_config(write(DISTRICT), env).districts[0]
    assert district.client_secret == Secret("indirect-value")
    assert district.scopes == ("a", "b")
    assert district.page_size == 250


def test_env_override_errors_name_the_variable(write):
    """A bad override names the key and the variable; unknown targets are refused."""
    env = {"SPRINGFIELD_SECRET": "abcd", "ONEROSTER_CDC__KAFKA__PARTITIONS": "many"}
    err = error_of(write(DISTRICT), env)
    assert err.key == "kafka.partitions"
    assert "ONEROSTER_CDC__KAFKA__PARTITIONS" in str(err)
    err = error_of(write(DISTRICT), {"ONEROSTER_CDC__DISTRICTS__NOPE__PAGE_SIZE": "1"})
    assert err.key == "ONEROSTER_CDC__DISTRICTS__NOPE__PAGE_SIZE"
    assert "SPRINGFIELD_USD" in str(err)
    err = error_of(write(DISTRICT), {"ONEROSTER_CDC__KAFAK__PARTITIONS": "1"})
    assert "KAFKA" in str(err)
    err = error_of(
        write(DISTRICT), {"SPRINGFIELD_SECRET": "abcd", "ONEROSTER_CDC__SYNC__NOPE": "1"}
    )
    assert err.key == "sync.nope"


def test_config_path_resolution(tmp_path):
    """--config wins, then $ONEROSTER_CDC_CONFIG, then config/oneroster-cdc.toml."""
    explicit = tmp_path / "x.toml"
    assert resolve_config_path(explicit, {"ONEROSTER_CDC_CONFIG": "/y.toml"}) == explicit
    assert resolve_config_path(None, {"ONEROSTER_CDC_CONFIG": "/y.toml"}) == Path("/y.toml")
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG_PATH


def test_missing_file_and_bad_toml(write, tmp_path):
    """A missing file says how to point at one; invalid TOML says where it broke."""
    err = error_of(tmp_path / "nope.toml")
    assert "ONEROSTER_CDC_CONFIG" in str(err)
    err = error_of(write("[kafka\n"))
    assert "not valid TOML" in str(err)
    assert "line 1" in str(err)


def test_describe_errors_lists_every_problem(write):
    """describe_errors returns all problems (empty when valid); load_config counts the rest."""
    path = write('[kafka]\ncompression = "x"\npartitions = 0\n[http]\nlisten = "nope"\n')
    keys = [e.key for e in describe_errors(path, {})]
    assert keys == ["kafka.partitions", "kafka.compression", "http.listen"]
    assert "2 more" in str(error_of(path))
    assert describe_errors(write(DISTRICT), {"SPRINGFIELD_SECRET": "abcd"}) == []


def test_parse_listen():
    """host:port parses, with IPv6 brackets and port 0; junk is refused."""
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="host:port"):
            parse_listen(bad)


def attempt(build):
    """The built config, or the ConfigError it raised (any other exception propagates)."""
    try:
        return build()
    except ConfigError as exc:
        return exc


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["5m", "env:X", "file:/nonexistent", "oauth2", "1.2", "http://h", "SASL_SSL"]),
)
_keys = st.sampled_from(
    [
        "kafka",
        "sync",
        "state",
        "http",
        "districts",
        "classlink",
        "id",
        "base_url",
        "auth",
        "client_secret",
        "poll_interval",
        "partitions",
        "listen",
        "entities",
        "version",
        "x",
    ]
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.dictionaries(_keys, _values, max_size=5),
    env=st.dictionaries(
        st.sampled_from(["X", "ONEROSTER_CDC__SYNC__JITTER", "ONEROSTER_CDC__DISTRICTS__A__ID"]),
        st.text(max_size=6),
        max_size=2,
    ),
)
def test_loader_never_crashes(data, env):
    """Arbitrary documents and overrides either load or raise ConfigError, never anything else."""
    result = attempt(lambda: config_from_mapping(data, env))
    assert isinstance(result, Config) or result.key


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet='[]=."\n abc1_-:', max_size=60))
def test_loader_never_crashes_on_text(tmp_path_factory, text):
    """Arbitrary file text either loads or raises ConfigError."""
    path = tmp_path_factory.mktemp("h") / "c.toml"
    path.write_text(text, encoding="utf-8")
    result = attempt(lambda: load_config(path, {}))
    assert isinstance(result, Config) or result.key


def test_demo_configs_match_the_default_simulator():
    """demo.toml and docker.toml name the districts and credentials `simulate` serves by default."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    specs = {s.id: s for s in specs_from_args(parser.parse_args([]))}
    for name in ("demo.toml", "docker.toml"):
        config = load_config(REPO / "config" / name, {})
        assert {d.id for d in config.districts} == set(specs), name
        for district in config.districts:
            spec = specs[district.id]
            assert district.version == spec.version
            assert district.client_id == spec.client_id
            assert district.client_secret == Secret(spec.client_secret)
            assert district.base_url.endswith("/" + district.id)


def test_entity_intervals_from_file_and_environment(write: Any) -> None:
    """``sync.entity_intervals`` takes a table of entity -> duration, from the file or as a TOML
    inline table in ONEROSTER_CDC__SYNC__ENTITY_INTERVALS; a bad entity, a duration of zero or
    a non-table is refused naming the key."""
    env = {"SPRINGFIELD_SECRET": "abcd"}
    text = DISTRICT + '[sync]\nentity_intervals = { orgs = "15m", courses = "1h" }\n'
    assert load_config(write(text), env).sync.entity_intervals == {"orgs": 900.0, "courses": 3600.0}
    over = {**env, "ONEROSTER_CDC__SYNC__ENTITY_INTERVALS": '{academicSessions = "30m"}'}
    assert load_config(write(DISTRICT), over).sync.entity_intervals == {"academicSessions": 1800.0}
    assert load_config(write(DISTRICT), env).sync.entity_intervals == {}
    err = error_of(write(DISTRICT + '[sync]\nentity_intervals = { org = "15m" }\n'), env)
    assert err.key == "sync.entity_intervals.org"
    assert "'orgs'" in str(err)
    err = error_of(write(DISTRICT + '[sync]\nentity_intervals = { orgs = "0s" }\n'), env)
    assert err.key == "sync.entity_intervals.orgs"
    err = error_of(write(DISTRICT), {**env, "ONEROSTER_CDC__SYNC__ENTITY_INTERVALS": "15m"})
    assert err.key == "sync.entity_intervals"
    err = error_of(write(DISTRICT), {**env, "ONEROSTER_CDC__SYNC__ENTITY_INTERVALS": "{orgs ="})
    assert err.key == "ONEROSTER_CDC__SYNC__ENTITY_INTERVALS"


def test_shards_default_and_bounds(write):
    """``kafka.shards`` defaults to 6 and must be 1..1000; a bad value names the key."""
    assert load_config(write(""), {}).kafka.shards == 6
    assert load_config(write("[kafka]\nshards = 24\n"), {}).kafka.shards == 24
    for bad in ("0", "1001", '"six"'):
        with pytest.raises(ConfigError) as caught:
            load_config(write(f"[kafka]\nshards = {bad}\n"), {})
        assert caught.value.key == "kafka.shards"


def test_transactional_id_other_than_the_derived_one_is_refused(write):
    """The transactional id is derived per shard: spelling out the old default still loads,
    any other value is an error naming the key and saying to set client_id instead."""
    config = load_config(write('[kafka]\ntransactional_id = "oneroster-cdc-shard-0"\n'), {})
    assert config.kafka.transactional_id == "oneroster-cdc-shard-0"
    with pytest.raises(ConfigError) as caught:
        load_config(write('[kafka]\nclient_id = "a"\ntransactional_id = "b-shard-0"\n'), {})
    assert caught.value.key == "kafka.transactional_id"
    assert "<client_id>-shard-<n>" in str(caught.value)
    assert "set kafka.client_id instead" in str(caught.value)
