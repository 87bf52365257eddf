"""The checkers on hand-made histories: valid runs, lost updates, token reuse, overlaps."""

from __future__ import annotations

from pathlib import Path

from lockd.jepsen.checkers import merge
from lockd.jepsen.checkers.availability import check_availability, unhealthy_windows
from lockd.jepsen.checkers.mutex import check_mutex
from lockd.jepsen.checkers.store import check_store, store_operations, token_order
from lockd.jepsen.checkers.tokens import check_tokens
from lockd.jepsen.history import pair
from lockd.jepsen.run import check_history
from lockd.store.fenced import FencedStore
from tests.jepsen.helpers import MS, H, write_store_log

CONFIG = {"nodes": 5, "gateways": 1, "max_ttl_ms": 2000}


def paused_holder(stale_write: str) -> H:
    """A (token 1) reads 0 and is paused past its lease; B (token 2) takes the lock,
    writes 1; A wakes and writes 1 with token 1: `stale_write` is the store's answer."""
    h = H().grant(0, 0, 5, 1).op(0, "claim", 10, 15, {"token": 1}, {"token": 1, "highest": 1})
    h.op(0, "read", 20, 25, None, {"value": None, "highest": 1})
    h.nemesis("start", 26, fault="pause", id=0, paused_workers=[0])
    h.cycle(1, 1100, 2, None)  # B, after A's lease ran out at 1005
    h.nemesis("stop", 2600, fault="pause", id=0)
    if stale_write == "accepted":
        out = {"value": 1, "token": 1, "highest": 2}
        h.op(0, "write", 2610, 2615, {"value": 1, "token": 1}, out)
    else:
        h.op(0, "write", 2610, 2615, {"value": 1, "token": 1}, {"highest": 2}, kind="fail",
             error="StaleToken STALE_TOKEN: token 1 is stale")  # fmt: skip
    h.op(0, "release", 2620, 2625, {"token": 1}, {"token": 1})
    return h.final(3000, 1, 2)


def test_sequential_cycles_are_valid(tmp_path: Path) -> None:
    h = H().cycle(0, 0, 1, None).cycle(1, 100, 2, 1).cycle(0, 200, 5, 2).final(400, 3, 5)
    results = check_history(h.events, CONFIG, write_store_log(h.events, tmp_path / "store.log"))
    assert results["valid"] is True, results
    assert results["store"]["lost_updates"]["keys"]["lock-0"]["acknowledged"] == 3
    assert results["mutex"]["held_overlaps"] == 0
    assert results["tokens"]["grants"] == 3


def test_fenced_store_refusing_the_paused_writer_is_valid(tmp_path: Path) -> None:
    events = paused_holder("refused").events
    results = check_history(events, CONFIG, write_store_log(events, tmp_path / "store.log"))
    assert results["valid"] is True, results
    assert results["store"]["stale_writes_refused"] == 1
    # A believed it held the lock while B did: counted, and what fencing saved.
    assert results["mutex"]["held_overlaps"] == 1
    assert results["mutex"]["held_overlaps_during_pauses"] == 1
    assert results["mutex"]["lease_violations"] == 0


def test_store_accepting_the_stale_write_is_a_lost_update() -> None:
    results = check_history(paused_holder("accepted").events, CONFIG, None)
    store = results["store"]
    assert results["valid"] is False and store["valid"] is False
    assert store["linearizable"]["valid"] is False  # token 1 accepted after token 2
    assert store["lost_updates"]["lost"] == 1  # two acknowledged writes of 1
    assert results["mutex"]["valid"] is True


def test_plain_register_semantics_cannot_hide_a_lost_read() -> None:
    h = H().cycle(0, 0, 1, None).cycle(1, 100, 2, None).final(300, 1, 2)  # B read a stale 0
    store = check_store(pair(h.events), None)
    assert store["linearizable"]["valid"] is False
    assert store["lost_updates"]["lost"] == 1


