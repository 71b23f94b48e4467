"""Retry policy for source requests: exponential backoff with full jitter, honouring Retry-After.

Pure functions only; the client owns the loop and the sleeping. Whether an error is retried is
decided by its class attribute ``retriable`` (``producer.errors``), never here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a request is retried.

    ``attempts`` counts every try, the first included (so ``attempts=1`` never retries). Delays
    grow as ``base_delay * 2**n`` capped by ``max_delay``, and the actual sleep is drawn
    uniformly from ``[0, that]`` (full jitter). A server's ``Retry-After`` is honoured up to
    ``max_retry_after`` seconds: the sleep is never shorter than what the server asked for.
    """

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def delay(
        self,
        retry_number: int,
        *,
        retry_after: float | None = None,
        rand: random.Random | None = None,
    ) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry).

        Full jitter on the exponential backoff; a ``retry_after`` (already in seconds) is a floor,
        capped at ``max_retry_after``.
        """
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(retry_number, 62)))
        draw = (rand or _RANDOM).uniform(0.0, ceiling)
        if retry_after is not None and retry_after > 0:
            return max(draw, min(retry_after, self.max_retry_after))
        return draw


_RANDOM = random.Random()  # noqa: S311 -- jitter, not cryptography


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """The ``Retry-After`` header in seconds: delta-seconds or an HTTP-date; ``None`` if unusable.

    Dates in the past give 0. Negative, non-finite or unparseable values give ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())
