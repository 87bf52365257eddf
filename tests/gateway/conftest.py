"""Fixtures of the gateway integration tests.

Tests here may be `async def`: each runs in its own `asyncio.run` loop, where it starts
`Gateway`s in-process and talks to them over real gRPC on loopback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockd.gateway import GatewayConfig
from tests.gateway.helpers import start_all
from tests.support import EngineProcess


@pytest.fixture
def embedded(tmp_path: Path) -> GatewayConfig:
    """The default deployment: five embedded engines under tmp_path."""
    return GatewayConfig(data_dir=tmp_path / "data", max_ttl_ms=10_000)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[EngineProcess]]:
    """Five running `lockd engine` processes (max TTL 10 s), killed at the end."""
    procs = [EngineProcess(tmp_path / f"engine-{i}", "--max-ttl", "10s") for i in range(5)]
    try:
        yield start_all(procs)
    finally:
        for proc in procs:
            proc.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA with a server (127.0.0.1, localhost) and a client certificate,
    plus a client certificate from an unrelated CA; made with the openssl CLI."""
    d = tmp_path_factory.mktemp("certs")
    (d / "openssl.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n"
        "[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "[server]\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage = serverAuth\n"
        "[client]\nextendedKeyUsage = clientAuth\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-config", "openssl.cnf", "-x509", *key, "-keyout", f"{ca}.key",
                "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=lockd test {ca}",
                "-extensions", "ca")  # fmt: skip
    for leaf, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        ext = "server" if leaf == "server" else "client"
        openssl("req", "-config", "openssl.cnf", "-new", *key, "-keyout", f"{leaf}.key",
                "-out", f"{leaf}.csr", "-subj", f"/CN={leaf}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{leaf}.pem", "-days", "2",
                "-extfile", "openssl.cnf", "-extensions", ext)  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}