def test_unknown_write_may_have_happened_or_not(tmp_path: Path) -> None:
    for read_after in (None, 1):
        h = H().grant(0, 0, 5, 1)
        h.op(0, "claim", 10, 15, {"token": 1}, {"token": 1, "highest": 1})
        h.op(0, "read", 20, 25, None, {"value": None, "highest": 1})
        h.op(0, "write", 30, 2000, {"value": 1, "token": 1}, kind="info", error="timeout")
        h.cycle(1, 2100, 2, read_after)
        h.final(3000, (read_after or 0) + 1, 2)
        log = write_store_log(h.events, tmp_path / f"{read_after}" / "store.log")
        assert check_store(pair(h.events), log)["valid"] is True
    # ...but it cannot take effect after a larger token was seen: it was refused by then.
    h = H().grant(0, 0, 5, 1)
    h.op(0, "write", 30, None, {"value": 7, "token": 1})  # never completed
    h.cycle(1, 2100, 2, None).final(3000, 7, 2)
    ops = store_operations(pair(h.events))
    assert ops[0].ret is not None  # its return was set when token 2 was first seen
    assert check_store(pair(h.events), None)["linearizable"]["valid"] is False


def test_duplicate_and_reordered_tokens() -> None:
    dup = H().cycle(0, 0, 7, None).cycle(1, 100, 7, 1)
    result = check_tokens(pair(dup.events))
    assert result["valid"] is False and result["duplicates"] == 1
    backwards = H().cycle(0, 0, 9, None).cycle(1, 100, 4, 1)
    result = check_tokens(pair(backwards.events))
    assert result["valid"] is False and result["order_violations"] == 1
    assert result["order_examples"][0]["earlier_token"] == 9
    concurrent = H().grant(0, 0, 50, 9).grant(1, 10, 60, 4)  # overlapping calls: any order
    assert check_tokens(pair(concurrent.events))["valid"] is True


def test_a_grant_during_a_live_lease_is_a_violation() -> None:
    h = H().grant(0, 0, 5, 1).grant(1, 100, 200, 2)  # A's lease lasts until 1005
    h.op(0, "release", 400, 405, {"token": 1}, {"token": 1})
    h.op(1, "release", 500, 505, {"token": 2}, {"token": 2})
    result = check_mutex(pair(h.events), [], 1000 * MS)
    assert result["valid"] is False and result["lease_violations"] == 1
    assert result["held_overlaps_without_pause"] == 1
    assert result["lease_examples"][0]["overlap_ms"] == 200.0


def test_availability_classifies_acquires_and_requires_recovery() -> None:
    h = H().nemesis("start", 100, fault="kill", id=0, nodes=[0, 1, 2])
    h.op(0, "acquire", 200, 210, {}, kind="fail", error="Unavailable QUORUM_UNAVAILABLE: x")
    h.nemesis("stop", 1000, fault="kill", id=0).nemesis("healed", 1500, fault="heal")
    h.cycle(1, 4000, 5, None)
    ops = pair([e for e in h.events if not e.is_nemesis])
    nemesis = [e for e in h.events if e.is_nemesis]
    windows = unhealthy_windows(nemesis, nodes=5, gateways=1, max_ttl_ms=2000, end=5000 * MS)
    assert windows == [(100 * MS, (1000 + 2022 + 500) * MS)]
    result = check_availability(ops, nemesis, nodes=5, gateways=1, max_ttl_ms=2000, end=5000 * MS)
    assert result["valid"] is True and result["final_phase_grants"] == 1
    assert result["majority_unhealthy"]["unavailable"] == 1
    assert result["majority_healthy"]["ok"] == 1
    assert result["recoveries"][0]["recovery_ms"] == 3005.0
    no_recovery = check_availability(ops[:1], nemesis, nodes=5, gateways=1, max_ttl_ms=2000, end=0)
    assert no_recovery["valid"] is False


def test_merge() -> None:
    assert merge([True, True]) is True
    assert merge([True, "unknown"]) == "unknown"
    assert merge(["unknown", False, True]) is False


async def test_store_token_order_from_its_log(tmp_path: Path) -> None:
    """The store's own log: with the token check off (--unsafe-no-token-check) a stale
    token is accepted and shows as a decrease; with it on, it is refused."""
    for check_tokens_on in (True, False):
        directory = tmp_path / str(check_tokens_on)
        store = FencedStore(directory, check_tokens=check_tokens_on)
        await store.open()
        assert await store.write("r", "k", b"a", 5) == 5
        try:
            highest = await store.write("r", "k", b"b", 3)
            assert not check_tokens_on and highest == 5  # the highest stays the highest
        except Exception as exc:
            assert check_tokens_on and "stale" in str(exc)
        await store.close()
        order = token_order(directory / "store.log")
        assert order["valid"] is check_tokens_on
        assert order["decreases"] == (0 if check_tokens_on else 1)
