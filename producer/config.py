"""The configuration: one TOML file plus environment overrides, read once, frozen, typed.

Where it comes from (``resolve_config_path``): ``--config PATH``, else ``$ONEROSTER_CDC_CONFIG``,
else ``config/oneroster-cdc.toml``. ``load_config`` parses the file, applies environment
overrides, resolves secrets and validates everything; components then receive their section
(``config.kafka``, ``config.sync`` ...) and never read ``os.environ`` themselves.

Values
    Durations are strings of number+unit pairs: ``"90s"``, ``"5m"``, ``"24h"``, ``"1d"``,
    ``"1h30m"``, ``"250ms"``; a bare number means seconds. They load as float seconds.
    Secrets (``client_secret``, ``bearer``, ``sasl_password``, ``api_key``, ``hash_key``) are
    given directly,
    as ``"env:NAME"`` (read from the environment) or ``"file:PATH"`` (read from a file, trailing
    newline stripped, a relative path is relative to the config file). They load as
    ``producer.model.Secret``, whose ``repr`` never shows the value.

Environment overrides
    ``ONEROSTER_CDC__<SECTION>__<KEY>=value`` sets ``[section] key`` (names upper case), e.g.
    ``ONEROSTER_CDC__KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
    ``ONEROSTER_CDC__SYNC__POLL_INTERVAL=30s``. A district is addressed by its id, upper case,
    every character other than a letter or digit written as ``_``:
    ``ONEROSTER_CDC__DISTRICTS__SPRINGFIELD_USD__CLIENT_SECRET=...`` sets ``client_secret`` of
    the district whose id is ``springfield-usd``; a district id the file does not list is an
    error (districts are declared in the file). List keys (``scopes``, ``entities``,
    ``bootstrap_servers``) take a comma-separated value or a TOML array (``["a", "b"]``). Other
    values are coerced like the TOML value would be (``"6"`` -> 6, ``"true"`` -> true).

Errors
    Every problem is a ``ConfigError`` whose ``key`` is the dotted path of the setting
    (``districts[0].client_secret``) and whose message says what is allowed. ``load_config``
    raises the first; ``describe_errors`` returns them all for ``check-config``.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from producer.errors import ConfigError
from producer.model import ENTITIES, Entity, Secret

ENV_PREFIX: Final = "ONEROSTER_CDC__"
CONFIG_PATH_ENV: Final = "ONEROSTER_CDC_CONFIG"
DEFAULT_CONFIG_PATH: Final = Path("config/oneroster-cdc.toml")
#: Entities synced when a district does not list its own: all of them. Demographics need an
#: extra scope; a server that refuses them (403) has that entity skipped with a warning.
DEFAULT_ENTITIES: Final[tuple[Entity, ...]] = ENTITIES

#: ``sync.mass_delete_min``'s default: five absent keys pass the guard whatever their share. Each
#: is confirmed gone by its own 404 first, so the guard only has to catch systematic trouble (a
#: wiped server, credentials that now see a subset), which takes far more records or all of
#: them; five is a handful to restore should it ever be wrong.
MASS_DELETE_MIN: Final = 5

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION_HELP: Final = 'a number with a unit, e.g. "90s", "5m", "24h", "1d" (units ms s m h d w)'
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# --------------------------------------------------------------------------- value parsers


def parse_duration(value: object) -> float:
    """``"90s"``, ``"1h30m"``, ``"250ms"`` or a number of seconds -> float seconds (>= 0)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration; allowed: {_DURATION_HELP}")  # noqa: TRY004 pydantic reports ValueError, not TypeError
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if text[pos : match.start()].strip():
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos == 0 or text[pos:].strip():
                raise ValueError(
                    f"{value!r} is not a duration; allowed: {_DURATION_HELP}"
                ) from None
    else:
        raise ValueError(f"expected a duration; allowed: {_DURATION_HELP}")  # noqa: TRY004 pydantic reports ValueError, not TypeError
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{value!r} is not a duration; allowed: {_DURATION_HELP}")
    return seconds


