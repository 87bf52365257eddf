"""Same seed, same run: in one process, in another process with another hash seed, and
for a shrunk schedule replayed with `keep`."""

from __future__ import annotations

import os
import subprocess
import sys

from lockd.sim import UNSAFE, run_seed, schedule_for
from lockd.sim.schedule import Job


def test_a_seed_replays_exactly() -> None:
    first, second = run_seed(11, trace=True), run_seed(11, trace=True)
    assert first.digest == second.digest
    assert first.trace == second.trace and len(first.trace) > 100
    assert first.events == second.events and first.grants == second.grants
    assert run_seed(11).digest == first.digest  # tracing changes nothing


def test_every_unsafe_option_replays_exactly() -> None:
    for unsafe in UNSAFE:
        assert run_seed(5, 60, unsafe).digest == run_seed(5, 60, unsafe).digest


def test_seeds_differ() -> None:
    assert len({run_seed(seed, 40).digest for seed in range(8)}) == 8


def test_another_process_with_another_hash_seed_agrees() -> None:
    code = "from lockd.sim import run_seed; print(run_seed(11).digest)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == run_seed(11).digest


def test_a_subset_of_the_schedule_replays_exactly() -> None:
    steps = schedule_for(4, 200).steps
    keep = [s.index for s in steps if not isinstance(s.action, Job)][:10] + [
        s.index for s in steps if isinstance(s.action, Job)
    ][:10]
    assert len(schedule_for(4, 200, keep).steps) == 20
    assert run_seed(4, 200, None, keep).digest == run_seed(4, 200, None, keep).digest
    assert run_seed(4, 200, None, keep).digest != run_seed(4).digest
