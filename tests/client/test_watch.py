"""Watch from the client library (blocking and asyncio) and `lockd watch`; a watch that
moves to another gateway when its own stops, starting again from the current state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockd_client import AsyncClient, Client, InvalidRequest, WatchEvent
from tests.client.helpers import CLEAN_ENV, LockdProcess, gateway, lockd_cmd
from tests.client.test_failover import engines, shared  # noqa: F401 (fixture)
from tests.support import EngineProcess


def test_blocking_watch(client: Client, lock_name: str) -> None:
    seen: list[WatchEvent] = []
    synced = threading.Event()

    def consume() -> None:
        for event in client.watch(lock_name):
            seen.append(event)
            synced.set()
            if len(seen) == 4:
                break

    reader = threading.Thread(target=consume)
    reader.start()
    assert synced.wait(5)
    lease = client.acquire(lock_name, ttl=10, owner="me", value=b"v")
    lease.release()
    reader.join(5)
    assert not reader.is_alive()
    assert [e.type for e in seen] == ["state", "synced", "acquired", "released"]
    assert seen[0].held is False
    assert (seen[2].token, seen[2].owner, seen[2].value) == (lease.token, "me", b"v")
    assert 0 < seen[2].ttl_remaining <= 10 and seen[2].acquired_at is not None
    assert seen[3].token == lease.token
    with pytest.raises(InvalidRequest) as bad:
        next(iter(client.watch("")))
    assert bad.value.reason == "BAD_NAME"


async def test_asyncio_prefix_watch(serve: LockdProcess, lock_name: str) -> None:
    async with AsyncClient([serve.endpoint]) as client:
        held = await client.acquire(f"{lock_name}/a", ttl=10, wait=3, owner="a")
        events = client.watch(lock_name + "/", prefix=True)
        first = await anext(events)
        assert (first.type, first.name, first.held, first.token) == (
            "state",
            f"{lock_name}/a",
            True,
            held.token,
        )
        assert (await anext(events)).type == "synced"
        await held.release()
        other = await client.acquire(f"{lock_name}/b", ttl=0.3, wait=3, watchdog=False)
        got = [await asyncio.wait_for(anext(events), 5) for _ in range(3)]
        assert [(e.type, e.name) for e in got] == [
            ("released", f"{lock_name}/a"),
            ("acquired", f"{lock_name}/b"),
            ("expired", f"{lock_name}/b"),
        ]
        assert got[2].token == other.token
        await events.aclose()


def test_cli_watch_json_lines(serve: LockdProcess, client: Client, lock_name: str) -> None:
    with _watching(serve, lock_name, "--json", "--count", "2") as proc:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [e["type"] for e in lines] == ["state", "synced"]
        lease = client.acquire(lock_name, ttl=10, owner="cli-test")
        lease.release()
        rest = [json.loads(line) for line in proc.stdout]
        assert proc.wait(10) == 0
    assert [(e["type"], e["token"]) for e in rest] == [
        ("acquired", lease.token),
        ("released", lease.token),
    ]
    assert rest[0]["owner"] == "cli-test" and "lease_id" not in rest[0]


@contextlib.contextmanager
def _watching(serve: LockdProcess, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`lockd watch ARGS` running, its stdout a text pipe; killed at the end."""
    cmd = lockd_cmd("watch", *args, "--endpoint", serve.endpoint)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=CLEAN_ENV) as proc:
        try:
            yield proc
        finally:
            proc.kill()


def test_cli_watch_text(serve: LockdProcess, client: Client, lock_name: str) -> None:
    with _watching(serve, lock_name, "--count", "1") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().split()[1:] == ["state", lock_name, "not", "held"]
        assert proc.stdout.readline().split()[1:] == ["synced", lock_name]
        lease = client.acquire(lock_name, ttl=10, owner="ops")
        words = proc.stdout.readline().split()
        assert proc.wait(10) == 0
    assert words[1:5] == ["acquired", lock_name, f"token={lease.token}", "owner=ops"]
    lease.release()


def test_cli_watch_prefix(serve: LockdProcess, client: Client, lock_name: str) -> None:
    held = client.acquire(f"{lock_name}/1", ttl=10, owner="first")
    with _watching(serve, lock_name + "/", "--prefix", "--json", "--count", "1") as proc:
        assert proc.stdout is not None
        state, synced = (json.loads(proc.stdout.readline()) for _ in range(2))
        assert (state["type"], state["name"], state["token"]) == (
            "state",
            f"{lock_name}/1",
            held.token,
        )
        assert (synced["type"], synced["name"]) == ("synced", lock_name + "/")
        client.acquire(f"{lock_name}x", ttl=10).release()  # not under the prefix
        second = client.acquire(f"{lock_name}/2", ttl=10)
        (change,) = (json.loads(line) for line in proc.stdout)
        assert proc.wait(10) == 0
    assert (change["type"], change["name"], change["token"]) == (
        "acquired",
        f"{lock_name}/2",
        second.token,
    )
    held.release()
    second.release()


async def test_watch_moves_to_another_gateway(
    engines: list[EngineProcess],  # noqa: F811 (fixture)
    tmp_path: Path,
) -> None:
    config = shared(engines)
    async with gateway(config) as gw1, gateway(config) as gw2:
        ends = [f"127.0.0.1:{gw1.port}", f"127.0.0.1:{gw2.port}"]
        async with AsyncClient(ends, timeout=5) as client, AsyncClient([ends[1]]) as other:
            events = client.watch("moving")
            assert [(await anext(events)).type for _ in range(2)] == ["state", "synced"]
            lease = await other.acquire("moving", ttl=10)
            assert (await asyncio.wait_for(anext(events), 5)).type == "acquired"
            await gw1.stop(grace=0.5)
            # Started again on gw2, from the current state: held, with the same token.
            state = await asyncio.wait_for(anext(events), 10)
            assert (state.type, state.held, state.token) == ("state", True, lease.token)
            assert (await anext(events)).type == "synced"
            await lease.release()
            got = await asyncio.wait_for(anext(events), 5)
            assert (got.type, got.token) == ("released", lease.token)
            await events.aclose()
