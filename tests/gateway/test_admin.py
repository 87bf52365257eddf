"""ForceRelease over real gRPC: the admin credential (token or certificate CN), what it
does to the holder and the waiters, and every refusal."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import grpc
import pytest

from lockd.gateway import GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, client, fails, running, urls
from tests.support import EngineProcess

DENIED = grpc.StatusCode.PERMISSION_DENIED
TOKEN = "s3cret-admin-token"


def _admin(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def with_token(embedded: GatewayConfig, tmp_path: Path) -> GatewayConfig:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    return dataclasses.replace(embedded, admin_token_file=path)


async def _force_release_supersedes_the_holder(stub: Stub) -> None:
    held = await stub.Acquire(pb.AcquireRequest(name="stuck", ttl_ms=8000, owner="dead-pod"))
    waiter = asyncio.ensure_future(
        stub.Acquire(pb.AcquireRequest(name="stuck", ttl_ms=8000, wait_ms=5000))
    )
    await asyncio.sleep(0.05)
    done = await stub.ForceRelease(pb.ForceReleaseRequest(name="stuck"), metadata=_admin(TOKEN))
    assert done.released and done.nodes_released == 5
    assert done.fencing_counter == held.fencing_token
    # The waiter gets it at once, with a larger token; the old holder can do nothing.
    nxt = await asyncio.wait_for(waiter, 2)
    assert nxt.fencing_token > held.fencing_token
    renew = await fails(
        stub.Renew(pb.RenewRequest(name="stuck", lease_id=held.lease_id, ttl_ms=8000))
    )
    assert renew.reason == "LEASE_LOST"
    release = await fails(stub.Release(pb.ReleaseRequest(name="stuck", lease_id=held.lease_id)))
    assert release.reason == "NOT_OWNED"
    # Not held: nothing to release, still OK.
    await stub.Release(pb.ReleaseRequest(name="stuck", lease_id=nxt.lease_id))
    again = await stub.ForceRelease(pb.ForceReleaseRequest(name="stuck"), metadata=_admin(TOKEN))
    assert (again.released, again.nodes_released) == (False, 0)


async def test_force_release_with_the_admin_token(
    with_token: GatewayConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lockd.gateway")
    async with client(with_token) as (_, stub):
        await _force_release_supersedes_the_holder(stub)
    forced = [r for r in caplog.records if "forced release" in r.getMessage()]
    assert forced and all(r.levelno == logging.WARNING for r in forced)
    assert "'stuck'" in forced[0].getMessage() and "admin token" in forced[0].getMessage()
    assert TOKEN not in caplog.text


async def test_force_release_on_lockd_engine_processes(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000, admin_token_file=path)
    async with client(config) as (_, stub):
        await _force_release_supersedes_the_holder(stub)


async def test_force_release_refusals(with_token: GatewayConfig, embedded: GatewayConfig) -> None:
    async with client(with_token) as (_, stub):
        held = await stub.Acquire(pb.AcquireRequest(name="keep", ttl_ms=5000))
        for metadata, words in (
            (None, "needs an admin credential"),
            (_admin("wrong"), "wrong"),
            (_admin(""), "wrong"),
            ((("authorization", TOKEN),), "Bearer"),
            (_admin(TOKEN + "x"), "wrong"),
        ):
            failed = await fails(
                stub.ForceRelease(pb.ForceReleaseRequest(name="keep"), metadata=metadata)
            )
            assert (failed.code, failed.reason) == (DENIED, "NOT_ADMIN"), metadata
            assert words in failed.message
        # A lease id is no admin credential either.
        failed = await fails(
            stub.ForceRelease(
                pb.ForceReleaseRequest(name="keep"), metadata=_admin(held.lease_id.hex())
            )
        )
        assert failed.reason == "NOT_ADMIN"
        bad_name = await fails(
            stub.ForceRelease(pb.ForceReleaseRequest(name=""), metadata=_admin(TOKEN))
        )
        assert (bad_name.code, bad_name.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_NAME")
        # Nothing was released, and the gateway keeps serving.
        assert (await stub.Describe(pb.DescribeRequest(name="keep"))).held
        await stub.Renew(pb.RenewRequest(name="keep", lease_id=held.lease_id))
    async with client(embedded) as (_, stub):  # a gateway without an admin token
        failed = await fails(
            stub.ForceRelease(pb.ForceReleaseRequest(name="keep"), metadata=_admin(TOKEN))
        )
        assert (failed.code, failed.reason) == (DENIED, "NOT_ADMIN")


async def test_force_release_by_certificate_cn(
    embedded: GatewayConfig, certs: dict[str, Path]
) -> None:
    ca = certs["ca_pem"].read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=certs["client_key"].read_bytes(),
        certificate_chain=certs["client_pem"].read_bytes(),
    )
    for admins, allowed in ((("ops", "client"), True), (("ops",), False)):
        config = dataclasses.replace(
            embedded,
            tls_cert=certs["server_pem"],
            tls_key=certs["server_key"],
            tls_client_ca=certs["ca_pem"],
            admin_cns=admins,
        )
        async with (
            running(config) as gateway,
            grpc.aio.secure_channel(f"127.0.0.1:{gateway.port}", creds) as ch,
        ):
            stub = Stub(ch)
            await stub.Acquire(pb.AcquireRequest(name="cn", ttl_ms=5000))
            if allowed:
                done = await stub.ForceRelease(pb.ForceReleaseRequest(name="cn"))
                assert done.nodes_released == 5
            else:
                failed = await fails(stub.ForceRelease(pb.ForceReleaseRequest(name="cn")))
                assert (failed.code, failed.reason) == (DENIED, "NOT_ADMIN")
                assert "CN client" in failed.message
                assert (await stub.Describe(pb.DescribeRequest(name="cn"))).held
