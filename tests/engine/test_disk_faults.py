"""The engine under disk faults: damaged files, full disks, I/O errors (issue 12).

Every damaged record that is not a torn tail refuses the start; the fence floor never
restarts below an acknowledged counter; a failed write turns the node read-only
(MISCONF) until the disk takes writes again; fencing counters are collected without
ever going back.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockd.durable import CorruptFile
from lockd.engine import Clock, Engine, EngineConfig, FsyncPolicy, persistence
from lockd.engine.persistence import (
    AOF_HEADER,
    AOF_NAME,
    NODE_NAME,
    RESERVATION_NAME,
    SHUTDOWN_NAME,
    read_reservation,
    repair_aof,
)
from lockd.engine.server import RespServer
from lockd.repair import repair
from lockd.resp.protocol import encode_command
from lockd.resp.replies import CommandError, Reply

MS = 1_000_000
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class FakeSource:
    """A nanosecond time source that moves only when told."""

    def __init__(self) -> None:
        self.ns = 5_000_000 * MS

    def __call__(self) -> int:
        return self.ns


def run(engine: Engine, *args: bytes | str | int) -> Reply:
    reply = engine.execute([a if isinstance(a, bytes) else str(a).encode() for a in args])
    engine.commit()
    return reply


def advance(engine: Engine, name: str, token: int) -> Reply:
    return run(engine, "FCALL", "lockd_fence_advance", 1, f"fence:{{{name}}}", token)


def info(engine: Engine, field: str) -> str:
    for line in engine.info("all").splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1]
    raise KeyError(field)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The time the AOF uses for fsyncs, retries and backoff; a settable cell."""
    now = [1000.0]
    monkeypatch.setattr(persistence, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _filled(node: Path, keys: int = 40, **config: object) -> dict[bytes, bytes]:
    """An engine directory holding `keys` keys, one commit (one frame) each, closed."""
    engine = Engine(EngineConfig(dir=node, **config))  # type: ignore[arg-type]
    values = {b"k%d" % i: b"value-%d" % i for i in range(keys)}
    for key, value in values.items():
        assert run(engine, "SET", key, value) == "OK"
    assert advance(engine, "a", 2054) == [1, 2054]
    engine.close()
    return values


def _start(node: Path, **config: object) -> Engine | None:
    try:
        return Engine(EngineConfig(dir=node, **config))  # type: ignore[arg-type]
    except (CorruptFile, RuntimeError):
        return None


# -- damaged files ---------------------------------------------------------------------------


def test_a_flipped_value_byte_mid_aof_refuses_to_start(node: Path) -> None:
    _filled(node)
    aof = node / AOF_NAME
    data = bytearray(aof.read_bytes())
    at = data.index(b"value-17")
    data[at + 6] ^= 0x04  # value-17 -> value-57: well-formed, wrong
    aof.write_bytes(bytes(data))
    with pytest.raises(CorruptFile) as refused:
        Engine(EngineConfig(dir=node))
    assert str(aof) in str(refused.value) and "lockd repair" in str(refused.value)
    assert refused.value.offset < at < refused.value.offset + 60
    assert aof.read_bytes() == bytes(data)  # nothing cut


@SETTINGS
@given(data=st.data())
def test_flipped_aof_bytes_refuse_or_lose_nothing(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    node = tmp_path_factory.mktemp("n") / "node"
    values = _filled(node, keys=20)
    aof = node / AOF_NAME
    raw = bytearray(aof.read_bytes())
    for offset, mask in data.draw(
        st.lists(
            st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=3
        )
    ):
        raw[offset] ^= mask
    aof.write_bytes(bytes(raw))
    engine = _start(node)
    if engine is not None:  # started: nothing acknowledged is missing or changed
        for key, value in values.items():
            assert engine.execute([b"GET", key]) == value
        assert advance(engine, "a", 2054)[0] == 0  # type: ignore[index]
        engine.close()


@SETTINGS
@given(cut=st.integers(0, 4000))
def test_a_truncated_aof_is_a_torn_tail(tmp_path_factory: pytest.TempPathFactory, cut: int) -> None:
    node = tmp_path_factory.mktemp("n") / "node"
    values = _filled(node, keys=20)
    aof = node / AOF_NAME
    whole = aof.read_bytes()
    aof.write_bytes(whole[:cut])
    engine = Engine(EngineConfig(dir=node))  # never refused: a cut file looks torn
    for key, value in values.items():
        if whole.find(encode_command(b"SET", key, value)) + 40 < cut:
            assert engine.execute([b"GET", key]) == value
    assert advance(engine, "a", 2054)[0] == 0  # type: ignore[index]
    engine.close()


def test_repair_keeps_the_intact_frames_and_the_damaged_file(node: Path) -> None:
    values = _filled(node)
    aof = node / AOF_NAME
    data = bytearray(aof.read_bytes())
    data[data.index(b"value-17") + 2] ^= 0xFF
    aof.write_bytes(bytes(data))
    report = repair(aof)
    assert report.damaged and report.written and "kept" in report.summary
    assert (node / (AOF_NAME + ".broken")).read_bytes() == bytes(data)
    assert repair_aof(aof) is None
    engine = Engine(EngineConfig(dir=node))
    for key, value in values.items():
        assert engine.execute([b"GET", key]) == (None if key == b"k17" else value)
    assert advance(engine, "a", 2054)[0] == 0  # type: ignore[index]
    engine.close()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.unlink(), id="deleted"),
        pytest.param(
            lambda p: p.write_bytes(p.read_bytes().replace(b" 3078 ", b" 0078 ")), id="digit"
        ),
        pytest.param(
            lambda p: p.write_bytes(p.read_bytes().replace(b" 3078 ", b"  078 ")), id="space"
        ),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(b"78\n"), id="old-format-lower"),
    ],
)
def test_a_damaged_reservation_refuses_to_start(node: Path, damage: Callable[[Path], None]) -> None:
    _filled(node)
    path = node / RESERVATION_NAME
    assert read_reservation(path) == (2054 + 1024, False)
    damage(path)
    with pytest.raises(CorruptFile) as refused:
        Engine(EngineConfig(dir=node))
    assert "lockd repair --fence-floor" in str(refused.value)


