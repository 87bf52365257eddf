"""The history: Jepsen's invoke/ok/fail/info events, one JSON object per line.

Every client operation is an `invoke` followed by one completion from the same process:
`ok` (it happened), `fail` (it certainly did not) or `info` (unknown: it may have happened,
or may still happen). A process is single-threaded; after an `info` it is retired and its
worker goes on under a new process id. Nemesis events have process "nemesis". Times are
`time.monotonic_ns()`, which on Linux is one clock for every process on the machine, so
the harness and its workers agree on it. The first line is a `meta` record (seed,
configuration); `load` returns it with the events sorted by time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "COMPLETIONS",
    "NEMESIS",
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


class HistoryError(ValueError):
    """A malformed history (unpaired completion, a process doing two things at once...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One history event. `value` is JSON data; `worker` is the client worker's index."""

    type: str
    process: Process
    f: str
    time: int
    key: str | None = None
    value: Any = None
    error: str | None = None
    worker: int | None = None

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
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        """Parse one event; raises `HistoryError` when a field is missing or wrong."""
        try:
            kind, process, f, time = data["type"], data["process"], data["f"], data["time"]
        except KeyError as exc:
            raise HistoryError(f"event without {exc.args[0]!r}: {dict(data)}") from None
        if kind not in TYPES:
            raise HistoryError(f"unknown event type {kind!r}")
        if not isinstance(process, int | str) or not isinstance(time, int):
            raise HistoryError(f"bad process or time in {dict(data)}")
        return cls(
            kind,
            process,
            str(f),
            time,
            data.get("key"),
            data.get("value"),
            data.get("error"),
            data.get("worker"),
        )

    @property
    def is_nemesis(self) -> bool:
        """True for the nemesis's records."""
        return self.process == NEMESIS


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
    """(meta record, events sorted by time) of a history file."""
    meta: dict[str, Any] = {}
    events: list[Event] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HistoryError(f"{path}:{number}: not JSON ({exc})") from None
            if data.get("type") == "meta":
                meta = data
            else:
                events.append(Event.from_json(data))
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
    retired: set[Process] = set()
    for event in events:
        if event.is_nemesis:
            continue
        if event.type == "invoke":
            if event.process in retired:
                yield event, None, f"process {event.process} invoked after an info"
            if event.process in open_:
                yield open_[event.process], None, f"process {event.process} invoked twice"
            open_[event.process] = event
            continue
        invoke = open_.pop(event.process, None)
        if invoke is None:
            yield event, None, f"{event.type} of process {event.process} without an invoke"
            continue
        if invoke.f != event.f:
            yield invoke, event, f"process {event.process}: {event.f} completes {invoke.f}"
        if event.type == "info":
            retired.add(event.process)
        yield invoke, event, None
    for invoke in open_.values():
        yield invoke, None, None


def validate(events: Iterable[Event]) -> list[str]:
    """Everything wrong with a history's shape (empty when well-formed)."""
    return [problem for _, _, problem in _walk(events) if problem is not None]


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
