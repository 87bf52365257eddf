"""`lockd jepsen check` on histories the harness did not write: malformed ones give
"unknown" (exit 2) naming the line, never a definite verdict or a traceback; and the
checkers read odd but well-formed ones right (no worker field, a lease that outlives the
heal, refusals that are not stale, a store log that is missing or corrupt)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lockd.durable import encode_end
from lockd.jepsen.checkers.availability import check_availability
from lockd.jepsen.checkers.mutex import check_mutex
from lockd.jepsen.checkers.store import check_store, token_order
from lockd.jepsen.history import Event, HistoryError, load, pair
from lockd.jepsen.run import check_file, check_history
from lockd.store.fenced import FencedStore
from lockd.store.log import FRAMES, HEADER
from tests.client.helpers import CLEAN_ENV
from tests.jepsen.helpers import MS, H, write_store_log

CONFIG = {"nodes": 5, "gateways": 1, "max_ttl_ms": 2000}
META = {"type": "meta", **CONFIG}


def cycle_lines() -> list[dict[str, Any]]:
    """One well-formed fenced-counter cycle by worker 0, then the final read (lines 2-13
    of the file; line 1 is the meta record)."""
    w = {"worker": 0}
    return [
        {"type": "invoke", "process": 0, "f": "acquire", "key": "k",
         "value": {"ttl_s": 1.0, "wait_s": 1.0}, "time": 1000, **w},
        {"type": "ok", "process": 0, "f": "acquire", "key": "k",
         "value": {"token": 1, "deadline": 900 * MS}, "time": 2000, **w},
        {"type": "invoke", "process": 0, "f": "claim", "key": "k", "value": {"token": 1},
         "time": 3000, **w},
        {"type": "ok", "process": 0, "f": "claim", "key": "k",
         "value": {"token": 1, "highest": 1}, "time": 4000, **w},
        {"type": "invoke", "process": 0, "f": "read", "key": "k", "value": None,
         "time": 5000, **w},
        {"type": "ok", "process": 0, "f": "read", "key": "k",
         "value": {"value": None, "highest": 1}, "time": 6000, **w},
        {"type": "invoke", "process": 0, "f": "write", "key": "k",
         "value": {"value": 1, "token": 1}, "time": 7000, **w},
        {"type": "ok", "process": 0, "f": "write", "key": "k",
         "value": {"value": 1, "token": 1, "highest": 1}, "time": 8000, **w},
        {"type": "invoke", "process": 0, "f": "release", "key": "k", "value": {"token": 1},
         "time": 9000, **w},
        {"type": "ok", "process": 0, "f": "release", "key": "k", "value": {"token": 1},
         "time": 10000, **w},
        {"type": "invoke", "process": "final", "f": "read", "key": "k", "value": None,
         "time": 11000},
        {"type": "ok", "process": "final", "f": "read", "key": "k",
         "value": {"value": 1, "highest": 1}, "time": 12000},
    ]  # fmt: skip


def write(directory: Path, lines: list[dict[str, Any]], *, store_log: bool = True) -> Path:
    """A history.jsonl (meta first) in `directory`, with the store log the CLI looks
    for beside it (data/store/store.log) holding the accepted claims and writes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "history.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in [META, *lines]))
    if store_log:
        _, events = load(path)
        write_store_log(events, directory / "data" / "store" / "store.log")
    return path


