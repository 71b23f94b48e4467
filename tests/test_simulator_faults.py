"""Simulator faults and quirks: every switch is observable from a client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from producer.simulator import FAULT_KINDS, QUIRKS, DistrictSpec, Faults, Simulator


async def start(faults: Faults | None = None, quirks: Iterable[str] = ()) -> tuple[Simulator, Any]:
    sim = Simulator(
        [
            DistrictSpec(
                id="d",
                version="1.2",
                size="tiny",
                faults=faults or Faults(),
                quirks=frozenset(quirks),
                max_page_size=50,
            )
        ]
    )
    ctx = sim.serve()
    await ctx.__aenter__()
    return sim, ctx


async def bearer(session: aiohttp.ClientSession, sim: Simulator) -> dict[str, str]:
    d = sim.district("d")
    form = {
        "grant_type": "client_credentials",
        "client_id": d.spec.client_id,
        "client_secret": d.spec.client_secret,
    }
    async with session.post(d.token_url, data=form) as resp:
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


@pytest.fixture
async def faulty(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    kind, extra = request.param
    sim, ctx = await start(Faults(**{"rate": 1.0, "seed": 3, **extra, "kinds": (kind,)}))
    try:
        yield sim
    finally:
        await ctx.__aexit__(None, None, None)


def users_url(sim: Simulator, **query: str) -> yarl.URL:
    return yarl.URL(sim.district("d").oneroster_url + "/users").with_query(query)


def param(kind: str, **extra: Any) -> Any:
    return pytest.param((kind, extra), id=kind)


@pytest.mark.parametrize(
    "faulty",
    [param("server_error"), param("bad_gateway"), param("unavailable")],
    indirect=True,
)
async def test_5xx_faults_answer_their_status_with_an_imsx_body(faulty, session):
    """server_error, bad_gateway and unavailable answer 500/502/503 with imsx failure bodies."""
    expected = {"server_error": 500, "bad_gateway": 502, "unavailable": 503}
    kind = faulty.district("d").plan.faults.kinds[0]
    async with session.get(users_url(faulty), headers=await bearer(session, faulty)) as resp:
        assert resp.status == expected[kind]
        assert (await resp.json())["imsx_codeMajor"] == "failure"


@pytest.mark.parametrize("faulty", [param("rate_limit", retry_after=7)], indirect=True)
async def test_rate_limit_sends_retry_after_seconds(faulty, session):
    """rate_limit answers 429 with Retry-After in whole seconds."""
    async with session.get(users_url(faulty), headers=await bearer(session, faulty)) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"


@pytest.mark.parametrize("faulty", [param("rate_limit_date", retry_after=30)], indirect=True)
async def test_rate_limit_date_sends_retry_after_as_http_date(faulty, session):
    """rate_limit_date answers 429 with an HTTP-date Retry-After ~30 s after the clock."""
    async with session.get(users_url(faulty), headers=await bearer(session, faulty)) as resp:
        assert resp.status == 429
        when = parsedate_to_datetime(resp.headers["Retry-After"])
    delta = (when - faulty.clock.now()).total_seconds()
    assert 28 <= delta <= 31


@pytest.mark.parametrize("faulty", [param("latency", latency=0.3)], indirect=True)
async def test_latency_delays_a_normal_answer(faulty, session):
    """latency serves the page normally after the configured delay."""
    headers = await bearer(session, faulty)
    began = time.perf_counter()
    async with session.get(users_url(faulty), headers=headers) as resp:
        assert resp.status == 200
        assert "users" in await resp.json()
    assert time.perf_counter() - began >= 0.3


@pytest.mark.parametrize("faulty", [param("hang", hang=30.0)], indirect=True)
async def test_hang_trips_a_client_timeout(faulty, session):
    """hang holds the answer back long enough for a client timeout to fire."""
    headers = await bearer(session, faulty)
    with pytest.raises(asyncio.TimeoutError):
        async with session.get(
            users_url(faulty), headers=headers, timeout=aiohttp.ClientTimeout(total=0.3)
        ):
            pass


@pytest.mark.parametrize("faulty", [param("reset")], indirect=True)
async def test_reset_breaks_the_connection_mid_body(faulty, session):
    """reset sends part of the body and then drops the connection."""
    headers = await bearer(session, faulty)
    statuses = []

    async def fetch() -> bytes:
        async with session.get(users_url(faulty), headers=headers) as resp:
            statuses.append(resp.status)
            body: bytes = await resp.read()
            return body

    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch()
    assert statuses == [200]


@pytest.mark.parametrize("faulty", [param("truncated_json")], indirect=True)
async def test_truncated_json_is_a_200_that_does_not_parse(faulty, session):
    """truncated_json answers 200 with a JSON body cut short."""
    async with session.get(users_url(faulty), headers=await bearer(session, faulty)) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert text.startswith('{"users":[')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize("faulty", [param("html_error")], indirect=True)
async def test_html_error_is_an_html_page(faulty, session):
    """html_error answers with a text/html maintenance page."""
    async with session.get(users_url(faulty), headers=await bearer(session, faulty)) as resp:
        assert resp.content_type == "text/html"
        assert "<html>" in (await resp.text()).lower()


@pytest.mark.parametrize("faulty", [param("error_envelope")], indirect=True)
async def test_error_envelope_is_a_200_without_the_data_key(faulty, session):
    """error_envelope answers 200 with an imsx body and no ``users`` key."""
    async with session.get(users_url(faulty), headers=await bearer(session, faulty)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert "users" not in body
    assert body["imsx_codeMajor"] == "failure"


@pytest.mark.parametrize("faulty", [param("shift_offsets")], indirect=True)
async def test_shift_offsets_really_changes_the_listing_while_paging(faulty, session):
    """shift_offsets creates or hard-deletes a record on pages past the first, in the truth."""
    headers = await bearer(session, faulty)
    d = faulty.district("d")
    async with session.get(users_url(faulty, offset="0", limit="5"), headers=headers) as resp:
        assert resp.status == 200
    assert d.truth_log() == []
    async with session.get(users_url(faulty, offset="5", limit="5"), headers=headers) as resp:
        assert resp.status == 200
    (change,) = d.truth_log()
    assert change.entity == "users"
    assert change.op in ("created", "deleted")


@pytest.mark.parametrize("faulty", [param("token_expired")], indirect=True)
async def test_token_expired_revokes_the_presented_token(faulty, session):
    """token_expired answers 401 and the token stays dead; a fresh token works once faults stop."""
    headers = await bearer(session, faulty)
    async with session.get(users_url(faulty), headers=headers) as resp:
        assert resp.status == 401
    faulty.set_faults("d", Faults())
    async with session.get(users_url(faulty), headers=headers) as resp:
        assert resp.status == 401
    async with session.get(users_url(faulty), headers=await bearer(session, faulty)) as resp:
        assert resp.status == 200


DELTA = "dateLastModified>'2020-01-01T00:00:00Z'"


@pytest.mark.parametrize("faulty", [param("filter_rejected", rate=0.0)], indirect=True)
async def test_filter_rejected_refuses_the_delta_filter_only(faulty, session):
    """filter_rejected answers 400 to a dateLastModified filter whatever the rate; else 200."""
    headers = await bearer(session, faulty)
    async with session.get(users_url(faulty, filter=DELTA), headers=headers) as resp:
        assert resp.status == 400
        assert "invalid_filter_field" in await resp.text()
    async with session.get(users_url(faulty, filter="familyName~'a'"), headers=headers) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("faulty", [param("filter_ignored")], indirect=True)
async def test_filter_ignored_returns_the_unfiltered_listing(faulty, session):
    """filter_ignored drops a dateLastModified filter: a future threshold still lists everyone."""
    headers = await bearer(session, faulty)
    url = users_url(faulty, filter="dateLastModified>'2999-01-01T00:00:00Z'")
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert int(resp.headers["X-Total-Count"]) == faulty.district("d").counts()["users"]


def test_every_fault_kind_is_covered_here():
    """Each fault kind the simulator offers has a test in this module."""
    source = Path(__file__).read_text(encoding="utf-8")
    assert all(f'param("{kind}"' in source for kind in FAULT_KINDS)


async def test_faults_are_reproducible_from_the_seed(session):
    """Two simulators with the same fault seed fail the same requests the same way."""
    runs = []
    for _ in range(2):
        sim, ctx = await start(Faults(rate=0.5, kinds=("server_error", "rate_limit"), seed=11))
        try:
            headers = await bearer(session, sim)
            statuses = []
            for _ in range(20):
                async with session.get(users_url(sim), headers=headers) as resp:
                    statuses.append(resp.status)
            runs.append(statuses)
        finally:
            await ctx.__aexit__(None, None, None)
    assert runs[0] == runs[1]
    assert {200, 429, 500} <= set(runs[0])


async def quirky_page(session: aiohttp.ClientSession, quirk: str) -> tuple[dict[str, Any], Any]:
    sim, ctx = await start(quirks=[quirk])
    try:
        d = sim.district("d")
        d.mark_tobedeleted("users", "usr-000000000")
        async with session.get(
            users_url(sim, limit="3"), headers=await bearer(session, sim)
        ) as resp:
            assert resp.status == 200
            return await resp.json(), resp.headers
    finally:
        await ctx.__aexit__(None, None, None)


CHECKS = {
    "json_booleans": lambda body, _: body["users"][0]["enabledUser"] is True,
    "empty_roles": lambda body, _: body["users"][1]["roles"] == [],
    "vendor_metadata": lambda body, _: isinstance(body["users"][1].get("metadata"), dict),
    "date_space": lambda body, _: body["users"][1]["dateLastModified"][10] == " ",
    "date_no_fraction": lambda body, _: "." not in body["users"][1]["dateLastModified"],
    "inactive_status": lambda body, _: body["users"][0]["status"] == "inactive",
    "missing_optional": lambda body, _: "middleName" not in body["users"][1],
    "status_info_set": lambda body, _: "success" in str(body.get("statusInfoSet")),
    "x_count": lambda body, headers: headers.get("x-count") == str(len(body["users"])),
    "no_total_count": lambda _, headers: "X-Total-Count" not in headers,
}


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
async def test_each_quirk_is_observable_and_absent_without_it(session, quirk):
    """With the quirk on, the page shows it; without any quirk, the same check fails."""
    assert set(CHECKS) == QUIRKS
    body, headers = await quirky_page(session, quirk)
    assert CHECKS[quirk](body, headers)
    plain_sim, ctx = await start()
    try:
        plain_sim.district("d").mark_tobedeleted("users", "usr-000000000")
        url = users_url(plain_sim, limit="3")
        async with session.get(url, headers=await bearer(session, plain_sim)) as resp:
            plain, plain_headers = await resp.json(), resp.headers
    finally:
        await ctx.__aexit__(None, None, None)
    assert not CHECKS[quirk](plain, plain_headers)
