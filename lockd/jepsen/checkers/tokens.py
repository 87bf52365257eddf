"""Fencing tokens: unique per lock, and growing in real time.

For every lock: no two grants carry the same token, and if grant A completed before
grant B was invoked, token(A) < token(B). Only acknowledged grants (`ok`) have tokens.
The same check reads an election's terms (`f="campaign"`, `field="term"`): at most one
leader per term, and terms strictly increasing in real time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lockd.jepsen.history import Op

__all__ = ["check_tokens"]


def check_tokens(ops: Sequence[Op], f: str = "acquire", field: str = "token") -> dict[str, Any]:
    """Duplicate tokens and real-time order violations among `f` grants (their token is
    the completion's `field`)."""
    grants: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.f == f and op.outcome == "ok" and op.key is not None:
            grants[op.key].append(op)
    duplicates: list[dict[str, Any]] = []
    reorders: list[dict[str, Any]] = []
    dup_count = reorder_count = 0
    for key, group in sorted(grants.items()):
        by_token: dict[int, Op] = {}
        for op in group:
            assert op.complete is not None
            token = op.complete.value[field]
            if token in by_token:
                dup_count += 1
                if len(duplicates) < 10:
                    duplicates.append(
                        {
                            "key": key,
                            "token": token,
                            "processes": [by_token[token].invoke.process, op.invoke.process],
                        }
                    )
            by_token.setdefault(token, op)
        # Sweep: grants by completion time; for each grant, the largest token among those
        # completed before its invocation must be smaller than its own.
        completed = sorted(group, key=lambda o: o.complete.time if o.complete else 0)
        best: tuple[int, Op] | None = None
        i = 0
        for op in sorted(group, key=lambda o: o.invoke.time):
            while i < len(completed):
                done = completed[i].complete
                assert done is not None
                if done.time >= op.invoke.time:
                    break
                if best is None or done.value[field] > best[0]:
                    best = (done.value[field], completed[i])
                i += 1
            assert op.complete is not None
            token = op.complete.value[field]
            if best is not None and best[0] >= token and best[1] is not op:
                reorder_count += 1
                if len(reorders) < 10:
                    reorders.append(
                        {
                            "key": key,
                            "earlier_token": best[0],
                            "earlier_process": best[1].invoke.process,
                            "later_token": token,
                            "later_process": op.invoke.process,
                        }
                    )
    total = sum(len(g) for g in grants.values())
    return {
        "valid": dup_count == 0 and reorder_count == 0,
        "grants": total,
        "locks": len(grants),
        "duplicates": dup_count,
        "duplicate_examples": duplicates,
        "order_violations": reorder_count,
        "order_examples": reorders,
    }