def jepsen_check(path: Path) -> subprocess.CompletedProcess[str]:
    """`lockd jepsen check PATH` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "lockd", "jepsen", "check", str(path)],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=60,
        check=False,
    )


def problems(results: dict[str, Any]) -> str:
    return "\n".join(results["history"]["problems"])


def test_a_well_formed_hand_written_history_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, cycle_lines())
    result = jepsen_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert check_file(path)["valid"] is True


def test_missing_completion_before_the_next_invoke_is_unknown(tmp_path: Path) -> None:
    """The write's completion (line 9) is gone and process 0 invokes again: the history
    is malformed, whatever the read after it saw. It used to drop the write, fail to
    explain the final read of 1, and say "invalid" (exit 1)."""
    lines = cycle_lines()
    del lines[7]
    path = write(tmp_path, lines)
    _, events = load(path)
    results = check_history(events, CONFIG, tmp_path / "data" / "store" / "store.log")
    assert results["valid"] == "unknown", results
    assert "line 8" in problems(results) and "line 9" in problems(results)
    for checker in ("store", "tokens", "mutex", "availability"):
        assert results[checker]["valid"] == "unknown"  # not run: no definite verdict
    result = jepsen_check(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "line 9" in result.stderr and "Traceback" not in result.stderr


def test_invoke_after_an_info_and_an_orphan_completion_name_their_lines(tmp_path: Path) -> None:
    lines = cycle_lines()
    lines[3] = {**lines[3], "type": "info", "value": None}  # claim: unknown, process retired
    results = check_file(write(tmp_path / "a", lines))
    assert results["valid"] == "unknown"
    assert "line 6" in problems(results) and "after an info" in problems(results)
    orphan = [*cycle_lines(), {**cycle_lines()[9], "time": 20000}]  # a second release ok
    results = check_file(write(tmp_path / "b", orphan))
    assert results["valid"] == "unknown" and "line 14" in problems(results)


def _set(lines: list[dict[str, Any]], index: int, path: tuple[str, ...], value: Any) -> None:
    target = lines[index]
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


_DELETE = object()

# (line index in cycle_lines(), field path, new value or _DELETE): each breaks the history.
BROKEN_VALUES = [
    pytest.param(1, ("value", "token"), _DELETE, id="ok-acquire-without-token"),
    pytest.param(1, ("value", "token"), "1", id="token-as-a-string"),
    pytest.param(1, ("value", "token"), True, id="token-as-a-bool"),
    pytest.param(1, ("value", "deadline"), _DELETE, id="ok-acquire-without-deadline"),
    pytest.param(1, ("value",), None, id="ok-acquire-without-value"),
    pytest.param(2, ("value", "token"), None, id="claim-without-token"),
    pytest.param(5, ("value", "highest"), _DELETE, id="read-without-highest"),
    pytest.param(5, ("value", "value"), "1", id="read-value-a-string"),
    pytest.param(6, ("value",), [1, 1], id="write-value-a-list"),
    pytest.param(6, ("value", "value"), _DELETE, id="write-without-value"),
    pytest.param(8, ("value", "token"), _DELETE, id="release-without-token"),
    pytest.param(0, ("key",), _DELETE, id="acquire-without-key"),
    pytest.param(0, ("f",), "aquire", id="unknown-operation"),
    pytest.param(11, ("value", "value"), 1.5, id="final-read-a-float"),
]


@pytest.mark.parametrize(("index", "field", "value"), BROKEN_VALUES)
def test_missing_or_ill_typed_values_are_unknown_not_a_crash(
    tmp_path: Path, index: int, field: tuple[str, ...], value: Any
) -> None:
    lines = cycle_lines()
    _set(lines, index, field, value)
    path = write(tmp_path, lines, store_log=False)
    results = check_file(path)
    assert results["valid"] == "unknown", results
    assert f"line {index + 2}" in problems(results)


def test_ok_acquire_without_a_token_through_the_cli(tmp_path: Path) -> None:
    """It used to end in `KeyError: 'token'` and exit 1, the code for "invalid"."""
    lines = cycle_lines()
    del lines[1]["value"]["token"]
    result = jepsen_check(write(tmp_path, lines, store_log=False))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "line 3" in result.stderr and "token" in result.stderr


def test_malformed_nemesis_and_meta_are_unknown(tmp_path: Path) -> None:
    nemesis = {"type": "info", "process": "nemesis", "f": "start", "time": 500,
               "value": {"fault": "kill", "id": 0, "nodes": 3}}  # fmt: skip
    results = check_file(write(tmp_path / "a", [nemesis, *cycle_lines()]))
    assert results["valid"] == "unknown" and "line 2" in problems(results)
    path = write(tmp_path / "b", cycle_lines())
    text = path.read_text().splitlines()
    text[0] = json.dumps({"type": "meta", "nodes": "five"})
    path.write_text("\n".join(text) + "\n")
    results = check_file(path)
    assert results["valid"] == "unknown" and "nodes" in problems(results)


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1, 2]",
        json.dumps({"type": "invoke", "process": 0, "f": "read", "key": "k"}),  # no time
        json.dumps({"type": "invoke", "process": 0, "f": "read", "time": "1"}),
        json.dumps({"type": "invoke", "process": 0.5, "f": "read", "time": 1}),
        json.dumps({"type": "invoke", "process": 0, "f": "read", "time": 1, "worker": "0"}),
        json.dumps({"type": "invoke", "process": 0, "f": "read", "time": 1, "key": 7}),
    ],
)
def test_malformed_lines_are_refused_naming_the_line(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, cycle_lines(), store_log=False)
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(HistoryError, match=r":14: "):
        load(path)
    results = check_file(path)
    assert results["valid"] == "unknown" and "history.jsonl:14" in problems(results)


def overlapping_leases(worker: bool) -> H:
    """Two grants whose leases overlap (A's lasts until 1005 ms, B is granted at 200)."""
    h = H().grant(0, 0, 5, 1).grant(1, 100, 200, 2)
    h.op(0, "release", 400, 405, {"token": 1}, {"token": 1})
    h.op(1, "release", 500, 505, {"token": 2}, {"token": 2})
    if not worker:
        h.events = without_worker(h.events)
    return h


def without_worker(events: list[Event]) -> list[Event]:
    """The events with their `worker` field left out."""
    return [Event(e.type, e.process, e.f, e.time, e.key, e.value, e.error) for e in events]


def test_mutex_works_without_the_worker_field() -> None:
    """It used to skip every operation without `worker`: the overlap went unreported."""
    for worker in (True, False):
        result = check_mutex(pair(overlapping_leases(worker).events), [], 1000 * MS)
        assert result["valid"] is False and result["lease_violations"] == 1, worker
        assert result["grants"] == 2


def test_without_worker_a_release_by_the_next_process_ends_the_grant() -> None:
    """The harness goes on under a new process id after an `info` and then releases:
    the release still ends the grant (it is matched by key and token), so the next
    holder's grant is no held overlap."""
    h = H().grant(0, 0, 5, 1)
    h.op(0, "claim", 10, 20, {"token": 1}, kind="info", error="timeout")
    h.op(8, "release", 30, 35, {"token": 1}, {"token": 1})
    h.grant(1, 50, 60, 2).op(1, "release", 70, 75, {"token": 2}, {"token": 2})
    result = check_mutex(pair(without_worker(h.events)), [], 1000 * MS)
    assert result["grants"] == 2 and result["held_overlaps"] == 0, result
    assert result["valid"] is True


def test_availability_counts_acquires_without_the_worker_field() -> None:
    h = H().nemesis("healed", 100, fault="heal")
    h.op(0, "acquire", 200, 210, {}, kind="fail", error="Unavailable QUORUM_UNAVAILABLE: x")
    events = without_worker(h.events)
    ops = pair([e for e in events if not e.is_nemesis])
    nemesis = [e for e in events if e.is_nemesis]
    result = check_availability(ops, nemesis, nodes=5, gateways=1, max_ttl_ms=2000, end=300 * MS)
    assert result["majority_healthy"]["unavailable"] == 1
    assert result["valid"] is False  # nothing granted after the heal, and not for contention


def lease_outlives_heal(lease_ms: float, error: str = "LockTimeout LOCK_HELD: held") -> H:
    """A is granted before a kill; its release times out; after the heal B's acquires
    all meet a held lock. A's lease lasts `lease_ms` from its grant at 5 ms."""
    h = H().grant(0, 0, 5, 1, lease_ms=lease_ms)
    h.nemesis("start", 10, fault="kill", id=0, nodes=[0])
    h.op(0, "release", 20, 2020, {"token": 1}, kind="info", error="Unavailable TIMEOUT: x")
    h.nemesis("stop", 1000, fault="kill", id=0).nemesis("healed", 3000, fault="heal")
    for t in (3100, 4200, 5300):
        h.op(1, "acquire", t, t + 1000, {"ttl_s": 1.0, "wait_s": 1.0}, kind="fail", error=error)
    return h


def _availability(h: H, end_ms: float = 6500) -> dict[str, Any]:
    ops = pair([e for e in h.events if not e.is_nemesis])
    nemesis = [e for e in h.events if e.is_nemesis]
    end = int(end_ms * MS)
    return check_availability(ops, nemesis, nodes=5, gateways=1, max_ttl_ms=2000, end=end)


def test_a_lease_that_outlives_the_heal_is_contention_not_unavailability() -> None:
    """It used to be "invalid": nothing was granted after the heal."""
    result = _availability(lease_outlives_heal(lease_ms=10_000))
    assert result["valid"] is True, result
    assert result["final_phase_grants"] == 0
    assert result["final_phase"]["contended"] == 3
    # Once the lease had run out, a held lock is no longer explained by it...
    assert _availability(lease_outlives_heal(lease_ms=4500))["valid"] is False
    # ...and acquires that found no quorum are unavailability, whatever was held.
    no_quorum = lease_outlives_heal(10_000, error="Unavailable QUORUM_UNAVAILABLE: x")
    assert _availability(no_quorum)["valid"] is False


def test_a_lease_released_before_the_acquires_explains_nothing() -> None:
    h = H().grant(0, 0, 5, 1, lease_ms=10_000)
    h.op(0, "release", 20, 25, {"token": 1}, {"token": 1})
    h.nemesis("healed", 3000, fault="heal")
    h.op(1, "acquire", 3100, 4100, {}, kind="fail", error="LockTimeout LOCK_HELD: held")
    assert _availability(h)["valid"] is False


def test_token_order_without_a_store_log_is_unknown() -> None:
    """It used to be "valid (skipped)": a checker that did not look says nothing."""
    h = H().cycle(0, 0, 1, None).final(100, 1, 1)
    store = check_store(pair(h.events), None)
    assert store["token_order"]["valid"] == "unknown"
    assert "no store log" in store["token_order"]["reason"]
    assert store["valid"] == "unknown"
    assert check_history(h.events, CONFIG, None)["valid"] == "unknown"


async def _log(directory: Path, tokens: list[int]) -> Path:
    store = FencedStore(directory, check_tokens=False)
    await store.open()
    for i, token in enumerate(tokens):
        await store.write("r", "k", b"value-%d" % i, token)
    await store.close()
    return directory / "store.log"


async def test_a_corrupt_record_mid_log_is_unknown_naming_it(tmp_path: Path) -> None:
    """Write 2 of 3 is damaged and write 3 (a decrease) is whole: the scan used to stop
    at write 2 and say "valid". Unknown, naming the file and the damaged frame's offset
    (each write was appended, and so framed, alone)."""
    path = await _log(tmp_path, [5, 6, 3])
    data = bytearray(path.read_bytes())
    at = data.index(b"value-1")
    data[at] ^= 0x20  # the frame's checksum no longer matches
    path.write_bytes(bytes(data))
    order = token_order(path)
    assert order["valid"] == "unknown", order
    frame = data.rindex(b"*", 0, data.rindex(b"W", 0, at))  # the damaged write's record
    offset = int(order["reason"].split("at byte ")[1].split(";")[0])
    assert str(path) in order["reason"] and len(HEADER) < offset <= frame, order


async def test_a_torn_last_record_is_tolerated(tmp_path: Path) -> None:
    path = await _log(tmp_path, [5, 6, 7])
    data = path.read_bytes()
    # What a crash in the last append leaves: that frame torn, the header's durable end
    # not past its start (here: the start of the frames).
    path.write_bytes(data[: len(HEADER)] + encode_end(FRAMES) + data[FRAMES:-10])
    order = token_order(path)
    assert order["valid"] is True and order["records"] == 2
    assert order["torn_tail_bytes"] > 0
    assert token_order(tmp_path / "missing.log")["valid"] == "unknown"


def test_a_refusal_that_is_not_stale_is_not_read_as_one() -> None:
    """A write refused for another reason (an invalid request) with a token no older than
    the highest: it did not happen, and it says nothing about tokens. The store model
    used to read every `fail` as "refused as stale" and call the history not linearizable."""
    h = H().grant(0, 0, 5, 1)
    h.op(0, "claim", 10, 15, {"token": 1}, {"token": 1, "highest": 1})
    h.op(0, "read", 20, 25, None, {"value": None, "highest": 1})
    h.op(0, "write", 30, 35, {"value": 1, "token": 1}, kind="fail",
         error="InvalidRequest BAD_REQUEST: value too large")  # fmt: skip
    h.op(0, "release", 40, 45, {"token": 1}, {"token": 1}).final(100, None, 1)
    store = check_store(pair(h.events), None)
    assert store["linearizable"]["valid"] is True, store["linearizable"]
    assert store["stale_writes_refused"] == 0 and store["refused_other"] == 1
    # The same refusal called stale is impossible: token 1 is not older than the highest.
    stale = copy.deepcopy(h)
    stale.events = [
        Event(e.type, e.process, e.f, e.time, e.key, e.value, "StaleToken STALE_TOKEN: x", e.worker)
        if e.type == "fail" else e
        for e in stale.events
    ]  # fmt: skip
    assert check_store(pair(stale.events), None)["linearizable"]["valid"] is False


def test_the_documented_example_says_what_the_documentation_says(tmp_path: Path) -> None:
    """docs/CORRECTNESS.md's minimal history, and the three variations it describes."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CORRECTNESS.md").read_text()
    example = doc.split("A minimal valid history", 1)[1].split("```json\n", 1)[1]
    lines = [json.loads(x) for x in example.split("```", 1)[0].splitlines()]
    assert lines[0]["type"] == "meta"
    path = write(tmp_path / "valid", lines[1:])
    assert check_file(path)["valid"] is True
    without_log = write(tmp_path / "no-log", lines[1:], store_log=False)
    assert check_file(without_log)["store"]["token_order"]["valid"] == "unknown"
    assert check_file(without_log)["valid"] == "unknown"
    no_ok = [x for x in lines[1:] if not (x["f"] == "write" and x["type"] == "ok")]
    results = check_file(write(tmp_path / "no-ok", no_ok))
    assert results["valid"] == "unknown"
    assert results["history"]["problems"] == [
        "line 9: process 0 invoked twice: its write invoked at line 8 has no completion"
    ]
    lines[-1]["value"]["value"] = 2
    assert check_file(write(tmp_path / "invalid", lines[1:]))["valid"] is False


def test_a_line_that_is_not_an_event_is_unknown_through_the_cli(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text('{"bad json\n')
    result = subprocess.run(
        [sys.executable, "-m", "lockd", "jepsen", "check", str(history)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"malformed history: {history}:1: not a line of JSON" in result.stdout


def test_on_real_redis_a_lease_overlap_across_a_clock_step_is_counted_apart() -> None:
    """Redis expires keys on its wall clock: an overlap with a clock fault between the two
    grants is expected there (counted, not a violation); any other overlap still fails,
    and on the lockd engine every overlap does."""
    stepped = overlapping_leases(True)
    stepped.nemesis("start", 50, fault="clock", id=0).nemesis("stop", 150, fault="clock", id=0)
    nemesis = [e for e in stepped.events if e.is_nemesis]
    ops = pair([e for e in stepped.events if not e.is_nemesis])
    redis = check_mutex(ops, nemesis, 1000 * MS, wall_clock_ttls=True)
    assert redis["valid"] is True and redis["lease_violations"] == 0
    assert redis["lease_overlaps_under_clock_steps"] == 1 and "wall clock" in redis["note"]
    engine = check_mutex(ops, nemesis, 1000 * MS)
    assert engine["valid"] is False and engine["lease_violations"] == 1
    assert "lease_overlaps_under_clock_steps" not in engine

    late = overlapping_leases(True)  # the clock fault came after the second grant
    late.nemesis("start", 300, fault="clock", id=0).nemesis("stop", 350, fault="clock", id=0)
    nemesis = [e for e in late.events if e.is_nemesis]
    ops = pair([e for e in late.events if not e.is_nemesis])
    redis = check_mutex(ops, nemesis, 1000 * MS, wall_clock_ttls=True)
    assert redis["valid"] is False and redis["lease_violations"] == 1
    assert redis["lease_overlaps_under_clock_steps"] == 0
