"""Admin HTTP endpoints (only when the simulator is built with ``admin=True``).

* ``POST   /_admin/{district}/{entity}``                        create (JSON body: fields)
* ``PATCH  /_admin/{district}/{entity}/{sourcedId}``            update (JSON body: fields)
* ``POST   /_admin/{district}/{entity}/{sourcedId}/tobedeleted`` soft delete
* ``DELETE /_admin/{district}/{entity}/{sourcedId}``            hard delete
* ``GET    /_admin/{district}/truth?since=SEQ``                 the district's change log
* ``GET    /_admin/{district}/state/{entity}``                  active records as served
* ``PUT    /_admin/{district}/faults``                          ``{"rate", "kinds", "seed", ...}``
* ``POST   /_admin/clock``                                       ``{"advance": seconds}``
* ``GET    /_admin/clock``                                       the simulated time

Answers are JSON; an unknown district, entity or record gives 404, a bad body 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from producer.simulator.faults import Faults
from producer.simulator.protocol import json_response
from producer.simulator.store import TruthChange

if TYPE_CHECKING:
    from producer.simulator.district import District
    from producer.simulator.server import Simulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def change_json(change: TruthChange) -> dict[str, Any]:
    """A truth-log entry as JSON."""
    return {
        "seq": change.seq,
        "district": change.district,
        "entity": change.entity,
        "sourcedId": change.sourced_id,
        "op": change.op,
        "record": change.record,
        "at": change.at.isoformat(),
        "reason": change.reason,
    }


def add_admin_routes(app: web.Application, sim: Simulator) -> None:
    """Register the admin endpoints on ``app``."""

    def district_of(request: web.Request) -> District:
        try:
            return sim.district(request.match_info["district"])
        except KeyError as exc:
            raise web.HTTPNotFound(text="unknown district") from exc

    async def body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text="body is not JSON") from exc
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return data

    def guarded(fn: Callable[[web.Request], Awaitable[Any]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                result = await fn(request)
            except KeyError as exc:
                return json_response({"error": str(exc)}, 404)
            except (ValueError, TypeError) as exc:
                return json_response({"error": str(exc)}, 400)
            return json_response(result)

        return handler

    async def create(request: web.Request) -> Any:
        return district_of(request).create(request.match_info["entity"], await body(request))

    async def update(request: web.Request) -> Any:
        d = district_of(request)
        return d.update(
            request.match_info["entity"], request.match_info["sid"], **await body(request)
        )

    async def tobedeleted(request: web.Request) -> Any:
        d = district_of(request)
        return d.mark_tobedeleted(request.match_info["entity"], request.match_info["sid"])

    async def hard_delete(request: web.Request) -> Any:
        district_of(request).hard_delete(request.match_info["entity"], request.match_info["sid"])
        return {"deleted": request.match_info["sid"]}

    async def truth(request: web.Request) -> Any:
        since = int(request.query.get("since", "0"))
        return [change_json(c) for c in district_of(request).truth_log(since)]

    async def state(request: web.Request) -> Any:
        return list(district_of(request).truth_state(request.match_info["entity"]).values())

    async def faults(request: web.Request) -> Any:
        d = district_of(request)
        data = await body(request)
        d.set_faults(Faults(**{**data, "kinds": tuple(data.get("kinds", ()))}))
        return {"faults": data}

    async def clock(request: web.Request) -> Any:
        if request.method == "POST":
            sim.advance_clock(float((await body(request)).get("advance", 0)))
        return {"now": sim.clock.now().isoformat()}

    r = app.router
    r.add_get("/_admin/clock", guarded(clock))
    r.add_post("/_admin/clock", guarded(clock))
    r.add_get("/_admin/{district}/truth", guarded(truth))
    r.add_get("/_admin/{district}/state/{entity}", guarded(state))
    r.add_put("/_admin/{district}/faults", guarded(faults))
    r.add_post("/_admin/{district}/{entity}", guarded(create))
    r.add_patch("/_admin/{district}/{entity}/{sid}", guarded(update))
    r.add_post("/_admin/{district}/{entity}/{sid}/tobedeleted", guarded(tobedeleted))
    r.add_delete("/_admin/{district}/{entity}/{sid}", guarded(hard_delete))