def parse_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8080"`` for IPv6) -> ``(host, port)``; port 0 picks a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f'{value!r} is not host:port; allowed: e.g. "127.0.0.1:8080", "[::]:8080"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class _FieldProblem(ValueError):
    """A cross-field check failed; ``field`` is the key to blame inside the model."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _secret(value: object, info: ValidationInfo) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004 pydantic reports ValueError, not TypeError
            'expected a string; allowed: the secret itself, "env:NAME", "file:PATH"'
        )
    context: Mapping[str, Any] = info.context or {}
    if value.startswith(("env:", "file:")) and not context.get("resolve_secrets", True):
        # check-config --no-secrets: the indirection is checked, never followed.
        if not value.partition(":")[2].strip():
            raise ValueError(f"{value!r} names no variable or file")
        return Secret(f"<unresolved {value.partition(':')[0]}>")
    if value.startswith("env:"):
        name = value[4:]
        environ: Mapping[str, str] = context.get("environ", {})
        if name not in environ:
            raise ValueError(f"environment variable {name} is not set (from {value!r})")
        resolved = environ[name]
    elif value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        if not path.is_absolute():
            path = Path(context.get("base_dir", ".")) / path
        try:
            resolved = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"cannot read secret file {str(path)!r} (from {value!r}): {exc.__class__.__name__}"
            ) from None
    else:
        resolved = value
    if not resolved:
        raise ValueError('the secret is empty; allowed: the secret, "env:NAME", "file:PATH"')
    return Secret(resolved)


def _string_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _url(value: object) -> object:
    if isinstance(value, str):
        if not re.match(r"^https?://[^/\s]+", value) or any(c.isspace() for c in value):
            # The value is not echoed: a URL may carry user:password.
            raise ValueError("not a URL; allowed: http://host[:port][/path], https://…")
        return value.rstrip("/")
    return value


def _version(value: object) -> object:
    # ``version = 1.2`` (a TOML float) is what people type; mean the string.
    if isinstance(value, float) and value in (1.1, 1.2):
        return str(value)
    return value


def _path(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise ValueError("the path is empty")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
#: Dumps (``model_dump``) show a mask, never the value.
SecretValue = Annotated[
    Secret, BeforeValidator(_secret), PlainSerializer(lambda _: "**********", return_type=str)
]
Url = Annotated[str, BeforeValidator(_url)]
StrList = Annotated[tuple[str, ...], BeforeValidator(_string_list)]
FilePath = Annotated[Path, BeforeValidator(_path)]
Name = Annotated[str, Field(pattern=_NAME.pattern)]


#: Most worker processes ``sync.workers`` accepts.
MAX_WORKERS: Final = 64


def _workers(value: object) -> object:
    """``sync.workers``: ``"auto"`` or a whole number from 0 (in process) to ``MAX_WORKERS``,
    also as text (an environment override)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise ValueError(
            f'{value!r} is not a number of workers; allowed: "auto", 0 (in process) or 1 to '
            f"{MAX_WORKERS} worker processes"
        )
    return value


