"""This tree's gateway (or commit NEW's) against another commit's, side by side in one run.

Both gateways run at once (embedded, and over the same five `lockd engine` processes of
this tree); each round runs every workload on the old one, then on the new one, so the
machine's noise hits both alike. The old commit is checked out in a temporary git
worktree and run with `PYTHONPATH` pointing at it; the clients are this tree's.
Prints the median rate of each over the rounds and the ratio new/old.

    .venv/bin/python -m tests.bench.versus_commit REV [--new REV2] [--rounds 5] [--seconds 3]

With `--new`, both sides are commits (each in its worktree): one change measured alone,
e.g. a merge against its first parent.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.bench import peers, shapes
from tests.bench.shapes_bench import WORKLOADS, wait_grants

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def checkout(rev: str, where: Path, label: str) -> Iterator[Path]:
    """`rev` checked out (detached) in a temporary worktree."""
    path = where / label
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(path), rev],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                       check=False)  # fmt: skip


def run(
    rev: str, rounds: int, seconds: float, new_rev: str | None = None
) -> list[tuple[str, float, float]]:
    """(shape/workload, old median rate, new median rate)."""
    with tempfile.TemporaryDirectory() as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        old = stack.enter_context(checkout(rev, tmp, "old"))
        new = stack.enter_context(checkout(new_rev, tmp, "new")) if new_rev else None
        engines = stack.enter_context(shapes.engine_nodes(tmp))
        gateways = {
            ("embedded", "old"): stack.enter_context(shapes.gateway(tmp, source=old)),
            ("embedded", "new"): stack.enter_context(shapes.gateway(tmp, source=new)),
            ("5 engines", "old"): stack.enter_context(
                shapes.gateway(tmp, engines.target, source=old)
            ),
            ("5 engines", "new"): stack.enter_context(
                shapes.gateway(tmp, engines.target, source=new)
            ),
        }
        for served in gateways.values():
            wait_grants(served.target)
        rates: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(rounds):
            for workload, clients in WORKLOADS:
                for (shape, which), served in gateways.items():
                    result = peers.run_clients("lockd", served.target, workload, clients, seconds)
                    rates.setdefault((shape, workload, which), []).append(result.rate)
        return [
            (
                f"{shape}, {workload}",
                statistics.median(rates[(shape, workload, "old")]),
                statistics.median(rates[(shape, workload, "new")]),
            )
            for shape in ("embedded", "5 engines")
            for workload, _ in WORKLOADS
        ]


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the commit to compare against (e.g. HEAD~1)")
    parser.add_argument("--new", help="measure this commit instead of this tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"{'shape, workload':<28} {'old/s':>10} {'new/s':>10} {'new/old':>8}")
    for name, old, new in run(args.rev, args.rounds, args.seconds, args.new):
        ratio = new / old if old else float("nan")
        print(f"{name:<28} {old:>10,.0f} {new:>10,.0f} {ratio:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