def _without_counter_in_aof(node: Path, how: str) -> None:
    """A closed directory whose reservation covers acknowledged token 2054 while its AOF
    holds no counter for the name: it was collected (folded into the floor, its key
    deleted), or the AOF lost the frames after the last reservation write."""
    if how == "collected":
        src = FakeSource()
        engine = Engine(EngineConfig(dir=node, fence_idle_ms=1000), clock=Clock(src))
        assert advance(engine, "a", 2054) == [1, 2054]
        src.ns += 2000 * MS
        assert engine.collect_fences() == 1
        engine.close()
    else:
        engine = Engine(EngineConfig(dir=node))
        assert run(engine, "SET", "k", "v") == "OK"
        engine.close()
        aof = node / AOF_NAME
        before = aof.read_bytes()
        engine = Engine(EngineConfig(dir=node))
        assert advance(engine, "a", 2054) == [1, 2054]
        engine.close()
        aof.write_bytes(before)  # the frames that held the counter are gone
    probe = Engine(EngineConfig(dir=node))
    assert probe.keyspace.get(b"fence:{a}") is None  # only the reservation knows 2054
    assert probe.fence_floor == 2054 + 1024
    probe.close()


def _lower_reservation(path: Path) -> None:
    """3078 -> 1078, the CRC left as it was (what one flipped byte does)."""
    raw = path.read_bytes()
    assert raw.startswith(b"lockd-fence 2 3078 ")
    path.write_bytes(raw.replace(b" 3078 ", b" 1078 "))


@pytest.mark.parametrize("how", ["collected", "aof-tail-lost"])
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.unlink(), id="deleted"),
        pytest.param(_lower_reservation, id="lowered"),
        pytest.param(lambda p: p.write_bytes(b"1078\n"), id="old-format-lower"),
    ],
)
def test_a_damaged_reservation_with_no_counter_in_the_aof_refuses_to_start(
    node: Path, how: str, damage: Callable[[Path], None]
) -> None:
    """The reservation's own checks are all that stand between a damaged file and a floor
    below token 2054: the AOF's counters cannot catch it here."""
    _without_counter_in_aof(node, how)
    path = node / RESERVATION_NAME
    damage(path)
    damaged = path.read_bytes() if path.exists() else None
    with pytest.raises(CorruptFile) as refused:
        Engine(EngineConfig(dir=node))
    assert str(path) in str(refused.value)
    assert "lockd repair --fence-floor" in str(refused.value)
    assert (path.read_bytes() if path.exists() else None) == damaged  # nothing rewritten


