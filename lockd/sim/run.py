"""Seeds in, verdicts out: run one seed or many (in parallel), shrink a failing
schedule by delta debugging, and print a trace and the command that replays it."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Generator, Sequence

from lockd import exits
from lockd.sim.checks import PROPERTIES, Violation, fmt_ns
from lockd.sim.schedule import Job, Schedule, generate
from lockd.sim.simulation import RunResult, Simulation
from lockd.sim.world import MS

__all__ = [
    "Failure",
    "SimConfig",
    "Summary",
    "explore",
    "format_trace",
    "replay_command",
    "run_seed",
    "shrink",
]

DEFAULT_STEPS = 200


def schedule_for(seed: int, steps: int, keep: Sequence[int] | None = None) -> Schedule:
    """The schedule of `seed`, reduced to the steps in `keep` when given."""
    schedule = generate(seed, steps)
    return schedule if keep is None else schedule.keep(set(keep))


def run_seed(
    seed: int,
    steps: int = DEFAULT_STEPS,
    unsafe: str | None = None,
    keep: Sequence[int] | None = None,
    trace: bool = False,
) -> RunResult:
    """Run one seed (optionally only the steps in `keep`)."""
    return Simulation(schedule_for(seed, steps, keep), unsafe, trace).run()


def replay_command(
    seed: int, steps: int, unsafe: str | None, keep: Sequence[int] | None = None
) -> str:
    """The `lockd sim` command line that replays this run exactly."""
    cmd = f"lockd sim --seed {seed} --steps {steps}"
    if unsafe:
        cmd += f" --unsafe {unsafe}"
    if keep is not None:
        cmd += " --keep " + (",".join(map(str, keep)) or "none")
    return cmd


# -- many seeds ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """A failing seed."""

    seed: int
    violations: tuple[Violation, ...]


@dataclasses.dataclass(slots=True)
class Summary:
    """What a batch of seeds found."""

    first: int
    steps: int
    unsafe: str | None
    run: int = 0
    passed: int = 0
    failures: list[Failure] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    jobs: int = 1
    grants: int = 0
    attempts: int = 0
    writes: int = 0
    refused: int = 0
    crashes: int = 0
    events: int = 0
    elections: int = 0
    terms: int = 0
    leader_reads: int = 0
    overlap_checked: int = 0
    bound_ns: int = 0
    by_property: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def seeds_per_minute(self) -> float:
        """Throughput."""
        return self.run * 60 / self.elapsed_s if self.elapsed_s else 0.0

    def add(self, seed: int, outcome: RunResult) -> None:
        """Count one seed's outcome."""
        self.run += 1
        self.grants += outcome.grants
        self.attempts += outcome.attempts
        self.writes += outcome.writes
        self.refused += outcome.refused
        self.crashes += outcome.crashes
        self.events += outcome.events
        self.elections += outcome.terms > 0
        self.terms += outcome.terms
        self.leader_reads += outcome.leader_reads
        self.overlap_checked += outcome.overlap_checked
        self.bound_ns = max(self.bound_ns, outcome.bound_ns)
        if outcome.violations:
            self.failures.append(Failure(seed, outcome.violations))
            for prop in sorted({v.prop for v in outcome.violations}):
                self.by_property[prop] = self.by_property.get(prop, 0) + 1
        else:
            self.passed += 1


def _run_one(args: tuple[int, int, str | None]) -> tuple[int, RunResult]:
    seed, steps, unsafe = args
    return seed, run_seed(seed, steps, unsafe)


def _jobs(jobs: int) -> int:
    return jobs if jobs > 0 else max(1, len(os.sched_getaffinity(0)))


