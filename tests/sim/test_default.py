"""The safe configuration passes a fixed range of seeds (the CI run of the simulator;
`lockd sim --seeds 100000` is the long run, see docs/SIMULATION.md), and the
simulator's throughput, printed rather than asserted."""

from __future__ import annotations

import time

import pytest

from lockd.sim import explore

SEEDS = 1000
STEPS = 100


@pytest.mark.timeout(600)  # about 45 s on two idle cores; longer on a loaded machine
def test_safe_configuration_passes_a_fixed_range_of_seeds() -> None:
    summary = explore(0, SEEDS, STEPS, jobs=0, keep_going=True)
    assert [f.seed for f in summary.failures] == [], summary.failures[:3]
    assert summary.passed == SEEDS
    # The runs did something: grants, writes, crashes, and the overlap property checked.
    assert summary.grants > 20 * SEEDS and summary.writes > 20 * SEEDS
    assert summary.crashes > SEEDS and summary.overlap_checked > 0.8 * SEEDS
    # About 3 runs in 10 hold an election, with many terms and reads that found a leader.
    assert summary.elections > 0.2 * SEEDS
    assert summary.terms > 5 * summary.elections
    assert summary.leader_reads > 10 * summary.elections


def test_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.process_time()
    summary = explore(1_000_000, 40, 200, jobs=1)
    cpu = time.process_time() - started
    assert summary.passed == 40
    with capsys.disabled():
        print(
            f"\nlockd sim throughput: {summary.seeds_per_minute:.0f} seeds/min on one process "
            f"(200 steps; {cpu / 40 * 1000:.0f} ms CPU a seed, so about "
            f"{2 * 60 / (cpu / 40):.0f} seeds/min on two idle cores)"
        )
