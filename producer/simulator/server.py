"""The simulator: districts in one aiohttp server, token endpoint, ClassLink discovery, admin."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from producer.simulator.admin import add_admin_routes
from producer.simulator.auth import (
    ALL_SCOPES,
    TokenStore,
    basic_credentials,
    bearer,
    canonical_scope,
)
from producer.simulator.district import District, DistrictSpec
from producer.simulator.faults import Faults
from producer.simulator.protocol import imsx, json_response, serve
from producer.simulator.store import VIEWS, SimClock, TruthChange, TruthLog


class Simulator:
    """Simulated OneRoster districts behind one HTTP server. See the package docstring."""

    def __init__(
        self,
        districts: Iterable[DistrictSpec],
        *,
        classlink_api_key: str | None = None,
        admin: bool = False,
        start: datetime | None = None,
        frozen_clock: bool = False,
    ) -> None:
        self.clock = SimClock(start, frozen=frozen_clock)
        self.log = TruthLog()
        self.tokens = TokenStore()
        self.admin = admin
        self.classlink_api_key = classlink_api_key
        self._districts: dict[str, District] = {}
        self._by_app: dict[str, District] = {}
        for n, spec in enumerate(districts, start=1):
            if spec.id in self._districts:
                raise ValueError(f"duplicate district id {spec.id!r}")
            district = District(
                spec, clock=self.clock, log=self.log, tokens=self.tokens, tenant_id=n
            )
            self._districts[spec.id] = district
            self._by_app[district.application_id] = district
        self.url = ""

    # -- public API ---------------------------------------------------------------------------
    def district(self, district_id: str) -> District:
        """The running district ``district_id`` (KeyError if unknown)."""
        return self._districts[district_id]

    @property
    def districts(self) -> list[District]:
        """All districts, in the order given."""
        return list(self._districts.values())

    def set_faults(self, district_id: str, faults: Faults) -> None:
        """Replace a district's faults."""
        self.district(district_id).set_faults(faults)

    def advance_clock(self, seconds: float) -> datetime:
        """Move the simulated clock forward (tokens expire, mutations are stamped later)."""
        return self.clock.advance(seconds)

    def truth_log(self, since: int = 0) -> list[TruthChange]:
        """Every district's real changes with ``seq > since``, in order."""
        return [c for c in self.log.changes if c.seq > since]

    def app(self) -> web.Application:
        """The aiohttp application (use ``serve`` unless you run it yourself)."""
        app = web.Application()
        app.router.add_post("/{district}/oauth/token", self._token)
        app.router.add_get("/applications", self._applications)
        app.router.add_get("/applications/{app_id}/server", self._application_server)
        if self.admin:
            add_admin_routes(app, self)
        app.router.add_get("/{root}/ims/oneroster/{rest:.*}", self._oneroster)
        return app

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve until the block exits; yields the server root URL ``http://host:port``."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://{host}:{bound}"
        for district in self._districts.values():
            district.bind(self.url)
        try:
            yield self.url
        finally:
            await runner.cleanup()

    # -- handlers -----------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        district = self._districts.get(request.match_info["district"])
        if district is None:
            return json_response({"error": "invalid_client"}, 401)
        form = await request.post()
        creds = basic_credentials(request.headers.get("Authorization"))
        if creds is None and "client_id" in form:
            creds = (str(form.get("client_id", "")), str(form.get("client_secret", "")))
        spec = district.spec
        if creds is None or not (
            secrets.compare_digest(creds[0], spec.client_id)
            and secrets.compare_digest(creds[1], spec.client_secret)
        ):
            challenge = CIMultiDict({"WWW-Authenticate": 'Basic realm="oneroster-token"'})
            return json_response({"error": "invalid_client"}, 401, challenge)
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type"}, 400)
        scopes = _granted(spec, str(form.get("scope", "")).split())
        if isinstance(scopes, web.Response):
            return scopes
        token = self.tokens.issue(district.id, scopes, spec.token_ttl, self.clock.now())
        return json_response(
            {
                "access_token": token.value,
                "token_type": "bearer",
                "expires_in": int(spec.token_ttl),
                "scope": " ".join(sorted(scopes)),
            }
        )

    def _listed(self) -> list[District]:
        return [d for d in self._districts.values() if d.spec.version == "1.1" and d.spec.classlink]

    def _classlink_denied(self, request: web.Request) -> web.Response | None:
        key = bearer(request.headers.get("Authorization"))
        if (
            self.classlink_api_key is None
            or key is None
            or not secrets.compare_digest(key, self.classlink_api_key)
        ):
            return json_response({"status": 0, "message": "Unauthorized"}, 401)
        return None

    async def _applications(self, request: web.Request) -> web.Response:
        denied = self._classlink_denied(request)
        if denied is not None:
            return denied
        try:
            limit = int(request.query.get("limit", "100"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return json_response({"status": 0, "message": "limit and offset are integers"}, 400)
        apps = [
            {
                "id": 1000 + d.tenant_id,
                "tenant_id": d.tenant_id,
                "tenant_name": d.spec.tenant_name or d.id.replace("-", " ").title(),
                "application_id": 57,
                "name": "oneroster-cdc simulator",
                "oneroster_application_id": d.oneroster_application_id,
                "bearer": d.bearer,
                "enabled": "true" if d.spec.enabled else "false",
                "tenant_status": d.spec.tenant_status,
            }
            for d in self._listed()
        ]
        return json_response({"status": 1, "applications": apps[offset : offset + max(0, limit)]})

    async def _application_server(self, request: web.Request) -> web.Response:
        denied = self._classlink_denied(request)
        if denied is not None:
            return denied
        district = self._by_app.get(request.match_info["app_id"])
        if district is None or district not in self._listed():
            return json_response({"status": 0, "message": "Unknown application"}, 404)
        server: dict[str, Any] = {
            "client_id": district.spec.client_id,
            "client_secret": district.spec.client_secret,
            "endpoint_url": district.base_url,
        }
        return json_response({"status": 1, "server": server, "message": ""})

    async def _oneroster(self, request: web.Request) -> web.StreamResponse:
        root = request.match_info["root"]
        district = self._districts.get(root)
        via_proxy = False
        if district is None:
            district = self._by_app.get(root)
            via_proxy = district is not None and district in self._listed()
        if district is None:
            return imsx(404, "unknownobject", f"no district {root!r}")
        parts = [p for p in request.match_info["rest"].split("/") if p]
        expected = ["v1p1"] if district.spec.version == "1.1" else ["rostering", "v1p2"]
        if via_proxy:
            expected = ["v1p1"]
        head, tail = parts[: len(expected)], parts[len(expected) :]
        if head != expected or not 1 <= len(tail) <= 2 or tail[0] not in VIEWS:
            return imsx(404, "unknownobject", "unknown path", district.spec.version)
        return await serve(
            request, district, tail[0], tail[1] if len(tail) == 2 else None, via_proxy
        )


def _granted(spec: DistrictSpec, requested: list[str]) -> frozenset[str] | web.Response:
    """The scopes a token request gets, or the 400 that refuses it."""
    if not requested and "scope_required" in spec.quirks:
        return json_response(
            {"error": "invalid_scope", "error_description": "a scope is required"}, 400
        )
    granted = frozenset(canonical_scope(s) for s in spec.scopes)
    if not requested:
        return granted
    wanted = frozenset(canonical_scope(s) for s in requested)
    if not wanted <= frozenset(ALL_SCOPES):
        return json_response({"error": "invalid_scope"}, 400)
    return wanted & granted or json_response({"error": "invalid_scope"}, 400)
