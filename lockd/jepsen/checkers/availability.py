"""Availability: how often acquire succeeds while a majority is healthy, and how long
the service takes to recover after each fault heals.

A node is unhealthy from the moment a fault hits it until the fault heals plus a settle
time, and a restarted node also for its restart delay (max-TTL plus drift); a link is
unhealthy while it is cut, delayed or lossy. A majority is healthy while every gateway
is up and reaches at least a quorum of healthy nodes over healthy links. Acquires that
failed because the lock was held (LockTimeout) are contention, not unavailability.

Recovery after a fault is the time from its heal to the next granted lock, when that
comes before the next fault starts. The check fails only when the service did not
recover: no acquire succeeded in the final healed phase. The rates are for the report.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from lockd.jepsen.history import Event, Op

__all__ = ["check_availability", "unhealthy_windows"]

SETTLE_NS = 500_000_000
MS = 1_000_000


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
    acquires = [op for op in ops if op.f == "acquire" and op.invoke.worker is not None]
    counts = {"healthy": [0, 0, 0, 0], "degraded": [0, 0, 0, 0]}  # ok, held, unavailable, info
    for op in acquires:
        bucket = counts["degraded" if _inside(op.invoke.time, bad) else "healthy"]
        if op.complete is None:
            bucket[3] += 1
        elif op.outcome == "ok":
            bucket[0] += 1
        elif op.outcome == "fail" and (op.complete.error or "").startswith("LockTimeout"):
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
    final_ok = None
    if healed:
        final_ok = sum(1 for t in oks if t >= healed[-1])
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
        "valid": final_ok is None or final_ok > 0,
        "majority_healthy": summary["healthy"],
        "majority_unhealthy": summary["degraded"],
        "unhealthy_s": round(sum(e - s for s, e in bad) / 1e9, 3),
        "final_phase_grants": final_ok,
        "recovery_ms": {
            "count": len(recoveries),
            "recovered": len(times),
            "interrupted": sum(1 for r in recoveries if r["interrupted"]),
            "median": times[len(times) // 2] if times else None,
            "max": times[-1] if times else None,
        },
        "recoveries": recoveries[:100],
    }
