"""Fixtures of the fenced store tests.

Tests here may be `async def`: each runs in its own `asyncio.run` loop, where it starts
`StoreServer`s in-process and talks to them over real gRPC on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store.helpers import threaded_server


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A fresh data directory (created by the store)."""
    return tmp_path / "store"


@pytest.fixture(scope="module")
def shared_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One store server for the module, on its own event loop thread (for sync clients)."""
    with threaded_server(tmp_path_factory.mktemp("store")) as server:
        yield server.port
