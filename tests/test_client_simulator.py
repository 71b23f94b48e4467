"""OneRosterClient against the bundled simulator: every version and auth mode, its faults,
quirks, expired tokens, shifting offsets, clamped pages, rejected filters and ClassLink
discovery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from producer import errors
from producer.auth import BearerToken, OAuth1Signer, OAuth2ClientCredentials
from producer.client import OneRosterClient
from producer.discovery import DirectOAuth1, discover
from producer.model import Secret
from producer.retry import RetryPolicy
from producer.simulator import DistrictSpec, Faults, Simulator
from producer.simulator.auth import SCOPE_CORE
from producer.simulator.faults import RANDOM_KINDS
from tests.oneroster_fake import (
    collect,
    ids,
)

SIM_FAST = RetryPolicy(attempts=8, base_delay=0.001, max_delay=0.01, max_retry_after=0.01)


def sim_auth(district: Any, session: aiohttp.ClientSession, **kw: Any) -> Any:
    """The authenticator a simulated district demands, built from its spec."""
    spec = district.spec
    if spec.auth_method == "oauth2":
        return OAuth2ClientCredentials(
            session=session,
            token_url=district.token_url,
            client_id=spec.client_id,
            client_secret=Secret(spec.client_secret),
            scopes=kw.get("scopes", ()),
            credentials_in=kw.get("credentials_in", "basic"),
        )
    return OAuth1Signer(
        client_id=spec.client_id,
        client_secret=Secret(spec.client_secret),
        signature_method=kw.get("signature_method", "HMAC-SHA256"),
    )


async def sim_listing(
    spec: Any, entity: str = "users", *, version: str | None = None, **kw: Any
) -> tuple[Any, list[dict[str, Any]], Any]:
    """List ``entity`` of a one-district simulator; returns (listing, records, district)."""
    sim = Simulator([spec], frozen_clock=True)
    async with sim.serve("127.0.0.1", 0), aiohttp.ClientSession() as session:
        district = sim.district(spec.id)
        auth = kw.pop("auth", None) or sim_auth(district, session, **kw.pop("auth_kw", {}))
        client = OneRosterClient(
            district_id=spec.id,
            base_url=district.base_url,
            version=version or spec.version,  # type: ignore[arg-type]
            auth=auth,
            session=session,
            retry=SIM_FAST,
            page_size=kw.pop("page_size", 50),
            request_timeout=kw.pop("request_timeout", 2.0),
            **kw,
        )
        async with client:
            listing, records = await collect(client, entity)
        return listing, records, district


def exactly_the_truth(records: list[dict[str, Any]], district: Any, entity: str) -> bool:
    """Every record of the (unmutated) district arrived exactly once.

    ``truth_state`` holds the active records; the listing also carries the tobedeleted ones, so
    the check is: no duplicates, every active record present, and the base count reached.
    """
    seen = ids(records)
    return (
        max(seen.values(), default=1) == 1
        and set(district.truth_state(entity)) <= set(seen)
        and len(seen) == district.counts()[entity]
    )


@pytest.mark.parametrize(
    ("version", "auth", "auth_kw"),
    [
        ("1.2", None, {}),
        ("1.2", None, {"credentials_in": "body"}),
        ("1.1", None, {}),
        ("1.1", None, {"signature_method": "HMAC-SHA1"}),
        ("1.1", "oauth2", {}),
    ],
)
async def test_simulator_every_version_and_auth_mode(version, auth, auth_kw):
    """Both versions under OAuth2 (Basic/body), OAuth1 (SHA256/SHA1) list every record once."""
    spec = DistrictSpec(id="sim", version=version, size="small", auth=auth, allow_sha1=True)
    listing, records, district = await sim_listing(spec, version="auto", auth_kw=auth_kw)
    assert listing.complete
    assert exactly_the_truth(records, district, "users")


# shift_offsets changes the data (tested on its own), token_expired has its own test below.
@pytest.mark.parametrize("kind", sorted(RANDOM_KINDS - {"shift_offsets", "token_expired"}))
async def test_simulator_faults_are_absorbed(kind):
    """Each injected fault kind at a 30% rate still yields a complete, exactly-once listing."""
    faults = Faults(rate=0.3, kinds=(kind,), seed=5, latency=0.01, hang=5.0, retry_after=1)
    spec = DistrictSpec(id="sim", version="1.2", size="small", faults=faults)
    listing, records, district = await sim_listing(spec, request_timeout=0.5)
    assert listing.complete
    assert exactly_the_truth(records, district, "users")
    assert district.plan.fired.get(kind, 0) > 0


async def test_simulator_expired_tokens_are_renewed():
    """Tokens expired by the server are re-fetched once per request and the listing completes.

    Sequential paging keeps the seeded fault stream deterministic: two 401s in a row for one
    request would (by design) be AuthFailed, and this seed never draws that.
    """
    faults = Faults(rate=0.2, kinds=("token_expired",), seed=3)
    spec = DistrictSpec(id="sim", version="1.2", size="small", faults=faults)
    listing, records, district = await sim_listing(spec, concurrency=1)
    assert listing.complete
    assert exactly_the_truth(records, district, "users")
    assert district.plan.fired["token_expired"] > 1


async def test_simulator_shifting_offsets_mark_the_listing_incomplete():
    """Records created or deleted mid-listing change the total: not complete."""
    spec = DistrictSpec(
        id="sim", size="small", faults=Faults(rate=0.5, kinds=("shift_offsets",), seed=2)
    )
    listing, _, _ = await sim_listing(spec, concurrency=1)
    assert not listing.complete
    assert listing.incomplete_reason


@pytest.mark.parametrize("quirk", ["no_total_count", "status_info_set", "x_count", "date_space"])
async def test_simulator_quirks(quirk):
    """Missing totals, statusInfoSet beside data, x-count and space-separated dates all list."""
    spec = DistrictSpec(id="sim", version="1.1", size="small", quirks=frozenset({quirk}))
    listing, records, district = await sim_listing(spec)
    assert listing.complete
    assert exactly_the_truth(records, district, "users")
    assert (listing.total is None) == (quirk == "no_total_count")
    assert listing.observed_format is not None
    assert listing.observed_format.separator == (" " if quirk == "date_space" else "T")


async def test_simulator_filter_ignored_is_detected():
    """A server silently dropping the delta filter is noticed on the returned records."""
    spec = DistrictSpec(id="sim", size="small", faults=Faults(kinds=("filter_ignored",)))
    sim = Simulator([spec], frozen_clock=True)
    async with sim.serve("127.0.0.1", 0), aiohttp.ClientSession() as session:
        district = sim.district("sim")
        async with OneRosterClient(
            district_id="sim",
            base_url=district.base_url,
            version="1.2",
            auth=sim_auth(district, session),
            session=session,
        ) as client:
            cursor = sim.clock.now() - timedelta(days=10)
            listing, records = await collect(client, since=cursor)
    assert listing.filter_ignored
    assert exactly_the_truth(records, district, "users")


async def test_simulator_clamped_pages():
    """A server clamping limit to 7 (asked 50) loses and repeats nothing."""
    spec = DistrictSpec(id="sim", size="small", max_page_size=7)
    listing, records, district = await sim_listing(spec, "classes")
    assert listing.complete
    assert exactly_the_truth(records, district, "classes")


async def test_simulator_rejected_filter_and_missing_scope():
    """filter_rejected gives FilterUnsupported; demographics without its scope is Forbidden."""
    spec = DistrictSpec(
        id="sim", size="tiny", faults=Faults(kinds=("filter_rejected",)), scopes=(SCOPE_CORE,)
    )
    sim = Simulator([spec], frozen_clock=True)
    async with sim.serve("127.0.0.1", 0), aiohttp.ClientSession() as session:
        district = sim.district("sim")
        auth = sim_auth(district, session, scopes=[SCOPE_CORE])
        client = OneRosterClient(
            district_id="sim", base_url=district.base_url, version="1.2", auth=auth, session=session
        )
        async with client:
            with pytest.raises(errors.FilterUnsupported):
                await collect(client, since=datetime(2020, 1, 1, tzinfo=UTC))
            with pytest.raises(errors.Forbidden):
                await collect(client, entity="demographics")
            listing, records = await collect(client, entity="orgs")
    assert listing.complete
    assert records


@pytest.mark.parametrize("access", ["proxy", "direct"])
async def test_simulator_classlink_discovery_then_listing(access):
    """Discovered districts (proxy bearer or direct OAuth1) list every record of their tenant."""
    specs = [
        DistrictSpec(id="one", version="1.1", size="tiny"),
        DistrictSpec(id="two", version="1.2"),
    ]
    sim = Simulator(specs, classlink_api_key="cl-key", frozen_clock=True)
    async with sim.serve("127.0.0.1", 0) as root, aiohttp.ClientSession() as session:
        found = await discover(session, host=root, api_key=Secret("cl-key"), access=access)
        assert [d.tenant_name for d in found] == [sim.district("one").spec.tenant_name or "One"]
        district = found[0]
        auth: Any
        if isinstance(district.auth, DirectOAuth1):
            auth = OAuth1Signer(
                client_id=district.auth.client_id, client_secret=district.auth.client_secret
            )
        else:
            auth = BearerToken(district.auth.token)
        client = OneRosterClient(
            district_id=district.id,
            base_url=district.base_url,
            version=district.version,
            auth=auth,
            session=session,
        )
        async with client:
            listing, records = await collect(client)
    assert listing.complete
    assert exactly_the_truth(records, sim.district("one"), "users")
