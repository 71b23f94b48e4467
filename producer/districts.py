"""The districts the service polls: the registry, ClassLink discovery refresh, and the factory
that turns a district into a ``OneRosterClient`` (HTTP session, TLS, authenticator, retries).

A district from the config file is its ``DistrictConfig``; a district found through ClassLink
becomes a ``DistrictConfig`` too (``discovered_config``), with the same defaults, so every
client is built from one kind of value.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from producer.auth import Authenticator, BearerToken, OAuth1Signer, OAuth2ClientCredentials
from producer.client import OneRosterClient
from producer.config import ClassLinkConfig, Config, DistrictConfig
from producer.discovery import (
    DirectOAuth1,
    DiscoveredDistrict,
    ProxyBearer,
    bearer_reader,
    discover,
)
from producer.errors import ConfigError
from producer.model import Entity
from producer.protocols import ClientObserver
from producer.retry import RetryPolicy


def discovered_config(found: DiscoveredDistrict) -> DistrictConfig:
    """The ``DistrictConfig`` of a district found through ClassLink: its id, server, version and
    credentials; everything else at the config's defaults. Not validated: ClassLink's values
    are used as they are (its authentication is built from ``found.auth``)."""
    auth = found.auth
    credentials: dict[str, Any] = (
        {"auth": "bearer", "bearer": auth.token}
        if isinstance(auth, ProxyBearer)
        else {"auth": "oauth1", "client_id": auth.client_id, "client_secret": auth.client_secret}
    )
    return DistrictConfig.model_construct(
        id=found.id, base_url=found.base_url, version=found.version, **credentials
    )


@dataclass(frozen=True, slots=True)
class District:
    """One district as the service polls it: its config, and what ClassLink said of it."""

    config: DistrictConfig
    discovered: DiscoveredDistrict | None = None

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def entities(self) -> tuple[Entity, ...]:
        return self.config.entities


def _ssl_context(cafile: str | None, verify: bool) -> ssl.SSLContext | bool:
    if not verify:
        return False
    if cafile is None:
        return True
    return ssl.create_default_context(cafile=cafile)


class ClientFactory:
    """Builds a district's HTTP session and ``OneRosterClient``."""

    def __init__(self, classlink: ClassLinkConfig | None, observer: ClientObserver) -> None:
        self._classlink = classlink
        self._observer = observer
        #: One connection pool per TLS setting, shared by the districts' sessions: districts on
        #: one host (a ClassLink proxy, one SIS serving many districts) reuse each other's
        #: kept-alive connections instead of each opening its own at every poll. No total
        #: limit: each district's ``concurrency`` and the scheduler bound the requests.
        self._connectors: dict[tuple[str | None, bool], aiohttp.TCPConnector] = {}

    def _connector(self, cafile: str | None, verify: bool) -> aiohttp.TCPConnector:
        found = self._connectors.get((cafile, verify))
        if found is None or found.closed:
            found = aiohttp.TCPConnector(limit=0, ssl=_ssl_context(cafile, verify))
            self._connectors[cafile, verify] = found
        return found

    async def close(self) -> None:
        """Close the shared connection pools (after every session that uses them)."""
        connectors, self._connectors = self._connectors, {}
        for connector in connectors.values():
            await connector.close()

    def build(self, district: District) -> tuple[OneRosterClient, aiohttp.ClientSession]:
        cfg = district.config
        connector = self._connector(str(cfg.ssl_cafile) if cfg.ssl_cafile else None, cfg.verify_tls)
        session = aiohttp.ClientSession(connector=connector, connector_owner=False)
        client = OneRosterClient(
            district_id=district.id,
            base_url=district.base_url,
            version=cfg.version,
            auth=self.authenticator(district, session),
            page_size=cfg.page_size,
            concurrency=cfg.concurrency,
            request_timeout=cfg.request_timeout,
            retry=RetryPolicy.for_district(cfg),
            session=session,
            observer=self._observer,
        )
        return client, session

    def authenticator(self, district: District, session: aiohttp.ClientSession) -> Authenticator:
        if district.discovered is not None:
            auth = district.discovered.auth
            if isinstance(auth, ProxyBearer):
                classlink = self._classlink
                if classlink is None:
                    return BearerToken(auth.token)
                # After a 401 the tenant's bearer is read again from /applications (rotation).
                reread = bearer_reader(
                    session,
                    host=classlink.host,
                    api_key=classlink.api_key,
                    tenant_id=district.discovered.tenant_id,
                )
                return BearerToken(reread, initial=auth.token)
            assert isinstance(auth, DirectOAuth1)
            return OAuth1Signer(client_id=auth.client_id, client_secret=auth.client_secret)
        cfg = district.config
        if cfg.auth == "oauth2":
            assert cfg.token_url
            assert cfg.client_id
            assert cfg.client_secret
            return OAuth2ClientCredentials(
                session=session,
                token_url=cfg.token_url,
                client_id=cfg.client_id,
                client_secret=cfg.client_secret,
                scopes=cfg.scopes,
                credentials_in=cfg.token_auth,
            )
        if cfg.auth == "oauth1":
            assert cfg.client_id
            assert cfg.client_secret
            return OAuth1Signer(
                client_id=cfg.client_id,
                client_secret=cfg.client_secret,
                signature_method=cfg.signature_method,
            )
        assert cfg.bearer is not None
        return BearerToken(cfg.bearer)


