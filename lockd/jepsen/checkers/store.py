"""The fenced store checker: linearizability, lost updates, token order.

The store is checked per resource (one lock name) as a *fenced register*: its state is
(counter value, highest token accepted). A write or claim with token t is legal as `ok`
only if t >= highest, and as a stale refusal (`fail` whose error starts with
`StaleToken`) only if t < highest; a `fail` for any other reason did not happen and says
nothing about tokens. A read must return exactly the state. So the WGL search proves both
that the store behaved like one register and that it enforced the token rule; a store
that accepts a stale write cannot be linearized.

Then: every acknowledged increment present (no two acknowledged writes wrote the same
value, none above the final value), and, from the store's own log, tokens accepted in
non-decreasing order per resource. The log is read strictly: only an incomplete last
record (a crash mid-append) is forgiven; a damaged record with whole records after it
makes that part "unknown", as does a missing log.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lockd.durable import CorruptFile
from lockd.jepsen.checkers import merge
from lockd.jepsen.checkers.wgl import UNKNOWN, Operation, check
from lockd.jepsen.history import Op
from lockd.store.log import EMPTY_LOG, read_log

__all__ = [
    "STALE",
    "FencedRegisterModel",
    "check_store",
    "is_stale_refusal",
    "store_operations",
    "token_order",
]

State = tuple[int | None, int]  # (counter value, highest token)
STORE_OPS = ("claim", "read", "write")
STALE = "StaleToken"
"""How the error of a claim or write refused for its stale token begins."""


def is_stale_refusal(op: Op) -> bool:
    """Whether a claim or write failed because the store had seen a larger token."""
    return (
        op.outcome == "fail"
        and op.complete is not None
        and (op.complete.error or "").startswith(STALE)
    )


class FencedRegisterModel:
    """One resource of the store: ("read",), ("claim", t), ("write", v, t); outputs
    (value, highest) for reads, else "ok", "stale" (refused as stale), "refused" (not
    applied, for another reason) or UNKNOWN."""

    def init(self) -> State:
        return (None, 0)

    def step(self, state: State, input: Any, output: Any) -> Sequence[State]:
        value, highest = state
        if input[0] == "read":
            return (state,) if output is UNKNOWN or tuple(output) == state else ()
        token = input[-1]
        applied: State = (input[1] if input[0] == "write" else value, max(highest, token))
        if output is UNKNOWN:  # may have been applied, or not at all
            return (applied, state) if token >= highest else (state,)
        if output == "ok":
            return (applied,) if token >= highest else ()
        if output == "refused":
            return (state,)
        return (state,) if token < highest else ()  # "stale"

    def partition(self, ops: Sequence[Operation]) -> dict[Any, list[Operation]]:
        groups: dict[Any, list[Operation]] = {}
        for op in ops:
            groups.setdefault(op.key, []).append(op)
        return groups


def store_operations(ops: Sequence[Op]) -> list[Operation]:
    """The store operations of a history as WGL operations (unknown reads dropped).

    An unknown claim or write with token t cannot take effect once an operation that saw
    a larger highest token completed, so its return is set to that moment (and it is
    dropped if that was before its call): the search then stays small."""
    out: list[Operation] = []
    for op in ops:
        if op.f not in STORE_OPS or op.key is None:
            continue
        v, done = op.invoke.value or {}, op.complete
        outcome = op.outcome
        if op.f == "read":
            if outcome != "ok" or done is None:
                continue
            call: tuple[Any, ...] = ("read",)
            output: Any = (done.value["value"], done.value["highest"])
        else:
            call = ("claim", v["token"]) if op.f == "claim" else ("write", v["value"], v["token"])
            if outcome == "fail":
                output = "stale" if is_stale_refusal(op) else "refused"
            else:
                output = "ok" if outcome == "ok" else UNKNOWN
        ret = done.time if done is not None and output is not UNKNOWN else None
        meta = {"f": op.f, "process": op.invoke.process, "worker": op.invoke.worker}
        out.append(Operation(op.invoke.process, op.invoke.time, ret, call, output, op.key, meta))
    # Completion times of operations that saw each highest token, per resource.
    seen: dict[Any, list[tuple[int, float]]] = defaultdict(list)
    for o in out:
        if o.ret is None or o.output in ("stale", "refused"):
            continue
        highest = o.output[1] if o.input[0] == "read" else o.input[-1]
        seen[o.key].append((highest, o.ret))
    result: list[Operation] = []
    for o in out:
        if o.ret is not None:
            result.append(o)
            continue
        token = o.input[-1]
        ends = [ret for highest, ret in seen[o.key] if highest > token]
        if not ends:
            result.append(o)
        elif min(ends) >= o.call:
            result.append(Operation(o.process, o.call, min(ends), o.input, o.output, o.key, o.meta))
    return result


def token_order(log_path: Path | None) -> dict[str, Any]:
    """Whether the store's log shows tokens accepted in non-decreasing order per resource.

    Unknown without a log, or when it is damaged other than by a torn tail (the store's
    own rule, `lockd.store.log.read_log`: what follows damage cannot be trusted, nor
    skipped); a torn tail ends the scan, as it ends the store's replay. A fence reset
    (`R` record, `lockd store-reset`) starts the resource's order afresh."""
    if log_path is None or not log_path.is_file():
        where = "" if log_path is None else f" at {log_path}"
        return {"valid": "unknown", "reason": f"no store log{where}: token order not checked"}
    data = log_path.read_bytes()
    if len(data) < len(EMPTY_LOG) and EMPTY_LOG.startswith(data):  # torn while creating it
        return {"valid": True, "records": 0, "decreases": 0, "examples": []}
    try:
        contents = read_log(log_path, data)
    except ValueError as exc:
        return {"valid": "unknown", "reason": str(exc)}
    except CorruptFile as exc:
        return {"valid": "unknown", "reason": f"{exc}: the log is corrupt, not torn"}
    top: dict[str, int] = {}
    decreases: list[dict[str, Any]] = []
    records = 0
    for record, _ in contents.records:
        if isinstance(record, str):  # an admin's fence reset
            top.pop(record, None)
            continue
        resource, key, _value, token = record
        records += 1
        if token < top.get(resource, 0):
            decreases.append(
                {"resource": resource, "key": key, "token": token, "after": top[resource]}
            )
        top[resource] = max(top.get(resource, 0), token)
    return {
        "valid": not decreases,
        "records": records,
        "torn_tail_bytes": len(data) - contents.end,
        "decreases": len(decreases),
        "examples": decreases[:10],
    }


