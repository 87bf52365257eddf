"""FencedStore over real gRPC on loopback: the token rule, reads, compare-and-set, errors."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from lockd.v1 import fenced_store_pb2 as pb
from lockd.v1 import fenced_store_pb2_grpc as pb_grpc
from lockd_client.store import StaleToken, StoreClient, StoreError, ValueChanged
from tests.store.helpers import client, error_info, running


@dataclasses.dataclass(frozen=True)
class Lease:
    """Stands in for the lock client's lease: anything with `.token`."""

    token: int


async def test_higher_and_equal_tokens_are_accepted_lower_refused(store_dir: Path) -> None:
    async with client(store_dir) as (_, c):
        assert await c.write("orders", "a", b"v5", token=5) == 5
        assert await c.write("orders", "a", b"v7", token=7) == 7
        assert await c.write("orders", "b", b"again", token=7) == 7  # equal: same lease
        with pytest.raises(StaleToken) as refused:
            await c.write("orders", "a", b"late", token=6)
        err = refused.value
        assert (err.resource, err.highest_token, err.reason) == ("orders", 7, "STALE_TOKEN")
        assert err.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "token 6" in err.message and "token 7" in err.message
        assert err.metadata["token"] == "6"
        # The refusal changed nothing.
        result = await c.read("orders", "a")
        assert (result.value, result.highest_token) == (b"v7", 7)