class DistrictRegistry:
    """The districts by id (static ones from the config, discovered ones from ClassLink), and
    each one's client, built on first use."""

    def __init__(self, config: Config, *, observer: ClientObserver) -> None:
        self._static = {d.id for d in config.districts}
        self._districts: dict[str, District] = {d.id: District(d) for d in config.districts}
        self._factory = ClientFactory(config.classlink, observer)
        self._observer = observer
        self._clients: dict[str, tuple[OneRosterClient, aiohttp.ClientSession]] = {}

    @property
    def ids(self) -> list[str]:
        return sorted(self._districts)

    def get(self, district_id: str) -> District:
        try:
            return self._districts[district_id]
        except KeyError:
            raise ConfigError(
                "districts", f"unknown district {district_id!r}; known: {self.ids}"
            ) from None

    def client(self, district_id: str) -> OneRosterClient:
        """The district's client (built on first use)."""
        found = self._clients.get(district_id)
        if found is None:
            found = self._clients[district_id] = self._factory.build(self.get(district_id))
        return found[0]

    async def refresh_discovery(self, classlink: ClassLinkConfig) -> list[str]:
        """Replace the discovered districts with ClassLink's current list; returns the ids of
        the districts removed, changed or added (any client of theirs is closed)."""
        async with aiohttp.ClientSession() as session:
            found = await discover(
                session,
                host=classlink.host,
                api_key=classlink.api_key,
                access=classlink.access,
                observer=self._observer,
            )
        current = {d.id: d for d in found if d.id not in self._static}
        changed = [i for i, d in self._districts.items() if d.discovered and i not in current]
        for district in current.values():
            known = self._districts.get(district.id)
            if known is None or known.discovered != district:
                changed.append(district.id)
        for district_id in changed:
            await self.remove(district_id)
        for district_id in changed:
            if district_id in current:
                district = current[district_id]
                self._districts[district_id] = District(discovered_config(district), district)
        return changed

    async def remove(self, district_id: str) -> None:
        """Drop a district and close its client."""
        self._districts.pop(district_id, None)
        await self.close_client(district_id)

    async def close_client(self, district_id: str) -> None:
        pair = self._clients.pop(district_id, None)
        if pair is not None:
            client, session = pair
            await client.close()
            await session.close()

    async def close(self) -> None:
        """Close every client and the connection pools; idempotent."""
        for district_id in list(self._clients):
            await self.close_client(district_id)
        await self._factory.close()