@SETTINGS
@given(offset=st.integers(0, 40), mask=st.integers(1, 255))
def test_any_flipped_reservation_byte_is_detected(
    tmp_path_factory: pytest.TempPathFactory, offset: int, mask: int
) -> None:
    node = tmp_path_factory.mktemp("n") / "node"
    _filled(node, keys=1)
    path = node / RESERVATION_NAME
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= mask
    path.write_bytes(bytes(raw))
    engine = _start(node)
    if engine is not None:  # only a change the format ignores (none today) may start
        assert engine.fence_floor >= 2054 + 1024
        engine.close()


def test_a_set_fence_floor_lets_the_node_start(node: Path) -> None:
    _filled(node)
    (node / RESERVATION_NAME).unlink()
    with pytest.raises(ValueError, match="--fence-floor"):
        repair(node / RESERVATION_NAME)
    repair(node / RESERVATION_NAME, fence_floor=10_000)
    engine = Engine(EngineConfig(dir=node))
    assert engine.fence_floor == 10_000
    engine.close()


def test_a_version_1_directory_is_upgraded(node: Path) -> None:
    node.mkdir()
    records = [encode_command(b"SET", b"k%d" % i, b"v%d" % i) for i in range(5)]
    records.append(encode_command(b"SET", b"fence:{a}", b"7"))
    (node / AOF_NAME).write_bytes(b"".join(records) + records[0][:9])  # torn tail
    (node / RESERVATION_NAME).write_text("1031\n")
    (node / NODE_NAME).write_text(json.dumps({"created": 1.0, "max_ttl_ms": 60000}))
    engine = Engine(EngineConfig(dir=node))
    assert engine.execute([b"GET", b"k4"]) == b"v4"
    assert engine.fence_floor == 1031
    engine.close()
    assert (node / AOF_NAME).read_bytes().startswith(AOF_HEADER)
    assert (node / (AOF_NAME + ".v1")).read_bytes().startswith(records[0])
    assert read_reservation(node / RESERVATION_NAME) == (1031, False)
    assert json.loads((node / NODE_NAME).read_text())["format"] == 2


def test_a_version_1_directory_without_reservation_but_with_counters_refuses(node: Path) -> None:
    node.mkdir()
    (node / AOF_NAME).write_bytes(encode_command(b"SET", b"fence:{a}", b"7"))
    (node / NODE_NAME).write_text(json.dumps({"created": 1.0, "max_ttl_ms": 60000}))
    with pytest.raises(CorruptFile, match="fencing counters"):
        Engine(EngineConfig(dir=node))


def test_files_and_directories_are_private(node: Path) -> None:
    _filled(node, keys=1)
    assert node.stat().st_mode & 0o777 == 0o700
    for name in os.listdir(node):
        assert (node / name).stat().st_mode & 0o777 == 0o600, name
    os.chmod(node, 0o755)
    os.chmod(node / AOF_NAME, 0o644)
    Engine(EngineConfig(dir=node)).close()
    assert node.stat().st_mode & 0o777 == 0o700
    assert (node / AOF_NAME).stat().st_mode & 0o777 == 0o600


# -- failing writes: MISCONF -------------------------------------------------------------------


def _until_writable(engine: Engine, fake_time: list[float]) -> None:
    """Run cron until the node takes writes again (a recovery may rewrite the file in a
    background thread)."""
    for _ in range(500):
        fake_time[0] += 1
        engine.cron()
        if info(engine, "writable") == "1":
            return
        time.sleep(0.01)
    raise AssertionError(f"still read-only: {engine.disk_error}")


