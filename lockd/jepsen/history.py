"""The history: Jepsen's invoke/ok/fail/info events, one JSON object per line.

Every client operation is an `invoke` followed by one completion from the same process:
`ok` (it happened), `fail` (it certainly did not) or `info` (unknown: it may have happened,
or may still happen). A process is single-threaded; after an `info` it is retired and its
worker goes on under a new process id. Nemesis events have process "nemesis". Times are
`time.monotonic_ns()`, which on Linux is one clock for every process on the machine, so
the harness and its workers agree on it. The first line is a `meta` record (seed,
configuration); `load` returns it with the events sorted by time.

`validate` lists everything that makes a history malformed: its shape (pairing, a
process doing two things at once) and the fields the checkers read (`VALUES`), each
problem naming the event's line. docs/CORRECTNESS.md ("The history format") is the
reference for writing one by hand.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "COMPLETIONS",
    "NEMESIS",
    "OPERATIONS",
    "VALUES",
    "Event",
    "HistoryError",
    "HistoryWriter",
    "Op",
    "load",
    "pair",
    "validate",
]

NEMESIS = "nemesis"
COMPLETIONS = ("ok", "fail", "info")
TYPES = ("invoke", *COMPLETIONS)

Process = int | str

OPERATIONS = (
    "acquire",
    "release",
    "claim",
    "read",
    "write",
    "campaign",
    "elect-write",
    "resign",
    "observe",
)
"""The client operations (`f`) the checkers understand; any other makes a history
malformed. The first five are the fenced-counter workload's, the rest the election
workload's."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


Kind = tuple[str, Callable[[Any], bool]]
"""A kind of value field: (description, test)."""
_TOKEN: Kind = ("a positive integer", lambda v: _is_int(v) and v > 0)
_INT: Kind = ("an integer", _is_int)
_COUNT: Kind = ("a non-negative integer", lambda v: _is_int(v) and v >= 0)
_INT_OR_NULL: Kind = ("an integer or null", lambda v: v is None or _is_int(v))
_SECONDS: Kind = ("a non-negative number", lambda v: _is_number(v) and v >= 0)
_TEXT: Kind = ("a string", lambda v: isinstance(v, str))

VALUES: dict[tuple[str, str], dict[str, tuple[bool, Kind]]] = {
    ("acquire", "invoke"): {"ttl_s": (False, _SECONDS), "wait_s": (False, _SECONDS)},
    ("acquire", "ok"): {"token": (True, _TOKEN), "deadline": (True, _INT)},
    ("release", "invoke"): {"token": (True, _TOKEN)},
    ("claim", "invoke"): {"token": (True, _TOKEN)},
    ("read", "ok"): {"value": (True, _INT_OR_NULL), "highest": (True, _COUNT)},
    ("write", "invoke"): {"value": (True, _INT), "token": (True, _TOKEN)},
    ("campaign", "invoke"): {"value": (True, _TEXT), "ttl_s": (False, _SECONDS)},
    ("campaign", "ok"): {"term": (True, _TOKEN), "deadline": (True, _INT)},
    ("elect-write", "invoke"): {"term": (True, _TOKEN)},
    ("resign", "invoke"): {"term": (True, _TOKEN)},
    ("observe", "ok"): {"term": (True, _TOKEN), "value": (True, _TEXT)},
}
"""(f, event type) -> the `value` fields the checkers read: name -> (required, kind).
`value` must then be an object (or null when no field is required); where nothing is
listed it may be anything."""


