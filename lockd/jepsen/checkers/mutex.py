"""Mutual exclusion, without fencing: who held each lock when.

For every grant there are two intervals, from the acquire's `ok`:
- *held*: until the holder invoked its release (or went on to its next acquire, or the
  history ended): when the client believed it held the lock. Two of these overlapping is
  what a paused holder causes; counted and shown, they are what fencing saves, and they
  do not fail the check.
- *lease*: the same, cut at the lease's deadline (the client's own clock). lockd promises
  these never overlap; an overlap means the service granted a lock that was still held,
  and fails the check.

A client is a worker (the optional `worker` field: the harness's worker goes on under a
new process id after an `info`), or, for operations without one, the process itself. A
release ends the grant it names (same key and token), whichever process sends it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lockd.jepsen.history import Event, Op

__all__ = ["Interval", "check_mutex", "intervals"]


@dataclasses.dataclass(frozen=True, slots=True)
class Interval:
    """One grant: key, token, worker (None: unknown), process, start, believed end, lease
    end (ns)."""

    key: str
    token: int
    worker: int | None
    process: Any
    start: int
    held_end: int
    lease_end: int
    deadline: int
    released: bool

    @property
    def client(self) -> tuple[str, Any]:
        """Who held it: the worker, or the process when the worker is not known."""
        return ("worker", self.worker) if self.worker is not None else ("process", self.process)


def _client(op: Op) -> tuple[str, Any]:
    w = op.invoke.worker
    return ("worker", w) if w is not None else ("process", op.invoke.process)


def intervals(ops: Sequence[Op], end_of_history: int) -> list[Interval]:
    """Every acknowledged grant's intervals (ops of a validated history)."""
    releases: dict[tuple[Any, Any], list[int]] = defaultdict(list)  # (key, token) -> times
    by_client: dict[tuple[str, Any], list[Op]] = defaultdict(list)
    for op in ops:
        by_client[_client(op)].append(op)
        if op.f == "release" and isinstance(op.invoke.value, dict):
            releases[(op.key, op.invoke.value.get("token"))].append(op.invoke.time)
    out: list[Interval] = []
    for cops in by_client.values():
        cops.sort(key=lambda o: o.invoke.time)
        for i, op in enumerate(cops):
            if op.f != "acquire" or op.outcome != "ok" or op.complete is None:
                continue
            token = op.complete.value["token"]
            start = op.complete.time
            end = next((o.invoke.time for o in cops[i + 1 :] if o.f == "acquire"), end_of_history)
            release = min((t for t in releases[(op.key, token)] if t >= start), default=None)
            released = release is not None and release <= end
            if release is not None and released:
                end = release
            deadline = int(op.complete.value["deadline"])
            out.append(
                Interval(
                    str(op.key),
                    token,
                    op.invoke.worker,
                    op.invoke.process,
                    start,
                    max(start, end),
                    max(start, min(end, deadline)),
                    deadline,
                    released,
                )
            )
    out.sort(key=lambda iv: iv.start)
    return out


def _overlaps(ivs: Sequence[Interval], lease: bool) -> list[tuple[Interval, Interval, int]]:
    """(earlier, later, overlap ns) for intervals of one key held by different clients."""
    found: list[tuple[Interval, Interval, int]] = []
    active: list[Interval] = []

    def end_of(x: Interval) -> int:
        return x.lease_end if lease else x.held_end

    for iv in ivs:
        active = [a for a in active if end_of(a) > iv.start]
        for a in active:
            if a.client != iv.client:
                found.append((a, iv, min(end_of(a), end_of(iv)) - iv.start))
        active.append(iv)
    return found


def _paused(
    pauses: Sequence[tuple[int, int, int]], worker: int | None, start: int, end: int
) -> bool:
    return worker is not None and any(w == worker and s < end and e > start for w, s, e in pauses)