def _results(
    args: list[tuple[int, int, str | None]], jobs: int
) -> Generator[tuple[int, RunResult], None, None]:
    if jobs == 1 or len(args) < 4:
        yield from map(_run_one, args)
        return
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(jobs) as pool:
        yield from pool.imap(_run_one, args, chunksize=max(1, min(16, len(args) // (jobs * 8))))


def explore(
    first: int,
    count: int,
    steps: int = DEFAULT_STEPS,
    unsafe: str | None = None,
    jobs: int = 0,
    keep_going: bool = False,
    progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Run seeds `first` .. `first + count - 1` (in order of seed; `jobs` processes, 0 =
    one per CPU); stop at the first failing seed unless `keep_going`."""
    jobs = _jobs(jobs)
    summary = Summary(first, steps, unsafe, jobs=jobs)
    started = time.perf_counter()
    args = [(seed, steps, unsafe) for seed in range(first, first + count)]
    results = _results(args, jobs)
    try:
        for seed, outcome in results:
            summary.add(seed, outcome)
            if progress is not None and summary.run % 1000 == 0:
                summary.elapsed_s = time.perf_counter() - started
                progress(summary)
            if outcome.violations and not keep_going:
                break
    finally:
        results.close()  # ends the pool at once if we stopped early
    summary.elapsed_s = time.perf_counter() - started
    return summary


# -- shrinking -----------------------------------------------------------------------------


def _fails_with(args: tuple[int, int, str | None, tuple[int, ...], str]) -> bool:
    seed, steps, unsafe, keep, prop = args
    return any(v.prop == prop for v in run_seed(seed, steps, unsafe, keep).violations)


def shrink(
    seed: int,
    steps: int,
    unsafe: str | None,
    prop: str,
    jobs: int = 0,
    max_runs: int = 400,
) -> tuple[tuple[int, ...], int]:
    """Delta-debug the schedule of a failing seed: the smallest set of steps (by index)
    found, within `max_runs` runs, that still violates `prop`; and the runs it took.
    Steps are sessions and faults alike, so the trace keeps only what matters."""
    jobs = _jobs(jobs)
    items = tuple(s.index for s in generate(seed, steps).steps)
    runs = 0
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    pool = ctx.Pool(jobs) if jobs > 1 else None

    def first_failing(candidates: list[tuple[int, ...]]) -> tuple[int, ...] | None:
        nonlocal runs
        for at in range(0, len(candidates), jobs):
            batch = candidates[at : at + jobs]
            if runs + len(batch) > max_runs:
                return None
            args = [(seed, steps, unsafe, c, prop) for c in batch]
            verdicts = pool.map(_fails_with, args) if pool else list(map(_fails_with, args))
            runs += len(batch)
            for candidate, fails in zip(batch, verdicts, strict=True):
                if fails:
                    return candidate
        return None

    try:
        n = 2
        while len(items) >= 2 and runs < max_runs:
            size = -(-len(items) // n)
            chunks = [items[i : i + size] for i in range(0, len(items), size)]
            smaller = first_failing(chunks)
            if smaller is not None:
                items, n = smaller, 2
                continue
            rests = []
            for chunk in chunks:
                drop = frozenset(chunk)
                rests.append(tuple(x for x in items if x not in drop))
            smaller = first_failing(rests) if n > 2 else None  # n = 2: rests are chunks
            if smaller is not None:
                items, n = smaller, max(n - 1, 2)
                continue
            if n >= len(items):
                break
            n = min(len(items), 2 * n)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return items, runs


# -- traces ---------------------------------------------------------------------------------


def format_trace(schedule: Schedule, outcome: RunResult, limit: int | None = None) -> str:
    """A readable account of a run: its setup, steps, what the clients and nodes did,
    and the violations."""
    lines = [f"setup: {schedule.setup.describe()}"]
    sessions = [s for s in schedule.steps if isinstance(s.action, Job)]
    if sessions:
        lines.append("sessions:")
        lines += [f"  {fmt_ns(s.at_ms * MS):>10}  step {s.index}: {s.action}" for s in sessions]
    lines.append("trace (true time):")
    trace = outcome.trace if limit is None else outcome.trace[:limit]
    lines += [f"  {fmt_ns(at):>10}  {who:<7} {text}" for at, who, text in trace]
    if limit is not None and len(outcome.trace) > limit:
        lines.append(f"  ... {len(outcome.trace) - limit} more lines")
    lines.append(
        f"heal at {fmt_ns(outcome.heal_ns)}; liveness bound {fmt_ns(outcome.bound_ns)}; "
        f"overlap {'checked' if outcome.overlap_checked else 'not checked (drift beyond bound)'}"
    )
    if outcome.violations:
        lines.append("violations:")
        lines += [f"  {v}" for v in outcome.violations]
    else:
        lines.append(f"every property held: {', '.join(PROPERTIES)}")
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """What `lockd sim` runs: `seeds` seeds from `seed` (or, `seed` alone or with `keep`,
    a replay of that one seed), with `steps` schedule steps each."""

    seeds: int | None = None
    seed: int | None = None
    steps: int = DEFAULT_STEPS
    unsafe: str | None = None
    """A planted bug: one of UNSAFE, the real code's unsafe option run instead."""
    keep: Sequence[int] | None = None
    """Replay only these steps of the seed's schedule."""
    jobs: int = 0
    """Processes (0: one per CPU)."""
    shrink: bool = True
    trace: bool = False
    keep_going: bool = False
    as_json: bool = False


def main(
    config: SimConfig,
    echo: Callable[[str], None] = print,
    progress: Callable[[str], None] | None = None,
) -> int:
    """`lockd sim`: run the seeds, report, shrink and trace the first failure. `seed`
    alone (or with `keep`) replays that one run. Returns the exit status (`lockd.exits`):
    VALID when every seed passed, INVALID when one failed."""
    seeds, seed, steps, unsafe, keep = (
        config.seeds,
        config.seed,
        config.steps,
        config.unsafe,
        config.keep,
    )
    jobs, trace, keep_going = config.jobs, config.trace, config.keep_going
    first = seed or 0
    single = keep is not None or (seed is not None and seeds is None)
    described = f"unsafe option {unsafe}" if unsafe else "safe configuration"
    data: dict[str, object] = {"steps": steps, "unsafe": unsafe, "first_seed": first}
    lines: list[str] = []
    failure: Failure | None = None
    if single:
        # One run (a replay): traced, which costs little for one seed.
        outcome = run_seed(first, steps, unsafe, keep, trace=True)
        part = "" if keep is None else f", {len(keep)} of {steps} steps"
        verdict = "FAILED" if outcome.violations else "passed"
        lines.append(
            f"lockd sim: seed {first}{part}, {described}: {verdict} ({outcome.grants} grants, "
            f"{outcome.writes} acknowledged writes, {outcome.events} events, digest "
            f"{outcome.digest})"
        )
        if trace or keep is not None:
            lines.append(format_trace(schedule_for(first, steps, keep), outcome))
        data.update(
            seeds=1,
            passed=int(not outcome.violations),
            digest=outcome.digest,
            violations=[str(v) for v in outcome.violations],
        )
        if outcome.violations and keep is None:
            failure = Failure(first, outcome.violations)
        failed = bool(outcome.violations)
    else:
        count = seeds or 1000

        def report(s: Summary) -> None:
            if progress is not None:
                failed = ", ".join(str(f.seed) for f in s.failures[:10])
                progress(
                    f"... {s.run} seeds, {len(s.failures)} failed"
                    + (f" (seeds {failed})" if failed else "")
                    + f", {s.seeds_per_minute:.0f} seeds/min"
                )

        summary = explore(
            first, count, steps, unsafe, jobs, keep_going, report if count >= 5000 else None
        )
        failure = summary.failures[0] if summary.failures else None
        failed = failure is not None
        last = first + summary.run - 1
        lines.append(f"lockd sim: seeds {first}..{last}, {steps} steps each, {described}")
        lines.append(
            f"  {summary.passed} passed, {len(summary.failures)} failed in "
            f"{summary.elapsed_s:.1f} s: {summary.seeds_per_minute:.0f} seeds/min on "
            f"{summary.jobs} process{'es' if summary.jobs > 1 else ''}"
        )
        lines.append(
            f"  properties: {', '.join(PROPERTIES[:7])}, liveness (within "
            f"{summary.bound_ns / 1e9:.2f} s of the heal), overlap (in "
            f"{summary.overlap_checked} of {summary.run} runs; the others drifted beyond "
            "the bound)"
        )
        lines.append(
            f"  totals: {summary.grants} grants of {summary.attempts} attempts, "
            f"{summary.writes} acknowledged writes, {summary.refused} stale store "
            f"operations refused, {summary.crashes} node crashes, {summary.events} events; "
            f"elections in {summary.elections} runs: {summary.terms} terms led, "
            f"{summary.leader_reads} reads found a leader"
        )
        if keep_going and summary.failures:
            shown = ", ".join(str(f.seed) for f in summary.failures[:20])
            lines.append(f"  failing seeds: {shown}{' ...' if len(summary.failures) > 20 else ''}")
        data.update(
            seeds=summary.run,
            passed=summary.passed,
            failed=[f.seed for f in summary.failures],
            elapsed_s=round(summary.elapsed_s, 3),
            seeds_per_minute=round(summary.seeds_per_minute),
            jobs=summary.jobs,
            failures_by_property=summary.by_property,
            grants=summary.grants,
            attempts=summary.attempts,
            acknowledged_writes=summary.writes,
            crashes=summary.crashes,
            election_runs=summary.elections,
            terms_led=summary.terms,
            leader_reads=summary.leader_reads,
            overlap_checked=summary.overlap_checked,
            liveness_bound_ms=summary.bound_ns // MS,
        )
    if failure is not None:
        lines.append(f"seed {failure.seed} FAILED:")
        lines += [f"  {v}" for v in failure.violations[:10]]
        if len(failure.violations) > 10:
            lines.append(f"  ... {len(failure.violations) - 10} more")
        replay = replay_command(failure.seed, steps, unsafe)
        detail: dict[str, object] = {
            "seed": failure.seed,
            "violations": [str(v) for v in failure.violations],
            "replay": replay,
        }
        if config.shrink:
            prop = failure.violations[0].prop
            kept, runs = shrink(failure.seed, steps, unsafe, prop, jobs)
            outcome = run_seed(failure.seed, steps, unsafe, kept, trace=True)
            lines.append(
                f"shrunk to {len(kept)} of {steps} steps in {runs} runs (still {prop}); "
                "the minimal run:"
            )
            lines.append(format_trace(schedule_for(failure.seed, steps, kept), outcome))
            detail["minimal_steps"] = list(kept)
            detail["replay_minimal"] = replay_command(failure.seed, steps, unsafe, kept)
        lines.append(f"replay: {replay}")
        if "replay_minimal" in detail:
            lines.append(f"replay the minimal schedule: {detail['replay_minimal']}")
        data["failure"] = detail
    if config.as_json:
        echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        echo("\n".join(lines))
    return exits.INVALID if failed else exits.VALID
