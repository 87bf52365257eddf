"""Group commit under `appendfsync always` (issue 10): one fsync covers every write made
while the previous one ran, fsyncs run off the event loop, and no reply goes out before
the fsync of the write it depends on; a failed fsync answers the whole batch MISCONF.

Batching is counted (fsyncs against writes) with the fsync held by a gate on the disk
fault injection (`tests.support.FsyncGate`), never inferred from timing."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator
from pathlib import Path

from lockd.engine import Engine, EngineConfig, FsyncPolicy
from lockd.engine.group import GroupCommit
from lockd.engine.persistence import read_aof
from lockd.engine.server import RespServer
from lockd.resp.protocol import encode_command
from tests.support import FsyncGate

CLIENTS = 16


def _engine(directory: Path) -> Engine:
    return Engine(EngineConfig(dir=directory, appendfsync=FsyncPolicy.ALWAYS))


async def _until(condition: object, what: str) -> None:
    """Poll `condition()` (a state the test waits for, not a duration) for up to 10 s."""
    assert callable(condition)
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_one_batch_fsyncs_every_engine_once_for_every_waiter(tmp_path: Path) -> None:
    engines = [_engine(tmp_path / f"n{i}") for i in range(5)]
    group = GroupCommit(engines)
    base = [e.aof.fsyncs for e in engines if e.aof is not None]

    async def run() -> list[tuple[bool, ...]]:
        waits = []
        for k in range(CLIENTS):  # sixteen callers in one loop turn
            for engine in engines:
                engine.execute([b"SET", b"k%d" % k, b"v"])
            waits.append(group.durable())
        return list(await asyncio.gather(*waits))

    results = asyncio.run(run())
    assert results == [(True,) * 5] * CLIENTS
    assert group.batches == 1 and group.fsync_jobs == 5
    assert [e.aof.fsyncs - b for e, b in zip(engines, base, strict=True) if e.aof] == [1] * 5
    for engine in engines:
        engine.close()
    for i in range(5):
        keys = {r[1] for r in read_aof(tmp_path / f"n{i}" / "appendonly.aof") if r[0] == b"SET"}
        assert keys == {b"k%d" % k for k in range(CLIENTS)}


def test_a_caller_that_needs_no_fsync_is_not_held(tmp_path: Path) -> None:
    engines = [_engine(tmp_path / f"n{i}") for i in range(3)]
    group = GroupCommit(engines)

    async def run() -> tuple[bool, ...]:
        return await group.durable()  # nothing written

    assert asyncio.run(run()) == (True, True, True)
    assert group.batches == 0
    for engine in engines:
        engine.close()


@contextlib.asynccontextmanager
async def serving(directory: Path) -> AsyncIterator[RespServer]:
    """A `RespServer` in this loop over an `always` engine (in process: the test holds
    its engine's fsyncs)."""
    server = RespServer(_engine(directory))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _clients(port: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(CLIENTS)]


async def _nothing_received(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), 0.2)
    except TimeoutError:
        return True
    return False


async def _held_batch(
    server: RespServer, gate: FsyncGate
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Client 0's SET is in the fsync the gate holds; the other clients' SETs ran
    meanwhile (their replies wait for the next batch). Nobody has a reply."""
    engine = server.engine
    conns = await _clients(server.port)
    conns[0][1].write(encode_command(b"SET", b"k0", b"v"))
    await _until(gate.entered.is_set, "the first fsync started")
    for k, (_, writer) in enumerate(conns[1:], 1):
        writer.write(encode_command(b"SET", b"k%d" % k, b"v"))
    await _until(
        lambda: all(engine.keyspace.get(b"k%d" % k) for k in range(CLIENTS)),
        "every SET ran while the fsync was held",
    )
    assert await _nothing_received(conns[0][0]), "a reply went out before its fsync"
    for reader, _ in conns:
        assert reader.at_eof() is False and await _nothing_received(reader)
    return conns


async def test_engine_server_fsyncs_once_per_batch_and_replies_after_it(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        await _batched(served)


async def _batched(served: RespServer) -> None:
    aof = served.engine.aof
    assert aof is not None and served.group is not None
    base = aof.fsyncs
    gate = FsyncGate(served.engine.faults)
    conns = await _held_batch(served, gate)
    gate.open()
    for reader, _ in conns:
        assert await reader.readexactly(5) == b"+OK\r\n"
    gate.remove()
    # Sixteen writes from sixteen clients, two fsyncs: client 0's, then everyone else's.
    assert aof.fsyncs - base == 2
    assert served.group.fsync_jobs == 2
    for _, writer in conns:
        writer.close()


async def test_a_failed_fsync_answers_its_whole_batch_misconf(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        await _failed(served)


async def _failed(served: RespServer) -> None:
    gate = FsyncGate(served.engine.faults, fail_with=errno.EIO)
    conns = await _held_batch(served, gate)
    gate.open()
    for reader, _ in conns:
        line = await reader.readline()
        assert line.startswith(b"-MISCONF Errors writing to disk: fsync to "), line
        assert b"EIO" in line
    assert served.engine.disk_error is not None
    # The disk heals: the engine rewrites its file from memory and takes writes again.
    gate.remove()
    reader, writer = conns[0]
    await _until(lambda: served.engine.disk_error is None, "the engine recovered")
    writer.write(encode_command(b"SET", b"after", b"v"))
    assert await reader.readexactly(5) == b"+OK\r\n"
    for _, w in conns:
        w.close()