@pytest.mark.parametrize("op", ["write", "fsync"])
def test_a_failed_write_under_always_is_not_acknowledged_and_recovers(
    node: Path, fake_time: list[float], caplog: pytest.LogCaptureFixture, op: str
) -> None:
    engine = Engine(EngineConfig(dir=node, appendfsync=FsyncPolicy.ALWAYS))
    assert run(engine, "SET", "before", "1") == "OK"
    engine.faults.fail(errno.EIO, [op, "truncate"])
    with caplog.at_level(logging.INFO, logger="lockd.engine"):
        engine.execute([b"SET", b"failed", b"1"])
        assert engine.commit() is False  # the host must not answer +OK
        for _ in range(20):  # refused up front; retried with backoff, logged once
            reply = run(engine, "SET", "later", "1")
            assert isinstance(reply, CommandError) and reply.code == "MISCONF"
            assert "EIO" in str(reply)
            fake_time[0] += 0.5
            engine.cron()
        assert isinstance(run(engine, "PING"), CommandError)
        assert engine.execute([b"GET", b"before"]) == b"1"  # reads still work
        assert info(engine, "writable") == "0"
        assert info(engine, "aof_last_write_status") == "err"
        engine.faults.heal()
        _until_writable(engine, fake_time)
        assert run(engine, "SET", "after", "1") == "OK"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert sum("writable again" in r.getMessage() for r in caplog.records) == 1
    engine.close()
    again = Engine(EngineConfig(dir=node))
    assert again.execute([b"EXISTS", b"before", b"failed", b"after"]) == 3
    again.close()


def test_everysec_refuses_writes_after_the_failed_flush(node: Path, fake_time: list[float]) -> None:
    engine = Engine(EngineConfig(dir=node, appendfsync=FsyncPolicy.EVERYSEC))
    engine.faults.fail(errno.ENOSPC, ["fsync", "truncate"])
    assert run(engine, "SET", "a", "1") == "OK"  # everysec acknowledges before the fsync
    fake_time[0] += 1
    engine.cron()  # the flush fails
    reply = run(engine, "SET", "b", "1")
    assert isinstance(reply, CommandError) and "ENOSPC" in str(reply)
    engine.faults.heal()
    _until_writable(engine, fake_time)
    assert run(engine, "SET", "b", "1") == "OK"
    engine.close()


def test_lock_functions_answer_misconf_and_never_raise_oserror(node: Path) -> None:
    engine = Engine(EngineConfig(dir=node, appendfsync=FsyncPolicy.ALWAYS))
    engine.faults.fail(errno.ENOSPC)
    with pytest.raises(CommandError, match="MISCONF"):
        engine.lock_acquire(b"lock:{a}", b"fence:{a}", b"L", b"1000")
    with pytest.raises(CommandError, match="MISCONF"):
        engine.lock_release(b"lock:{a}", b"L")
    assert engine.commit() in (True, False)  # no exception either way
    engine.faults.heal()


def test_a_failed_reservation_write_makes_the_node_read_only(node: Path) -> None:
    engine = Engine(EngineConfig(dir=node, fence_block=10))
    engine.faults.fail(errno.ENOSPC, ["open"])
    reply = advance(engine, "a", 5)
    assert isinstance(reply, CommandError) and "fence.reserve" in str(reply)
    assert engine.disk_error is not None
    engine.faults.heal()
    engine._reservation_retry_at = 0.0
    engine.cron()
    assert engine.disk_error is None
    assert advance(engine, "a", 5) == [1, 5]
    engine.close()
    assert read_reservation(node / RESERVATION_NAME) == (15, False)


