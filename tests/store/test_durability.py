"""Durability: restarts, kill -9 of a real store process, torn tails, compaction."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import threading
from pathlib import Path

import grpc
import pytest

from lockd.durable import encode_frame
from lockd.store.fenced import FencedStore
from lockd.store.log import HEADER, LOG_NAME, StoreLog, encode_write
from lockd_client.store import AsyncStoreClient, ReadResult, StaleToken, StoreError
from tests.store.helpers import StoreProcess, client, running


async def test_restart_keeps_values_and_highest_tokens(store_dir: Path) -> None:
    async with client(store_dir) as (_, c):
        await c.write("a", "k", b"a-value", token=10)
        await c.write("a", "j", b"", token=12)
        await c.write("b", "k", b"b-value", token=3)
        await c.compare_and_set("b", "k", b"b-value", b"b-cas", token=4)
    async with client(store_dir) as (_, c):
        a, j, b = await c.read("a", "k"), await c.read("a", "j"), await c.read("b", "k")
        assert (a.value, a.highest_token) == (b"a-value", 12)
        assert (j.found, j.value) == (True, b"")
        assert (b.value, b.highest_token) == (b"b-cas", 4)
        with pytest.raises(StaleToken) as stale:
            await c.write("a", "k", b"late", token=11)
        assert stale.value.highest_token == 12


async def test_a_directory_serves_one_store_at_a_time(store_dir: Path) -> None:
    async with running(store_dir):
        with pytest.raises(RuntimeError, match="in use"):
            async with running(store_dir):
                pass  # pragma: no cover


async def _write_until_killed(proc: StoreProcess, writers: int) -> dict[int, int]:
    """Writers on their own resources with tokens 1, 2, ...; kill -9 the store midway.
    Returns each writer's last acknowledged token."""
    acked = dict.fromkeys(range(writers), 0)

    async with AsyncStoreClient(f"127.0.0.1:{proc.port}", timeout=5) as c:

        async def writer(i: int) -> None:
            token = 0
            while True:
                token += 1
                try:
                    await c.write(f"r{i}", "k", b"%d" % token, token=token)
                except StoreError:
                    return  # the store died
                acked[i] = token

        tasks = [asyncio.create_task(writer(i)) for i in range(writers)]
        while sum(acked.values()) < 50 * writers:
            await asyncio.sleep(0.01)
        proc.kill()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return acked


async def test_kill_9_keeps_every_acknowledged_write(store_dir: Path) -> None:
    proc = StoreProcess(store_dir)
    try:
        acked = await _write_until_killed(proc, writers=16)
    finally:
        proc.close()
    async with client(store_dir) as (_, c):
        for i, token in acked.items():
            result = await c.read(f"r{i}", "k")
            assert result.value is not None
            # Every acknowledged write survived; at most the one in flight went further.
            assert token <= int(result.value) == result.highest_token <= token + 1


