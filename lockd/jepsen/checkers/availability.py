"""Availability: how often acquire succeeds while a majority is healthy, and how long
the service takes to recover after each fault heals.

A node is unhealthy from the moment a fault hits it until the fault heals plus a settle
time, and a restarted node also for its restart delay (max-TTL plus drift); a link is
unhealthy while it is cut, delayed or lossy. A majority is healthy while every gateway
is up and reaches at least a quorum of healthy nodes over healthy links. Acquires that
failed because the lock was held (LockTimeout) are contention, not unavailability.

Recovery after a fault is the time from its heal to the next granted lock, when that
comes before the next fault starts. The check fails only when the service did not
recover: no acquire completed in the final healed phase (from the last `healed` event)
was granted, and not every one of them is explained by contention. A LockTimeout is
contention when a grant on that lock may still have been live as the acquire began: its
lease ran until after that (the later of its deadline and its completion plus the TTL
asked for), and no `ok` release of it completed before. The rates are for the report.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from lockd.jepsen.history import Event, Op
from lockd.units import MS

__all__ = ["HELD", "check_availability", "final_phase", "unhealthy_windows"]

HELD = "LockTimeout"
"""How the error of an acquire that failed because the lock stayed held begins."""

SETTLE_NS = 500_000_000


def unhealthy_windows(
    nemesis: Sequence[Event], *, nodes: int, gateways: int, max_ttl_ms: int, end: int
) -> list[tuple[int, int]]:
    """Time ranges during which a majority was not healthy (merged, sorted)."""
    delay = (max_ttl_ms + max_ttl_ms // 100 + 2) * MS
    starts: dict[Any, Event] = {}
    # (start, end, kind, what): what = ("node", n) | ("gateway", g) | ("link", g, n)
    windows: list[tuple[int, int, tuple[Any, ...]]] = []

    def add(s: Event, stop: int) -> None:
        v = s.value or {}
        kind = v.get("fault")
        if kind in ("kill", "power-loss"):
            for n in v.get("nodes", []):
                windows.append((s.time, stop + delay + SETTLE_NS, ("node", n)))
            for g in v.get("gateways", []):
                windows.append((s.time, stop + SETTLE_NS, ("gateway", g)))
        elif kind == "partition":
            for g, n in v.get("links", []):
                windows.append((s.time, stop + SETTLE_NS, ("link", g, n)))

    for e in nemesis:
        v = e.value or {}
        if e.f == "start":
            starts[v.get("id")] = e
        elif e.f == "stop" and v.get("id") in starts:
            add(starts.pop(v.get("id")), e.time)
    for s in starts.values():
        add(s, end)
    if not windows:
        return []
    quorum = nodes // 2 + 1
    points = sorted({t for s, e, _ in windows for t in (s, e)})
    bad: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(points):
        mid = (a + b) // 2
        hit = [w for s, e, w in windows if s <= mid < e]
        down_nodes = {w[1] for w in hit if w[0] == "node"}
        down_gateways = {w[1] for w in hit if w[0] == "gateway"}
        links = {(w[1], w[2]) for w in hit if w[0] == "link"}
        healthy = not down_gateways and all(
            sum(1 for n in range(nodes) if n not in down_nodes and (g, n) not in links) >= quorum
            for g in range(gateways)
        )
        if not healthy:
            if bad and bad[-1][1] == a:
                bad[-1] = (bad[-1][0], b)
            else:
                bad.append((a, b))
    return bad


def _inside(t: int, windows: Sequence[tuple[int, int]]) -> bool:
    return any(s <= t < e for s, e in windows)


def _rate(ok: int, total: int) -> float | None:
    return round(ok / total, 4) if total else None


def _held(op: Op) -> bool:
    return (
        op.outcome == "fail"
        and op.complete is not None
        and (op.complete.error or "").startswith(HELD)
    )


def _leases(ops: Sequence[Op]) -> dict[Any, list[tuple[int, int, int]]]:
    """Per lock: (granted at, may be live until, released at or -1) of every grant."""
    released: dict[tuple[Any, Any], int] = {}
    for op in ops:
        if op.f == "release" and op.outcome == "ok" and op.complete is not None:
            token = (op.invoke.value or {}).get("token")
            released.setdefault((op.key, token), op.complete.time)
    out: dict[Any, list[tuple[int, int, int]]] = {}
    for op in ops:
        if op.f != "acquire" or op.outcome != "ok" or op.complete is None:
            continue
        done, asked = op.complete, op.invoke.value or {}
        until = int(done.value["deadline"])
        if "ttl_s" in asked:  # the nodes keep the key at most this long after the grant
            until = max(until, done.time + int(asked["ttl_s"] * 1e9))
        gone = released.get((op.key, done.value["token"]), -1)
        out.setdefault(op.key, []).append((done.time, until, gone))
    return out


def final_phase(ops: Sequence[Op], healed_at: int) -> dict[str, Any]:
    """Acquires completed (or, never completed, invoked) from `healed_at` on: granted,
    contended (a LockTimeout while a lease may have been live) or unavailable."""
    leases = _leases(ops)

    def contended(op: Op) -> bool:
        t, end = op.invoke.time, op.end if op.end is not None else op.invoke.time
        return _held(op) and any(
            granted <= end and until > t and not 0 <= gone <= t
            for granted, until, gone in leases.get(op.key, ())
        )

    counts = {"grants": 0, "contended": 0, "unavailable": 0}
    for op in ops:
        if op.f != "acquire" or (op.end if op.end is not None else op.invoke.time) < healed_at:
            continue
        kind = "grants" if op.outcome == "ok" else "contended" if contended(op) else "unavailable"
        counts[kind] += 1
    recovered = counts["grants"] > 0 or (counts["contended"] > 0 and not counts["unavailable"])
    return {"valid": recovered, "healed_at_ns": healed_at, **counts}


def check_availability(
    ops: Sequence[Op],
    nemesis: Sequence[Event],
    *,
    nodes: int,
    gateways: int,
    max_ttl_ms: int,
    end: int,
) -> dict[str, Any]:
    """Acquire success while a majority is healthy; recovery after each fault."""
    bad = unhealthy_windows(nemesis, nodes=nodes, gateways=gateways, max_ttl_ms=max_ttl_ms, end=end)
    acquires = [op for op in ops if op.f == "acquire"]
    counts = {"healthy": [0, 0, 0, 0], "degraded": [0, 0, 0, 0]}  # ok, held, unavailable, info
    for op in acquires:
        bucket = counts["degraded" if _inside(op.invoke.time, bad) else "healthy"]
        if op.complete is None:
            bucket[3] += 1
        elif op.outcome == "ok":
            bucket[0] += 1
        elif _held(op):
            bucket[1] += 1
        elif op.outcome == "fail":
            bucket[2] += 1
        else:
            bucket[3] += 1
    oks = sorted(op.complete.time for op in acquires if op.outcome == "ok" and op.complete)
    recoveries: list[dict[str, Any]] = []
    starts = sorted(e.time for e in nemesis if e.f == "start")
    for e in nemesis:
        if e.f != "stop":
            continue
        after = next((t for t in oks if t >= e.time), None)
        cut = next((t for t in starts if t > e.time), None)
        measured = after is not None and (cut is None or after < cut)
        recoveries.append(
            {
                "fault": (e.value or {}).get("fault"),
                "healed_at_ns": e.time,
                "recovery_ms": round((after - e.time) / MS, 1) if measured and after else None,
                "interrupted": not measured and cut is not None,
            }
        )
    times = sorted(r["recovery_ms"] for r in recoveries if r["recovery_ms"] is not None)
    healed = [e.time for e in nemesis if e.f == "healed"]
    final = final_phase(ops, healed[-1]) if healed else None
    summary = {
        name: {
            "acquires": sum(c),
            "ok": c[0],
            "held": c[1],
            "unavailable": c[2],
            "info": c[3],
            "success_rate": _rate(c[0], sum(c)),
            "available_rate": _rate(c[0], c[0] + c[2] + c[3]),
        }
        for name, c in counts.items()
    }
    return {
        "valid": final is None or final["valid"],
        "majority_healthy": summary["healthy"],
        "majority_unhealthy": summary["degraded"],
        "unhealthy_s": round(sum(e - s for s, e in bad) / 1e9, 3),
        "final_phase_grants": final["grants"] if final else None,
        "final_phase": final,
        "recovery_ms": {
            "count": len(recoveries),
            "recovered": len(times),
            "interrupted": sum(1 for r in recoveries if r["interrupted"]),
            "median": times[len(times) // 2] if times else None,
            "max": times[-1] if times else None,
        },
        "recoveries": recoveries[:100],
    }
