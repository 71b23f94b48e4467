"""Structured logging, configured once, with secrets redacted on every path.

``configure_logging`` sets up structlog (JSON rendered with orjson when stderr is not a terminal,
the console renderer when it is) and routes the standard library's ``logging`` (the HTTP and
Kafka clients) through the same processors, so both paths share one redaction step:

- values under sensitive keys (``password``, ``client_secret``, ``authorization``, ``*_token``
  ...) are replaced, at any depth of the event dict;
- ``producer.model.Secret`` values are replaced wherever they appear;
- secret values registered with ``register_secret`` (every secret of the config, at start) are
  scrubbed out of every string, including exception messages, tracebacks and URLs, as are
  ``Bearer``/``Basic`` credentials and ``access_token=...``-style query parameters.

Context (``district``, ``entity``, ``sync_id``) is bound with ``structlog.contextvars`` and merged
into every event. The redactor is the one piece of global state here, confined to this module.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, TextIO
from urllib.parse import quote, quote_plus

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from producer.model import Secret
from producer.protocols import SecondsClock

LogFormat = Literal["json", "console", "auto"]

REDACTED: Final = "[REDACTED]"
#: Keys whose values are always secret (compared lower case, ``-`` read as ``_``).
SENSITIVE_KEYS: Final = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "bearer",
        "signature",
        "oauth_signature",
        "client_secret",
        "consumer_secret",
        "sasl_password",
        "access_token",
        "refresh_token",
        "id_token",
        "cookie",
        "set_cookie",
        "credentials",
    }
)
_SENSITIVE_SUFFIXES: Final = ("_password", "_secret", "_token", "_api_key", "_apikey", "_signature")
#: Secrets shorter than this are not scrubbed from text: they would mangle every message.
MIN_SECRET_LENGTH: Final = 4

_TEXT_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{4,}"), rf"\1\2{REDACTED}"),
    (
        re.compile(
            r"(?i)\b(access_token|refresh_token|client_secret|password|api_key|apikey|token"
            r"|oauth_signature|signature)=(?!\[REDACTED\])[^&\s\"',;]+"
        ),
        rf"\1={REDACTED}",
    ),
    (re.compile(r'(?i)\b(oauth_signature)="[^"]*"'), rf'\1="{REDACTED}"'),
    (
        re.compile(
            r'(?i)("(?:access_token|refresh_token|client_secret|password|api_key|token)"\s*:\s*")'
            r'[^"]*"'
        ),
        rf'\1{REDACTED}"',
    ),
)


def is_sensitive_key(key: object) -> bool:
    """Whether a value stored under ``key`` must never be logged."""
    if not isinstance(key, str):
        return False
    name = key.lower().replace("-", "_")
    return name in SENSITIVE_KEYS or name.endswith(_SENSITIVE_SUFFIXES)


class Redactor:
    """A structlog processor that removes secrets from an event dict, at any depth."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def register(self, value: str | Secret) -> None:
        """Scrub this value (and its URL-encoded forms) from every string logged from now on."""
        text = value.reveal() if isinstance(value, Secret) else value
        if len(text) < MIN_SECRET_LENGTH:
            return
        self._secrets.update({text, quote(text, safe=""), quote_plus(text)})
        alternatives = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in alternatives))

    def clear(self) -> None:
        """Forget every registered secret (tests)."""
        self._secrets.clear()
        self._pattern = None

    def scrub_text(self, text: str) -> str:
        """``text`` with registered secrets and credential-looking fragments replaced."""
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        for pattern, replacement in _TEXT_PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def scrub(self, value: object) -> object:
        """A copy of ``value`` that is safe to log."""
        result: object
        if value is None or isinstance(value, bool | int | float):
            result = value
        elif isinstance(value, Secret):
            result = REDACTED
        elif isinstance(value, Mapping):
            result = {
                k: (REDACTED if is_sensitive_key(k) else self.scrub(v)) for k, v in value.items()
            }
        elif isinstance(value, list | tuple | set | frozenset):
            result = [self.scrub(item) for item in value]
        elif isinstance(value, BaseException):
            result = self.scrub_text(f"{type(value).__name__}: {value}")
        else:
            result = self.scrub_text(value if isinstance(value, str) else str(value))
        return result

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {
            key: (REDACTED if is_sensitive_key(key) else self.scrub(value))
            for key, value in event_dict.items()
        }


_REDACTOR: Final = Redactor()


def register_secret(value: str | Secret) -> None:
    """Never log this value, not even inside a message, URL or traceback."""
    _REDACTOR.register(value)


def register_secrets(values: Iterable[str | Secret]) -> None:
    """``register_secret`` for each value, e.g. ``register_secrets(config.secrets())``."""
    for value in values:
        _REDACTOR.register(value)


def forget_secrets() -> None:
    """Drop every registered secret (tests)."""
    _REDACTOR.clear()


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """The redaction processor, usable in a custom chain."""
    return _REDACTOR(logger, method_name, event_dict)


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}; allowed: DEBUG, INFO, WARNING, ERROR")
    return number


_HANDLER_MARK: Final = "_oneroster_cdc_handler"


class RepeatFilter(logging.Filter):
    """Lets a library's repeated log line through once per ``window`` seconds.

    The Kafka client logs every failed connection attempt (about fifteen lines a second while a
    broker is down); one line per message template and logger per window says the same. The
    line that ends a quiet spell carries ``suppressed=N``, how many repeats were dropped before it.
    """

    def __init__(self, window: float = 10.0, clock: SecondsClock = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self._clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self._window:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.suppressed = seen[1]
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = (now, 0)
        return True


def configure_logging(
    format: LogFormat = "auto",
    level: str | int = "INFO",
    *,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and stdlib logging to write redacted events to ``stream`` (stderr).

    ``"auto"`` renders JSON unless ``stream`` is a terminal. Calling it again replaces the
    previous configuration (it is meant to be called once, at start).
    """
    out = stream if stream is not None else sys.stderr
    number = _level_number(level)
    use_console = format == "console" or (format == "auto" and out.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tail: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(RepeatFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
