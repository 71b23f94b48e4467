"""A simulated district: its settings (:class:`DistrictSpec`) and live state (:class:`District`)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import quote

from producer.model import Entity, Version
from producer.simulator.auth import ALL_SCOPES, OAuth1Verifier, TokenStore
from producer.simulator.data import Dataset
from producer.simulator.faults import FaultPlan, Faults
from producer.simulator.quirks import check_quirks
from producer.simulator.store import VIEWS, DistrictStore, SimClock, TruthChange, TruthLog

Auth = Literal["oauth2", "oauth1"]
_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class DistrictSpec:
    """Settings of one simulated district.

    ``auth`` defaults to OAuth 1.0a for 1.1 and OAuth 2.0 for 1.2. ``scopes`` are the scopes the
    client may be granted (fewer than all to provoke 403s). ``max_page_size`` silently clamps
    ``limit``. 1.1 districts are listed by the ClassLink discovery service unless ``classlink``
    is False.
    """

    id: str
    version: Version = "1.2"
    size: str | int = "tiny"
    seed: int = 1
    client_id: str = ""
    client_secret: str = ""
    max_page_size: int = 1000
    quirks: frozenset[str] = frozenset()
    faults: Faults = field(default_factory=Faults)
    auth: Auth | None = None
    scopes: tuple[str, ...] = ALL_SCOPES
    token_ttl: float = 3600.0
    allow_sha1: bool = False
    timestamp_lifetime: int = 600
    classlink: bool = True
    tenant_name: str = ""
    tenant_status: str = "Active"
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.id or not set(self.id) <= _ID_CHARS:
            raise ValueError(f"district id {self.id!r}: use lower-case letters, digits, - and _")
        if self.version not in ("1.1", "1.2"):
            raise ValueError(f"district {self.id}: version must be 1.1 or 1.2")
        if self.max_page_size < 1:
            raise ValueError(f"district {self.id}: max_page_size must be at least 1")
        object.__setattr__(self, "quirks", check_quirks(self.quirks))
        if not self.client_id:
            object.__setattr__(self, "client_id", f"{self.id}-client")
        if not self.client_secret:
            digest = hashlib.sha256(f"{self.id}:{self.seed}".encode()).hexdigest()[:24]
            object.__setattr__(self, "client_secret", f"secret-{digest}")

    @property
    def auth_method(self) -> Auth:
        """The auth the district's own endpoints demand."""
        if self.auth is not None:
            return self.auth
        return "oauth1" if self.version == "1.1" else "oauth2"


class District:
    """A running district: data, mutations, faults and truth. Get it via ``Simulator.district``."""

    def __init__(
        self,
        spec: DistrictSpec,
        *,
        clock: SimClock,
        log: TruthLog,
        tokens: TokenStore,
        tenant_id: int,
    ) -> None:
        self.spec = spec
        self.tokens = tokens
        self.id = spec.id
        self.clock = clock
        self.tenant_id = tenant_id
        self.store = DistrictStore(
            Dataset(
                spec.id, version=spec.version, size=spec.size, seed=spec.seed, start=clock.start
            ),
            clock,
            log,
        )
        self.plan = FaultPlan(spec.faults)
        self.verifier = OAuth1Verifier(
            spec.client_id,
            spec.client_secret,
            allow_sha1=spec.allow_sha1,
            sha1_only="oauth1_sha1_only" in spec.quirks,
            timestamp_lifetime=spec.timestamp_lifetime,
        )
        raw_app_id = base64.b64encode(hashlib.sha256(spec.id.encode()).digest()[:8]).decode()
        #: The ClassLink application id, decoded; ``oneroster_application_id`` is its %-encoding.
        self.application_id = raw_app_id
        self.bearer = (
            "tenant-" + hashlib.sha256(f"bearer:{spec.id}:{spec.seed}".encode()).hexdigest()[:32]
        )
        self.root = ""

    # -- addresses ----------------------------------------------------------------------------
    def bind(self, server_root: str) -> None:
        """Record the server's address (``http://127.0.0.1:PORT``) once it listens."""
        self.root = server_root
        self.store.data.href_root = self.base_url

    @property
    def base_url(self) -> str:
        """The district's server root; the OneRoster base path follows from its version."""
        return f"{self.root}/{self.id}"

    @property
    def oneroster_url(self) -> str:
        """``base_url`` plus the version's base path, e.g. ``.../ims/oneroster/rostering/v1p2``."""
        return self.base_url + self.store.data.base_path

    @property
    def token_url(self) -> str:
        """The OAuth 2.0 token endpoint."""
        return f"{self.base_url}/oauth/token"

    def producer_entry(self, scopes: Sequence[str] = ALL_SCOPES) -> dict[str, Any]:
        """The producer's ``[[districts]]`` table for this district: where it is and how to
        authenticate (OAuth 2.0 districts also get the token URL and ``scopes``). Callers add
        tuning keys such as ``page_size``."""
        spec = self.spec
        entry: dict[str, Any] = {
            "id": self.id,
            "base_url": self.base_url,
            "version": spec.version,
            "auth": spec.auth_method,
            "client_id": spec.client_id,
            "client_secret": spec.client_secret,
        }
        if spec.auth_method == "oauth2":
            entry["token_url"] = self.token_url
            entry["scopes"] = list(scopes)
        return entry

    @property
    def oneroster_application_id(self) -> str:
        """The application id as ClassLink lists it: already percent-encoded."""
        return quote(self.application_id, safe="")

    @property
    def proxy_url(self) -> str:
        """ClassLink-proxy style base: ``{root}/{oneroster_application_id}/ims/oneroster/v1p1``."""
        return f"{self.root}/{self.oneroster_application_id}/ims/oneroster/v1p1"

    # -- mutations and truth --------------------------------------------------------------------
    @staticmethod
    def _entity(entity: str) -> Entity:
        view = VIEWS.get(entity)
        if view is None:
            raise ValueError(f"unknown entity {entity!r}")
        return view.entity

    def create(self, entity: str, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create a record of ``entity`` (modelled on a base record, overridden by ``fields``)."""
        return self.store.create(self._entity(entity), fields)

    def update(self, entity: str, sourced_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields of a record; bumps ``dateLastModified``. KeyError if it does not exist."""
        return self.store.update(self._entity(entity), sourced_id, fields)

    def mark_tobedeleted(self, entity: str, sourced_id: str) -> dict[str, Any]:
        """Soft-delete: ``status=tobedeleted`` with a new ``dateLastModified``."""
        return self.store.mark_tobedeleted(self._entity(entity), sourced_id)

    def hard_delete(self, entity: str, sourced_id: str) -> None:
        """Remove a record without trace in the data (the truth log still records it)."""
        self.store.hard_delete(self._entity(entity), sourced_id)

    def get(self, entity: str, sourced_id: str) -> dict[str, Any] | None:
        """The stored record (any status), or None."""
        return self.store.get(self._entity(entity), sourced_id)

    def truth_log(self, since: int = 0) -> list[TruthChange]:
        """This district's real changes with ``seq > since``, in order."""
        return [c for c in self.store.log.changes if c.district == self.id and c.seq > since]

    def truth_state(self, entity: str) -> dict[str, dict[str, Any]]:
        """Active records of ``entity`` as served (without quirks), by sourcedId."""
        return self.store.truth_state(self._entity(entity))

    def counts(self) -> dict[str, int]:
        """Base record counts per entity."""
        return self.store.data.counts()

    def set_faults(self, faults: Faults) -> None:
        """Replace this district's faults (and restart their random stream)."""
        self.plan = FaultPlan(faults)
