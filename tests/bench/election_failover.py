"""Election failover time: the leader frozen with SIGSTOP -> the new leader's first write
accepted by `lockd store`, against the leader's TTL.

Runs examples/leader_election.py's three replicas (real processes) against a fresh
`lockd serve` (five embedded engines) and `lockd store`, and freezes the current leader
`--trials` times in a row; every trial also checks that the frozen leader's late write
is refused. Prints p50/p99/max per TTL.

    python -m tests.bench.election_failover --trials 20 --ttl 1 --ttl 3
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from tests.client.helpers import serve_process, store_process

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "leader_election.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("leader_election", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def measure(ttl: float, trials: int, interval: float) -> tuple[list[float], int]:
    """Failover times in seconds over `trials` freezes, and how many late writes the
    store refused."""
    example = _example()
    with tempfile.TemporaryDirectory() as tmp:
        serve = serve_process(Path(tmp) / "data").start()
        store = store_process(Path(tmp) / "store").start()
        try:
            args = argparse.Namespace(
                endpoint=serve.endpoint,
                store=store.endpoint,
                election=f"bench-{ttl}",
                ttl=ttl,
                interval=interval,
            )
            replicas = example.Replicas(args)
            try:
                results = [replicas.failover(ttl) for _ in range(trials)]
            finally:
                replicas.close()
        finally:
            store.close()
            serve.close()
    return [r.failover_s for r in results], sum(r.late_write_refused for r in results)


def main() -> None:
    """Measure each TTL and print one row per TTL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--ttl", type=float, action="append", help="seconds (repeatable)")
    parser.add_argument("--interval", type=float, default=0.1, help="leader's work per write")
    args = parser.parse_args()
    print(f"{'ttl':>6} {'trials':>6} {'p50':>8} {'p99':>8} {'max':>8} {'p50/ttl':>8}  refused")
    for ttl in args.ttl or [1.0]:
        times, refused = measure(ttl, args.trials, args.interval)
        p50, p99 = statistics.median(times), percentile(times, 99)
        print(
            f"{ttl:>5.1f}s {len(times):>6} {p50 * 1000:>6.0f}ms {p99 * 1000:>6.0f}ms "
            f"{max(times) * 1000:>6.0f}ms {p50 / ttl:>8.2f}  {refused}/{len(times)}",
            flush=True,
        )
        if refused != len(times):
            sys.exit(1)


if __name__ == "__main__":
    main()
