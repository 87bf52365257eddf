"""Owners, values, listing and admin release from the client library and the CLI."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from lockd_client import AsyncClient, Client, InvalidRequest
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
