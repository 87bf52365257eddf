"""The WGL linearizability checker: hand-checkable cases and porcupine's reference
histories (read in place from ../shared/porcupine; skipped when it is absent)."""

from __future__ import annotations

import hashlib

import pytest

from lockd.jepsen.checkers.porcupine import parse_etcd, parse_kv
from lockd.jepsen.checkers.wgl import UNKNOWN, KvModel, Operation, RegisterModel, check
from tests.support import REPO

PORCUPINE = REPO.parent / "shared" / "porcupine" / "test_data"
needs_porcupine = pytest.mark.skipif(
    not PORCUPINE.is_dir(),
    reason=f"porcupine's reference histories are not at {PORCUPINE} "
    "(CI checks out shared/ beside the repository; they are not copied into it)",
)

# Verdicts as porcupine_test.go asserts them (EXPECTED.md): 23 linearizable etcd runs.
ETCD_LINEARIZABLE = {2, 5, 7, 18, 25, 31, 38, 45, 48, 49, 51, 53, 56, 67, 75}
ETCD_LINEARIZABLE |= {76, 80, 87, 92, 98, 100, 101, 102}
ETCD_TESTED = [n for n in range(103) if n != 95]  # etcd_095.log is empty: not tested


def put(v: int, call: float, ret: float) -> Operation:
    return Operation(0, call, ret, ("write", v), "ok")


def get(v: int | None, call: float, ret: float, p: int = 1) -> Operation:
    return Operation(p, call, ret, ("read",), v)


def test_hand_checkable_register_cases() -> None:
    # Written as integer registers starting at 0 (porcupine's): start at 0 with a put.
    init = [Operation(9, -2, -1, ("write", 0), "ok")]
    ok = [put(100, 0, 100), get(100, 25, 75), get(0, 30, 60, 2)]
    assert check(RegisterModel(), init + ok).valid is True
    bad = [put(200, 0, 100), get(200, 10, 30), get(0, 40, 90, 2)]
    assert check(RegisterModel(), init + bad).valid is False


def test_zero_duration_operations_and_ties() -> None:
    init = [Operation(9, -2, -1, ("write", 0), "ok")]
    ok = [put(100, 0, 100), get(100, 25, 75), get(0, 30, 30, 2), get(0, 30, 30, 3)]
    assert check(RegisterModel(), init + ok).valid is True
    bad = [put(200, 0, 100), get(200, 10, 10), get(200, 10, 10, 3), get(0, 40, 90, 2)]
    assert check(RegisterModel(), init + bad).valid is False


def test_unknown_outcomes_may_or_may_not_take_effect() -> None:
    crashed = Operation(0, 0, None, ("write", 1), UNKNOWN)
    assert check(RegisterModel(), [crashed, get(None, 5, 6)]).valid is True
    assert check(RegisterModel(), [crashed, get(1, 5, 6)]).valid is True
    assert check(RegisterModel(), [crashed, get(2, 5, 6)]).valid is False
    failed_cas = Operation(2, 0, 1, ("cas", 0, 1), "fail")  # absent != 0: a legal failure
    assert check(RegisterModel(), [failed_cas, get(None, 2, 3)]).valid is True


def test_violation_names_the_blocked_operation() -> None:
    ops = [put(1, 0, 1), get(2, 2, 3)]
    result = check(RegisterModel(), ops)
    assert result.valid is False
    assert result.blocked is not None and result.blocked.output == 2
    assert result.to_json()["blocked"]["output"] == "2"


def test_limits_give_unknown_never_valid() -> None:
    # Many concurrent writes and a read no order can explain: a big search space.
    ops: list[Operation] = [Operation(i, 0, 100, ("write", i), "ok") for i in range(14)]
    ops.append(get(99, 101, 102, 99))
    result = check(RegisterModel(), ops, max_steps=1000, slice_steps=100)
    assert result.valid == "unknown" and "step limit" in result.reason
    tiny = check(RegisterModel(), [*ops[:-1], get(5, 101, 102, 99)], memory_limit_bytes=1)
    assert tiny.valid in (True, "unknown")  # found at once, or stopped: never a false True


def _etcd(n: int) -> list[Operation]:
    return parse_etcd((PORCUPINE / "jepsen" / f"etcd_{n:03d}.log").read_text().splitlines())


@needs_porcupine
@pytest.mark.parametrize("n", ETCD_TESTED)
def test_porcupine_etcd_verdicts(n: int) -> None:
    result = check(RegisterModel(), _etcd(n), time_limit_s=20)
    if n in ETCD_LINEARIZABLE:
        assert result.valid is True, result.to_json()
    else:
        assert result.valid in (False, "unknown"), result.to_json()
        assert result.valid is False  # reproduces porcupine: all are found well in time


@needs_porcupine
def test_porcupine_etcd_files_are_the_expected_ones() -> None:
    empty = PORCUPINE / "jepsen" / "etcd_095.log"
    assert empty.read_bytes() == b""
    digest = hashlib.sha256((PORCUPINE / "jepsen" / "etcd_000.log").read_bytes()).hexdigest()
    assert digest.startswith("376e647d83cede9f")
    # etcd_100-102 use spaces and have :fail :read timeouts; 000-099 use tabs.
    assert len(_etcd(100)) == 77 and len(_etcd(0)) == 85


KV = [
    ("c01-ok", True),
    ("c01-bad", False),
    ("c10-ok", True),
    ("c10-bad", False),
    ("c50-ok", True),
    ("c50-bad", False),
]


def _kv(name: str) -> list[Operation]:
    return parse_kv((PORCUPINE / "kv" / f"{name}.txt").read_text().splitlines())


@needs_porcupine
@pytest.mark.parametrize(("name", "linearizable"), KV)
def test_porcupine_kv_verdicts_partitioned(name: str, linearizable: bool) -> None:
    result = check(KvModel(), _kv(name), time_limit_s=30, memory_limit_bytes=1 << 30)
    if linearizable:
        assert result.valid is True, result.to_json()
    else:
        assert result.valid in (False, "unknown"), result.to_json()
        assert result.valid is not True


@needs_porcupine
@pytest.mark.parametrize(("name", "linearizable"), KV[:4])
def test_porcupine_kv_verdicts_unpartitioned(name: str, linearizable: bool) -> None:
    """The whole map as one state (no P-compositionality): the same verdicts."""
    result = check(KvModel(partitioned=False), _kv(name), time_limit_s=60)
    assert result.valid is linearizable, result.to_json()


@needs_porcupine
def test_c01_bad_fails_where_expected() -> None:
    result = check(KvModel(), _kv("c01-bad"))
    assert result.valid is False and result.failed_key == "7"