class HistoryError(ValueError):
    """A malformed history (unpaired completion, a process doing two things at once...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One history event. `value` is JSON data; `worker` is the client worker's index;
    `line` is where `load` read it (not part of the event's data)."""

    type: str
    process: Process
    f: str
    time: int
    key: str | None = None
    value: Any = None
    error: str | None = None
    worker: int | None = None
    line: int | None = dataclasses.field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this event (absent fields left out)."""
        out: dict[str, Any] = {"type": self.type, "process": self.process, "f": self.f}
        if self.key is not None:
            out["key"] = self.key
        out["value"] = self.value
        out["time"] = self.time
        if self.error is not None:
            out["error"] = self.error
        if self.worker is not None:
            out["worker"] = self.worker
        return out

    @classmethod
    def from_json(cls, data: Any, line: int | None = None) -> Event:
        """Parse one event; raises `HistoryError` when a field is missing or ill-typed."""
        if not isinstance(data, Mapping):
            raise HistoryError(f"not a JSON object: {data!r:.80}")
        missing = [k for k in ("type", "process", "f", "time") if k not in data]
        if missing:
            raise HistoryError(f"event without {', '.join(map(repr, missing))}")
        kind, process, f, time = data["type"], data["process"], data["f"], data["time"]
        key, error, worker = data.get("key"), data.get("error"), data.get("worker")
        if kind not in TYPES:
            raise HistoryError(f"unknown event type {kind!r} (one of {', '.join(TYPES)})")
        for name, v, ok, kind_of in (
            (
                "process",
                process,
                _is_int(process) or isinstance(process, str),
                "an int or a string",
            ),
            ("f", f, isinstance(f, str), "a string"),
            ("time", time, _is_int(time), "an integer (ns)"),
            ("key", key, key is None or isinstance(key, str), "a string"),
            ("error", error, error is None or isinstance(error, str), "a string"),
            ("worker", worker, worker is None or _is_int(worker), "an integer"),
        ):
            if not ok:
                raise HistoryError(f"{name!r} must be {kind_of}, not {v!r:.40}")
        return cls(kind, process, f, time, key, data.get("value"), error, worker, line)

    @property
    def is_nemesis(self) -> bool:
        """True for the nemesis's records."""
        return self.process == NEMESIS

    @property
    def where(self) -> str:
        """Where the event is: its line, or (made in memory) what and when it is."""
        if self.line is not None:
            return f"line {self.line}"
        return f"{self.type} {self.f} of process {self.process!r} at {self.time} ns"


class HistoryWriter:
    """Appends events to a JSONL file as they happen (a crash keeps what was recorded)
    and keeps them in memory; `close()` rewrites the file sorted by time."""

    def __init__(self, path: Path, meta: Mapping[str, Any]) -> None:
        self.path = path
        self.meta = dict(meta)
        self.events: list[Event] = []
        self._file: IO[str] | None = path.open("w", encoding="utf-8")
        self._write_line({"type": "meta", **self.meta})

    def _write_line(self, data: Mapping[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(data, separators=(",", ":")) + "\n")

    def append(self, event: Event) -> None:
        """Record one event."""
        self.events.append(event)
        if self._file is not None:
            self._write_line(event.to_json())

    def flush(self) -> None:
        """Push recorded lines to the OS."""
        if self._file is not None:
            self._file.flush()

    def sorted_events(self) -> list[Event]:
        """The events in time order (stable for equal times)."""
        return sorted(self.events, key=lambda e: e.time)

    def close(self) -> None:
        """Rewrite the file in time order and close it."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"type": "meta", **self.meta}, separators=(",", ":")) + "\n")
            for event in self.sorted_events():
                f.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        tmp.replace(self.path)


def load(path: Path) -> tuple[dict[str, Any], list[Event]]:
    """(meta record, events sorted by time) of a history file; `HistoryError` names the
    first line that is not a well-formed event (`validate` checks the rest)."""
    meta: dict[str, Any] = {}
    events: list[Event] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                data = json.loads(line)
                if isinstance(data, dict) and data.get("type") == "meta":
                    meta = data
                else:
                    events.append(Event.from_json(data, number))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise HistoryError(f"{path}:{number}: not a line of JSON ({exc})") from None
            except HistoryError as exc:
                raise HistoryError(f"{path}:{number}: {exc}") from None
    events.sort(key=lambda e: e.time)
    return meta, events


@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    """An invocation and its completion (None: still open when the history ended)."""

    invoke: Event
    complete: Event | None

    @property
    def outcome(self) -> str:
        """ok, fail or info (an operation that never completed counts as info)."""
        return self.complete.type if self.complete is not None else "info"

    @property
    def end(self) -> int | None:
        """The completion time; None when it never completed."""
        return self.complete.time if self.complete is not None else None

    @property
    def f(self) -> str:
        """The operation's function (acquire, read, write...)."""
        return self.invoke.f

    @property
    def key(self) -> str | None:
        """The key (lock name / store resource) it applies to."""
        return self.invoke.key


def _walk(events: Iterable[Event]) -> Iterator[tuple[Event, Event | None, str | None]]:
    """(invocation, completion or None, problem) for every client operation."""
    open_: dict[Process, Event] = {}
    retired: dict[Process, Event] = {}
    workers: dict[Process, Event] = {}
    for event in events:
        if event.is_nemesis:
            continue
        p, at = event.process, f"{event.where}: process {event.process!r}"
        first = workers.setdefault(p, event)
        if first.worker != event.worker:
            problem = f"{at} has worker {event.worker!r}, but {first.worker!r} at {first.where}"
            yield event, None, problem
        if event.type == "invoke":
            if p in retired:
                problem = f"{at} invoked after an info ({retired[p].where}) retired it"
                yield event, None, problem
            if p in open_:
                earlier = open_[p]
                problem = (
                    f"{at} invoked twice: its {earlier.f} invoked at {earlier.where} "
                    "has no completion"
                )
                yield earlier, None, problem
            open_[p] = event
            continue
        invoke = open_.pop(p, None)
        if invoke is None:
            yield event, None, f"{event.where}: {event.type} of process {p!r} without an invoke"
            continue
        if invoke.f != event.f:
            yield invoke, event, f"{at}: {event.f} completes {invoke.f} ({invoke.where})"
        elif invoke.key != event.key:
            problem = f"{at}: a completion for key {event.key!r} of {invoke.key!r} ({invoke.where})"
            yield invoke, event, problem
        if event.type == "info":
            retired[p] = event
        yield invoke, event, None
    for invoke in open_.values():
        yield invoke, None, None


def _value_problem(event: Event, f: str) -> str | None:
    """What is wrong with the fields of `event.value` the checkers read, if anything."""
    fields = VALUES.get((f, event.type))
    if fields is None:
        return None
    what = f"{event.where}: {event.type} {f}"
    if event.value is None and not any(required for required, _ in fields.values()):
        return None
    if not isinstance(event.value, Mapping):
        return f"{what}: value must be an object with {', '.join(fields)}"
    for name, (required, (kind, test)) in fields.items():
        if name not in event.value:
            if required:
                return f"{what}: value has no {name!r}"
        elif not test(event.value[name]):
            return f"{what}: value's {name!r} must be {kind}, not {event.value[name]!r:.40}"
    return None


def _operation_problems(invoke: Event, complete: Event | None) -> Iterator[str]:
    if invoke.f not in OPERATIONS:
        yield f"{invoke.where}: unknown operation {invoke.f!r} (one of {', '.join(OPERATIONS)})"
        return
    if invoke.key is None:
        yield f"{invoke.where}: {invoke.f} without a key"
    for event in (invoke, complete):
        problem = None if event is None else _value_problem(event, invoke.f)
        if problem is not None:
            yield problem


def _ints(v: object) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def _links(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(g, list) and len(g) == 2 and _ints(g) for g in v)


_NEMESIS_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "fault": (lambda v: isinstance(v, str), "a string"),
    "id": (lambda v: _is_int(v) or isinstance(v, str), "an integer or a string"),
    "nodes": (_ints, "a list of integers"),
    "gateways": (_ints, "a list of integers"),
    "paused_workers": (_ints, "a list of integers"),
    "links": (_links, "a list of [gateway, node] pairs of integers"),
}
"""The fields of nemesis values the checkers read (all optional): name -> (test, kind)."""


