"""A gateway over five `lockd engine`s that require a password and TLS with client
certificates, reached with rediss://:password@host:port?ssl_... URLs; the password never
shows in ClusterStatus, errors or logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockd.gateway import GatewayConfig
from lockd.gateway.nodes import redact
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import client, start_all
from tests.support import EngineProcess

PASSWORD = "pw-only-the-nodes-know"


@pytest.fixture
def secure_engines(tmp_path: Path, certs: dict[str, Path]) -> Iterator[list[EngineProcess]]:
    (tmp_path / "pass").write_text(PASSWORD)
    tls = ["--tls-cert", str(certs["server_pem"]), "--tls-key", str(certs["server_key"]),
           "--tls-client-ca", str(certs["ca_pem"])]  # fmt: skip
    procs = [
        EngineProcess(tmp_path / f"e{i}", "--password-file", str(tmp_path / "pass"), *tls)
        for i in range(5)
    ]
    try:
        yield start_all(procs)
    finally:
        for proc in procs:
            proc.close()


def node_urls(
    engines: list[EngineProcess], certs: dict[str, Path], password: str
) -> tuple[str, ...]:
    query = (f"ssl_ca_certs={certs['ca_pem']}&ssl_certfile={certs['client_pem']}"
             f"&ssl_keyfile={certs['client_key']}")  # fmt: skip
    return tuple(f"rediss://:{password}@127.0.0.1:{e.port}?{query}" for e in engines)


async def test_gateway_over_password_and_tls_engines(
    secure_engines: list[EngineProcess], certs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = GatewayConfig(nodes=node_urls(secure_engines, certs, PASSWORD), max_ttl_ms=10_000)
    with caplog.at_level(logging.DEBUG):
        async with client(config) as (_, stub):
            got = await stub.Acquire(pb.AcquireRequest(name="secure", ttl_ms=5000))
            assert got.fencing_token > 0
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert status.quorum_available
            for node in status.nodes:
                assert PASSWORD not in node.address and ":***@127.0.0.1:" in node.address
                assert "ssl_keyfile" not in node.address
    assert PASSWORD not in caplog.text


async def test_wrong_password_is_reported_without_the_password(
    secure_engines: list[EngineProcess], certs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = GatewayConfig(nodes=node_urls(secure_engines, certs, "not-it"), max_ttl_ms=10_000)
    with caplog.at_level(logging.DEBUG):
        async with client(config) as (_, stub):
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert not status.quorum_available
            assert all(not n.reachable and n.error for n in status.nodes)
            assert all("not-it" not in n.address + n.error for n in status.nodes)
    assert "not-it" not in caplog.text


def test_redact_hides_the_password_and_options() -> None:
    assert redact("rediss://:s3@h:7379?ssl_ca_certs=/x") == "rediss://:***@h:7379"
    assert redact("redis://u:s3@h:1") == "redis://u:***@h:1"
    assert redact("redis://h:1") == "redis://h:1"


def test_unchecked_tls_is_warned_loudly(caplog: pytest.LogCaptureFixture) -> None:
    from lockd.gateway.nodes import RespNode

    with caplog.at_level(logging.WARNING):
        RespNode("rediss://:sekrit-42@127.0.0.1:1?ssl_cert_reqs=none", 10_000)
    assert "INSECURE" in caplog.text and "sekrit-42" not in caplog.text
    with pytest.raises(ValueError, match="unknown option"):
        RespNode("rediss://127.0.0.1:1?ssl_bogus=1", 10_000)
