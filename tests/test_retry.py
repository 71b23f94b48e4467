"""Backoff with full jitter and Retry-After parsing (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.retry import RetryPolicy, parse_retry_after

NOW = datetime(2026, 11, 28, 1, 0, 0, tzinfo=UTC)


@given(retry=st.integers(0, 200), seed=st.integers(0, 2**32))
def test_delay_is_full_jitter_under_the_exponential_cap(retry, seed):
    """Each delay lies in [0, min(max_delay, base * 2**n)]."""
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=8.0)
    delay = policy.delay(retry, rand=random.Random(seed))
    assert 0.0 <= delay <= min(8.0, 0.5 * 2**retry)


def test_delays_are_spread_not_constant():
    """Full jitter draws different delays, so correlated 429s do not retry in lockstep."""
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    rand = random.Random(7)
    draws = {round(policy.delay(3, rand=rand), 6) for _ in range(20)}
    assert len(draws) > 10


@given(after=st.floats(0.001, 1e6), seed=st.integers(0, 2**32))
def test_retry_after_is_a_floor_capped_by_policy(after, seed):
    """Retry-After is never undercut, but never waited beyond max_retry_after."""
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0, max_retry_after=60.0)
    delay = policy.delay(0, retry_after=after, rand=random.Random(seed))
    assert delay >= min(after, 60.0)
    assert delay <= max(1.0, min(after, 60.0))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("Sat, 28 Nov 2026 01:00:30 GMT", 30.0),
        ("Sat, 28 Nov 2026 00:59:00 GMT", 0.0),
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_parses_seconds_and_http_dates(header, seconds):
    """Delta-seconds and HTTP-dates both work; past dates give 0; garbage gives None."""
    assert parse_retry_after(header, now=NOW) == seconds


def test_policy_rejects_nonsense():
    """Fewer than one attempt, or negative delays, are configuration errors."""
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base_delay=-1)