async def test_sigterm_stops_gracefully(store_dir: Path) -> None:
    proc = StoreProcess(store_dir)
    try:
        async with AsyncStoreClient(f"127.0.0.1:{proc.port}") as c:
            await c.write("r", "k", b"v", token=1)
        assert proc.terminate() == 0
        output = proc.output()
    finally:
        proc.close()
    assert "lockd store stopped" in output
    async with client(store_dir) as (_, c):
        assert (await c.read("r", "k")).value == b"v"


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda f: f[:-9], id="half-frame"),
        pytest.param(lambda f: f[:5], id="frame-header-only"),
        pytest.param(lambda f: b"\0" * 4096, id="zeros"),
        pytest.param(lambda f: f[:30] + bytes(len(f) - 30), id="frame-cut-by-zeroed-sectors"),
    ],
)
async def test_torn_tail_is_cut_back(
    store_dir: Path, tail: object, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(store_dir) as (_, c):
        for token in (1, 2, 3):
            await c.write("r", f"k{token}", b"v%d" % token, token=token)
    path = store_dir / LOG_NAME
    intact = path.stat().st_size
    assert callable(tail)
    frame, _ = encode_frame(encode_write("r", "k1", b"late" * 200, 4), 0)
    with open(path, "ab") as f:
        f.write(tail(frame))
    with caplog.at_level(logging.WARNING, logger="lockd.store"):
        async with client(store_dir) as (_, c):
            assert path.stat().st_size == intact
            assert [(await c.read("r", f"k{t}")).value for t in (1, 2, 3)] == [b"v1", b"v2", b"v3"]
            assert (await c.read("r", "k1")).highest_token == 3
            await c.write("r", "k4", b"after", token=4)
    assert "torn tail" in caplog.text and "kept 3 writes" in caplog.text
    async with client(store_dir) as (_, c):
        assert (await c.read("r", "k4")).value == b"after"


async def test_torn_header_starts_fresh(store_dir: Path) -> None:
    store_dir.mkdir()
    (store_dir / LOG_NAME).write_bytes(HEADER[:7])
    async with client(store_dir) as (_, c):
        await c.write("r", "k", b"v", token=1)
    assert (store_dir / LOG_NAME).read_bytes().startswith(HEADER)
    async with client(store_dir) as (_, c):
        assert (await c.read("r", "k")).value == b"v"


def test_refuses_a_file_that_is_not_a_store_log(store_dir: Path) -> None:
    store_dir.mkdir()
    (store_dir / LOG_NAME).write_bytes(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
    with pytest.raises(RuntimeError, match="not a lockd store log"):
        StoreLog(store_dir).open()
    assert (store_dir / LOG_NAME).stat().st_size > 0  # left alone


async def test_compaction_keeps_state_and_shrinks_the_log(store_dir: Path) -> None:
    store = FencedStore(store_dir, compact_min_bytes=4096)
    await store.open()
    try:
        for token in range(1, 400):
            await store.write("r", f"k{token % 3}", b"x" * 50, token)
        await store.write("quiet", "k", b"q", 7)
        assert store.log.compactions >= 1
        assert store.log.size < 4096 + 200
    finally:
        await store.close()
    reopened = FencedStore(store_dir)
    await reopened.open()
    try:
        assert reopened.read("r", "k0") == (b"x" * 50, 399)
        assert reopened.read("r", "k2") == (b"x" * 50, 399)
        assert reopened.read("quiet", "k") == (b"q", 7)
        assert reopened.state.values.keys() == {
            ("r", "k0"),
            ("r", "k1"),
            ("r", "k2"),
            ("quiet", "k"),
        }
    finally:
        await reopened.close()


async def test_a_write_is_acknowledged_only_after_its_fsync(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FencedStore(store_dir)
    await store.open()
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    try:
        first = asyncio.create_task(store.write("r", "k", b"1", 1))
        await asyncio.sleep(0.05)
        # Queued behind the fsync in progress: these form the next batch, one fsync.
        others = [asyncio.create_task(store.write("r", "k", b"%d" % t, t)) for t in (2, 3, 4)]
        await asyncio.sleep(0.05)
        assert not first.done() and store.read("r", "k") == (None, 0)  # not yet durable
        fsyncs = store.log.fsyncs
        release.set()
        assert await first == 1
        assert await asyncio.gather(*others) == [2, 3, 4]
        assert store.log.fsyncs == fsyncs + 2
        assert store.read("r", "k") == (b"4", 4)
    finally:
        release.set()
        await store.close()


async def test_a_failed_fsync_stops_writes(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(store_dir) as (_, c):
        await c.write("r", "k", b"kept", token=1)

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "fsync", broken)
        for token in (2, 3):
            with pytest.raises(StoreError) as failed:
                await c.write("r", "k", b"lost", token=token)
            assert (failed.value.code, failed.value.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "STORE_FAILED",
            )
        monkeypatch.undo()
        with pytest.raises(StoreError, match="restart the store"):
            await c.write("r", "k", b"lost", token=4)  # stays failed: the tail is unknown
        assert await c.read("r", "k") == ReadResult(b"kept", 1)  # reads still work
    assert "could not be written" in caplog.text


async def test_a_failed_compaction_keeps_the_old_log(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def full_disk(self: StoreLog, entries: object) -> None:
        calls.append(self.size)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StoreLog, "compact", full_disk)
    store = FencedStore(store_dir, compact_min_bytes=2048)
    await store.open()
    try:
        for token in range(1, 100):
            await store.write("r", "k", b"x" * 40, token)
        assert len(calls) >= 2
        assert all(b - a >= 2048 for a, b in itertools.pairwise(calls))  # backs off
    finally:
        await store.close()
    assert "compaction failed" in caplog.text
    reopened = FencedStore(store_dir)
    await reopened.open()
    try:
        assert reopened.read("r", "k") == (b"x" * 40, 99)
    finally:
        await reopened.close()
