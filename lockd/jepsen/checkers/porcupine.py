"""Readers for porcupine's reference histories (github.com/anishathalye/porcupine).

`test_data/jepsen/etcd_NNN.log`: Jepsen console lines of an etcd compare-and-set register
(`INFO jepsen.util - P :TYPE :F VALUE`), checked with `RegisterModel`.
`test_data/kv/cNN-*.txt`: EDN maps of a get/put/append key-value store, checked with
`KvModel`. In both, time is the line number; an `:info` completion (a timeout) leaves the
operation open forever with an unknown outcome, taking its arguments from its invocation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lockd.jepsen.checkers.wgl import UNKNOWN, Operation

__all__ = ["parse_etcd", "parse_kv"]

_KV = re.compile(
    r'\{:process (\d+), :type :(invoke|ok), :f :(get|put|append), :key "([^"]*)", '
    r':value (nil|"[^"]*")\}'
)


def _number(text: str) -> int | None:
    return None if text == "nil" else int(text)


def parse_etcd(lines: Iterable[str]) -> list[Operation]:
    """Operations of an etcd register history (read / write / cas)."""
    open_: dict[int, tuple[int, tuple[object, ...]]] = {}
    ops: list[Operation] = []
    for index, line in enumerate(lines):
        fields = line.split()
        if len(fields) < 7 or fields[1] != "jepsen.util":
            if line.strip():
                raise ValueError(f"line {index + 1}: not a jepsen.util operation: {line!r}")
            continue
        process, kind, f = int(fields[3]), fields[4][1:], fields[5][1:]
        value = " ".join(fields[6:])
        if kind == "invoke":
            if f == "read":
                call: tuple[object, ...] = ("read",)
            elif f == "write":
                call = ("write", int(value))
            elif f == "cas":
                a, b = value.strip("[]").split()
                call = ("cas", int(a), int(b))
            else:
                raise ValueError(f"line {index + 1}: unknown operation {f!r}")
            open_[process] = (index, call)
            continue
        start, call = open_.pop(process)
        output: object
        ret: float | None = index
        if kind == "ok":
            output = _number(value) if f == "read" else "ok"
        elif kind == "fail" and f == "cas":
            output = "fail"
        elif kind == "fail" and f == "read":
            output = UNKNOWN  # a read that timed out: closed here, outcome unknown
        else:  # info: may take effect at any time from now on
            output, ret = UNKNOWN, None
        ops.append(Operation(process, start, ret, call, output))
    ops += [Operation(p, start, None, call, UNKNOWN) for p, (start, call) in open_.items()]
    return ops


def parse_kv(lines: Iterable[str]) -> list[Operation]:
    """Operations of a kv history (get / put / append), keyed by their key."""
    open_: dict[int, tuple[int, tuple[str, ...], str]] = {}
    ops: list[Operation] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        m = _KV.fullmatch(line.strip())
        if m is None:
            raise ValueError(f"line {index + 1}: not a kv operation: {line!r}")
        process, kind, f, key, raw = int(m[1]), m[2], m[3], m[4], m[5]
        value = None if raw == "nil" else raw[1:-1]
        if kind == "invoke":
            call: tuple[str, ...] = ("get",) if f == "get" else (f, value or "")
            open_[process] = (index, call, key)
            continue
        start, call, key = open_.pop(process)
        output = value if f == "get" else "ok"
        ops.append(Operation(process, start, index, call, output, key))
    ops += [Operation(p, s, None, c, UNKNOWN, k) for p, (s, c, k) in open_.items()]
    return ops
