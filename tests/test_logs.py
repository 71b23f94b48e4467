"""Tests for producer.logs: JSON output, context, and secrets never reaching the output."""

from __future__ import annotations

import io
import logging
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import structlog

from producer.logs import (
    REDACTED,
    configure_logging,
    forget_secrets,
    is_sensitive_key,
    register_secret,
    register_secrets,
)
from producer.model import Secret

SECRET = "s3cr3t-Value/with+chars"


@pytest.fixture
def output():
    """JSON logging into a buffer, with SECRET registered; undone afterwards."""
    stream = io.StringIO()
    root_level = logging.getLogger().level
    configure_logging("json", "DEBUG", stream=stream)
    register_secret(SECRET)
    yield stream
    forget_secrets()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_oneroster_cdc_handler", False):
            root.removeHandler(handler)
    root.setLevel(root_level)
    structlog.reset_defaults()


def fail(exc: Exception) -> None:
    raise exc


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line]


def test_json_lines_with_context(output):
    """Each event is one JSON line carrying level, timestamp and bound context."""
    structlog.contextvars.bind_contextvars(district="d1", entity="users", sync_id="s-1")
    structlog.get_logger().info("sync.started", pages=3)
    [event] = events(output)
    assert event["event"] == "sync.started"
    assert event["level"] == "info"
    assert (event["district"], event["entity"], event["sync_id"]) == ("d1", "users", "s-1")
    assert event["pages"] == 3
    assert event["timestamp"].endswith("Z")


def test_level_filters(output):
    """Events below the configured level are dropped."""
    configure_logging("json", "WARNING", stream=output)
    log = structlog.get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [e["event"] for e in events(output)] == ["loud"]


def test_sensitive_keys_redacted_at_any_depth(output):
    """Values under secret-looking keys and Secret values are replaced, even nested."""
    structlog.get_logger().info(
        "request",
        client_secret="abc",
        headers={"Authorization": "OAuth xyz", "Accept": "json"},
        params=[{"access_token": "t0k"}],
        creds=Secret("hidden-one"),
        token_url="https://h/oauth/token",
    )
    [event] = events(output)
    assert event["client_secret"] == REDACTED
    assert event["headers"] == {"Authorization": REDACTED, "Accept": "json"}
    assert event["params"] == [{"access_token": REDACTED}]
    assert event["creds"] == REDACTED
    assert event["token_url"] == "https://h/oauth/token"
    assert "hidden-one" not in output.getvalue()


def test_registered_secret_scrubbed_inside_strings(output):
    """A registered secret is removed from messages, URLs (also URL-encoded) and other values."""
    log = structlog.get_logger()
    message = "connecting with " + SECRET
    log.info(message, url=f"https://h/x?k={quote(SECRET, safe='')}")
    log.info("obj", value=ValueError(SECRET))
    text = output.getvalue()
    assert SECRET not in text
    assert quote(SECRET, safe="") not in text
    assert text.count(REDACTED) >= 3


def test_secret_in_exception_traceback(output):
    """A secret inside an exception message is scrubbed from the rendered traceback."""
    try:
        fail(RuntimeError(f"token endpoint said no to {SECRET}"))
    except RuntimeError:
        structlog.get_logger().exception("auth.failed")
    [event] = events(output)
    assert "RuntimeError" in event["exception"]
    assert SECRET not in output.getvalue()


def test_credential_patterns_scrubbed_without_registration(output):
    """Bearer headers and token query parameters are scrubbed even if never registered."""
    structlog.get_logger().warning(
        "http.error",
        detail="Authorization: Bearer eyJhbGciOi.abc.def",
        url="https://h/api?access_token=zzz999&limit=5",
        body='{"access_token": "abc123", "expires_in": 3600}',
    )
    text = output.getvalue()
    for leaked in ("eyJhbGciOi", "zzz999", "abc123"):
        assert leaked not in text
    assert "limit=5" in text
    assert "expires_in" in text


def test_stdlib_logging_is_redacted(output):
    """Records from stdlib loggers (aiohttp, aiokafka) go through the same redaction."""
    logging.getLogger("aiokafka.conn").warning("sasl login as %s failed", SECRET)
    try:
        fail(OSError(f"connect to https://u:{SECRET}@h failed"))
    except OSError:
        logging.getLogger("aiohttp.client").exception("request failed")
    records = events(output)
    assert [r["logger"] for r in records] == ["aiokafka.conn", "aiohttp.client"]
    assert "OSError" in records[1]["exception"]
    assert SECRET not in output.getvalue()


def test_register_secrets_from_config_and_short_values(output):
    """register_secrets takes Secret values; very short values are not scrubbed from text."""
    register_secrets([Secret("config-secret-1"), "ab"])
    structlog.get_logger().info("msg config-secret-1 ab")
    [event] = events(output)
    assert event["event"] == f"msg {REDACTED} ab"


def test_console_renderer_redacts(output):
    """The console renderer also gets redacted events."""
    configure_logging("console", "INFO", stream=output)
    structlog.get_logger().info("hello", password="pw-1234", note=SECRET)
    text = output.getvalue()
    assert "hello" in text
    assert "pw-1234" not in text
    assert SECRET not in text


def test_auto_picks_json_when_not_a_tty(output):
    """format="auto" renders JSON on a non-terminal stream."""
    configure_logging("auto", "INFO", stream=output)
    structlog.get_logger().info("auto.json")
    assert events(output)[0]["event"] == "auto.json"


def test_sensitive_key_rules():
    """Key matching is case-insensitive, catches suffixes, and spares token_url/token_auth."""
    assert is_sensitive_key("Client-Secret")
    assert is_sensitive_key("sasl_password")
    assert is_sensitive_key("refresh_token")
    assert not is_sensitive_key("token_url")
    assert not is_sensitive_key("token_auth")
    assert not is_sensitive_key(3)


def test_unknown_level_refused():
    """An unknown level name is a ValueError naming the allowed levels."""
    with pytest.raises(ValueError, match="allowed"):
        configure_logging("json", "LOUD", stream=io.StringIO())


def test_repeated_library_lines_are_let_through_once_per_window() -> None:
    """A library line repeated many times within the window is written once; the first line
    after the window says how many repeats were dropped."""
    import io  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from producer.logs import RepeatFilter  # noqa: PLC0415

    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("%(message)s %(suppressed)s", defaults={"suppressed": 0})
    )
    handler.addFilter(RepeatFilter(window=10.0, clock=lambda: now[0]))
    logger = logging.getLogger("tests.repeat")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for _ in range(15):
            logger.error("Unable connect to node with id %s", 1)
        logger.error("another message")
        now[0] = 11.0
        logger.error("Unable connect to node with id %s", 1)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "Unable connect to node with id 1 0",
        "another message 0",
        "Unable connect to node with id 1 14",
    ]
