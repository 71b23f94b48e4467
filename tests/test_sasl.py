"""Kafka over SASL_SSL (SCRAM-SHA-512): the producer authenticates and verifies the broker.

A separate broker (``scripts/kafka`` with ``KAFKA_SASL_SSL_PORT``, its own ports and data
directory; the shared broker is not touched) offers a PLAINTEXT listener, used here only by the
independent checker, and a SASL_SSL listener with a certificate from a throwaway CA and one
SCRAM user created when the storage is formatted.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from producer.config import Config, KafkaConfig
from producer.errors import CdcError, SinkError
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import ENTITIES, rebuild
from tests.conftest import ServeSimulator
from tests.harness import make_config
from tests.security_helpers import Pki, free_ports, make_pki, own_broker

pytestmark = pytest.mark.integration

USER = "cdc-producer"


@dataclass(frozen=True)
class SaslBroker:
    """A running broker with a PLAINTEXT and a SASL_SSL listener."""

    plaintext: str
    sasl_ssl: str
    pki: Pki
    password: str


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    """Starts the SASL_SSL broker for this module and stops it (removing its data) afterwards."""
    base = tmp_path_factory.mktemp("sasl")
    pki = make_pki(base / "pki")
    port, cport, sport = free_ports(3)
    password = secrets.token_urlsafe(18)
    settings = {
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(cport),
        "KAFKA_SASL_SSL_PORT": str(sport),
        "KAFKA_SSL_CERT": str(pki.server_cert),
        "KAFKA_SSL_KEY": str(pki.server_key),
        "KAFKA_SCRAM_USER": USER,
        "KAFKA_SCRAM_PASSWORD": password,
    }
    with own_broker(base / "data", settings) as plaintext:
        yield SaslBroker(plaintext, f"127.0.0.1:{sport}", pki, password)


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    """One tiny 1.2 district on loopback."""
    return await serve_simulator([DistrictSpec(id="sec", version="1.2", size="tiny", seed=8)])


def sasl_config(
    sim: Simulator, broker: SaslBroker, prefix: str, state_dir: Path, **kafka: object
) -> Config:
    """A config whose ``[kafka]`` section talks SASL_SSL to ``broker``."""
    base = make_config(sim, bootstrap=broker.sasl_ssl, prefix=prefix, state_dir=state_dir)
    section = {
        **base.kafka.model_dump(exclude={"transactional_id"}),
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": USER,
        "sasl_password": broker.password,
        "ssl_cafile": str(broker.pki.ca_cert),
        **kafka,
    }
    return base.model_copy(update={"kafka": KafkaConfig.model_validate(section)})


async def topics_with(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(f"{prefix}."))
    finally:
        await admin.close()


async def test_sync_over_sasl_ssl_with_the_right_credentials_commits_every_event(
    sasl_broker: SaslBroker, sim: Simulator, unique_prefix: str, tmp_path: Path
) -> None:
    """With the SCRAM-SHA-512 user and the CA that signed the broker's certificate, the service
    starts, a snapshot commits, and the checker (over the PLAINTEXT listener) finds every
    record of the truth exactly once."""
    config = sasl_config(sim, sasl_broker, unique_prefix, tmp_path)
    async with Service(config) as service:
        assert await service.broker_reachable()
        await service.sync("sec")
    rebuilt = await rebuild(sasl_broker.plaintext, unique_prefix)
    assert rebuilt.violations == []
    truth = {e: set(sim.district("sec").truth_state(e)) for e in ENTITIES}
    for entity in ENTITIES:
        assert rebuilt.keys(entity, "sec") == truth[entity], entity
    assert rebuilt.ops == {"CREATED": sum(len(keys) for keys in truth.values())}


async def test_wrong_password_fails_at_start_and_writes_nothing(
    sasl_broker: SaslBroker, sim: Simulator, unique_prefix: str, tmp_path: Path
) -> None:
    """A wrong SCRAM password: the service refuses to start with a Kafka error, creates no
    topic and writes nothing; the password appears in no message."""
    wrong = "not-" + sasl_broker.password
    config = sasl_config(sim, sasl_broker, unique_prefix, tmp_path, sasl_password=wrong)
    with pytest.raises(SinkError) as caught:
        async with Service(config) as service:
            await service.sync("sec")
    assert wrong not in str(caught.value)
    assert sasl_broker.password not in str(caught.value)
    assert await topics_with(sasl_broker.plaintext, unique_prefix) == []


async def test_wrong_password_error_names_authentication_and_is_not_retried(
    sasl_broker: SaslBroker, sim: Simulator, unique_prefix: str, tmp_path: Path
) -> None:
    """The start-up error of a wrong SCRAM password says authentication failed (what to fix)
    and is not retriable."""
    config = sasl_config(sim, sasl_broker, unique_prefix, tmp_path, sasl_password="wrong-pw")
    with pytest.raises(CdcError) as caught:
        async with Service(config):
            pass
    assert "authenticat" in str(caught.value).lower()
    assert caught.value.retriable is False


async def test_broker_certificate_from_an_untrusted_ca_is_refused(
    sasl_broker: SaslBroker, sim: Simulator, unique_prefix: str, tmp_path: Path
) -> None:
    """Right credentials but ``ssl_cafile`` naming another CA: the TLS handshake fails, the
    service does not start, nothing is written (the password is never sent unverified)."""
    other = make_pki(tmp_path / "other-pki", name="someone else")
    config = sasl_config(sim, sasl_broker, unique_prefix, tmp_path, ssl_cafile=str(other.ca_cert))
    with pytest.raises(SinkError):
        async with Service(config):
            pass
    assert await topics_with(sasl_broker.plaintext, unique_prefix) == []
