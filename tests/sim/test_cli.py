"""`lockd sim`: exit status 0 when every seed passed and 1 when one failed, the summary,
the shrunk trace and the replay commands, JSON."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lockd.cli import main, sim
from lockd.sim import UNSAFE


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sim", *args])
    return result.exit_code, result.output


def test_unsafe_choices_are_the_simulators() -> None:
    choices = next(p for p in sim.params if p.name == "unsafe").type.choices  # type: ignore[attr-defined]
    assert tuple(choices) == UNSAFE


def test_passing_seeds_exit_0() -> None:
    code, out = run("--seeds", "3", "--steps", "50", "--jobs", "1")
    assert code == 0, out
    assert "seeds 0..2, 50 steps each, safe configuration" in out
    assert "3 passed, 0 failed" in out


def test_a_failing_seed_exits_1_with_a_shrunk_trace_and_replay_commands() -> None:
    code, out = run("--seeds", "10", "--unsafe", "volatile-fence", "--jobs", "1")
    assert code == 1, out
    assert "2 passed, 1 failed" in out and "seed 2 FAILED:" in out
    assert "token-unique at" in out and "shrunk to" in out
    assert "replay: lockd sim --seed 2 --steps 200 --unsafe volatile-fence" in out
    minimal = out.split("replay the minimal schedule: ")[1].split()
    code, replayed = run(*minimal[2:])  # lockd sim --seed 2 ... --keep I,J
    assert code == 1 and "FAILED" in replayed and "token-unique" in replayed


def test_replaying_one_seed_prints_its_trace() -> None:
    code, out = run("--seed", "3", "--steps", "30", "--trace")
    assert code == 0, out
    assert "seed 3, safe configuration: passed" in out
    assert "trace (true time):" in out and "every property held" in out


def test_json() -> None:
    code, out = run("--seeds", "2", "--steps", "20", "--jobs", "1", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["seeds"] == 2 and data["passed"] == 2 and data["failed"] == []
    code, out = run("--seed", "2", "--unsafe", "volatile-fence", "--no-shrink", "--json")
    data = json.loads(out)
    assert code == 1 and data["failure"]["replay"].startswith("lockd sim --seed 2")


def test_bad_keep_is_refused() -> None:
    code, out = run("--seed", "1", "--keep", "1,x")
    assert code == 2 and "--keep" in out