def _nemesis_problem(event: Event) -> str | None:
    """What is wrong with a nemesis record's fields the checkers read, if anything."""
    where, v = event.where, event.value
    if event.type != "info":
        return f"{where}: a nemesis event is of type info, not {event.type!r}"
    if v is None:
        return None
    if not isinstance(v, Mapping):
        return f"{where}: a nemesis event's value must be an object or null"
    for name, (test, kind) in _NEMESIS_FIELDS.items():
        if name in v and not test(v[name]):
            return f"{where}: nemesis {event.f}: {name!r} must be {kind}, not {v[name]!r:.40}"
    return None


def validate(events: Iterable[Event]) -> list[str]:
    """Everything that makes a history malformed (empty when it is well-formed): its
    shape, the value fields the checkers read (`VALUES`), nemesis records."""
    ordered = sorted(events, key=lambda e: e.time)
    problems = [p for e in ordered if e.is_nemesis and (p := _nemesis_problem(e)) is not None]
    for invoke, complete, problem in _walk(ordered):
        if problem is not None:
            problems.append(problem)
        else:
            problems += _operation_problems(invoke, complete)
    return problems


def pair(events: Iterable[Event], strict: bool = True) -> list[Op]:
    """Client operations, ordered by invocation time; completions match the open
    invocation of their process. `strict` raises `HistoryError` on a malformed history."""
    ops: list[Op] = []
    for invoke, complete, problem in _walk(sorted(events, key=lambda e: e.time)):
        if problem is not None:
            if strict:
                raise HistoryError(problem)
            continue
        ops.append(Op(invoke, complete))
    ops.sort(key=lambda op: op.invoke.time)
    return ops
