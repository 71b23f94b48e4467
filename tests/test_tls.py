"""OneRoster over HTTPS: certificates are verified by default.

The simulator is served over TLS with a certificate from a throwaway CA (``security_helpers``).
A district without ``ssl_cafile`` (system trust store) or with another CA is refused with an
error that names the certificate, before anything is written; with ``ssl_cafile`` set to the CA
the sync works end to end (token endpoint and collections both over TLS).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from producer.errors import SourceError
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import ENTITIES, read_all, rebuild
from tests.harness import make_config
from tests.security_helpers import Pki, make_pki

pytestmark = pytest.mark.integration

DISTRICT = "tls"


@asynccontextmanager
async def serve_tls(sim: Simulator, pki: Pki) -> AsyncIterator[str]:
    """Serve ``sim`` over HTTPS on loopback; yields ``https://127.0.0.1:PORT``."""
    runner = web.AppRunner(sim.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sim.url = f"https://127.0.0.1:{port}"
    for district in sim.districts:
        district.bind(sim.url)
    try:
        yield sim.url
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The CA and server certificate the HTTPS simulator presents."""
    return make_pki(tmp_path_factory.mktemp("tls-pki"))


@pytest.fixture
async def sim(pki: Pki) -> AsyncIterator[Simulator]:
    """A tiny 1.2 (OAuth2) district behind HTTPS."""
    simulator = Simulator([DistrictSpec(id=DISTRICT, version="1.2", size="tiny", seed=12)])
    async with serve_tls(simulator, pki):
        yield simulator


async def nothing_written(bootstrap: str, prefix: str) -> None:
    """No event, dead letter or checkpoint under ``prefix``."""
    rebuilt = await rebuild(bootstrap, prefix)
    assert rebuilt.ops == {}
    assert await read_all(bootstrap, f"{prefix}.deadletter") == []
    assert await read_all(bootstrap, f"{prefix}.checkpoints") == []


async def test_https_source_with_its_ca_configured_syncs_everything(
    sim: Simulator, pki: Pki, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """``ssl_cafile`` = the CA that signed the server certificate: token request and every
    collection go over verified TLS, and the committed events equal the truth."""
    assert sim.district(DISTRICT).base_url.startswith("https://")
    config = make_config(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path,
        district_overrides={"ssl_cafile": str(pki.ca_cert)},
    )
    async with Service(config) as service:
        await service.sync(DISTRICT)
    rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
    assert rebuilt.violations == []
    for entity in ENTITIES:
        assert rebuilt.keys(entity, DISTRICT) == set(sim.district(DISTRICT).truth_state(entity))


@pytest.mark.parametrize("trust", ["system store (no ssl_cafile)", "another CA"])
async def test_https_source_with_an_untrusted_certificate_is_refused(
    trust: str,
    sim: Simulator,
    kafka_bootstrap: str,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    """Without ``ssl_cafile`` (verification on by default) or with a CA that did not sign the
    server's certificate, the sync fails with a SourceError naming the certificate
    verification, and nothing at all is emitted."""
    overrides: dict[str, Any] = {"max_retries": 0}
    if trust == "another CA":
        overrides["ssl_cafile"] = str(make_pki(tmp_path / "other", name="other").ca_cert)
    config = make_config(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path / "state",
        district_overrides=overrides,
    )
    async with Service(config) as service:
        with pytest.raises(SourceError) as caught:
            await service.sync(DISTRICT)
        assert service.checkpoints() == []
    message = str(caught.value).lower()
    assert "certificate verify failed" in message
    assert "127.0.0.1" in message  # which server
    await nothing_written(kafka_bootstrap, unique_prefix)


async def test_verify_tls_false_is_an_explicit_opt_out(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """``verify_tls = false`` (documented as an opt-out for test servers) accepts the
    self-signed server; without it the same district is refused (previous test)."""
    config = make_config(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path,
        district_overrides={"verify_tls": False},
    )
    async with Service(config) as service:
        results = await service.sync(DISTRICT, entities=["orgs"])
    assert results[0].created == len(sim.district(DISTRICT).truth_state("orgs")) > 0