Workers = Annotated[int | Literal["auto"], BeforeValidator(_workers)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


# --------------------------------------------------------------------------- sections


class KafkaConfig(_Section):
    """``[kafka]``: the broker, topics and the transactional producer."""

    bootstrap_servers: StrList = ("127.0.0.1:9092",)
    topic_prefix: Name = "oneroster"
    client_id: Name = "oneroster-cdc"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretValue | None = None
    ssl_cafile: FilePath | None = None
    partitions: int = Field(default=6, ge=1, le=10_000)
    #: Shards of the deployment: the state and checkpoints topics have exactly this many
    #: partitions, a district's shard is ``producer.kafka.shards.shard_of`` (murmur2 of its id
    #: modulo this), and each shard has its own transactional producer and SQLite file.
    #: Changing it on an existing deployment takes ``oneroster-cdc reshard --shards N``.
    shards: int = Field(default=6, ge=1, le=1000)
    #: Replication factor of topics the producer creates; -1 leaves it to the broker default.
    replication_factor: int = Field(default=-1, ge=-1, le=100)
    compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "zstd"
    #: Derived per shard as ``<client_id>-shard-<n>`` (``producer.kafka.shards``); kept as a
    #: key only so that 0.1.0 configs which spelled out the old default still load. Any other
    #: value is an error: set ``client_id`` instead.
    transactional_id: Name = ""
    #: ``retention.ms`` of the event topics; unset keeps history forever.
    event_retention: Duration | None = None
    #: ``delete.retention.ms`` of the compacted state topic: how long tombstones stay readable.
    state_delete_retention: Duration = 86400.0
    #: The daemon's group membership (``producer.kafka.ownership``): an instance silent for this
    #: long is dropped and its shards move to the others. Within the broker's
    #: ``group.min.session.timeout.ms`` .. ``group.max.session.timeout.ms`` (6 s .. 30 min).
    session_timeout: Duration = Field(default=10.0, ge=1.0, le=1800.0)
    #: How often a member tells the group it is alive (at most a third of session_timeout).
    heartbeat_interval: Duration = Field(default=3.0, gt=0.0, le=600.0)

    @model_validator(mode="before")
    @classmethod
    def _derive_transactional_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("transactional_id"):
            client_id = data.get("client_id", "oneroster-cdc")
            return {**data, "transactional_id": f"{client_id}-shard-0"}
        return data

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Self:
        if self.heartbeat_interval * 3 > self.session_timeout:
            raise _FieldProblem(
                "heartbeat_interval",
                f"must be at most a third of session_timeout ({self.session_timeout:g}s)",
            )
        return self

    @model_validator(mode="after")
    def _check_transactional_id(self) -> Self:
        if self.transactional_id != f"{self.client_id}-shard-0":
            raise _FieldProblem(
                "transactional_id",
                f"is derived per shard as `<client_id>-shard-<n>` "
                f"({self.client_id}-shard-0 .. {self.client_id}-shard-{self.shards - 1}); "
                f"{self.transactional_id!r} cannot be set: set kafka.client_id instead",
            )
        return self

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        if not self.bootstrap_servers:
            raise _FieldProblem("bootstrap_servers", "is empty; allowed: host:port[,host:port]")
        for server in self.bootstrap_servers:
            parse_listen(server)
        if self.security_protocol.startswith("SASL_"):
            for key in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, key) is None:
                    raise _FieldProblem(
                        key, f"is required when security_protocol = {self.security_protocol!r}"
                    )
        else:
            for key in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, key) is not None:
                    raise _FieldProblem(
                        key,
                        f"is only used with security_protocol SASL_PLAINTEXT or SASL_SSL, "
                        f"not {self.security_protocol!r}",
                    )
        if self.ssl_cafile is not None and not self.ssl_cafile.is_file():
            raise _FieldProblem("ssl_cafile", f"file not found: {str(self.ssl_cafile)!r}")
        return self


