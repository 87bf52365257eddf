"""Fixtures of the client-library and CLI tests.

Everything here talks real gRPC over loopback. `serve` is one `lockd serve` process (five
embedded engines) shared by the whole directory; tests use distinct lock names. Tests
that kill a gateway start their own. Tests may be `async def`: each runs in its own
`asyncio.run` loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockd_client import Client
from tests.client.helpers import LockdProcess, serve_process, store_process


@pytest.fixture(scope="session")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockdProcess]:
    """One `lockd serve` process for the directory (max TTL 30 s)."""
    proc = serve_process(tmp_path_factory.mktemp("serve") / "data", "--max-ttl", "30s")
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def new_serve(tmp_path: Path) -> Iterator[Callable[..., LockdProcess]]:
    """Start a private `lockd serve` process (killed at the end): `new_serve(*flags)`."""
    started: list[LockdProcess] = []

    def start(*extra: str, data_dir: Path | None = None) -> LockdProcess:
        directory = data_dir or tmp_path / f"serve-{len(started)}"
        proc = serve_process(directory, *extra)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LockdProcess]:
    """A `lockd store` process on a fresh directory."""
    proc = store_process(tmp_path / "store").start()
    yield proc
    proc.close()


@pytest.fixture
def client(serve: LockdProcess) -> Iterator[Client]:
    """A blocking client of the shared gateway."""
    with Client([serve.endpoint], timeout=10) as c:
        yield c


@pytest.fixture
def lock_name(request: pytest.FixtureRequest) -> str:
    """A lock name no other test uses."""
    return f"test/{request.node.name}"
