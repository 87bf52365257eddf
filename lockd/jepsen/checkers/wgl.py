"""Linearizability by Wing & Gong's search with Lowe's memoisation, as porcupine does it.

Operations become call and return entries in one time-ordered, doubly linked list (calls
before returns at equal times). The search walks it: at a call it tries to linearize that
operation now (the model says whether the output is legal from the current state); at a
return whose call was not linearized it backtracks. A cache of (linearized set, state)
pairs already explored prunes the search (Lowe). Operations that never returned (`ret`
None: crashed, `info`) may be linearized at any point after their call, or never.

Histories are split by the model into independent partitions (per key: P-compositionality)
and the partitions are searched round-robin in slices, so a quick violation in one is
found even when another is slow. Limits on time, steps and memory end the search with
`unknown`; it never answers `valid` without having found a linearization of every
partition.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "UNKNOWN",
    "CheckResult",
    "KvModel",
    "Model",
    "Operation",
    "RegisterModel",
    "Search",
    "check",
]

S = TypeVar("S", bound=Hashable)


class _Unknown:
    """The output of an operation whose outcome is unknown (`info`)."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclasses.dataclass(frozen=True, slots=True)
class Operation:
    """One operation: called at `call`, returned at `ret` (None: never; an unknown
    outcome), with model-specific `input` and `output` (`UNKNOWN` when not known)."""

    process: Any
    call: float
    ret: float | None
    input: Any
    output: Any
    key: Any = None
    meta: Any = None


class Model(Protocol[S]):
    """A sequential specification."""

    def init(self) -> S:
        """The initial state."""
        ...

    def step(self, state: S, input: Any, output: Any) -> Sequence[S]:
        """The states the operation may leave, if `output` is legal from `state`; empty
        when it is not. More than one for nondeterministic outcomes."""
        ...

    def partition(self, ops: Sequence[Operation]) -> dict[Any, list[Operation]]:
        """Independent sub-histories (by key), each checked on its own."""
        ...


# -- models ------------------------------------------------------------------------------


class RegisterModel:
    """A compare-and-set register, initially absent (None): the etcd model of porcupine.

    Inputs: ("read",), ("write", v), ("cas", old, new). Outputs: a read's value, "ok",
    "fail" (a cas whose compare did not match), or UNKNOWN."""

    def init(self) -> Any:
        return None

    def step(self, state: Any, input: Any, output: Any) -> Sequence[Any]:
        f = input[0]
        if f == "read":
            return (state,) if output is UNKNOWN or output == state else ()
        if f == "write":
            return (input[1],)
        if f == "cas":
            match = input[1] == state
            if output is UNKNOWN:
                return (input[2],) if match else (state,)
            if output == "ok":
                return (input[2],) if match else ()
            return (state,) if not match else ()
        raise ValueError(f"unknown register operation {f!r}")

    def partition(self, ops: Sequence[Operation]) -> dict[Any, list[Operation]]:
        groups: dict[Any, list[Operation]] = {}
        for op in ops:
            groups.setdefault(op.key, []).append(op)
        return groups


class KvModel:
    """Per-key string registers with get / put / append, initially "" (porcupine's kv).

    Inputs: ("get",), ("put", s), ("append", s), on `Operation.key`. With `partitioned`
    false the state is the whole map (a sorted tuple of items), one partition."""

    def __init__(self, partitioned: bool = True) -> None:
        self.partitioned = partitioned

    def init(self) -> Any:
        return "" if self.partitioned else ()

    def step(self, state: Any, input: Any, output: Any) -> Sequence[Any]:
        if self.partitioned:
            return _kv_step(state, input, output)
        key, op = input
        current = dict(state)
        after = _kv_step(current.get(key, ""), op, output)
        if not after:
            return ()
        current[key] = after[0]
        return (tuple(sorted(current.items())),)

    def partition(self, ops: Sequence[Operation]) -> dict[Any, list[Operation]]:
        if not self.partitioned:
            return {None: [dataclasses.replace(op, input=(op.key, op.input)) for op in ops]}
        groups: dict[Any, list[Operation]] = {}
        for op in ops:
            groups.setdefault(op.key, []).append(op)
        return groups


