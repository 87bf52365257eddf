"""Owners, values, listing and admin release from the client library and the CLI."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockd_client import AsyncClient, Client, InvalidRequest, LeaseLost, PermissionDenied
from tests.client.helpers import LockdProcess, cli
from tests.client.test_cli import fields


def test_owner_defaults_to_host_and_pid(client: Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl=10, wait=1):
        info = client.describe(lock_name)
        assert info.owner == f"{socket.gethostname()}/{os.getpid()}"
        assert info.value == b""
        assert info.acquired_at is not None and abs(info.acquired_at - time.time()) < 5
    info = client.describe(lock_name)
    assert (info.held, info.owner, info.acquired_at) == (False, "", None)


async def test_owner_and_value_from_asyncio(serve: LockdProcess, lock_name: str) -> None:
    async with AsyncClient([serve.endpoint], owner="batch-7") as client:
        async with client.lock(lock_name, ttl=10, value=b"shard=3"):
            info = await client.describe(lock_name)
            assert (info.owner, info.value) == ("batch-7", b"shard=3")
        lease = await client.acquire(lock_name, ttl=10, owner="other", value=b"")
        assert (await client.describe(lock_name)).owner == "other"
        await lease.release()


def test_oversized_value_is_an_invalid_request(client: Client, lock_name: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        client.acquire(lock_name, ttl=5, value=b"x" * 1025)
    assert raised.value.reason == "BAD_VALUE"
    with pytest.raises(InvalidRequest) as raised:
        client.acquire(lock_name, ttl=5, owner="o" * 129)
    assert raised.value.reason == "BAD_OWNER"


def test_cli_acquire_with_owner_then_status(serve: LockdProcess, lock_name: str) -> None:
    ep = ("--endpoint", serve.endpoint)
    got = cli("acquire", lock_name, "--ttl", "20s", "--owner", "cron@db1", "--value", "v=1", *ep)
    assert got.returncode == 0, got.stderr
    shown = fields(cli("status", lock_name, *ep).stdout)
    assert (shown["owner"], shown["value"]) == ("cron@db1", "v=1")
    assert shown["acquired at"].endswith("+00:00")
    as_json = json.loads(cli("status", lock_name, "--json", *ep).stdout)
    assert (as_json["owner"], as_json["value"]) == ("cron@db1", "v=1")
    assert "lease_id" not in as_json
    too_big = cli("acquire", lock_name + "/2", "--value", "x" * 1025, *ep)
    assert too_big.returncode == 2 and "1024" in too_big.stderr


def test_list_from_client_and_cli(serve: LockdProcess, client: Client, lock_name: str) -> None:
    leases = [client.acquire(f"{lock_name}/{i}", ttl=20, owner=f"w{i}") for i in range(3)]
    held = list(client.list(lock_name + "/", page_size=2))
    assert sorted(h.name for h in held) == [f"{lock_name}/{i}" for i in range(3)]
    by_name = {h.name: h for h in held}
    for i, lease in enumerate(leases):
        h = by_name[f"{lock_name}/{i}"]
        assert (h.owner, h.token) == (f"w{i}", lease.token) and 0 < h.ttl_remaining <= 20
    ep = ("--endpoint", serve.endpoint)
    shown = cli("list", lock_name + "/", *ep)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:3] == ["lock", "owner", "token"]
    assert [line.split()[:2] for line in lines[2:]] == [
        [f"{lock_name}/{i}", f"w{i}"] for i in range(3)
    ]
    as_json = [
        json.loads(line) for line in cli("list", lock_name + "/", "--json", *ep).stdout.splitlines()
    ]
    assert sorted(e["token"] for e in as_json) == sorted(lease.token for lease in leases)
    assert all("lease_id" not in e for e in as_json)
    assert cli("list", lock_name + "/none/", *ep).stdout.strip() == "no locks held"
    for lease in leases:
        lease.release()


async def test_list_from_asyncio(serve: LockdProcess, lock_name: str) -> None:
    async with AsyncClient([serve.endpoint]) as client, client.lock(lock_name, ttl=10):
        names = [h.name async for h in client.list(lock_name)]
        assert names == [lock_name]


def test_force_release_reports_loss_to_the_holder(
    new_serve: Callable[..., LockdProcess], tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("let-me-in\n")
    gateway = new_serve("--admin-token-file", str(token_file))
    ep = ("--endpoint", gateway.endpoint)
    lost = threading.Event()
    with Client([gateway.endpoint]) as client:
        lease = client.acquire("stuck", ttl=3, on_lost=lambda _: lost.set())
        denied = cli("release", "stuck", "--force", *ep)
        assert denied.returncode == 6 and "admin credential" in denied.stderr
        wrong = cli("release", "stuck", "--force", *ep, env={"LOCKD_ADMIN_TOKEN": "nope"})
        assert wrong.returncode == 6 and "wrong" in wrong.stderr
        with pytest.raises(PermissionDenied):
            client.force_release("stuck", "nope")
        assert client.describe("stuck").held
        forced = cli("release", "stuck", "--force", "--admin-token-file", str(token_file), *ep)
        assert forced.returncode == 0, forced.stderr
        assert "force-released stuck on 5 nodes" in forced.stdout
        # The watchdog finds out at its next renewal (every TTL/3), well before the TTL.
        assert lost.wait(3)
        with pytest.raises(LeaseLost):
            lease.check()
        nxt = client.acquire("stuck", ttl=3)
        assert nxt.token > lease.token
        assert client.force_release("stuck", "let-me-in") == 5
    usage = cli("release", "stuck", *ep)
    assert usage.returncode == 2 and "--lease or --force" in usage.stderr