def test_resp_server_never_answers_ok_for_a_write_that_is_not_durable(
    node: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(EngineConfig(dir=node, appendfsync=FsyncPolicy.ALWAYS))

    async def scenario() -> list[bytes]:
        server = RespServer(engine)
        port = await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = []
        try:
            for arm in (False, True):
                if arm:
                    engine.faults.fail(errno.ENOSPC)
                writer.write(encode_command(b"GET", b"x") + encode_command(b"SET", b"k", b"v"))
                await writer.drain()
                await reader.readline()  # GET's nil
                replies.append(await reader.readline())
            engine.faults.heal()
        finally:
            writer.close()
            await server.stop()
        return replies

    with caplog.at_level(logging.ERROR):
        ok, refused = asyncio.run(scenario())
    assert ok == b"+OK\r\n"
    assert refused.startswith(b"-MISCONF") and b"ENOSPC" in refused
    assert "Exception in callback" not in caplog.text


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only), unmounted at the end."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_filesystem_under_always_acknowledges_only_what_is_durable(
    small_fs: Path, fake_time: list[float]
) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"x" * (64 << 10))  # freed later, to let the node recover
    node = small_fs / "node"
    engine = Engine(
        EngineConfig(dir=node, appendfsync=FsyncPolicy.ALWAYS, rewrite_min_size=1 << 30)
    )
    acked = []
    refused = 0
    for i in range(400):
        reply = run(engine, "SET", f"k{i}", "v" * 1000)
        if reply == "OK":
            acked.append(i)
        else:
            assert isinstance(reply, CommandError) and "ENOSPC" in str(reply)
            refused += 1
    assert acked and refused
    filler.unlink()
    _until_writable(engine, fake_time)
    assert run(engine, "SET", "after", "1") == "OK"
    engine.close()
    again = Engine(EngineConfig(dir=node))
    for i in acked:
        assert again.execute([b"EXISTS", b"k%d" % i]) == 1
    again.close()


def test_a_rewrite_that_cannot_fit_backs_off(
    node: Path, fake_time: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(EngineConfig(dir=node, rewrite_min_size=1024))
    for _ in range(100):
        run(engine, "SET", "k", "x" * 100)
    engine.faults.fail(errno.ENOSPC, ["open"])  # the rewrite cannot create its file
    assert engine.aof is not None
    with caplog.at_level(logging.DEBUG, logger="lockd.engine"):
        for _ in range(110):  # 11 s of cron at 100 ms
            fake_time[0] += 0.1
            engine.cron()
            if engine.aof.rewriting:
                engine.aof._rewrite.done.wait(5)  # type: ignore[union-attr]
    assert 3 <= engine.aof.rewrites <= 5  # 1, 2, 4 s apart: not every 100 ms
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    engine.faults.heal()
    fake_time[0] += 60
    engine.cron()
    engine.aof._rewrite.done.wait(5)  # type: ignore[union-attr]
    engine.cron()
    assert engine.aof.last_rewrite_ok
    engine.close()


# -- collecting fencing counters ---------------------------------------------------------------


def test_100k_lock_names_keep_a_bounded_number_of_counters() -> None:
    src = FakeSource()
    engine = Engine(EngineConfig(fence_idle_ms=1000), clock=Clock(src))
    peak = 0
    for i in range(100_000):
        name = b"fence:{req-%d}" % i
        assert engine.fence_advance(name, b"%d" % (engine.counter(name) + 1))[0] == 1
        if i % 100 == 0:
            src.ns += 10 * MS  # 100 names every 10 ms: 10k names a second
            engine.collect_fences()
            peak = max(peak, len(engine.keyspace))
    assert peak <= 12_000  # about a second's worth of names, not 100k
    src.ns += 2000 * MS
    engine.collect_fences(budget=1_000_000)
    assert len(engine.keyspace) == 0
    assert engine.fences_collected == 100_000


def test_only_counters_unchanged_for_the_idle_time_are_collected() -> None:
    """Idle counts from a counter's last change, not its creation: one advanced every
    100 ms is never collected, while an older-changed one behind it in creation order is."""
    src = FakeSource()
    engine = Engine(EngineConfig(fence_idle_ms=1000), clock=Clock(src))
    busy, quiet = b"fence:{busy}", b"fence:{quiet}"
    assert engine.fence_advance(busy, b"1") == (1, 1)  # created first
    assert engine.fence_advance(quiet, b"7") == (1, 7)
    for step in range(2, 32):  # 3 s of advances every 100 ms
        src.ns += 100 * MS
        assert engine.fence_advance(busy, b"%d" % step) == (1, step)
        engine.collect_fences()
        assert engine.keyspace.get(busy) == step
    assert engine.keyspace.get(quiet) is None  # unchanged for 3 s: collected
    assert engine.fences_collected == 1 and engine.fence_floor == 7
    src.ns += 999 * MS
    assert engine.collect_fences() == 0  # 999 ms after its last change
    src.ns += 1 * MS
    assert engine.collect_fences() == 1
    assert engine.fence_floor == 31 and engine.counter(busy) == 31  # never goes back
    assert engine.fence_advance(busy, b"31") == (0, 31)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.integers(0, 5), st.integers(1, 40)),
            st.tuples(st.just("time"), st.integers(0, 3000), st.just(0)),
            st.tuples(st.just("collect"), st.just(0), st.just(0)),
        ),
        max_size=60,
    )
)
def test_collecting_counters_never_lets_a_token_go_back(steps: list[tuple[str, int, int]]) -> None:
    src = FakeSource()
    engine = Engine(EngineConfig(fence_idle_ms=1000), clock=Clock(src))
    highest: dict[int, int] = {}
    for op, a, b in steps:
        if op == "advance":
            key = b"fence:{%d}" % a
            before = engine.counter(key)
            accepted, counter = engine.fence_advance(key, b"%d" % (before + b))
            assert accepted == 1 and counter == before + b
            highest[a] = counter
        elif op == "time":
            src.ns += a * MS
        else:
            engine.collect_fences()
        for name, token in highest.items():
            key = b"fence:{%d}" % name
            assert engine.counter(key) >= token
            assert engine.fence_advance(key, b"%d" % token)[0] == 0


