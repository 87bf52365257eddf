"""The history format: JSON lines, pairing, retirement of a process after `info`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lockd.jepsen.history import Event, HistoryError, HistoryWriter, load, pair, validate


def test_write_and_load_sorted_with_meta(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    writer = HistoryWriter(path, {"seed": 42})
    writer.append(Event("ok", 0, "read", 20, "k", {"value": 1}, worker=0))
    writer.append(Event("invoke", 0, "read", 10, "k", worker=0))
    writer.append(Event("info", "nemesis", "start", 15, value={"fault": "kill"}))
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"type": "meta", "seed": 42}
    assert [line["time"] for line in lines[1:]] == [10, 15, 20]
    assert lines[1] == {"type": "invoke", "process": 0, "f": "read", "key": "k",
                        "value": None, "time": 10, "worker": 0}  # fmt: skip
    meta, events = load(path)
    assert meta["seed"] == 42 and [e.time for e in events] == [10, 15, 20]
    assert events[1].is_nemesis and not events[0].is_nemesis


def test_pairing_and_retirement() -> None:
    events = [
        Event("invoke", 0, "write", 1, "k", {"value": 1, "token": 1}),
        Event("invoke", 1, "read", 2, "k"),
        Event("info", 0, "write", 3, "k", error="timeout"),
        Event("ok", 1, "read", 4, "k", {"value": 1, "highest": 1}),
        Event("invoke", 2, "write", 5, "k", {"value": 2, "token": 1}),  # process 0 went on as 2
    ]
    assert validate(events) == []
    ops = pair(events)
    assert [(op.f, op.outcome, op.end) for op in ops] == [
        ("write", "info", 3),
        ("read", "ok", 4),
        ("write", "info", None),  # still open at the end: unknown
    ]
    bad = [*events, Event("invoke", 0, "read", 6, "k")]
    assert "invoked after an info" in validate(bad)[0]
    with pytest.raises(HistoryError):
        pair(bad)
    assert len(pair(bad, strict=False)) == 4  # kept, as an operation still open
    twice = [Event("invoke", 0, "read", 1), Event("invoke", 0, "read", 2)]
    assert "invoked twice" in validate(twice)[0]
    orphan = [Event("ok", 3, "read", 1)]
    assert "without an invoke" in validate(orphan)[0]


def test_malformed_events_are_refused() -> None:
    with pytest.raises(HistoryError):
        Event.from_json({"type": "invoke", "process": 0, "f": "read"})
    with pytest.raises(HistoryError):
        Event.from_json({"type": "maybe", "process": 0, "f": "read", "time": 1})
