"""Shared fixtures, and `async def` tests (each runs in its own `asyncio.run` loop)."""

from __future__ import annotations

import asyncio
import inspect
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