def test_the_repair_command(node: Path) -> None:
    from click.testing import CliRunner

    from lockd.cli import main

    _filled(node)
    aof = node / AOF_NAME
    runner = CliRunner()
    assert "intact" in runner.invoke(main, ["repair", str(aof)]).output
    data = bytearray(aof.read_bytes())
    data[data.index(b"value-3") + 1] ^= 0x10
    aof.write_bytes(bytes(data))
    dry = runner.invoke(main, ["repair", "--dry-run", str(aof)])
    assert dry.exit_code == 1 and "dry run" in dry.output
    fixed = runner.invoke(main, ["repair", str(aof)])
    assert fixed.exit_code == 0 and ".broken" in fixed.output
    (node / RESERVATION_NAME).unlink()
    refused = runner.invoke(main, ["repair", str(node / RESERVATION_NAME)])
    assert refused.exit_code == 1 and "--fence-floor" in refused.output
    floor = runner.invoke(main, ["repair", "--fence-floor", "5000", str(node / RESERVATION_NAME)])
    assert floor.exit_code == 0
    Engine(EngineConfig(dir=node)).close()


@SETTINGS
@given(
    name=st.sampled_from([NODE_NAME, SHUTDOWN_NAME]),
    offset=st.integers(0, 200),
    mask=st.integers(1, 255),
)
def test_flipped_node_files_never_shorten_the_restart_delay(
    tmp_path_factory: pytest.TempPathFactory, name: str, offset: int, mask: int
) -> None:
    node = tmp_path_factory.mktemp("n") / "node"
    src = FakeSource()
    engine = Engine(EngineConfig(dir=node, max_ttl_ms=60_000), clock=Clock(src))
    engine.lock_acquire(b"lock:{a}", b"fence:{a}", b"L", b"30000")
    engine.close()
    path = node / name
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= mask
    path.write_bytes(bytes(raw))
    try:
        again = Engine(EngineConfig(dir=node, max_ttl_ms=1000), clock=Clock(src))
    except (CorruptFile, RuntimeError):
        return  # refused: fine
    assert again.restart_delay_remaining_ms() >= 30_000
    again.close()


def test_a_shortened_shutdown_marker_is_not_trusted(node: Path) -> None:
    src = FakeSource()
    engine = Engine(EngineConfig(dir=node, max_ttl_ms=60_000), clock=Clock(src))
    engine.lock_acquire(b"lock:{a}", b"fence:{a}", b"L", b"30000")
    engine.close()
    marker = node / SHUTDOWN_NAME
    marker.write_bytes(marker.read_bytes().replace(b"30000", b"10000"))
    again = Engine(EngineConfig(dir=node, max_ttl_ms=60_000), clock=Clock(src))
    assert again.restart_delay_remaining_ms() >= 30_000
    assert again.restart_reason == "unclean stop"
    again.close()
