"""Checking commands: `lockd jepsen run|check` (real processes under faults) and
`lockd sim` (the deterministic simulator). Exit statuses are verdicts (`lockd.exits`)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from lockd import exits
from lockd.cli.client import table
from lockd.cli.params import DURATION

__all__ = ["jepsen", "sim"]


@click.group()
def jepsen() -> None:
    """The Jepsen-style harness: real processes, faults, checked histories."""


@jepsen.command("run")
@click.option("--nodes", default=5, type=click.IntRange(3, 9), help="Engine nodes.")
@click.option("--gateways", default=2, type=click.IntRange(1, 4), help="Gateways.")
@click.option("--clients", default=8, type=click.IntRange(1, 64), help="Client worker processes.")
@click.option("--keys", default=1, type=click.IntRange(1, 64), help="Locks (and counters).")
@click.option("--time-limit", default="60s", type=DURATION, help="Length of the faulty phase.")
@click.option(
    "--heal-time", default=None, type=DURATION, help="Final healed phase [default: 2 max-ttl + 3s]."
)
@click.option(
    "--nemesis",
    default="all",
    metavar="KIND,...",
    help="kill, power-loss, pause, clock, partition, disk (comma-separated), all, or none.",
)
@click.option("--seed", type=int, default=None, help="Seed of every random choice [random].")
@click.option(
    "--out",
    default="./var/jepsen",
    type=click.Path(path_type=Path),
    help="Results go to OUT/<test>/<timestamp>/, with OUT/<test>/latest.",
)
@click.option("--ttl", default="1s", type=DURATION, help="Lease TTL of the workers.")
@click.option("--max-ttl", default="2s", type=DURATION, help="Engines' and gateways' max TTL.")
@click.option("--think", default="200ms", type=DURATION, help="Longest think time in the lock.")
@click.option("--unsafe-store", is_flag=True, help="Store without its token check: must be caught.")
@click.option(
    "--unsafe-wall-clock",
    is_flag=True,
    help="Engines measure TTLs on the wall clock: with clock jumps, must be caught.",
)
@click.option(
    "--unsafe-unfenced-read",
    is_flag=True,
    help="Workers read without first writing their token to the store (unfenced "
    "read-modify-write).",
)
@click.option(
    "--check-time-limit", default="60s", type=DURATION, help="Linearizability search limit."
)
@click.option("--test-name", default=None, help="Name of the test directory [from the flags].")
@click.option(
    "--engine",
    default="lockd",
    type=click.Choice(["lockd", "redis"]),
    show_default=True,
    help="Nodes: `lockd engine` processes, or real redis-servers (redis-server on PATH; "
    "nemeses that do not apply are skipped, with the reason in run.json).",
)
@click.option(
    "--workload",
    default="fenced-counter",
    type=click.Choice(["fenced-counter", "election"]),
    help="fenced-counter: lock, read, write +1 with the token. election: candidates "
    "campaign and write with their term, observers follow the leaders.",
)
@click.option(
    "--observers", default=2, type=click.IntRange(0, 16), help="Election: observer processes."
)
def jepsen_run(
    nodes: int,
    gateways: int,
    clients: int,
    keys: int,
    time_limit: int,
    heal_time: int | None,
    nemesis: str,
    seed: int | None,
    out: Path,
    ttl: int,
    max_ttl: int,
    think: int,
    unsafe_store: bool,
    unsafe_wall_clock: bool,
    unsafe_unfenced_read: bool,
    check_time_limit: int,
    test_name: str | None,
    engine: str,
    workload: str,
    observers: int,
) -> None:
    """Run lockd as real processes under faults and check what the clients saw.

    Exit status: 0 valid, 1 invalid, 2 unknown (a checker could not decide), 3 the
    harness could not run the test, 130 interrupted."""
    import secrets

    from lockd.jepsen.generator import parse_nemeses
    from lockd.jepsen.run import RunConfig, run

    try:
        kinds = parse_nemeses(nemesis)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--nemesis") from None
    if ttl > max_ttl:
        raise click.BadParameter("--ttl must not exceed --max-ttl")
    if engine == "redis" and unsafe_wall_clock:
        raise click.BadParameter(
            "--unsafe-wall-clock is a `lockd engine` flag; Redis always measures TTLs on "
            "its wall clock",
            param_hint="--engine",
        )
    config = RunConfig(
        out=out,
        seed=seed if seed is not None else secrets.randbelow(2**31),
        nemeses=kinds,
        nodes=nodes,
        gateways=gateways,
        clients=clients,
        keys=keys,
        time_limit_s=time_limit / 1000,
        heal_s=heal_time / 1000 if heal_time is not None else None,
        ttl_s=ttl / 1000,
        max_ttl_ms=max_ttl,
        think_max_s=think / 1000,
        unsafe_store=unsafe_store,
        unsafe_wall_clock=unsafe_wall_clock,
        unfenced_read=unsafe_unfenced_read,
        workload=workload,
        observers=observers,
        test_name=test_name,
        check_time_limit_s=check_time_limit / 1000,
        command="lockd " + " ".join(sys.argv[1:]),
        engine=engine,
    )
    click.echo(f"lockd jepsen: {config.name}, seed {config.seed}", err=True)
    try:
        directory, results = run(config)
    except KeyboardInterrupt:
        click.echo("lockd jepsen: interrupted; every process it started was stopped", err=True)
        sys.exit(exits.INTERRUPTED)
    except Exception as exc:
        logging.getLogger("lockd.jepsen").exception("the run failed")
        click.echo(f"lockd jepsen: the run failed: {exc}", err=True)
        sys.exit(exits.HARNESS_FAILED)
    _print_verdict(directory, results)
    sys.exit(exits.for_validity(results["valid"]))


@jepsen.command("check")
@click.argument("history", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def jepsen_check(history: Path) -> None:
    """Check a history.jsonl again (with the store log beside it, if there is one); the
    format is in docs/CORRECTNESS.md. A history that breaks it is unknown, never a verdict.

    Exit status: 0 valid, 1 invalid, 2 unknown."""
    from lockd.jepsen.run import check_file

    results = check_file(history)
    _print_verdict(history.parent, results)
    sys.exit(exits.for_validity(results["valid"]))


def _print_verdict(directory: Path, results: dict[str, Any]) -> None:
    rows = [
        (name, json.dumps(r.get("valid")))
        for name, r in results.items()
        if isinstance(r, dict) and "valid" in r
    ]
    click.echo(table(["checker", "valid"], rows))
    problems = results.get("history", {}).get("problems", [])
    for problem in problems:
        click.echo(f"malformed history: {problem}")
    click.echo(f"\nvalid: {json.dumps(results['valid'])}   ({directory})")


@click.command()
@click.option("--seeds", type=click.IntRange(1), help="How many seeds to run [default: 1000].")
@click.option(
    "--seed",
    type=click.IntRange(0),
    help="First seed; alone, replay just that seed.",
)
@click.option("--steps", default=200, type=click.IntRange(1), help="Schedule steps per seed.")
@click.option(
    "--unsafe",
    type=click.Choice(
        ["single-phase-token", "no-drift", "wall-clock", "no-restart-delay", "volatile-fence"]
    ),
    help="Plant a bug: run with this UNSAFE option of the real code (the checkers must catch it).",
)
@click.option(
    "--keep",
    metavar="I,J,...",
    help="Replay only these steps of the seed's schedule (printed for a shrunk failure).",
)
@click.option("--jobs", default=0, type=click.IntRange(0), help="Processes (0: one per CPU).")
@click.option("--shrink/--no-shrink", default=True, help="Shrink the first failing schedule.")
@click.option("--trace", is_flag=True, help="Print the full trace of a replayed seed.")
@click.option("--keep-going", is_flag=True, help="Do not stop at the first failing seed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sim(
    seeds: int | None,
    seed: int | None,
    steps: int,
    unsafe: str | None,
    keep: str | None,
    jobs: int,
    shrink: bool,
    trace: bool,
    keep_going: bool,
    as_json: bool,
) -> None:
    """Deterministic simulation: the real engines and quorum core under virtual time,
    with network faults, crashes, clock drift and jumps, and client pauses, all drawn
    from one seed; checks token uniqueness and order, the fenced store, liveness after
    healing, and Redlock's non-overlap. A failure prints a shrunk trace and the command
    that replays it.

    Exit status: 0 when every seed passed, 1 when one failed."""
    from lockd.sim.run import SimConfig
    from lockd.sim.run import main as run_sim

    try:
        kept = None if keep is None else [int(i) for i in keep.split(",") if i not in ("", "none")]
    except ValueError:
        raise click.BadParameter(
            "a comma-separated list of step numbers", param_hint="--keep"
        ) from None
    config = SimConfig(
        seeds=seeds,
        seed=seed,
        steps=steps,
        unsafe=unsafe,
        keep=kept,
        jobs=jobs,
        shrink=shrink,
        trace=trace,
        keep_going=keep_going,
        as_json=as_json,
    )
    sys.exit(run_sim(config, echo=click.echo, progress=lambda line: click.echo(line, err=True)))
