"""Simulator over HTTP: OneRoster 1.2/1.1 collections, paging, queries, errors and auth."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yarl
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1, SIGNATURE_HMAC_SHA256, Client

from producer.simulator import DistrictSpec, Simulator
from producer.simulator.auth import SCOPE_CORE, SCOPE_DEMOGRAPHICS
from tests.conftest import ServeSimulator

#: The official 1EdTech OneRoster 1.2 Rostering OpenAPI file, vendored (see its README).
OPENAPI = (
    Path(__file__).resolve().parent / "data" / "oneroster" / "oneroster-v1p2-rostering-openapi.json"
)
COLLECTIONS = (
    "orgs",
    "schools",
    "academicSessions",
    "terms",
    "gradingPeriods",
    "courses",
    "classes",
    "users",
    "students",
    "teachers",
    "enrollments",
    "demographics",
)


@cache
def openapi() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OPENAPI.read_text(encoding="utf-8"))
    return document


def validate(body: Any, path: str, status: str = "200") -> None:
    """Validate ``body`` against the OpenAPI response schema of ``path`` and ``status``."""
    responses = openapi()["paths"][path]["get"]["responses"]
    ref = responses.get(status, responses["default"])["content"]["application/json"]["schema"]
    schema = {**ref, "components": openapi()["components"]}
    jsonschema.Draft7Validator(schema).validate(body)


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    return await serve_simulator(
        [
            DistrictSpec(id="d12", version="1.2", size="tiny", max_page_size=10),
            DistrictSpec(id="d11", version="1.1", size="tiny", allow_sha1=True),
            DistrictSpec(id="core", version="1.2", size="tiny", scopes=(SCOPE_CORE,)),
        ],
        start=None,
    )


async def token(
    session: aiohttp.ClientSession, sim: Simulator, district: str = "d12", **form: str
) -> str:
    d = sim.district(district)
    auth = aiohttp.encode_basic_auth(d.spec.client_id, d.spec.client_secret)
    async with session.post(
        d.token_url,
        data={"grant_type": "client_credentials", **form},
        headers={"Authorization": auth},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


async def get(session: aiohttp.ClientSession, url: str, tok: str | None) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


@pytest.mark.parametrize("collection", COLLECTIONS)
async def test_every_v12_collection_and_object_validates_against_the_openapi(
    sim, session, collection
):
    """Each 1.2 collection and a single object of it match the official response schemas."""
    tok = await token(session, sim)
    base = sim.district("d12").oneroster_url
    status, body, headers = await get(session, f"{base}/{collection}?limit=10", tok)
    assert status == 200
    validate(body, f"/{collection}")
    (key,) = body.keys()
    records = body[key]
    assert records
    assert int(headers["X-Total-Count"]) >= len(records)
    sid = records[0]["sourcedId"]
    status, one, _ = await get(session, f"{base}/{collection}/{sid}", tok)
    assert status == 200
    validate(one, f"/{collection}/{{sourcedId}}")
    status, missing, _ = await get(session, f"{base}/{collection}/no-such-id", tok)
    assert status == 404
    validate(missing, f"/{collection}/{{sourcedId}}", "404")
    assert "unknownobject" in json.dumps(missing)


async def test_envelope_keys_and_view_membership(sim, session):
    """/schools answers ``orgs`` with only schools; /teachers ``users`` with only teachers."""
    tok = await token(session, sim)
    base = sim.district("d12").oneroster_url
    _, schools, _ = await get(session, f"{base}/schools", tok)
    assert {o["type"] for o in schools["orgs"]} == {"school"}
    _, teachers, _ = await get(session, f"{base}/teachers", tok)
    assert {u["roles"][0]["role"] for u in teachers["users"]} == {"teacher"}
    _, terms, _ = await get(session, f"{base}/terms", tok)
    assert {s["type"] for s in terms["academicSessions"]} == {"term"}
    student = sim.district("d12").get("users", "usr-000000000")
    assert student is not None
    status, _, _ = await get(session, f"{base}/teachers/usr-000000000", tok)
    assert status == 404


async def test_paging_returns_every_record_once_with_clamping_and_links(sim, session):
    """Following Link rel=next with an oversized limit visits each record exactly once."""
    tok = await token(session, sim)
    base = sim.district("d12").oneroster_url
    seen: list[str] = []
    url: str | None = f"{base}/enrollments?limit=500&sort=sourcedId&orderBy=asc"
    total = None
    while url:
        status, body, headers = await get(session, url, tok)
        assert status == 200
        assert len(body["enrollments"]) <= 10  # clamped silently to max_page_size
        total = int(headers["X-Total-Count"])
        seen += [r["sourcedId"] for r in body["enrollments"]]
        links = {
            part.split('rel="')[1].rstrip('"'): part.split(">")[0].lstrip("< ")
            for part in headers["Link"].split(", ")
        }
        url = links.get("next")
    assert total == sim.district("d12").counts()["enrollments"]
    assert len(seen) == len(set(seen)) == total
    assert seen == sorted(seen)


async def test_sort_order_fields_and_filters_over_http(sim, session):
    """sort/orderBy order the listing, fields trims records, filter narrows them."""
    tok = await token(session, sim)
    base = sim.district("d12").oneroster_url
    _, body, _ = await get(
        session,
        f"{base}/users?sort=familyName&orderBy=desc&limit=10&fields=sourcedId,familyName",
        tok,
    )
    names = [u["familyName"] for u in body["users"]]
    assert names == sorted(names, reverse=True)
    assert all(set(u) == {"sourcedId", "familyName"} for u in body["users"])
    q = "roles.role='teacher' OR roles.role='guardian'"
    _, body, headers = await get(session, str(yarl.URL(base + "/users").with_query(filter=q)), tok)
    assert {u["roles"][0]["role"] for u in body["users"]} == {"teacher", "guardian"}
    d = sim.district("d12")
    sim.advance_clock(5)
    changed = d.update("users", "usr-000000004", givenName="Zed")
    since = d.clock.start.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    url = str(yarl.URL(base + "/users").with_query(filter=f"dateLastModified>'{since}'"))
    _, body, headers = await get(session, url, tok)
    assert [u["sourcedId"] for u in body["users"]] == [changed["sourcedId"]]
    assert headers["X-Total-Count"] == "1"


@pytest.mark.parametrize(
    ("query", "minor"),
    [
        ("filter=shoeSize%3D%271%27", "invalid_filter_field"),
        ("filter=familyName%3D", "invalid_filter_field"),
        ("fields=sourcedId,shoeSize", "invalid_selection_field"),
        ("sort=shoeSize", "invalid_selection_field"),
        ("limit=abc", "invalid_selection_field"),
    ],
)
async def test_invalid_queries_answer_400_with_an_imsx_body(sim, session, query, minor):
    """Unknown filter/selection/sort fields and bad numbers give 400 and a valid imsx body."""
    tok = await token(session, sim)
    status, body, _ = await get(session, f"{sim.district('d12').oneroster_url}/users?{query}", tok)
    assert status == 400
    validate(body, "/users", "400")
    assert body["imsx_CodeMinor"]["imsx_codeMinorField"][0]["imsx_codeMinorFieldValue"] == minor


async def test_oauth2_credentials_by_basic_or_form_and_token_failures(sim, session):
    """Basic and form credentials both work; wrong secret, no token, bad token, expiry give 401."""
    d = sim.district("d12")
    base = d.oneroster_url
    form = {
        "grant_type": "client_credentials",
        "client_id": d.spec.client_id,
        "client_secret": d.spec.client_secret,
    }
    async with session.post(d.token_url, data=form) as resp:
        assert resp.status == 200
        issued = await resp.json()
    assert issued["token_type"] == "bearer"
    assert issued["expires_in"] == 3600
    async with session.post(d.token_url, data={**form, "client_secret": "nope"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    async with session.post(d.token_url, data={**form, "grant_type": "password"}) as resp:
        assert resp.status == 400
    async with session.post(
        d.token_url, data={**form, "scope": "https://example.com/other"}
    ) as resp:
        assert resp.status == 400
    tok = issued["access_token"]
    assert (await get(session, f"{base}/orgs", tok))[0] == 200
    status, body, headers = await get(session, f"{base}/orgs", None)
    assert status == 401
    assert "WWW-Authenticate" in headers
    validate(body, "/orgs", "401")
    assert (await get(session, f"{base}/orgs", "forged"))[0] == 401
    other = await token(session, sim, "core")
    assert (await get(session, f"{base}/orgs", other))[0] == 401  # another district's token
    sim.advance_clock(3601)
    assert (await get(session, f"{base}/orgs", tok))[0] == 401


async def test_scopes_gate_demographics_with_403(sim, session):
    """A token without roster-demographics gets 403 on /demographics but 200 elsewhere."""
    base = sim.district("core").oneroster_url
    tok = await token(session, sim, "core")
    status, body, _ = await get(session, f"{base}/demographics", tok)
    assert status == 403
    validate(body, "/demographics", "403")
    assert (await get(session, f"{base}/users", tok))[0] == 200
    narrowed = await token(session, sim, "d12", scope=SCOPE_DEMOGRAPHICS)
    d12 = sim.district("d12").oneroster_url
    assert (await get(session, f"{d12}/demographics", narrowed))[0] == 200
    assert (await get(session, f"{d12}/users", narrowed))[0] == 403


def signed(
    url: str, key: str, secret: str, method: str = SIGNATURE_HMAC_SHA256, **kw: Any
) -> tuple[yarl.URL, dict[str, str]]:
    client = Client(key, client_secret=secret, signature_method=method, **kw)
    uri, headers, _ = client.sign(url, http_method="GET")
    return yarl.URL(uri, encoded=True), headers


async def test_oauth1_accepts_a_signed_request_and_rejects_tampering_and_replay(sim, session):
    """HMAC-SHA256 signed GET succeeds; changed query, wrong secret or a replayed nonce get 401."""
    d = sim.district("d11")
    q = yarl.URL(d.oneroster_url + "/users").with_query(limit="5", filter="familyName~'a'")
    url, headers = signed(str(q), d.spec.client_id, d.spec.client_secret)
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert "role" in body["users"][0]
    assert "orgs" in body["users"][0]
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 401  # same nonce again
    url2, headers2 = signed(str(q), d.spec.client_id, d.spec.client_secret)
    tampered = yarl.URL(str(url2).replace("limit=5", "limit=6"), encoded=True)
    async with session.get(tampered, headers=headers2) as resp:
        assert resp.status == 401
        assert "statusInfoSet" in await resp.json()
    url3, headers3 = signed(str(q), d.spec.client_id, "wrong-secret")
    async with session.get(url3, headers=headers3) as resp:
        assert resp.status == 401
    async with session.get(q) as resp:
        assert resp.status == 401


async def test_oauth1_timestamp_window_and_signature_methods(sim, session):
    """A stale timestamp is refused; HMAC-SHA1 only where the district allows it."""
    d11 = sim.district("d11")
    url = d11.oneroster_url + "/orgs"
    old = str(int(time.time()) - 3600)
    u, h = signed(url, d11.spec.client_id, d11.spec.client_secret, timestamp=old)
    async with session.get(u, headers=h) as resp:
        assert resp.status == 401
    u, h = signed(url, d11.spec.client_id, d11.spec.client_secret, SIGNATURE_HMAC_SHA1)
    async with session.get(u, headers=h) as resp:
        assert resp.status == 200
    strict = Simulator([DistrictSpec(id="strict", version="1.1", size="tiny")])
    async with strict.serve():
        s = strict.district("strict")
        u, h = signed(
            s.oneroster_url + "/orgs", s.spec.client_id, s.spec.client_secret, SIGNATURE_HMAC_SHA1
        )
        async with session.get(u, headers=h) as resp:
            assert resp.status == 401


async def test_wrong_version_path_is_404(sim, session):
    """A 1.2 district does not answer on the 1.1 base path (and vice versa)."""
    tok = await token(session, sim)
    status, _, _ = await get(
        session, sim.district("d12").base_url + "/ims/oneroster/v1p1/users", tok
    )
    assert status == 404


async def test_mutated_records_still_validate(sim, session):
    """Created, updated and tobedeleted 1.2 records keep to the official schemas."""
    d = sim.district("d12")
    made = d.create("users", {"givenName": "New"})
    d.update("classes", "cls-000000001", title="Renamed")
    d.mark_tobedeleted("enrollments", "enr-000000002")
    tok = await token(session, sim)
    for path, sid in (
        ("users", made["sourcedId"]),
        ("classes", "cls-000000001"),
        ("enrollments", "enr-000000002"),
    ):
        status, body, _ = await get(session, f"{d.oneroster_url}/{path}/{sid}", tok)
        assert status == 200
        validate(body, f"/{path}/{{sourcedId}}")
    _, body, _ = await get(
        session, f"{d.oneroster_url}/enrollments?filter=status%3D%27tobedeleted%27", tok
    )
    validate(body, "/enrollments")
    assert [r["sourcedId"] for r in body["enrollments"]] == ["enr-000000002"]
