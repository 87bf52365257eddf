"""Generators are pure: the seed decides everything; partition shapes are as named."""

from __future__ import annotations

import itertools
import random

import pytest

from lockd.jepsen.generator import (
    FAULTS,
    SHAPES,
    Workload,
    clock_offsets,
    partition_links,
    schedule,
)


def test_workload_is_a_function_of_seed_and_worker() -> None:
    def cycles(seed: int, worker: int) -> list[object]:
        w = Workload(seed, worker, ["a", "b"], ttl_s=1.0, think_max_s=0.2)
        return [w.next() for _ in range(50)]

    assert cycles(1, 0) == cycles(1, 0)
    assert cycles(1, 0) != cycles(1, 1) and cycles(1, 0) != cycles(2, 0)
    for c in cycles(3, 2):
        assert c.key in ("a", "b") and 0 <= c.think_s <= 0.2 and c.wait_s > 0  # type: ignore[attr-defined]


def test_schedule_is_reproducible_bounded_and_covers_every_kind() -> None:
    args = {"nodes": 5, "gateways": 2, "ttl_s": 1.0}
    faults = schedule(7, FAULTS, 120, **args)  # type: ignore[arg-type]
    assert faults == schedule(7, FAULTS, 120, **args)  # type: ignore[arg-type]
    assert faults != schedule(8, FAULTS, 120, **args)  # type: ignore[arg-type]
    assert {f.kind for f in faults} == set(FAULTS)
    for a, b in itertools.pairwise(faults):
        assert a.at_s + a.duration_s + 1.0 <= b.at_s  # one at a time, a quiet gap between
    assert faults[-1].at_s + faults[-1].duration_s <= 120
    for f in faults:
        if f.kind == "pause":
            assert 1.0 <= f.duration_s <= 3.0  # past the TTL
        if f.kind == "clock":
            rates = [s.value for s in f.clock if s.op == "rate"]
            assert all(0.995 <= r <= 1.005 for r in rates)  # within the gateways' allowance
    assert schedule(7, (), 120, **args) == []  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown nemesis"):
        schedule(7, ("fire",), 120, **args)  # type: ignore[arg-type]


def _seen(cut: frozenset[tuple[int, int]], g: int, nodes: int = 5) -> set[int]:
    return {n for n in range(nodes) if (g, n) not in cut}


@pytest.mark.parametrize("seed", range(20))
def test_partition_shapes(seed: int) -> None:
    r = random.Random(seed)
    one = partition_links("one", 2, 5, r)
    assert len({n for _, n in one}) == 1 and len(one) == 2
    assert len({n for _, n in partition_links("minority", 2, 5, r)}) == 2
    majority = partition_links("majority", 2, 5, r)
    assert len(_seen(majority, 0)) == 2 == len(_seen(majority, 1))  # no quorum anywhere
    ring = partition_links("majorities-ring", 2, 5, r)
    assert len(_seen(ring, 0)) == 3 == len(_seen(ring, 1))
    assert _seen(ring, 0) != _seen(ring, 1)  # each gateway its own majority
    bridge = partition_links("bridge", 2, 5, r)
    a, b = _seen(bridge, 0), _seen(bridge, 1)
    assert len(a) == len(b) == 3 and len(a & b) == 1  # two majorities joined by one node
    for shape in ("delay", "loss"):
        assert 5 <= len(partition_links(shape, 2, 5, r)) <= 10
    assert partition_links("bridge", 2, 5, random.Random(seed)) == partition_links(
        "bridge", 2, 5, random.Random(seed)
    )
    assert set(SHAPES) >= {"one", "minority", "majority", "majorities-ring", "bridge"}


def test_clock_offsets_are_per_node_and_seeded() -> None:
    offsets = clock_offsets(3, 5)
    assert offsets == clock_offsets(3, 5) != clock_offsets(4, 5)
    assert len(set(offsets)) == 5 and all(abs(o) <= 10_000 for o in offsets)