class SyncConfig(_Section):
    """``[sync]``: how often districts are polled, and what guards a poll."""

    poll_interval: Duration = Field(default=60.0, gt=0)
    full_sync_interval: Duration = Field(default=86400.0, gt=0)
    overlap: Duration = 300.0
    #: Share of an entity; a full sync deleting more waits for ``confirm-deletes``.
    mass_delete_threshold: float = Field(default=0.10, ge=0.0, le=1.0)
    #: The floor under that share: deletes are held only when they also exceed this count (a
    #: class or two deleted in a district of six is everyday business, not a wiped server).
    #: A listing that lacks every stored key of an entity is held whatever its size.
    mass_delete_min: int = Field(default=MASS_DELETE_MIN, ge=0, le=1_000_000)
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    #: Each poll starts up to this much after its scheduled time (capped at poll_interval).
    jitter: Duration = 5.0
    #: Polls running at once across all districts.
    max_concurrent_districts: int = Field(default=8, ge=1, le=1000)
    #: A delta poll running longer is cancelled and counts as a failure.
    poll_timeout: Duration = Field(default=3600.0, gt=0)
    #: A full sync running longer is cancelled and counts as a failure.
    full_sync_timeout: Duration = Field(default=6 * 3600.0, gt=0)
    #: After a failed poll the district waits this long, doubling (``failure_backoff_multiplier``)
    #: per consecutive failure up to ``failure_backoff_max``; other districts are not delayed.
    failure_backoff: Duration = Field(default=30.0, gt=0)
    failure_backoff_max: Duration = Field(default=1800.0, gt=0)
    failure_backoff_multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    #: Consecutive failures after which the district's circuit is reported open.
    circuit_breaker_threshold: int = Field(default=5, ge=1)
    #: On SIGTERM/SIGINT, in-flight polls get this long to finish before they are cancelled.
    shutdown_grace: Duration = 30.0
    #: Slow-moving entities on their own cadence, e.g. ``{orgs = "15m", courses = "15m"}``: a
    #: delta poll visits a listed entity only when this long has passed since its last pass in
    #: this process (full syncs and operator syncs visit every entity). Its changes then reach
    #: Kafka up to that much later. Default: none, every entity at every poll.
    entity_intervals: dict[Entity, Duration] = Field(default_factory=dict)
    #: Where the per-record work of a page runs (``producer.workers``): 0 in the event loop's
    #: process (the measured default), N in N worker processes, ``"auto"`` cores - 1 (>= 1).
    workers: Workers = 0

    @model_validator(mode="after")
    def _check_backoff(self) -> Self:
        if self.failure_backoff_max < self.failure_backoff:
            raise _FieldProblem("failure_backoff_max", "must be >= failure_backoff")
        for entity, interval in self.entity_intervals.items():
            if interval <= 0:
                raise _FieldProblem(f"entity_intervals.{entity}", "must be greater than 0")
        return self


class StateConfig(_Section):
    """``[state]``: the local store, rebuilt from the state topic when missing."""

    dir: FilePath = Path("./state")
    #: An existing state directory or file that group or others can read: ``"tighten"`` it to
    #: 0700/0600 (with a warning) or ``"refuse"`` to start, saying how to fix it.
    permissions: Literal["tighten", "refuse"] = "tighten"


class HttpConfig(_Section):
    """``[http]``: ``/healthz``, ``/readyz`` and ``/metrics``."""

    listen: str = "127.0.0.1:8080"
    enabled: bool = True

    @model_validator(mode="after")
    def _check_listen(self) -> Self:
        try:
            parse_listen(self.listen)
        except ValueError as exc:
            raise _FieldProblem("listen", str(exc)) from None
        return self

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


_AUTH_KEYS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    # auth mode: (required keys, keys that mean nothing in this mode)
    "oauth2": (("client_id", "client_secret", "token_url"), ("signature_method", "bearer")),
    "oauth1": (("client_id", "client_secret"), ("token_url", "token_auth", "scopes", "bearer")),
    "bearer": (
        ("bearer",),
        ("client_id", "client_secret", "token_url", "token_auth", "scopes", "signature_method"),
    ),
}