def _kv_step(state: str, input: Any, output: Any) -> Sequence[str]:
    f = input[0]
    if f == "get":
        return (state,) if output is UNKNOWN or output == state else ()
    if f == "put":
        return (input[1],)
    if f == "append":
        return (state + input[1],)
    raise ValueError(f"unknown kv operation {f!r}")


# -- the search --------------------------------------------------------------------------


class Search(Generic[S]):
    """A resumable WGL search over one partition: `run(steps)` continues it."""

    def __init__(self, model: Model[S], ops: Sequence[Operation]) -> None:
        self.model = model
        self.ops = list(ops)
        n = len(self.ops)
        # Entry ids: 0 = head, 1..2n = calls and returns, 2n+1 = tail.
        entries: list[tuple[float, int, int]] = []  # (time, 0 call / 1 return, op index)
        for i, op in enumerate(self.ops):
            entries.append((op.call, 0, i))
            entries.append((op.ret if op.ret is not None else float("inf"), 1, i))
        entries.sort()
        size = 2 * n + 2
        self.tail = size - 1
        self._next = [*range(1, size), -1]
        self._prev = [-1, *range(size - 1)]
        self._op = [-1] * size  # entry -> op index
        self._is_call = [False] * size
        self._match = [-1] * size  # call entry -> its return entry
        call_entry: dict[int, int] = {}
        for pos, (_, kind, i) in enumerate(entries, start=1):
            self._op[pos] = i
            if kind == 0:
                self._is_call[pos] = True
                call_entry[i] = pos
            else:
                self._match[call_entry[i]] = pos
        self.state: S = model.init()
        self.linearized = 0
        self.stack: list[tuple[int, S, Sequence[S], int]] = []
        self.cache: set[tuple[int, S]] = set()
        self.entry = self._next[0]
        self.result: bool | None = None if n else True
        self.steps = 0
        self.memory = 0
        self._entry_bytes = 160 + 4 * ((n + 29) // 30)  # tuple, set slot, bitset
        self.best: list[int] = []  # the longest linearized prefix found (op indices)
        self.blocked: int | None = None  # an op that could not be linearized after it

    def _lift(self, c: int) -> None:
        nxt, prv = self._next, self._prev
        r = self._match[c]
        nxt[prv[c]] = nxt[c]
        prv[nxt[c]] = prv[c]
        nxt[prv[r]] = nxt[r]
        prv[nxt[r]] = prv[r]

    def _unlift(self, c: int) -> None:
        nxt, prv = self._next, self._prev
        r = self._match[c]
        prv[nxt[r]] = r
        nxt[prv[r]] = r
        prv[nxt[c]] = c
        nxt[prv[c]] = c

    def _try(self, c: int, states: Sequence[S], start: int) -> bool:
        bit = 1 << self._op[c]
        linearized = self.linearized | bit
        for k in range(start, len(states)):
            new = states[k]
            key = (linearized, new)
            if key in self.cache:
                continue
            self.cache.add(key)
            self.memory += self._entry_bytes + sys.getsizeof(new)
            self.stack.append((c, self.state, states, k))
            self.state = new
            self.linearized = linearized
            self._lift(c)
            self.entry = self._next[0]
            return True
        return False

    def run(self, max_steps: int) -> bool | None:
        """Search up to `max_steps` more steps: True (linearizable), False (not), None
        (not finished yet)."""
        if self.result is not None:
            return self.result
        ops, op_of, is_call, nxt = self.ops, self._op, self._is_call, self._next
        step = self.model.step
        for _ in range(max_steps):
            self.steps += 1
            entry = self.entry
            if nxt[0] == self.tail:
                self.result = True
                return True
            if is_call[entry]:
                op = ops[op_of[entry]]
                if self._try(entry, step(self.state, op.input, op.output), 0):
                    continue
                self.entry = nxt[entry]
                continue
            # A return whose call is not linearized: backtrack.
            if len(self.stack) > len(self.best) or self.blocked is None:
                self.best = [op_of[s[0]] for s in self.stack]
                self.blocked = op_of[entry]
            if not self.stack:
                self.result = False
                return False
            c, state, states, k = self.stack.pop()
            self.state = state
            self.linearized &= ~(1 << op_of[c])
            self._unlift(c)
            if not self._try(c, states, k + 1):
                self.entry = nxt[c]
        return None


@dataclasses.dataclass
class CheckResult:
    """valid: True, False or "unknown"; what was searched; for a violation, where."""

    valid: bool | str
    partitions: int = 0
    checked: int = 0
    steps: int = 0
    states: int = 0
    elapsed_s: float = 0.0
    reason: str = ""
    failed_key: Any = None
    linearized: list[Operation] = dataclasses.field(default_factory=list)
    blocked: Operation | None = None
    unfinished: list[Any] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON summary (a violation shows the last linearized ops and the blocked one)."""
        out: dict[str, Any] = {
            "valid": self.valid,
            "partitions": self.partitions,
            "steps": self.steps,
            "states": self.states,
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if self.reason:
            out["reason"] = self.reason
        if self.valid is False:
            out["failed_key"] = self.failed_key
            out["linearized_tail"] = [_show(op) for op in self.linearized[-8:]]
            out["blocked"] = _show(self.blocked) if self.blocked else None
        if self.unfinished:
            out["unfinished_keys"] = self.unfinished[:20]
        return out


def _show(op: Operation) -> dict[str, Any]:
    return {
        "process": op.process,
        "key": op.key,
        "input": repr(op.input),
        "output": repr(op.output),
        "meta": op.meta,
    }


def check(
    model: Model[Any],
    ops: Iterable[Operation],
    *,
    time_limit_s: float = 60.0,
    memory_limit_bytes: int = 1 << 30,
    max_steps: int | None = None,
    slice_steps: int = 20_000,
) -> CheckResult:
    """Check linearizability of `ops` under `model`, partition by partition.

    Partitions are searched round-robin, `slice_steps` at a time, smallest first; the
    first that is not linearizable ends the check (False). Running out of time, memory
    (an estimate of the caches' size) or steps gives "unknown", never True."""
    started = time.monotonic()
    groups = model.partition(list(ops))
    searches = sorted(
        ((key, Search(model, group)) for key, group in groups.items()),
        key=lambda ks: len(ks[1].ops),
    )
    result = CheckResult(True, partitions=len(searches))
    pending = [(k, s) for k, s in searches]
    budget_steps = max_steps if max_steps is not None else sys.maxsize
    while pending:
        for item in list(pending):
            key, search = item
            outcome = search.run(slice_steps)
            if outcome is None:
                continue
            pending.remove(item)
            result.checked += 1
            if outcome is False:
                result.valid = False
                result.failed_key = key
                result.linearized = [search.ops[i] for i in search.best]
                result.blocked = search.ops[search.blocked] if search.blocked is not None else None
                pending = []
                break
        steps = sum(s.steps for _, s in searches)
        memory = sum(s.memory for _, s in searches)
        why = ""
        if time.monotonic() - started > time_limit_s:
            why = f"time limit of {time_limit_s:g} s"
        elif memory > memory_limit_bytes:
            why = f"memory limit of {memory_limit_bytes >> 20} MiB"
        elif steps > budget_steps:
            why = f"step limit of {budget_steps}"
        if pending and why:
            result.valid = "unknown"
            result.reason = f"stopped at the {why} with {len(pending)} partition(s) unfinished"
            result.unfinished = [k for k, _ in pending]
            break
    result.steps = sum(s.steps for _, s in searches)
    result.states = sum(len(s.cache) for _, s in searches)
    result.elapsed_s = time.monotonic() - started
    for _, search in searches:  # free the caches now, not when the result goes
        search.cache.clear()
    return result
