"""Shared fixtures, and `async def` tests (each runs in its own `asyncio.run` loop)."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EngineProcess, redis_server, redis_server_binary


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run coroutine tests in a fresh event loop (no plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True


@pytest.fixture
def engine_process(tmp_path: Path) -> Iterator[EngineProcess]:
    """A running `lockd engine` in a fresh directory."""
    proc = EngineProcess(tmp_path / "engine").start()
    yield proc
    proc.close()


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """A real redis-server with lockd's Lua library loaded."""
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed; `make test` installs Debian's package")
    with redis_server(tmp_path / "redis") as port:
        yield port


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