class DistrictConfig(_Section):
    """One ``[[districts]]`` table: a OneRoster server and how to authenticate to it."""

    #: The district_id in keys and events: letters, digits, ``.``, ``_``, ``-``.
    id: Name
    #: Server root; the base path (``/ims/oneroster/...``) follows from ``version``.
    base_url: Url
    version: Annotated[Literal["1.1", "1.2", "auto"], BeforeValidator(_version)] = "auto"
    auth: Literal["oauth2", "oauth1", "bearer"] = "oauth2"
    #: OAuth2 client id, or the OAuth1 consumer key.
    client_id: str | None = None
    #: OAuth2 client secret, or the OAuth1 consumer secret.
    client_secret: SecretValue | None = None
    token_url: Url | None = None
    token_auth: Literal["basic", "body"] = "basic"  # noqa: S105 a mode name, not a password
    scopes: StrList = ()
    signature_method: Literal["HMAC-SHA256", "HMAC-SHA1"] = "HMAC-SHA256"
    bearer: SecretValue | None = None
    page_size: int = Field(default=1000, ge=1, le=100_000)
    #: Concurrent page requests to this server.
    concurrency: int = Field(default=4, ge=1, le=64)
    entities: tuple[Entity, ...] = DEFAULT_ENTITIES
    ssl_cafile: FilePath | None = None
    verify_tls: bool = True
    request_timeout: Duration = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=100)

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        required, unused = _AUTH_KEYS[self.auth]
        for key in required:
            if getattr(self, key) in (None, ""):
                raise _FieldProblem(key, f"is required when auth = {self.auth!r}")
        for key in unused:
            if key in self.model_fields_set:
                modes = [m for m, (req, bad) in _AUTH_KEYS.items() if key not in bad]
                raise _FieldProblem(
                    key,
                    f"is not used with auth = {self.auth!r}; it is used with auth = "
                    + " | ".join(repr(m) for m in modes),
                )
        if not self.entities:
            raise _FieldProblem("entities", "is empty; allowed: " + ", ".join(ENTITIES))
        if len(set(self.entities)) != len(self.entities):
            raise _FieldProblem("entities", "lists an entity twice")
        if self.ssl_cafile is not None and not self.ssl_cafile.is_file():
            raise _FieldProblem("ssl_cafile", f"file not found: {str(self.ssl_cafile)!r}")
        return self


def default(section: type[BaseModel], key: str) -> Any:
    """The default of ``[section] key``: written once, in its section's class, and read from
    there by every component that has a default for it."""
    return section.model_fields[key].get_default(call_default_factory=True)


class ClassLinkConfig(_Section):
    """``[classlink]``: discover districts (tenants) instead of listing them."""

    api_key: SecretValue
    host: Url = "https://oneroster-proxy.classlink.io"
    #: ``proxy``: tenant bearer via proxy paths; ``direct``: OAuth1 to the district server.
    access: Literal["proxy", "direct"] = "proxy"
    refresh_interval: Duration = Field(default=3600.0, gt=0)


class PrivacyConfig(_Section):
    """``[privacy]``: fields kept out of the stream (``omit``) or replaced by their keyed
    HMAC-SHA256 (``hash``), as ``<entity>.<field>`` (``producer.privacy``)."""

    omit: StrList = ()
    hash: StrList = ()
    #: The HMAC key of ``hash`` (a secret: ``env:NAME`` or ``file:PATH``); required with ``hash``.
    hash_key: SecretValue | None = None

    @model_validator(mode="after")
    def _check_fields(self) -> Self:
        from producer.privacy import MIN_KEY_CHARS, check_rules, expand_entry  # noqa: PLC0415

        for key in ("omit", "hash"):
            for index, text in enumerate(getattr(self, key)):
                try:
                    expand_entry(text, hashing=key == "hash")
                except ValueError as exc:
                    raise _FieldProblem(f"{key}[{index}]", str(exc)) from None
        try:
            check_rules(self.omit, self.hash)
        except ValueError as exc:
            raise _FieldProblem("hash", str(exc)) from None
        if self.hash and self.hash_key is None:
            raise _FieldProblem("hash_key", 'is required with hash; e.g. "env:CDC_HASH_KEY"')
        if self.hash_key is not None and len(self.hash_key.reveal()) < MIN_KEY_CHARS:
            raise _FieldProblem(
                "hash_key", f"is shorter than {MIN_KEY_CHARS} characters; use a long random key"
            )
        return self


class Config(_Section):
    """The whole configuration; each component receives only its section."""

    kafka: KafkaConfig = KafkaConfig()
    sync: SyncConfig = SyncConfig()
    state: StateConfig = StateConfig()
    http: HttpConfig = HttpConfig()
    districts: tuple[DistrictConfig, ...] = ()
    classlink: ClassLinkConfig | None = None
    privacy: PrivacyConfig = PrivacyConfig()

    @model_validator(mode="after")
    def _check_unique_ids(self) -> Self:
        seen: set[str] = set()
        for district in self.districts:
            if district.id in seen:
                raise _FieldProblem("districts", f"district id {district.id!r} is listed twice")
            seen.add(district.id)
        return self

    def district(self, district_id: str) -> DistrictConfig:
        """The district with this id; ``KeyError`` if the file does not list it."""
        for district in self.districts:
            if district.id == district_id:
                return district
        raise KeyError(district_id)

    def secrets(self) -> Iterator[Secret]:
        """Every secret in the config, e.g. to register with ``logs.register_secret``."""

        def walk(value: object) -> Iterator[Secret]:
            if isinstance(value, Secret):
                yield value
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    yield from walk(getattr(value, name))
            elif isinstance(value, tuple):
                for item in value:
                    yield from walk(item)

        yield from walk(self)