def _lost_updates(ops: Sequence[Op]) -> dict[str, Any]:
    """Acknowledged increments: written values must be distinct and present at the end."""
    written: dict[str, list[int]] = defaultdict(list)
    final: dict[str, int | None] = {}
    for op in ops:
        if op.outcome != "ok" or op.key is None or op.complete is None:
            continue
        if op.f == "write":
            written[op.key].append(op.invoke.value["value"])
        elif op.f == "read" and op.invoke.process == "final":
            final[op.key] = op.complete.value["value"]
    per_key: dict[str, Any] = {}
    lost = missing = 0
    for key in sorted(set(written) | set(final)):
        values = written.get(key, [])
        dupes = {v: n for v, n in Counter(values).items() if n > 1}
        end = final.get(key)
        above = [v for v in values if end is not None and v > end]
        lost += sum(n - 1 for n in dupes.values())
        missing += len(above)
        per_key[key] = {
            "acknowledged": len(values),
            "final": end,
            "lost": sum(n - 1 for n in dupes.values()),
            "duplicate_values": dict(sorted(dupes.items())[:10]),
            "missing": above[:10],
        }
    return {"valid": lost == 0 and missing == 0, "lost": lost, "missing": missing, "keys": per_key}


def check_store(
    ops: Sequence[Op],
    log_path: Path | None,
    *,
    time_limit_s: float = 60.0,
    memory_limit_bytes: int = 1 << 30,
) -> dict[str, Any]:
    """Linearizability (fenced register, per resource), lost updates and token order
    (unknown when `log_path` is None or missing)."""
    lin = check(
        FencedRegisterModel(),
        store_operations(ops),
        time_limit_s=time_limit_s,
        memory_limit_bytes=memory_limit_bytes,
    ).to_json()
    lost = _lost_updates(ops)
    order = token_order(log_path)
    writes = [op for op in ops if op.f in ("write", "claim")]
    stale = sum(1 for op in writes if is_stale_refusal(op))
    return {
        "valid": merge([lin["valid"], lost["valid"], order["valid"]]),
        "linearizable": lin,
        "lost_updates": lost,
        "token_order": order,
        "writes_accepted": sum(1 for op in writes if op.outcome == "ok"),
        "stale_writes_refused": stale,
        "refused_other": sum(1 for op in writes if op.outcome == "fail") - stale,
    }
