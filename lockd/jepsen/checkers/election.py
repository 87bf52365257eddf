"""The election workload's properties beyond its terms.

(At most one leader per term and terms strictly increasing in real time are
`check_tokens(ops, "campaign", "term")`.) Per election (the operation's key):

- **Deposed writes are refused.** Once an `elect-write` with term t' was acknowledged,
  a write with a smaller term invoked after that acknowledgement must not be: the store
  refuses a deposed leader that wakes up.
- **Observers see terms in order.** Each observer process's (term, value) sequence never
  goes down in term, and a term repeats only with a new value.
- **Every observed leader is explained.** An observed term was granted to some campaign
  (then the value is that campaign's), or to a campaign whose outcome is unknown
  (`info`) invoked before the observation ended; anything else is a leader nobody was
  elected as.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lockd.jepsen.history import Op

__all__ = ["check_election"]

EXAMPLES = 10


def _by_key(ops: Sequence[Op], f: str) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.f == f and op.key is not None:
            out[op.key].append(op)
    return out


def _deposed_writes(writes: Sequence[Op]) -> list[dict[str, Any]]:
    """Acknowledged writes invoked after a larger term's write was acknowledged."""
    acked = [w for w in writes if w.outcome == "ok"]
    completed = sorted(acked, key=lambda w: w.end or 0)
    found: list[dict[str, Any]] = []
    best: Op | None = None
    i = 0
    for write in sorted(acked, key=lambda w: w.invoke.time):
        while i < len(completed) and (completed[i].end or 0) < write.invoke.time:
            if best is None or completed[i].invoke.value["term"] > best.invoke.value["term"]:
                best = completed[i]
            i += 1
        term = write.invoke.value["term"]
        if best is not None and best.invoke.value["term"] > term:
            found.append(
                {
                    "term": term,
                    "process": write.invoke.process,
                    "newer_term": best.invoke.value["term"],
                    "newer_process": best.invoke.process,
                }
            )
    return found


def _observations(
    observed: Sequence[Op], campaigns: Sequence[Op]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(out-of-order observations, unexplained observations)."""
    granted: dict[int, str] = {}
    for c in campaigns:
        if c.outcome == "ok":
            assert c.complete is not None
            granted[c.complete.value["term"]] = c.invoke.value["value"]
    unknown_since = sorted(c.invoke.time for c in campaigns if c.outcome == "info")
    disorder: list[dict[str, Any]] = []
    unexplained: list[dict[str, Any]] = []
    last: dict[object, tuple[int, str]] = {}
    for op in sorted((o for o in observed if o.outcome == "ok"), key=lambda o: o.end or 0):
        assert op.complete is not None
        term, value = op.complete.value["term"], op.complete.value["value"]
        seen = last.get(op.invoke.process)
        if seen is not None and (term < seen[0] or (term, value) == seen):
            disorder.append(
                {"process": op.invoke.process, "after": list(seen), "saw": [term, value]}
            )
        last[op.invoke.process] = (term, value)
        if term in granted:
            if granted[term] != value:
                unexplained.append(
                    {"process": op.invoke.process, "term": term, "value": value,
                     "granted_value": granted[term]}
                )  # fmt: skip
        elif not (unknown_since and unknown_since[0] <= op.complete.time):
            unexplained.append({"process": op.invoke.process, "term": term, "value": value})
    return disorder, unexplained


def _refused(write: Op) -> bool:
    """The store refused this write for a stale term."""
    return write.complete is not None and "STALE_TOKEN" in (write.complete.error or "")


def check_election(ops: Sequence[Op]) -> dict[str, Any]:
    """Deposed writes acknowledged, observers out of order, unexplained leaders."""
    campaigns = _by_key(ops, "campaign")
    writes = _by_key(ops, "elect-write")
    observed = _by_key(ops, "observe")
    deposed: list[dict[str, Any]] = []
    disorder: list[dict[str, Any]] = []
    unexplained: list[dict[str, Any]] = []
    for key in sorted(set(campaigns) | set(writes) | set(observed)):
        for item in _deposed_writes(writes.get(key, [])):
            deposed.append({"key": key, **item})
        out_of_order, strangers = _observations(observed.get(key, []), campaigns.get(key, []))
        disorder += [{"key": key, **item} for item in out_of_order]
        unexplained += [{"key": key, **item} for item in strangers]
    refused = sum(1 for group in writes.values() for w in group if _refused(w))
    return {
        "valid": not deposed and not disorder and not unexplained,
        "elections": len(set(campaigns) | set(writes)),
        "terms": sum(1 for g in campaigns.values() for c in g if c.outcome == "ok"),
        "writes_acknowledged": sum(1 for g in writes.values() for w in g if w.outcome == "ok"),
        "deposed_writes_refused": refused,
        "deposed_writes_acknowledged": len(deposed),
        "deposed_examples": deposed[:EXAMPLES],
        "observations": sum(1 for g in observed.values() for o in g if o.outcome == "ok"),
        "observed_out_of_order": len(disorder),
        "out_of_order_examples": disorder[:EXAMPLES],
        "unexplained_leaders": len(unexplained),
        "unexplained_examples": unexplained[:EXAMPLES],
    }