_SECRET_KEYS: Final = frozenset({"client_secret", "bearer", "sasl_password", "api_key", "hash_key"})


# --------------------------------------------------------------------------- loading


def resolve_config_path(path: Path | None, environ: Mapping[str, str]) -> Path:
    """``--config``, then ``$ONEROSTER_CDC_CONFIG``, then ``config/oneroster-cdc.toml``."""
    if path is not None:
        return path
    if environ.get(CONFIG_PATH_ENV):
        return Path(environ[CONFIG_PATH_ENV])
    return DEFAULT_CONFIG_PATH


def district_env_name(district_id: str) -> str:
    """A district id as override variables spell it: ``springfield-usd`` -> ``SPRINGFIELD_USD``."""
    return re.sub(r"[^A-Z0-9]", "_", district_id.upper())


def load_config(
    path: Path | None, environ: Mapping[str, str], *, resolve_secrets: bool = True
) -> Config:
    """Read, override, resolve and validate; raise the first problem as a ``ConfigError``.

    With ``resolve_secrets=False`` the ``env:``/``file:`` secrets are checked for form but not
    read (their values are placeholders): everything else is validated as usual.
    """
    config, errors = _load(path, environ, resolve_secrets=resolve_secrets)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more; run check-config)" if len(errors) > 1 else ""
        raise ConfigError(first.key, _message_of(first) + more)
    assert config is not None
    return config


def describe_errors(
    path: Path | None, environ: Mapping[str, str], *, resolve_secrets: bool = True
) -> list[ConfigError]:
    """Every problem with the config (empty when it is valid), for ``check-config``."""
    return _load(path, environ, resolve_secrets=resolve_secrets)[1]


def config_from_mapping(
    data: Mapping[str, Any], environ: Mapping[str, str], *, base_dir: Path = Path()
) -> Config:
    """Apply overrides to an already parsed document and validate; raise the first problem."""
    document = copy.deepcopy(dict(data))
    sources: dict[str, str] = {}
    _apply_overrides(document, environ, sources)
    config, errors = _validate(document, environ, base_dir, sources)
    if errors:
        raise errors[0]
    assert config is not None
    return config


def _message_of(error: ConfigError) -> str:
    prefix = f"config: {error.key}: "
    text = str(error)
    return text[len(prefix) :] if text.startswith(prefix) else text


def _load(
    path: Path | None, environ: Mapping[str, str], *, resolve_secrets: bool = True
) -> tuple[Config | None, list[ConfigError]]:
    source = resolve_config_path(path, environ)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [
            ConfigError(
                str(source),
                f"config file not found; pass --config PATH or set {CONFIG_PATH_ENV}",
            )
        ]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ConfigError(str(source), f"cannot read the config file: {exc}")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [ConfigError(str(source), f"not valid TOML: {exc}")]
    sources: dict[str, str] = {}
    try:
        _apply_overrides(data, environ, sources)
    except ConfigError as exc:
        return None, [exc]
    return _validate(data, environ, source.parent, sources, resolve_secrets=resolve_secrets)


def _validate(
    data: dict[str, Any],
    environ: Mapping[str, str],
    base_dir: Path,
    sources: dict[str, str],
    *,
    resolve_secrets: bool = True,
) -> tuple[Config | None, list[ConfigError]]:
    context = {"environ": environ, "base_dir": base_dir, "resolve_secrets": resolve_secrets}
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            key, message = _describe(err, data)
            if key in sources:
                message += f" (set by environment variable {sources[key]})"
            errors.append(ConfigError(key, message))
        return None, errors
    return config, []


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's mark of a bad key in a table: the key itself names it
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _unwrap_model(model.model_fields[part].annotation)
    return model