async def test_stale_token_on_the_wire(store_dir: Path) -> None:
    """The raw status: FAILED_PRECONDITION with ErrorInfo (domain lockd) naming the token."""
    async with (
        running(store_dir) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        stub = pb_grpc.FencedStoreStub(ch)  # type: ignore[no-untyped-call]
        await stub.Write(pb.WriteRequest(resource="r", key="k", value=b"x", token=9))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Write(pb.WriteRequest(resource="r", key="k", value=b"y", token=3))
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert (info.domain, info.reason) == ("lockd", "STALE_TOKEN")
    assert info.metadata["highest_token"] == "9"
    assert "token 9 was already accepted" in (refused.value.details() or "")


async def test_resources_are_fenced_independently(store_dir: Path) -> None:
    async with client(store_dir) as (_, c):
        await c.write("a", "k", b"a100", token=100)
        assert await c.write("b", "k", b"b1", token=1) == 1  # b has seen no token yet
        await c.write("b", "k", b"b2", token=2)
        with pytest.raises(StaleToken) as refused:
            await c.write("b", "k", b"b0", lease=Lease(1))
        assert (refused.value.resource, refused.value.highest_token) == ("b", 2)
        with pytest.raises(StaleToken) as refused:
            await c.write("a", "other", b"x", token=99)  # one token for all of a's keys
        assert refused.value.highest_token == 100
        a, b = await c.read("a", "k"), await c.read("b", "k")
        assert (a.value, a.highest_token, b.value, b.highest_token) == (b"a100", 100, b"b2", 2)


async def test_read_your_writes_and_missing_keys(store_dir: Path) -> None:
    async with client(store_dir) as (_, c):
        missing = await c.read("r", "nothing")
        assert (missing.found, missing.value, missing.highest_token) == (False, None, 0)
        for i in range(1, 20):
            await c.write("r", "k", b"value %d" % i, lease=Lease(i))
            assert (await c.read("r", "k")).value == b"value %d" % i
        await c.write("r", "empty", b"", token=19)
        empty = await c.read("r", "empty")
        assert (empty.found, empty.value, empty.highest_token) == (True, b"", 19)
        other = await c.read("r", "nothing")
        assert (other.found, other.highest_token) == (False, 19)  # the resource's token


async def test_compare_and_set(store_dir: Path) -> None:
    async with client(store_dir) as (_, c):
        assert await c.compare_and_set("r", "k", None, b"one", token=1) == 1  # create
        with pytest.raises(ValueChanged) as exists:
            await c.compare_and_set("r", "k", None, b"dup", token=1)
        assert (exists.value.found, exists.value.current_length) == (True, 3)
        assert exists.value.reason == "VALUE_CHANGED"
        assert await c.compare_and_set("r", "k", b"one", b"two", token=2) == 2
        with pytest.raises(ValueChanged) as changed:
            await c.compare_and_set("r", "k", b"one", b"three", token=2)
        assert (changed.value.key, changed.value.found, changed.value.current_length) == (
            "k",
            True,
            3,
        )
        assert "3-byte value" in changed.value.message
        # The wording reads as English (it said "not the expected a 3-byte value").
        assert "the request expected a 3-byte value" in changed.value.message
        assert "expected a" not in changed.value.message.replace("request expected a", "")
        assert changed.value.metadata["highest_token"] == "2"
        with pytest.raises(ValueChanged) as absent:
            await c.compare_and_set("r", "other", b"", b"x", token=2)  # empty != absent
        assert (absent.value.found, absent.value.current_length) == (False, 0)
        # The token is checked first: a stale writer hears STALE_TOKEN, not VALUE_CHANGED.
        with pytest.raises(StaleToken) as stale:
            await c.compare_and_set("r", "k", b"wrong", b"x", token=1)
        assert stale.value.highest_token == 2
        # Refusals change nothing, not even the highest token.
        with pytest.raises(ValueChanged):
            await c.compare_and_set("r", "k", b"wrong", b"x", token=50)
        result = await c.read("r", "k")
        assert (result.value, result.highest_token) == (b"two", 2)


async def test_read_modify_write_loop_loses_no_update(store_dir: Path) -> None:
    """Concurrent increments through compare-and-set, all under one token: none lost."""
    async with client(store_dir) as (_, c):

        async def increment() -> None:
            while True:
                current = await c.read("counter", "n")
                n = int(current.value or b"0")
                try:
                    await c.compare_and_set("counter", "n", current.value, b"%d" % (n + 1), token=1)
                    return
                except ValueChanged:
                    continue

        await asyncio.gather(*(increment() for _ in range(30)))
        assert (await c.read("counter", "n")).value == b"30"


async def test_concurrent_writers_end_consistent(store_dir: Path) -> None:
    """Many tasks write with increasing tokens; arrivals interleave, so some are stale.
    Every refusal names a larger accepted token, and the end state is the largest write."""
    tokens = itertools.count(1)
    accepted: list[tuple[int, str]] = []
    refused: list[tuple[int, int]] = []
    rng = random.Random(7)
    async with client(store_dir) as (server, c):

        async def writer(i: int) -> None:
            for _ in range(20):
                token, key = next(tokens), f"k{rng.randrange(4)}"
                await asyncio.sleep(rng.random() / 1000)
                try:
                    await c.write("shared", key, b"%d" % token, token=token)
                    accepted.append((token, key))
                except StaleToken as exc:
                    refused.append((token, exc.highest_token))

        await asyncio.gather(*(writer(i) for i in range(40)))
        assert len(accepted) + len(refused) == 800
        top = max(t for t, _ in accepted)
        assert top == 800  # the last token drawn is the largest: never stale
        for token, highest in refused:
            assert token < highest <= top
        final = await c.read("shared", "k0")
        assert final.highest_token == top
        for key in {k for _, k in accepted}:
            expected = max(t for t, k in accepted if k == key)
            assert (await c.read("shared", key)).value == b"%d" % expected
        # Group commit: the batches shared fsyncs.
        assert server.store.writes == len(accepted)
        assert server.store.log.fsyncs < len(accepted)


async def test_invalid_requests(store_dir: Path) -> None:
    async with client(store_dir, max_value_bytes=100) as (server, c):
        cases = [
            c.write("", "k", b"v", token=1),
            c.write("r", "", b"v", token=1),
            c.write("r", "k", b"v", token=0),
            c.write("r" * 257, "k", b"v", token=1),
            c.write("r", "k" * 1025, b"v", token=1),
            c.write("r", "k", b"v" * 101, token=1),
            c.compare_and_set("r", "k", None, b"v" * 101, token=1),
            c.compare_and_set("r", "", None, b"v", token=1),
            c.read("", "k"),
        ]
        for call in cases:
            with pytest.raises(StoreError) as bad:
                await call
            assert (bad.value.code, bad.value.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "BAD_REQUEST",
            )
            assert not isinstance(bad.value, StaleToken | ValueChanged)
        # Limits are inclusive, and multi-byte UTF-8 counts in bytes.
        await c.write("é" * 128, "k" * 1024, b"v" * 100, token=1)
        with pytest.raises(StoreError, match="longer than 256 bytes"):
            await c.write("é" * 129, "k", b"v", token=1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.FencedStoreStub(ch)  # type: ignore[no-untyped-call]
            request = pb.CompareAndSetRequest(
                resource="r", key="k", expected=b"x", expected_absent=True, value=b"v", token=1
            )
            with pytest.raises(grpc.aio.AioRpcError) as both:
                await stub.CompareAndSet(request)
        assert both.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(both.value).reason == "BAD_REQUEST"
        assert server.store.writes == 1


async def test_default_value_limit_is_one_mib(store_dir: Path) -> None:
    async with client(store_dir) as (_, c):
        await c.write("r", "k", b"x" * (1 << 20), token=1)
        assert (await c.read("r", "k")).value == b"x" * (1 << 20)
        with pytest.raises(StoreError) as big:
            await c.write("r", "k", b"x" * ((1 << 20) + 1), token=1)
        assert big.value.reason == "BAD_REQUEST"
        assert "1048577 bytes" in big.value.message


def test_client_token_arguments() -> None:
    with StoreClient("127.0.0.1:1", timeout=1) as c:
        with pytest.raises(TypeError, match="token= or lease="):
            c.write("r", "k", b"v")
        with pytest.raises(ValueError, match="disagrees"):
            c.write("r", "k", b"v", token=3, lease=Lease(4))
        with pytest.raises(StoreError) as down:
            c.read("r", "k")
        assert down.value.code is grpc.StatusCode.UNAVAILABLE


def test_sync_client(shared_port: int) -> None:
    with StoreClient(f"127.0.0.1:{shared_port}") as c:
        assert c.write("sync", "k", "text", lease=Lease(3)) == 3
        assert c.read("sync", "k").value == b"text"
        assert c.compare_and_set("sync", "k", "text", b"more", token=3) == 3
        with pytest.raises(StaleToken) as stale:
            c.write("sync", "k", b"old", token=2)
        assert stale.value.highest_token == 3
        assert str(stale.value).startswith("sync: token 2 is stale")
        with pytest.raises(ValueChanged):
            c.compare_and_set("sync", "k", None, b"x", token=3)


def test_client_does_not_import_the_server() -> None:
    code = (
        "import sys, lockd_client.store; "
        "bad = sorted(m for m in sys.modules if m == 'lockd' or m.startswith('lockd.')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_the_proto_names_the_real_value_limit_flag() -> None:
    """fenced_store.proto said `--max-value-bytes`; the flag is `--max-value`."""
    root = Path(__file__).resolve().parents[2]
    proto = (root / "protos/lockd/v1/fenced_store.proto").read_text()
    assert "--max-value-bytes" not in proto and "(--max-value," in proto
    from click.testing import CliRunner

    from lockd.cli import main

    help_text = CliRunner().invoke(main, ["store", "--help"]).output
    assert "--max-value " in help_text or "--max-value\n" in help_text, help_text
