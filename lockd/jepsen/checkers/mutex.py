"""Mutual exclusion, without fencing: who held each lock when.

For every grant there are two intervals, from the acquire's `ok`:
- *held*: until the holder invoked its release (or went on to its next acquire, or the
  history ended): when the client believed it held the lock. Two of these overlapping is
  what a paused holder causes; counted and shown, they are what fencing saves, and they
  do not fail the check.
- *lease*: the same, cut at the lease's deadline (the client's own clock). lockd promises
  these never overlap; an overlap means the service granted a lock that was still held,
  and fails the check.
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
    """One grant: key, token, worker, start, believed end, lease end (ns)."""

    key: str
    token: int
    worker: int
    process: Any
    start: int
    held_end: int
    lease_end: int
    deadline: int
    released: bool


def intervals(ops: Sequence[Op], end_of_history: int) -> list[Interval]:
    """Every acknowledged grant's intervals."""
    by_worker: dict[int, list[Op]] = defaultdict(list)
    for op in ops:
        if op.invoke.worker is not None:
            by_worker[op.invoke.worker].append(op)
    out: list[Interval] = []
    for worker, wops in by_worker.items():
        wops.sort(key=lambda o: o.invoke.time)
        for i, op in enumerate(wops):
            if op.f != "acquire" or op.outcome != "ok" or op.complete is None:
                continue
            token = op.complete.value["token"]
            start = op.complete.time
            end, released = end_of_history, False
            for j in range(i + 1, len(wops)):
                later = wops[j]
                if later.f == "acquire":
                    end = later.invoke.time
                    break
                v = later.invoke.value
                if later.f == "release" and isinstance(v, dict) and v.get("token") == token:
                    end, released = later.invoke.time, True
                    break
            deadline = int(op.complete.value["deadline"])
            out.append(
                Interval(
                    str(op.key),
                    token,
                    worker,
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
    """(earlier, later, overlap ns) for intervals of one key held by different workers."""
    found: list[tuple[Interval, Interval, int]] = []
    active: list[Interval] = []

    def end_of(x: Interval) -> int:
        return x.lease_end if lease else x.held_end

    for iv in ivs:
        active = [a for a in active if end_of(a) > iv.start]
        for a in active:
            if a.worker != iv.worker:
                found.append((a, iv, min(end_of(a), end_of(iv)) - iv.start))
        active.append(iv)
    return found


def _paused(pauses: Sequence[tuple[int, int, int]], worker: int, start: int, end: int) -> bool:
    return any(w == worker and s < end and e > start for w, s, e in pauses)


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


def check_mutex(ops: Sequence[Op], nemesis: Sequence[Event], end: int) -> dict[str, Any]:
    """Overlaps of held intervals (counted) and of lease intervals (violations)."""
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

    def show(a: Interval, b: Interval, ns: int) -> dict[str, Any]:
        return {
            "key": a.key,
            "first": {"worker": a.worker, "token": a.token},
            "second": {"worker": b.worker, "token": b.token},
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
    }
