"""Persistence of one engine, in process on temporary directories: AOF replay, clock
epochs, torn tails, rewrite, fsync policies, the fencing reservation and delayed restart."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import lockd.engine.engine as engine_module
from lockd.core.quorum import restart_delay_ms
from lockd.durable import FRAME_OVERHEAD, SECTOR, encode_frame
from lockd.engine import Clock, Engine, EngineConfig, FsyncPolicy, persistence
from lockd.engine.persistence import (
    AOF_HEADER,
    AOF_NAME,
    RESERVATION_NAME,
    SHUTDOWN_NAME,
    clock_epoch,
    read_aof,
    read_reservation,
    write_aof,
)
from lockd.resp.protocol import encode_command
from lockd.resp.replies import CommandError, Reply

MS = 1_000_000


class FakeSource:
    """A nanosecond time source that moves only when told."""

    def __init__(self, start_ms: int = 5_000_000) -> None:
        self.ns = start_ms * MS

    def __call__(self) -> int:
        return self.ns

    def advance(self, ms: float) -> None:
        self.ns += int(ms * MS)


@pytest.fixture
def src() -> FakeSource:
    return FakeSource()


@pytest.fixture
def fake_fsync_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace the time the AOF uses for its fsync schedule; returns a settable cell."""
    now = [1000.0]
    monkeypatch.setattr(persistence, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


@pytest.fixture
def fsync_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files (or directories) fsynced (or fdatasynced: the AOF), in order."""
    names: list[str] = []

    def logged(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            names.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)

        return sync

    monkeypatch.setattr(os, "fsync", logged(os.fsync))
    monkeypatch.setattr(os, "fdatasync", logged(os.fdatasync))
    return names


def ok(reply: Reply) -> Reply:
    assert not isinstance(reply, CommandError), reply
    return reply


def run(engine: Engine, *args: bytes | str | int) -> Reply:
    reply = engine.execute([a if isinstance(a, bytes) else str(a).encode() for a in args])
    engine.commit()
    return reply


def acquire(engine: Engine, name: str, lease: str, ttl_ms: int) -> Reply:
    return run(engine, "FCALL", "lockd_acquire", 2, f"lock:{name}", f"fence:{name}", lease, ttl_ms)


def advance(engine: Engine, fence_key: str, token: int) -> Reply:
    return run(engine, "FCALL", "lockd_fence_advance", 1, fence_key, token)


def info_field(engine: Engine, name: str) -> str:
    for line in engine.info("all").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1]
    raise KeyError(name)


def epoch_record() -> list[bytes]:
    return [b"EPOCH", clock_epoch().encode()]


def finish_rewrite(engine: Engine) -> None:
    assert engine.aof is not None
    deadline = time.monotonic() + 10
    while engine.aof.rewriting:
        assert time.monotonic() < deadline, "rewrite did not finish"
        time.sleep(0.002)
        engine.aof.tick()


@pytest.fixture
def open_engine(tmp_path: Path, src: FakeSource) -> Iterator[Callable[..., Engine]]:
    """Open engines on one directory and one fake clock source; closes none of them (an
    engine dropped without close() is an unclean stop)."""

    def factory(**config: object) -> Engine:
        return Engine(EngineConfig(dir=tmp_path / "node", **config), clock=Clock(src))  # type: ignore[arg-type]

    yield factory


# -- replay ----------------------------------------------------------------------------------


def test_replay_restores_keys_and_ttls_after_clean_close(
    open_engine: Callable[..., Engine], src: FakeSource
) -> None:
    e1 = open_engine()
    ok(run(e1, "SET", "p", "persistent"))
    ok(run(e1, "SET", "v", "volatile", "PX", 5000))
    ok(run(e1, "SET", "gone", "x", "PX", 50))
    for _ in range(3):
        ok(run(e1, "INCR", "n"))
    ok(run(e1, "SET", "t", "x"))
    ok(run(e1, "PEXPIRE", "t", 4000))
    ok(run(e1, "SET", "q", "x", "PX", 1000))
    ok(run(e1, "PERSIST", "q"))
    ok(run(e1, "SET", "d", "x"))
    ok(run(e1, "DEL", "d"))
    assert acquire(e1, "a", "holder", 3000) == [1, 0]
    assert advance(e1, "fence:a", 7) == [1, 7]
    e1.close()
    assert (e1.config.dir / SHUTDOWN_NAME).exists()  # type: ignore[operator]

    src.advance(100)
    e2 = open_engine()
    assert e2.execute([b"GET", b"p"]) == b"persistent"
    assert e2.execute([b"PTTL", b"v"]) == 4900
    assert e2.execute([b"GET", b"gone"]) is None
    assert e2.execute([b"GET", b"n"]) == b"3"
    assert e2.execute([b"PTTL", b"t"]) == 3900
    assert e2.execute([b"PTTL", b"q"]) == -1
    assert e2.execute([b"EXISTS", b"d"]) == 0
    assert e2.execute([b"GET", b"lock:a"]) == b"holder"
    assert e2.execute([b"PTTL", b"lock:a"]) == 2900
    assert e2.execute([b"GET", b"fence:a"]) == b"7"
    assert e2.execute([b"DBSIZE"]) == 7
    # The counter restarts from the reservation, never below what was granted.
    assert advance(e2, "fence:a", 7) == [0, 7 + 1024]
    # A clean shutdown with live keys delays acquisitions for as long as they last.
    assert e2.restart_delay_remaining_ms() == 4900
    assert e2.restart_reason == "clean shutdown with live locks"
    assert not (e2.config.dir / SHUTDOWN_NAME).exists()  # type: ignore[operator]
    e2.close()


def test_volatile_keys_from_another_clock_epoch_are_dropped(
    open_engine: Callable[..., Engine], src: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    e1 = open_engine()
    ok(run(e1, "SET", "p", "persistent"))
    ok(run(e1, "SET", "v", "volatile", "PX", 60_000))
    ok(run(e1, "SET", "t", "x"))
    ok(run(e1, "PEXPIRE", "t", 60_000))
    assert acquire(e1, "a", "holder", 30_000) == [1, 0]
    assert advance(e1, "fence:a", 7) == [1, 7]
    e1.close()

    src.advance(100)
    monkeypatch.setattr(engine_module, "clock_epoch", lambda: "another-boot")
    e2 = open_engine()
    assert e2.execute([b"GET", b"p"]) == b"persistent"
    assert e2.execute([b"GET", b"fence:a"]) == b"7"
    for key in (b"v", b"t", b"lock:a"):
        assert e2.execute([b"EXISTS", key]) == 0, key
    assert e2.keyspace.volatile_count == 0
    # Another boot: time since the shutdown is unknown, so the full longest TTL is waited.
    assert e2.restart_delay_remaining_ms() == 60_000
    e2.close()


def test_mixed_epochs_keep_only_current_boot_deadlines(
    open_engine: Callable[..., Engine], src: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Boot A writes, reboot, boot B writes: on the next start in boot B only boot B's
    deadlines count (each start appends an EPOCH record)."""
    real_epoch = clock_epoch()
    monkeypatch.setattr(engine_module, "clock_epoch", lambda: "boot-a")
    e1 = open_engine()
    ok(run(e1, "SET", "va", "x", "PX", 600_000))
    ok(run(e1, "SET", "pa", "x"))
    e1.close()
    monkeypatch.setattr(engine_module, "clock_epoch", lambda: real_epoch)
    e2 = open_engine()
    assert e2.execute([b"EXISTS", b"va"]) == 0
    ok(run(e2, "SET", "vb", "x", "PX", 600_000))
    e2.close()
    e3 = open_engine()
    assert e3.execute([b"EXISTS", b"va", b"pa", b"vb"]) == 2
    assert e3.execute([b"PTTL", b"vb"]) == 600_000
    e3.close()


def test_epoch_record_is_what_decides(open_engine: Callable[..., Engine]) -> None:
    """Editing the EPOCH record in the file has the same effect as a reboot."""
    e1 = open_engine()
    ok(run(e1, "SET", "v", "x", "PX", 600_000))
    ok(run(e1, "SET", "p", "x"))
    e1.close()
    aof = e1.config.dir / AOF_NAME  # type: ignore[operator]
    records = read_aof(aof)
    epoch = clock_epoch().encode()
    assert records.count([b"EPOCH", epoch]) == 1
    write_aof(
        aof, (encode_command(*(b"x" * len(epoch) if a == epoch else a for a in r)) for r in records)
    )
    e2 = open_engine()
    assert e2.execute([b"EXISTS", b"v"]) == 0
    assert e2.execute([b"EXISTS", b"p"]) == 1
    e2.close()


# -- torn tail -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 7, 20, -1])
def test_torn_tail_is_cut_back_to_the_last_whole_record(
    open_engine: Callable[..., Engine], caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    e1 = open_engine()
    ok(run(e1, "SET", "a", "1"))
    ok(run(e1, "SET", "b", "2", "PX", 600_000))
    ok(run(e1, "SET", "last", "the-last-value"))
    e1.close()
    aof = e1.config.dir / AOF_NAME  # type: ignore[operator]
    whole = aof.read_bytes()
    kept = read_aof(aof)[:-1]
    last = encode_command(b"SET", b"last", b"the-last-value")
    assert whole.endswith(last)
    good = len(whole) - len(last) - FRAME_OVERHEAD
    keep = len(last) + FRAME_OVERHEAD - 1 if cut == -1 else cut  # bytes of the last frame
    with open(aof, "r+b") as f:
        f.truncate(good + keep)

    with caplog.at_level(logging.WARNING, logger="lockd.engine"):
        e2 = open_engine()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("torn tail" in r.getMessage() for r in warnings), caplog.text
    assert f"cut the last {keep} bytes at byte {good}" in caplog.text
    assert e2.execute([b"GET", b"a"]) == b"1"
    assert e2.execute([b"GET", b"b"]) == b"2"
    assert e2.execute([b"GET", b"last"]) is None
    # The file was cut back before the new start's EPOCH record was appended.
    assert aof.read_bytes()[:good] == whole[:good]
    assert read_aof(aof) == [*kept, epoch_record()]
    ok(run(e2, "SET", "after", "1"))
    e2.close()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lockd.engine"):
        e3 = open_engine()
    assert "torn" not in caplog.text
    assert e3.execute([b"EXISTS", b"a", b"b", b"after"]) == 3
    e3.close()


def test_zero_filled_tail_is_cut_back(
    open_engine: Callable[..., Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """Power loss can leave a file extended with zeros instead of the last write."""
    e1 = open_engine()
    ok(run(e1, "SET", "a", "1"))
    e1.close()
    aof = e1.config.dir / AOF_NAME  # type: ignore[operator]
    whole = aof.read_bytes()
    aof.write_bytes(whole + b"\0" * 4096)
    with caplog.at_level(logging.WARNING, logger="lockd.engine"):
        e2 = open_engine()
    assert "torn tail (4096 zero bytes)" in caplog.text
    assert e2.execute([b"GET", b"a"]) == b"1"
    assert aof.read_bytes()[: len(whole)] == whole
    assert read_aof(aof)[-1] == epoch_record()
    e2.close()


def test_frame_cut_by_zeroed_sectors_is_cut_back(
    open_engine: Callable[..., Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """A torn write whose unwritten sectors read back as zeros (size extended, data
    not written): a whole-length frame that fails its checksum, cut off the same way."""
    e1 = open_engine()
    ok(run(e1, "SET", "a", "1"))
    e1.close()
    aof = e1.config.dir / AOF_NAME  # type: ignore[operator]
    whole = aof.read_bytes()
    frame, _ = encode_frame(encode_command(b"SET", b"b", b"v" * 2000), 0)
    written = SECTOR - len(whole) % SECTOR  # up to the next sector boundary
    aof.write_bytes(whole + frame[:written] + bytes(len(frame) - written))
    with caplog.at_level(logging.WARNING, logger="lockd.engine"):
        e2 = open_engine()
    assert "torn tail (a frame cut by" in caplog.text
    assert e2.execute([b"GET", b"a"]) == b"1"
    assert e2.execute([b"EXISTS", b"b"]) == 0
    assert read_aof(aof)[-1] == epoch_record()
    e2.close()


# -- rewrite ---------------------------------------------------------------------------------


def test_background_rewrite_compacts_and_keeps_writes_made_during_it(
    open_engine: Callable[..., Engine],
) -> None:
    e1 = open_engine(rewrite_min_size=1 << 30)
    for i in range(3000):
        ok(run(e1, "SET", "k", f"value-{i}"))
    for i in range(50):
        ok(run(e1, "SET", f"other{i}", "x", "PX", 600_000))
    ok(run(e1, "SET", "doomed", "x"))
    assert advance(e1, "fence:a", 42) == [1, 42]
    aof = e1.config.dir / AOF_NAME  # type: ignore[operator]
    assert e1.aof is not None
    before = aof.stat().st_size
    assert before == e1.aof.size

    assert e1.rewrite_aof() is True
    assert e1.aof.rewriting
    assert e1.rewrite_aof() is False  # one at a time
    assert (
        e1.execute([b"BGREWRITEAOF"]) == "Background append only file rewriting already in progress"
    )
    # Writes while the rewrite runs.
    ok(run(e1, "SET", "k", "final"))
    ok(run(e1, "SET", "during", "1"))
    ok(run(e1, "DEL", "doomed"))
    assert advance(e1, "fence:a", 43) == [1, 43]
    ok(run(e1, "PEXPIRE", "other0", 300_000))
    finish_rewrite(e1)

    after = aof.stat().st_size
    assert after == e1.aof.size == e1.aof.base_size
    assert after < before / 10
    assert e1.aof.rewrites == 1 and e1.aof.last_rewrite_ok
    assert "aof_rewrites:1" in e1.info("persistence")
    assert "aof_last_bgrewrite_status:ok" in e1.info("persistence")
    assert not aof.with_name(AOF_NAME + ".rewrite").exists()
    ok(run(e1, "SET", "later", "1"))
    e1.close()

    e2 = open_engine()
    assert e2.execute([b"GET", b"k"]) == b"final"
    assert e2.execute([b"GET", b"during"]) == b"1"
    assert e2.execute([b"GET", b"later"]) == b"1"
    assert e2.execute([b"EXISTS", b"doomed"]) == 0
    assert e2.execute([b"GET", b"fence:a"]) == b"43"
    assert e2.execute([b"PTTL", b"other0"]) == 300_000
    assert e2.execute([b"PTTL", b"other1"]) == 600_000
    assert e2.execute([b"DBSIZE"]) == 1 + 50 + 1 + 1 + 1  # k, other*, fence:a, during, later
    e2.close()


def test_rewrite_drops_expired_keys(open_engine: Callable[..., Engine], src: FakeSource) -> None:
    e1 = open_engine(rewrite_min_size=1 << 30)
    for i in range(100):
        ok(run(e1, "SET", f"k{i}", "x", "PX", 100))
    ok(run(e1, "SET", "p", "x"))
    src.advance(100)
    assert e1.rewrite_aof()
    finish_rewrite(e1)
    assert e1.aof is not None
    records = read_aof(e1.config.dir / AOF_NAME)  # type: ignore[operator]
    assert records == [epoch_record(), [b"SET", b"p", b"x"]]
    e1.close()


def test_auto_rewrite_when_the_file_doubles_past_the_minimum(
    open_engine: Callable[..., Engine],
) -> None:
    e1 = open_engine(rewrite_min_size=2048)
    aof = e1.aof
    assert aof is not None
    starts: list[tuple[int, int, int]] = []  # (size before the write, size, base size)
    for i in range(4000):
        prev = aof.size
        key = f"key{i % 120:03d}"
        ok(run(e1, "SET", key, f"value-{i:06d}"))
        base = aof.base_size
        e1.cron()
        if aof.rewriting:
            starts.append((prev, aof.size, base))
            finish_rewrite(e1)
        if len(starts) == 3:
            break
    assert len(starts) == 3, starts
    first_prev, first_size, first_base = starts[0]
    assert first_base < 1024
    assert first_prev < 2048 <= first_size  # not before the minimum size
    for prev, size, base in starts[1:]:
        assert base > 2048 // 2  # the compacted file (120 live keys) is big
        assert prev < 2 * base <= size  # exactly when it doubled
    e1.close()
    e2 = open_engine()
    assert e2.execute([b"DBSIZE"]) == 120
    e2.close()


def test_failed_rewrite_keeps_the_old_file(
    open_engine: Callable[..., Engine], caplog: pytest.LogCaptureFixture
) -> None:
    e1 = open_engine(rewrite_min_size=1 << 30)
    ok(run(e1, "SET", "a", "1"))
    aof = e1.config.dir / AOF_NAME  # type: ignore[operator]
    aof.with_name(AOF_NAME + ".rewrite").mkdir()  # the rewrite cannot create its file
    assert e1.rewrite_aof()
    ok(run(e1, "SET", "during", "1"))
    with caplog.at_level(logging.ERROR, logger="lockd.engine"):
        finish_rewrite(e1)
    assert "AOF rewrite failed" in caplog.text
    assert e1.aof is not None and not e1.aof.last_rewrite_ok
    assert "aof_last_bgrewrite_status:err" in e1.info("persistence")
    ok(run(e1, "SET", "after", "1"))
    e1.close()
    e2 = open_engine()
    assert e2.execute([b"EXISTS", b"a", b"during", b"after"]) == 3
    e2.close()


def test_rewrite_makes_held_writes_durable(open_engine: Callable[..., Engine]) -> None:
    """In the power-loss model a finished rewrite is an fsync point: what it covered
    survives an unclean stop; what came after it does not."""
    config: dict[str, object] = {
        "appendfsync": FsyncPolicy.NO,
        "hold_until_fsync": True,
        "rewrite_min_size": 1 << 30,
    }
    e1 = open_engine(**config)
    ok(run(e1, "SET", "before", "1"))
    assert e1.rewrite_aof()
    ok(run(e1, "SET", "during", "1"))
    finish_rewrite(e1)
    ok(run(e1, "SET", "after", "1"))
    del e1
    e2 = open_engine(**config)
    assert e2.execute([b"EXISTS", b"before"]) == 1
    assert e2.execute([b"EXISTS", b"during"]) == 1
    assert e2.execute([b"EXISTS", b"after"]) == 0
    e2.close()


# -- fsync policies --------------------------------------------------------------------------


def test_always_fsyncs_before_commit_returns(
    open_engine: Callable[..., Engine], fsync_log: list[str]
) -> None:
    e1 = open_engine(appendfsync=FsyncPolicy.ALWAYS)
    assert e1.aof is not None
    base = e1.aof.fsyncs
    e1.execute([b"SET", b"a", b"1"])
    assert e1.aof.fsyncs == base  # queued, not yet committed
    fsync_log.clear()
    e1.commit()
    assert e1.aof.fsyncs == base + 1
    assert fsync_log == [AOF_NAME]
    # Group commit: several writes, one fsync.
    e1.execute([b"SET", b"b", b"1"])
    e1.execute([b"SET", b"c", b"1", b"PX", b"1000"])
    e1.execute([b"PEXPIRE", b"a", b"1000"])
    e1.commit()
    assert e1.aof.fsyncs == base + 2
    # Nothing to commit: no fsync.
    e1.commit()
    e1.aof.tick()
    assert e1.aof.fsyncs == base + 2
    assert acquire(e1, "x", "L", 1000) == [1, 0]
    assert e1.aof.fsyncs == base + 3
    assert f"aof_fsyncs:{base + 3}" in e1.info("persistence")
    e1.close()


def test_everysec_fsyncs_on_tick_after_a_second(
    open_engine: Callable[..., Engine], fake_fsync_time: list[float]
) -> None:
    e1 = open_engine(appendfsync=FsyncPolicy.EVERYSEC)
    aof = e1.aof
    assert aof is not None
    assert aof.fsyncs == 0
    for i in range(10):
        ok(run(e1, "SET", f"k{i}", "v"))
    assert aof.fsyncs == 0
    fake_fsync_time[0] += 0.5
    e1.cron()
    assert aof.fsyncs == 0
    fake_fsync_time[0] += 0.5
    e1.cron()
    assert aof.fsyncs == 1
    fake_fsync_time[0] += 5
    e1.cron()
    assert aof.fsyncs == 1  # nothing new to sync
    ok(run(e1, "SET", "again", "v"))
    e1.cron()
    assert aof.fsyncs == 2  # a second since the last fsync: at the next tick
    ok(run(e1, "SET", "again", "v2"))
    fake_fsync_time[0] += 0.9
    e1.cron()
    assert aof.fsyncs == 2
    fake_fsync_time[0] += 0.1
    e1.cron()
    assert aof.fsyncs == 3
    e1.close()


def test_no_policy_does_not_fsync_writes(
    open_engine: Callable[..., Engine], fake_fsync_time: list[float], fsync_log: list[str]
) -> None:
    e1 = open_engine(appendfsync=FsyncPolicy.NO)
    aof = e1.aof
    assert aof is not None
    fsync_log.clear()  # opening fsyncs the new file's header
    for i in range(50):
        ok(run(e1, "SET", f"k{i}", "v"))
        fake_fsync_time[0] += 1
        e1.cron()
    assert aof.fsyncs == 0
    assert AOF_NAME not in fsync_log
    # Handed to the OS, though: a process crash loses none of it.
    assert (e1.config.dir / AOF_NAME).stat().st_size == aof.size  # type: ignore[operator]
    e1.close()
    assert aof.fsyncs == 1  # a clean shutdown syncs


def test_fence_advance_needs_no_aof_fsync_under_always(
    open_engine: Callable[..., Engine], fsync_log: list[str]
) -> None:
    e1 = open_engine(appendfsync=FsyncPolicy.ALWAYS, fence_block=10)
    assert e1.aof is not None and e1.reservation is not None
    base = e1.aof.fsyncs
    fsync_log.clear()
    for token in range(1, 26):
        assert advance(e1, "fence:a", token) == [1, token]
    # Reserved at 1 (-> 11), 12 (-> 22) and 23 (-> 33): three durable reservation writes.
    assert e1.reservation.writes == 3
    assert e1.reservation.reserved == 33
    assert read_reservation(e1.config.dir / RESERVATION_NAME) == (33, False)  # type: ignore[operator]
    assert e1.aof.fsyncs == base
    assert AOF_NAME not in fsync_log
    assert fsync_log.count(RESERVATION_NAME + ".tmp") == 3
    # Lower or equal tokens are refused and write nothing.
    assert advance(e1, "fence:a", 25) == [0, 25]
    assert advance(e1, "fence:a", 3) == [0, 25]
    # Other keys share the reservation.
    assert advance(e1, "fence:b", 30) == [1, 30]
    assert e1.reservation.writes == 3
    assert advance(e1, "fence:b", 1000) == [1, 1000]
    assert e1.reservation.writes == 4 and e1.reservation.reserved == 1010
    assert "fence_reservation_writes:4" in e1.info("lockd")
    assert "fence_reserved:1010" in e1.info("lockd")
    assert e1.aof.fsyncs == base
    e1.close()


# -- the fencing floor -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "truncated", "emptied", "held"])
def test_counters_restart_at_the_reservation_after_unclean_stop(
    open_engine: Callable[..., Engine], src: FakeSource, damage: str
) -> None:
    config: dict[str, object] = {"fence_block": 100, "max_ttl_ms": 300}
    if damage == "held":  # power-loss model: unfsynced AOF writes vanish with the process
        config.update(appendfsync=FsyncPolicy.NO, hold_until_fsync=True)
    e1 = open_engine(**config)
    acked: dict[str, int] = {}
    for key, token in [("fence:a", 5), ("fence:a", 50), ("fence:b", 7), ("fence:a", 150)]:
        reply = advance(e1, key, token)
        assert reply == [1, token]
        acked[key] = token
    assert e1.reservation is not None and e1.reservation.reserved == 250
    aof = e1.config.dir / AOF_NAME  # type: ignore[operator]
    del e1  # unclean stop: no close()

    if damage == "deleted":
        aof.unlink()
    elif damage == "truncated":
        data = aof.read_bytes()
        aof.write_bytes(data[: len(data) // 2])
    elif damage == "emptied":
        aof.write_bytes(b"")
    else:
        assert aof.read_bytes() == AOF_HEADER  # nothing reached the disk

    e2 = open_engine(**config)
    assert e2.fence_floor == 250
    for key, value in acked.items():
        accepted, counter = advance(e2, key, 1)  # type: ignore[misc]
        assert accepted == 0 and counter >= value, (key, counter, value)
    assert advance(e2, "fence:new", 250) == [0, 250]
    assert advance(e2, "fence:a", 251) == [1, 251]
    assert "fence_floor:250" in e2.info("lockd")
    # lockd_acquire reports the same floor once the restart delay is over.
    src.advance(restart_delay_ms(300))
    reply = ok(acquire(e2, "b", "L", 100))
    assert reply[0] == 1 and reply[1] >= acked["fence:b"]  # type: ignore[index]
    e2.close()


def test_hold_mode_loses_unfsynced_writes_but_not_counters(
    open_engine: Callable[..., Engine], fake_fsync_time: list[float]
) -> None:
    """The hold mode models power loss: writes after the last fsync are lost; counters
    stay safe through the reservation."""
    config: dict[str, object] = {
        "appendfsync": FsyncPolicy.EVERYSEC,
        "hold_until_fsync": True,
        "max_ttl_ms": 300,
    }
    e1 = open_engine(**config)
    ok(run(e1, "SET", "synced", "1"))
    fake_fsync_time[0] += 1
    e1.cron()
    ok(run(e1, "SET", "unsynced", "1"))
    assert advance(e1, "fence:a", 9) == [1, 9]
    del e1
    e2 = open_engine(**config)
    assert e2.execute([b"GET", b"synced"]) == b"1"
    assert e2.execute([b"GET", b"unsynced"]) is None
    assert e2.execute([b"GET", b"fence:a"]) is None
    assert advance(e2, "fence:a", 9) == [0, 9 + 1024]
    e2.close()


# -- delayed restart -------------------------------------------------------------------------


def test_fresh_directory_has_no_restart_delay(open_engine: Callable[..., Engine]) -> None:
    e1 = open_engine(max_ttl_ms=300)
    assert e1.restart_delay_remaining_ms() == 0
    assert acquire(e1, "a", "L", 100) == [1, 0]
    assert "restart_delay_remaining_ms:0" in e1.info("lockd")
    assert info_field(e1, "restart_delay_reason") == "fresh data directory"
    e1.close()


def test_unclean_stop_delays_acquisitions_for_max_ttl_plus_drift(
    open_engine: Callable[..., Engine], src: FakeSource
) -> None:
    e1 = open_engine(max_ttl_ms=300)
    assert acquire(e1, "a", "L", 300) == [1, 0]
    del e1
    src.advance(1000)
    e2 = open_engine(max_ttl_ms=300)
    delay = restart_delay_ms(300)
    assert delay == 305
    assert e2.restart_delay_remaining_ms() == delay
    reply = acquire(e2, "b", "L", 100)
    assert isinstance(reply, CommandError) and reply.code == "RESTARTDELAY"
    assert str(reply).startswith(f"RESTARTDELAY {delay} ms left: ")
    assert "unclean stop" in str(reply)
    with pytest.raises(CommandError, match=r"^RESTARTDELAY \d+ ms left"):
        e2.lock_acquire(b"lock:b", b"fence:b", b"L", b"100")
    assert info_field(e2, "restart_delay_remaining_ms") == str(delay)
    assert info_field(e2, "restart_delay_reason") == "unclean stop"
    assert info_field(e2, "max_ttl_ms") == "300"
    # Everything else works during the delay.
    assert advance(e2, "fence:b", 5) == [1, 5]
    ok(run(e2, "SET", "k", "v"))
    src.advance(delay - 1)
    assert str(acquire(e2, "b", "L", 100)).startswith("RESTARTDELAY 1 ms left")
    src.advance(1)
    assert acquire(e2, "b", "L", 100) == [1, 5]
    assert info_field(e2, "restart_delay_remaining_ms") == "0"
    e2.close()


def test_unclean_stop_delay_on_the_real_clock(tmp_path: Path) -> None:
    config = EngineConfig(dir=tmp_path / "node", max_ttl_ms=300)
    e1 = Engine(config)
    assert acquire(e1, "a", "L", 300) == [1, 0]
    del e1
    e2 = Engine(config)
    started = time.monotonic()
    reply = acquire(e2, "b", "L", 100)
    assert isinstance(reply, CommandError) and reply.code == "RESTARTDELAY"
    left = int(str(reply).split()[1])
    assert 0 < left <= 305
    while isinstance(acquire(e2, "b", "L", 100), CommandError):
        assert time.monotonic() - started < 2
        time.sleep(0.01)
    assert time.monotonic() - started >= left / 1000 - 0.02
    e2.close()


def test_clean_shutdown_without_live_locks_has_no_delay(
    open_engine: Callable[..., Engine], src: FakeSource
) -> None:
    e1 = open_engine(max_ttl_ms=300)
    assert acquire(e1, "a", "L", 300) == [1, 0]
    assert run(e1, "FCALL", "lockd_release", 1, "lock:a", "L") == 1
    assert acquire(e1, "b", "L", 100) == [1, 0]
    src.advance(100)  # lock:b expired (not yet reclaimed)
    ok(run(e1, "SET", "p", "persistent"))
    e1.close()
    e2 = open_engine(max_ttl_ms=300)
    assert e2.restart_delay_remaining_ms() == 0
    assert acquire(e2, "c", "L", 100) == [1, 0]
    assert info_field(e2, "restart_delay_remaining_ms") == "0"
    # Status says why there is no delay (not "fresh data directory").
    assert info_field(e2, "restart_delay_reason") == "clean shutdown with no live locks"
    e2.close()


def test_clean_shutdown_with_live_lock_delays_for_its_remaining_ttl(
    open_engine: Callable[..., Engine], src: FakeSource
) -> None:
    e1 = open_engine(max_ttl_ms=300)
    assert acquire(e1, "a", "L", 250) == [1, 0]
    src.advance(50)
    e1.close()
    src.advance(30)
    e2 = open_engine(max_ttl_ms=300)
    assert e2.restart_delay_remaining_ms() == 170  # 250 - 50 - 30
    assert info_field(e2, "restart_delay_reason") == "clean shutdown with live locks"
    assert str(acquire(e2, "b", "L", 100)).startswith("RESTARTDELAY 170 ms left")
    assert e2.execute([b"PTTL", b"lock:a"]) == 170  # and the lock itself was replayed
    src.advance(170)
    assert acquire(e2, "b", "L", 100) == [1, 0]
    assert acquire(e2, "a", "M", 100) == [1, 0]
    e2.close()


def test_clean_shutdown_during_a_delay_keeps_the_rest_of_it(
    open_engine: Callable[..., Engine], src: FakeSource
) -> None:
    e1 = open_engine(max_ttl_ms=300)
    del e1  # unclean
    e2 = open_engine(max_ttl_ms=300)
    src.advance(100)
    e2.close()  # no locks, but 205 ms of the delay are still owed
    src.advance(5)
    e3 = open_engine(max_ttl_ms=300)
    assert e3.restart_delay_remaining_ms() == 200
    del e3  # unclean again: the full delay
    src.advance(5)
    e4 = open_engine(max_ttl_ms=300)
    assert e4.restart_delay_remaining_ms() == 305
    assert e4.restart_reason == "unclean stop"
    e4.close()


def test_lowering_max_ttl_does_not_shorten_the_delay_after_an_unclean_stop(
    tmp_path: Path,
) -> None:
    """Locks granted under the old, larger max-TTL may still be live: the delay after an
    unclean stop uses the largest max-TTL the directory has ever been run with."""
    first = Engine(EngineConfig(dir=tmp_path, max_ttl_ms=5_000))
    first.lock_acquire(b"lock:{a}", b"fence:{a}", b"L", b"5000")
    first.commit()
    # Unclean stop: no close(). Restart with a smaller max-TTL.
    second = Engine(EngineConfig(dir=tmp_path, max_ttl_ms=300))
    assert second.restart_delay_remaining_ms() > 4_000
    assert second.restart_reason == "unclean stop"
