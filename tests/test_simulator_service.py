"""Simulator around the data: ClassLink discovery and proxy, admin endpoints, the CLI."""

from __future__ import annotations

import argparse
import tomllib
from urllib.parse import unquote

import pytest

from producer.simulator import DistrictSpec, Simulator
from producer.simulator.cli import add_arguments, config_toml, run, specs_from_args
from tests.conftest import ServeSimulator

API_KEY = "cl-test-key"


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    return await serve_simulator(
        [
            DistrictSpec(id="east", version="1.1", size="tiny", tenant_name="East ISD"),
            DistrictSpec(id="west", version="1.1", size="tiny", tenant_status="Inactive"),
            DistrictSpec(id="north", version="1.1", size="tiny", enabled=False),
            DistrictSpec(id="modern", version="1.2", size="tiny"),
        ],
        classlink_api_key=API_KEY,
        admin=True,
    )


AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_applications_lists_11_tenants_with_paging_and_no_count_headers(sim, session):
    """GET /applications lists the 1.1 districts, honours limit/offset, sends no counts."""
    async with session.get(f"{sim.url}/applications", headers=AUTH) as resp:
        assert resp.status == 200
        assert "X-Total-Count" not in resp.headers
        body = await resp.json()
    apps = body["applications"]
    assert [a["tenant_name"] for a in apps] == ["East ISD", "West", "North"]
    assert [(a["enabled"], a["tenant_status"]) for a in apps] == [
        ("true", "Active"),
        ("true", "Inactive"),
        ("false", "Active"),
    ]
    assert all("%" in a["oneroster_application_id"] for a in apps)  # arrives percent-encoded
    async with session.get(f"{sim.url}/applications?limit=2&offset=2", headers=AUTH) as resp:
        assert [a["tenant_id"] for a in (await resp.json())["applications"]] == [3]
    async with session.get(f"{sim.url}/applications") as resp:
        assert resp.status == 401
    async with session.get(
        f"{sim.url}/applications", headers={"Authorization": "Bearer x"}
    ) as resp:
        assert resp.status == 401


