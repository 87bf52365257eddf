"""Fixtures of the gateway integration tests.

Tests here may be `async def`: each runs in its own `asyncio.run` loop, where it starts
`Gateway`s in-process and talks to them over real gRPC on loopback.
"""

from __future__ import annotations

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
