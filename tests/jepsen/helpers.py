"""Hand-made histories for the checker tests: fenced-counter cycles as events."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lockd.jepsen.client import CLAIM, COUNTER
from lockd.jepsen.history import NEMESIS, Event, pair
from lockd.store.log import StoreLog, encode_write

MS = 1_000_000
KEY = "lock-0"


class H:
    """A history under construction; times are in milliseconds."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(
        self,
        kind: str,
        process: int | str,
        f: str,
        t_ms: float,
        value: Any = None,
        *,
        worker: int | None = None,
        error: str | None = None,
        key: str | None = KEY,
    ) -> H:
        w = worker if worker is not None else process if isinstance(process, int) else None
        self.events.append(Event(kind, process, f, int(t_ms * MS), key, value, error, w))
        return self

    def op(
        self,
        p: int,
        f: str,
        t0: float,
        t1: float | None,
        value: Any,
        out: Any = None,
        kind: str = "ok",
        worker: int | None = None,
        error: str | None = None,
    ) -> H:
        self.add("invoke", p, f, t0, value, worker=worker)
        if t1 is not None:
            self.add(kind, p, f, t1, out, worker=worker, error=error)
        return self

    def grant(self, p: int, t0: float, t1: float, token: int, lease_ms: float = 1000) -> H:
        out = {"token": token, "deadline": int((t1 + lease_ms) * MS)}
        return self.op(p, "acquire", t0, t1, {"ttl_s": 1.0, "wait_s": 1.0}, out)

    def cycle(self, p: int, t: float, token: int, read: int | None, *, write_ok: bool = True) -> H:
        """acquire, claim, read, write read+1, release: 10 ms apart from time `t`."""
        self.grant(p, t, t + 5, token)
        self.op(p, "claim", t + 10, t + 15, {"token": token}, {"token": token, "highest": token})
        self.op(p, "read", t + 20, t + 25, None, {"value": read, "highest": token})
        value = (read or 0) + 1
        if write_ok:
            out = {"value": value, "token": token, "highest": token}
            self.op(p, "write", t + 30, t + 35, {"value": value, "token": token}, out)
        self.op(p, "release", t + 40, t + 45, {"token": token}, {"token": token})
        return self

    def final(self, t: float, value: int | None, highest: int) -> H:
        self.add("invoke", "final", "read", t, key=KEY)
        return self.add("ok", "final", "read", t + 1, {"value": value, "highest": highest})

    def nemesis(self, f: str, t: float, **value: Any) -> H:
        self.events.append(Event("info", NEMESIS, f, int(t * MS), value=value))
        return self


def write_store_log(events: Sequence[Event], path: Path) -> Path:
    """The store log (`path`, named store.log) of a history's acknowledged claims and
    writes, in completion order: what `lockd store` would have written for it."""
    ops = pair((e for e in events if not e.is_nemesis), strict=False)
    done = [op for op in ops if op.outcome == "ok"]
    records = []
    for op in sorted(done, key=lambda o: o.end or 0):
        v = op.invoke.value
        if op.f == "claim":
            records.append(encode_write(str(op.key), CLAIM, str(v["token"]).encode(), v["token"]))
        elif op.f == "write":
            value = str(v["value"]).encode()
            records.append(encode_write(str(op.key), COUNTER, value, v["token"]))
    log = StoreLog(path.parent)
    log.open()
    try:
        log.append(records)
    finally:
        log.close()
    return path
