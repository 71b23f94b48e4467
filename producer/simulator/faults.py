"""Switchable, seedable faults for the OneRoster data endpoints of a district.

On every data request a fault fires with probability ``rate``; the kind is drawn from ``kinds``
by a :class:`random.Random` seeded with ``seed``, so a run is reproducible for a given request
order. Two kinds describe the server rather than chance and apply to every request that carries
a ``dateLastModified`` filter, whatever the rate: ``filter_rejected`` and ``filter_ignored``.

Kinds:

* ``rate_limit``: 429 with ``Retry-After`` in seconds; ``rate_limit_date``: as an HTTP-date.
* ``server_error`` (500), ``bad_gateway`` (502), ``unavailable`` (503): imsx error bodies.
* ``latency``: the answer is delayed by ``latency`` seconds, then served normally.
* ``hang``: the answer is delayed by ``hang`` seconds (longer than any sane client timeout).
* ``reset``: headers and half the body are sent, then the connection is aborted.
* ``truncated_json``: a 200 whose JSON body is cut short (Content-Length matches the cut).
* ``html_error``: a 200 ``text/html`` maintenance page.
* ``error_envelope``: a 200 carrying an imsx status body and no data key.
* ``shift_offsets``: on a page with ``offset > 0``, a record is created or hard-deleted in the
  listed collection first (really, so the truth log shows it), shifting later offsets.
* ``token_expired``: the bearer token presented is expired on the spot (401; a new one works).
* ``filter_rejected``: 400 ``invalid_filter_field`` for a ``dateLastModified`` filter.
* ``filter_ignored``: the ``dateLastModified`` filter is silently dropped (full listing).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

RANDOM_KINDS: Final = frozenset(
    (
        "rate_limit",
        "rate_limit_date",
        "server_error",
        "bad_gateway",
        "unavailable",
        "latency",
        "hang",
        "reset",
        "truncated_json",
        "html_error",
        "error_envelope",
        "shift_offsets",
        "token_expired",
    )
)
STANDING_KINDS: Final = frozenset(("filter_rejected", "filter_ignored"))
KINDS: Final = RANDOM_KINDS | STANDING_KINDS


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault settings of one district (the default injects nothing)."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ()
    seed: int = 0
    latency: float = 0.2
    hang: float = 3600.0
    retry_after: int = 1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {sorted(KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("fault rate must be between 0 and 1")
        object.__setattr__(self, "kinds", tuple(self.kinds))

    @classmethod
    def of(cls, kinds: Iterable[str], rate: float = 1.0, seed: int = 0) -> Faults:
        """Shorthand: ``Faults.of(["rate_limit"], rate=0.5)``."""
        return cls(rate=rate, kinds=tuple(kinds), seed=seed)


@dataclass(slots=True)
class FaultPlan:
    """The live state of a district's faults: its settings, its random stream and a tally."""

    faults: Faults
    _rng: random.Random = field(init=False)
    fired: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.faults.seed)  # noqa: S311 - reproducible, not secret

    def standing(self, kind: str) -> bool:
        """Whether the standing behaviour ``kind`` is switched on."""
        return kind in self.faults.kinds

    def draw(self) -> str | None:
        """The random fault to inject into this request, if any."""
        kinds = sorted(set(self.faults.kinds) & RANDOM_KINDS)
        if not kinds or self._rng.random() >= self.faults.rate:
            return None
        return self._rng.choice(kinds)

    def choice(self, n: int) -> int:
        """A reproducible integer in ``range(n)`` for a fault's own decisions."""
        return self._rng.randrange(n)

    def note(self, kind: str) -> None:
        """Count one injected fault of ``kind``."""
        self.fired[kind] = self.fired.get(kind, 0) + 1