async def test_application_server_and_proxy_paths(sim, session):
    """/applications/{id}/server gives direct credentials; proxy paths need the tenant bearer."""
    async with session.get(f"{sim.url}/applications", headers=AUTH) as resp:
        app = (await resp.json())["applications"][0]
    app_id = app["oneroster_application_id"]
    async with session.get(f"{sim.url}/applications/{app_id}/server", headers=AUTH) as resp:
        server = (await resp.json())["server"]
    east = sim.district("east")
    assert server == {
        "client_id": east.spec.client_id,
        "client_secret": east.spec.client_secret,
        "endpoint_url": east.base_url,
    }
    assert unquote(app_id) == east.application_id
    proxy = f"{sim.url}/{app_id}/ims/oneroster/v1p1/users?limit=3"
    async with session.get(proxy, headers={"Authorization": f"Bearer {app['bearer']}"}) as resp:
        assert resp.status == 200
        users = (await resp.json())["users"]
    assert len(users) == 3
    assert "role" in users[0]
    async with session.get(proxy, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    async with session.get(f"{sim.url}/applications/nope/server", headers=AUTH) as resp:
        assert resp.status == 404


async def test_admin_endpoints_mutate_and_report_truth(sim, session):
    """Admin create/update/tobedeleted/delete change the served data and the truth log."""
    root = f"{sim.url}/_admin/east"
    async with session.post(f"{root}/users", json={"givenName": "Ada"}) as resp:
        created = await resp.json()
    assert created["givenName"] == "Ada"
    sid = created["sourcedId"]
    async with session.patch(f"{root}/users/{sid}", json={"familyName": "Lovelace"}) as resp:
        assert (await resp.json())["familyName"] == "Lovelace"
    async with session.post(f"{root}/users/usr-000000001/tobedeleted") as resp:
        assert (await resp.json())["status"] == "tobedeleted"
    async with session.delete(f"{root}/users/usr-000000002") as resp:
        assert resp.status == 200
    async with session.delete(f"{root}/users/usr-000000002") as resp:
        assert resp.status == 404
    async with session.get(f"{root}/truth") as resp:
        truth = await resp.json()
    assert [(c["sourcedId"], c["op"]) for c in truth] == [
        (sid, "created"),
        (sid, "updated"),
        ("usr-000000001", "deleted"),
        ("usr-000000002", "deleted"),
    ]
    async with session.get(f"{root}/truth?since=3") as resp:
        assert len(await resp.json()) == 1
    async with session.get(f"{root}/state/users") as resp:
        state = {r["sourcedId"] for r in await resp.json()}
    assert sid in state
    assert "usr-000000001" not in state
    async with session.post(f"{sim.url}/_admin/clock", json={"advance": 3600}) as resp:
        now = (await resp.json())["now"]
    assert now > truth[-1]["at"]
    async with session.put(f"{root}/faults", json={"rate": 1.0, "kinds": ["unavailable"]}) as resp:
        assert resp.status == 200
    assert sim.district("east").plan.faults.kinds == ("unavailable",)
    async with session.put(f"{root}/faults", json={"kinds": ["bogus"]}) as resp:
        assert resp.status == 400


async def test_admin_is_off_unless_asked_for(session):
    """Without ``admin=True`` the /_admin paths do not exist."""
    plain = Simulator([DistrictSpec(id="d", size="tiny")])
    async with plain.serve() as url, session.post(f"{url}/_admin/d/users", json={}) as resp:
        assert resp.status == 404
    assert plain.district("d").truth_log() == []


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_options_build_district_specs():
    """--districts/--versions/--size/--seed/--faults/--quirks map onto DistrictSpecs."""
    specs = specs_from_args(
        parse(
            "--districts", "3", "--versions", "1.1,1.2", "--size", "40", "--seed", "5",
            "--faults", "rate_limit,hang", "--fault-rate", "0.2", "--quirks", "x_count",
        )
    )  # fmt: skip
    assert [(s.id, s.version, s.seed) for s in specs] == [
        ("springfield", "1.1", 5),
        ("shelbyville", "1.2", 6),
        ("ogdenville", "1.1", 7),
    ]
    assert specs[0].size == "40"
    assert specs[0].faults.kinds == ("rate_limit", "hang")
    assert specs[0].faults.rate == 0.2
    assert specs[0].quirks == frozenset({"x_count"})


@pytest.mark.parametrize(
    "argv", [("--versions", "2.0"), ("--faults", "meteor"), ("--quirks", "odd"), ("--size", "huge")]
)
def test_cli_rejects_bad_options_with_exit_code_2(argv, capsys):
    """An unknown version, fault, quirk or size exits 2 with a message, serving nothing."""
    assert run(parse(*argv)) == 2
    assert "simulate:" in capsys.readouterr().err


async def test_written_config_points_the_producer_at_each_district():
    """--write-config output is TOML with one [[districts]] per district and working URLs."""
    sim = Simulator(specs_from_args(parse("--districts", "2", "--size", "tiny")))
    async with sim.serve():
        config = tomllib.loads(config_toml(sim))
    assert set(config) >= {"kafka", "sync", "state", "http", "districts"}
    first, second = config["districts"]
    assert first["base_url"] == sim.district("springfield").base_url
    assert first["auth"] == "oauth2"
    assert first["token_url"].endswith("/springfield/oauth/token")
    assert second["version"] == "1.1"
    assert second["auth"] == "oauth1"
    assert second["client_secret"] == sim.district("shelbyville").spec.client_secret


async def test_proxy_paging_visits_every_11_record_once(sim, session):
    """Paging a 1.1 collection through the proxy by offset returns each record exactly once."""
    east = sim.district("east")
    headers = {"Authorization": f"Bearer {east.bearer}"}
    seen: list[str] = []
    offset = 0
    while True:
        url = f"{east.proxy_url}/enrollments?limit=7&offset={offset}"
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            total = int(resp.headers["X-Total-Count"])
            page = (await resp.json())["enrollments"]
        if not page:
            break
        seen += [r["sourcedId"] for r in page]
        offset += len(page)
    assert len(seen) == len(set(seen)) == total == east.counts()["enrollments"]