def pause_windows(nemesis: Sequence[Event]) -> list[tuple[int, int, int]]:
    """(worker, start, end) of every pause the nemesis recorded."""
    starts: dict[Any, Event] = {}
    out: list[tuple[int, int, int]] = []
    last = max((e.time for e in nemesis), default=0)
    for e in nemesis:
        v = e.value or {}
        if v.get("fault") != "pause":
            continue
        if e.f == "start":
            starts[v.get("id")] = e
        elif e.f == "stop" and v.get("id") in starts:
            s = starts.pop(v.get("id"))
            out += [(w, s.time, e.time) for w in (s.value or {}).get("paused_workers", [])]
    for s in starts.values():
        out += [(w, s.time, last) for w in (s.value or {}).get("paused_workers", [])]
    return out


def clock_windows(nemesis: Sequence[Event]) -> list[tuple[int, int]]:
    """(start, end) of every clock fault the nemesis recorded (open ones to the end)."""
    starts: dict[Any, int] = {}
    out: list[tuple[int, int]] = []
    last = max((e.time for e in nemesis), default=0)
    for e in nemesis:
        v = e.value or {}
        if v.get("fault") != "clock":
            continue
        if e.f == "start":
            starts[v.get("id")] = e.time
        elif e.f == "stop" and v.get("id") in starts:
            out.append((starts.pop(v.get("id")), e.time))
    out += [(start, last) for start in starts.values()]
    return out


def check_mutex(
    ops: Sequence[Op], nemesis: Sequence[Event], end: int, *, wall_clock_ttls: bool = False
) -> dict[str, Any]:
    """Overlaps of held intervals (counted) and of lease intervals (violations).

    `wall_clock_ttls` (real Redis nodes: TTLs expire on the wall clock): a lease overlap
    with a clock fault between the first grant and the second is the expected effect of
    a wall-clock step, counted apart (`lease_overlaps_under_clock_steps`), not a
    violation; fencing must still keep the store safe. Any other overlap is one."""
    ivs = intervals(ops, end)
    by_key: dict[str, list[Interval]] = defaultdict(list)
    for iv in ivs:
        by_key[iv.key].append(iv)
    pauses = pause_windows(nemesis)
    held: list[tuple[Interval, Interval, int]] = []
    lease: list[tuple[Interval, Interval, int]] = []
    for group in by_key.values():
        held += _overlaps(group, lease=False)
        lease += _overlaps(group, lease=True)
    explained = sum(1 for a, b, _ in held if _paused(pauses, a.worker, a.start, a.held_end))
    stepped: list[tuple[Interval, Interval, int]] = []
    if wall_clock_ttls:
        windows = clock_windows(nemesis)
        stepped = [o for o in lease if any(s <= o[1].start and e >= o[0].start for s, e in windows)]
        lease = [o for o in lease if o not in stepped]

    def show(a: Interval, b: Interval, ns: int) -> dict[str, Any]:
        return {
            "key": a.key,
            "first": {"worker": a.worker, "process": a.process, "token": a.token},
            "second": {"worker": b.worker, "process": b.process, "token": b.token},
            "at_ns": b.start,
            "overlap_ms": round(ns / 1e6, 3),
        }

    return {
        "valid": not lease,
        "grants": len(ivs),
        "held_overlaps": len(held),
        "held_overlaps_during_pauses": explained,
        "held_overlaps_without_pause": len(held) - explained,
        "held_overlap_ms": round(sum(ns for _, _, ns in held) / 1e6, 3),
        "held_examples": [show(*o) for o in held[:10]],
        "lease_violations": len(lease),
        "lease_violation_ms": round(sum(ns for _, _, ns in lease) / 1e6, 3),
        "lease_examples": [show(*o) for o in lease[:10]],
        **(
            {
                "lease_overlaps_under_clock_steps": len(stepped),
                "lease_overlap_under_clock_steps_ms": round(sum(ns for *_, ns in stepped) / 1e6, 3),
                "clock_step_examples": [show(*o) for o in stepped[:10]],
                "note": "real Redis expires keys on its wall clock: a step forward ends a "
                "lease early on the nodes, so overlaps under clock faults are expected "
                "there (not a failure of fencing: see the store checker)",
            }
            if wall_clock_ttls
            else {}
        ),
    }
