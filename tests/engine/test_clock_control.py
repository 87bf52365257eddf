"""LOCKD.CLOCK, the harness's control of a node's clock: off unless enabled; wall-clock
steps move TTLs only on --unsafe-wall-clock; drift moves them on every clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lockd.engine import Clock, Engine, EngineConfig, WallClock
from lockd.resp.replies import OK, CommandError
from tests.engine.test_keyspace import FakeSource, acquire, ok
from tests.support import EngineProcess


def clock(engine: Engine, *args: str) -> object:
    return engine.execute([b"LOCKD.CLOCK", *(a.encode() for a in args)])


def test_refused_unless_enabled() -> None:
    reply = clock(Engine(EngineConfig()), "GET")
    assert isinstance(reply, CommandError) and "--enable-clock-control" in str(reply)


def test_wall_steps_do_not_move_monotonic_ttls_but_drift_does() -> None:
    src = FakeSource()
    engine = Engine(EngineConfig(clock_control=True), clock=Clock(src))
    assert ok(acquire(engine, "a", "holder", 1000))[0] == 1  # type: ignore[index]
    assert clock(engine, "JUMP", "5000") == OK
    assert clock(engine, "OFFSET", "-250") == OK
    _now, offset, rate, source = clock(engine, "GET")  # type: ignore[misc]
    assert (offset, rate, source) == (b"-250.0", b"1.0", b"monotonic")
    assert acquire(engine, "a", "thief", 1000) == [0, 0]  # the step changed nothing
    assert clock(engine, "RATE", "2") == OK  # drift: 2x fast
    src.advance(500)
    assert acquire(engine, "a", "thief", 1000) == [1, 0]  # 500 ms real = 1000 ms engine
    assert isinstance(clock(engine, "RATE", "0"), CommandError)
    assert isinstance(clock(engine, "JUMP", "soon"), CommandError)
    assert isinstance(clock(engine, "SPIN", "1"), CommandError)


def test_wall_steps_expire_locks_on_the_unsafe_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    wall = [1_700_000_000 * 1_000_000_000]
    monkeypatch.setattr(time, "time_ns", lambda: wall[0])
    engine = Engine(EngineConfig(clock_control=True), clock=WallClock())
    assert ok(acquire(engine, "a", "holder", 1000))[0] == 1  # type: ignore[index]
    assert clock(engine, "JUMP", "1500") == OK
    assert clock(engine, "GET")[1:] == [b"1500.0", b"1.0", b"wall"]  # type: ignore[index]
    assert acquire(engine, "a", "thief", 1000) == [1, 0]  # expired early: unsafe


def test_engine_flags(tmp_path: Path) -> None:
    node = EngineProcess(tmp_path / "e", "--enable-clock-control", "--unsafe-wall-clock").start()
    try:
        r = node.client()
        assert r.execute_command("LOCKD.CLOCK", "JUMP", "10")  # type: ignore[no-untyped-call]
        reply = r.execute_command("LOCKD.CLOCK", "GET")  # type: ignore[no-untyped-call]
        assert reply[1:] == [b"10.0", b"1.0", b"wall"]
        r.close()
    finally:
        node.close()
    plain = EngineProcess(tmp_path / "p").start()
    try:
        r = plain.client()
        with pytest.raises(Exception, match="disabled"):
            r.execute_command("LOCKD.CLOCK", "GET")  # type: ignore[no-untyped-call]
        r.close()
    finally:
        plain.close()
