"""Each planted bug — an `unsafe_*` option of the real code, chosen with `lockd sim
--unsafe` — is caught, from seed 0, at the seed recorded here (each well inside the
issue's 10,000), by the property that should catch it; the same seed passes safe.

The seeds are facts about the current simulator: a change to the workload or the
schedule generator moves them (then update them here and in docs/SIMULATION.md)."""

from __future__ import annotations

import pytest

from lockd.sim import UNSAFE, explore, run_seed, shrink

FIRST_FAILING = {
    # unsafe option: (first failing seed, the property that catches it)
    "single-phase-token": (0, "token-monotonic"),
    "no-drift": (59, "overlap"),
    "wall-clock": (132, "overlap"),
    "no-restart-delay": (4, "overlap"),
    "volatile-fence": (2, "token-unique"),
}


def test_every_unsafe_option_is_listed() -> None:
    assert set(FIRST_FAILING) == set(UNSAFE)


@pytest.mark.parametrize("unsafe", sorted(FIRST_FAILING))
def test_planted_bug_is_found(unsafe: str) -> None:
    seed, prop = FIRST_FAILING[unsafe]
    summary = explore(0, seed + 1, unsafe=unsafe, jobs=2 if seed > 20 else 1)
    assert [f.seed for f in summary.failures] == [seed]
    assert summary.passed == seed  # every earlier seed passed
    assert summary.failures[0].violations[0].prop == prop
    assert not run_seed(seed).violations  # the bug, not the schedule


def test_a_failure_shrinks_to_a_few_steps() -> None:
    kept, runs = shrink(2, 200, "volatile-fence", "token-unique", jobs=1)
    assert len(kept) <= 5 and runs <= 400
    outcome = run_seed(2, 200, "volatile-fence", kept, trace=True)
    assert outcome.violations[0].prop == "token-unique"
    assert len(outcome.trace) < 60
