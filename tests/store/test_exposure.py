"""The store takes the gateway's TLS options, and both servers say what they expose
when they listen beyond loopback without TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import grpc
import pytest

from lockd.gateway import Gateway, GatewayConfig
from lockd.store import StoreConfig, create_server
from lockd_client import StoreClient, StoreError


async def test_store_over_tls_refuses_plaintext(tmp_path: Path, certs: dict[str, Path]) -> None:
    config = StoreConfig(
        tmp_path / "s", "127.0.0.1:0", tls_cert=certs["server_pem"], tls_key=certs["server_key"]
    )
    server, port = await create_server(config)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=certs["ca_pem"].read_bytes())

        def calls() -> None:
            with StoreClient(f"127.0.0.1:{port}", credentials=creds) as store:
                assert store.write("r", "k", b"v", token=1) == 1
            with StoreClient(f"127.0.0.1:{port}", timeout=2) as plain:
                with pytest.raises(StoreError) as refused:
                    plain.read("r", "k")
                assert refused.value.code == grpc.StatusCode.UNAVAILABLE

        await asyncio.to_thread(calls)
    finally:
        await server.stop(0.5)


async def test_plaintext_beyond_loopback_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server, _ = await create_server(StoreConfig(tmp_path / "s", "0.0.0.0:0"))
    await server.stop(0.5)
    gateway = Gateway(
        dataclasses.replace(GatewayConfig(data_dir=tmp_path / "g"), listen="0.0.0.0:0")
    )
    await gateway.start()
    await gateway.stop(0.5)
    warned = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert any(m.startswith("lockd store listens on 0.0.0.0:0") for m in warned), warned
    assert any(m.startswith("lockd gateway listens on 0.0.0.0:0") for m in warned), warned
    assert all("--tls-cert" in m and "in clear" in m for m in warned)
    # Loopback is quiet.
    caplog.clear()
    server, _ = await create_server(StoreConfig(tmp_path / "s2", "127.0.0.1:0"))
    await server.stop(0.5)
    assert not [r for r in caplog.records if "without TLS" in r.getMessage()]
