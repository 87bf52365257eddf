"""The election workload's checkers on hand-made histories: valid failovers, and each
violation (two leaders in one term, terms going back in real time, a deposed leader's
write acknowledged, observers out of order, a leader nobody was elected as)."""

from __future__ import annotations

from typing import Any

from lockd.jepsen.checkers.election import check_election
from lockd.jepsen.checkers.tokens import check_tokens
from lockd.jepsen.history import pair, validate
from lockd.jepsen.run import check_history
from tests.jepsen.helpers import MS, H

CONFIG = {"nodes": 5, "gateways": 1, "max_ttl_ms": 2000, "workload": "election"}
E = "lock-0"


def campaign(h: H, p: int, t0: float, t1: float, term: int, kind: str = "ok") -> H:
    out = {"term": term, "deadline": int((t1 + 1000) * MS)} if kind == "ok" else None
    return h.op(p, "campaign", t0, t1, {"value": f"w{p}", "ttl_s": 1.0, "wait_s": 2.0}, out, kind)


def write(h: H, p: int, t0: float, t1: float, term: int, kind: str = "ok") -> H:
    value = {"term": term, "value": f"w{p} term {term}"}
    if kind == "ok":
        return h.op(p, "elect-write", t0, t1, value, {"term": term, "highest": term})
    return h.op(p, "elect-write", t0, t1, value, {"highest": term + 1}, kind="fail",
                error="StaleToken STALE_TOKEN: token is stale")  # fmt: skip


def observe(h: H, p: int, t: float, term: int, value: str) -> H:
    return h.op(p, "observe", t, t, None, {"term": term, "value": value})


def failover(late_write: str = "refused") -> H:
    """w0 leads term 1 and is paused past its TTL; w1 leads term 2 and writes; w0 wakes
    and sends its late write: `late_write` is the store's answer. Observer 9 follows."""
    h = campaign(H(), 0, 0, 5, 1)
    write(h, 0, 10, 12, 1)
    observe(h, 9, 15, 1, "w0")
    h.nemesis("start", 20, fault="pause", id=0, paused_workers=[0])
    campaign(h, 1, 100, 1100, 2)
    write(h, 1, 1110, 1112, 2)
    observe(h, 9, 1120, 2, "w1")
    h.nemesis("stop", 2500, fault="pause", id=0)
    write(h, 0, 2510, 2515, 1, "ok" if late_write == "accepted" else "fail")
    h.op(1, "resign", 2600, 2605, {"term": 2}, {"term": 2})
    return h


def results(h: H) -> dict[str, Any]:
    return check_history(h.events, CONFIG, None)


def test_a_failover_with_the_late_write_refused_is_valid() -> None:
    h = failover()
    assert validate(h.events) == []
    r = results(h)
    assert r["valid"] is True, r
    assert r["election"]["deposed_writes_refused"] == 1
    assert r["election"]["terms"] == 2 and r["election"]["observations"] == 2
    assert r["terms"]["grants"] == 2 and r["terms"]["duplicates"] == 0
    assert set(r) == {"valid", "history", "election", "terms", "stats"}


def test_a_late_write_acknowledged_after_a_newer_term_wrote_is_invalid() -> None:
    r = results(failover("accepted"))
    assert r["valid"] is False
    e = r["election"]
    assert e["deposed_writes_acknowledged"] == 1
    assert e["deposed_examples"][0] == {
        "key": E, "term": 1, "process": 0, "newer_term": 2, "newer_process": 1,
    }  # fmt: skip


def test_a_write_concurrent_with_the_newer_terms_write_may_land_first() -> None:
    # w0's write was invoked before w1's write completed: the store may order it first.
    h = campaign(H(), 0, 0, 5, 1)
    campaign(h, 1, 100, 1100, 2)
    write(h, 1, 1110, 1120, 2)
    write(h, 0, 1115, 1125, 1)
    assert check_election(pair(h.events))["valid"] is True


def test_two_leaders_in_one_term_are_invalid() -> None:
    h = campaign(H(), 0, 0, 5, 3)
    campaign(h, 1, 2, 8, 3)
    r = results(h)
    assert r["valid"] is False
    assert r["terms"]["duplicates"] == 1


def test_terms_going_back_in_real_time_are_invalid() -> None:
    h = campaign(H(), 0, 0, 5, 4)
    campaign(h, 1, 10, 15, 3)  # invoked after term 4 was granted
    r = check_tokens(pair(h.events), "campaign", "term")
    assert r["valid"] is False and r["order_violations"] == 1


def test_observers_must_not_go_back() -> None:
    h = campaign(H(), 0, 0, 5, 1)
    campaign(h, 1, 10, 20, 2)
    observe(h, 9, 25, 2, "w1")
    observe(h, 9, 30, 1, "w0")  # back to an older term
    observe(h, 8, 26, 1, "w0")  # another observer may lag: fine
    observe(h, 8, 31, 2, "w1")
    observe(h, 8, 32, 2, "w1")  # the same leader twice: a repeat, not a change
    e = check_election(pair(h.events))
    assert e["valid"] is False and e["observed_out_of_order"] == 2
    assert [x["process"] for x in e["out_of_order_examples"]] == [9, 8]  # in time order


def test_an_observed_leader_nobody_was_elected_as_is_invalid() -> None:
    h = campaign(H(), 0, 0, 5, 1)
    observe(h, 9, 10, 7, "w0")  # no campaign got term 7
    observe(h, 9, 11, 1, "w5")  # term 1 is w0's, not w5's... and it goes back
    e = check_election(pair(h.events))
    assert e["unexplained_leaders"] == 2
    assert e["unexplained_examples"][1]["granted_value"] == "w0"


def test_a_campaign_with_an_unknown_outcome_explains_an_observed_term() -> None:
    h = campaign(H(), 0, 0, 5, 1)
    campaign(h, 1, 10, 20, 0, kind="info")  # its reply was lost: it may lead
    observe(h, 9, 30, 2, "w1")
    assert check_election(pair(h.events))["valid"] is True
    # ...but not one observed before that campaign was even invoked.
    early = campaign(H(), 1, 10, 20, 0, kind="info")
    observe(early, 9, 5, 2, "w1")
    assert check_election(pair(early.events))["unexplained_leaders"] == 1


def test_malformed_election_events_make_the_history_unknown() -> None:
    h = campaign(H(), 0, 0, 5, 1)
    h.op(0, "elect-write", 10, 12, {"value": "no term"}, {"highest": 1})
    r = results(h)
    assert r["valid"] == "unknown"
    assert "term" in r["history"]["problems"][0]
    assert set(r) == {"valid", "history", "election", "terms", "stats"}
    unknown_workload = check_history(failover().events, {**CONFIG, "workload": "x"}, None)
    assert unknown_workload["valid"] == "unknown"