def _describe(err: Any, data: Mapping[str, Any]) -> tuple[str, str]:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    raw = err.get("input")
    cause = ctx.get("error")
    if isinstance(cause, _FieldProblem):
        loc = (*loc, cause.field)
        message = str(cause)
    elif kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else "none"
        message = f"unknown key; allowed: {allowed}"
    elif kind == "missing":
        message = "is required"
    elif kind == "literal_error":
        message = f"{raw!r} is not allowed; allowed: {ctx.get('expected')}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = "expected a table ([section] or {key = value})"
    elif kind in ("tuple_type", "list_type"):
        message = 'expected a list, e.g. ["a", "b"]'
    elif kind == "value_error" and cause is not None:
        message = str(cause)
    else:
        message = str(err["msg"])
        if loc and loc[-1] not in _SECRET_KEYS and isinstance(raw, str | int | float | bool):
            message += f"; got {raw!r}"[:120]
    if len(loc) >= 2 and loc[0] == "districts" and isinstance(loc[1], int):
        districts = data.get("districts")
        if isinstance(districts, list) and loc[1] < len(districts):
            entry = districts[loc[1]]
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                message += f" (district {entry['id']!r})"
    return _dotted(loc), message


def _is_list_field(model: type[BaseModel], key: str) -> bool:
    annotation = model.model_fields[key].annotation
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) in (tuple, list):
            return True
    return False


def _is_table_field(model: type[BaseModel], key: str) -> bool:
    annotation = model.model_fields[key].annotation
    return get_origin(annotation) is dict


def _env_value(model: type[BaseModel] | None, key: str, value: str, name: str) -> object:
    if model is None or key not in model.model_fields:
        return value
    if _is_table_field(model, key) and value.lstrip().startswith("{"):
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(name, f"not a TOML inline table: {exc}") from None
    if not _is_list_field(model, key):
        return value
    if value.lstrip().startswith("["):
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(name, f"not a TOML array: {exc}") from None
    return value


def _apply_overrides(
    data: dict[str, Any], environ: Mapping[str, str], sources: dict[str, str]
) -> None:
    sections = {name: _unwrap_model(f.annotation) for name, f in Config.model_fields.items()}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        value = environ[name]
        parts = name[len(ENV_PREFIX) :].split("__")
        section = parts[0].lower()
        if section not in sections or section == "districts":
            if section == "districts" and len(parts) == 3:
                _override_district(
                    data, parts[1], key=parts[2].lower(), value=value, name=name, sources=sources
                )
                continue
            if section not in sections:
                allowed = ", ".join(s.upper() for s in sections)
                raise ConfigError(name, f"unknown section {parts[0]!r}; allowed: {allowed}")
            raise ConfigError(
                name, f"expected {ENV_PREFIX}DISTRICTS__<ID>__<KEY> (the id upper case)"
            )
        if len(parts) != 2 or not parts[1]:
            raise ConfigError(name, f"expected {ENV_PREFIX}<SECTION>__<KEY>")
        key = parts[1].lower()
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, "expected a table ([section] or {key = value})")
        table[key] = _env_value(sections[section], key, value, name)
        sources[f"{section}.{key}"] = name


def _override_district(
    data: dict[str, Any],
    env_id: str,
    *,
    key: str,
    value: str,
    name: str,
    sources: dict[str, str],
) -> None:
    districts = data.get("districts")
    entries = districts if isinstance(districts, list) else []
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and district_env_name(str(entry.get("id", ""))) == env_id:
            entry[key] = _env_value(DistrictConfig, key, value, name)
            sources[f"districts[{index}].{key}"] = name
            return
    known = [district_env_name(str(e.get("id", ""))) for e in entries if isinstance(e, dict)]
    raise ConfigError(
        name,
        f"no district with id {env_id!r} in the config file; allowed: "
        + (", ".join(known) or "none (add a [[districts]] table)"),
    )
