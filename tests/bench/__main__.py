"""`make bench`: run the benchmarks and print one table."""

from __future__ import annotations

import sys

from tests.bench import engine_bench, gateway_bench, list_bench, shapes_bench, watch_bench


def main() -> None:
    """Run every benchmark and print the rows as they come."""
    sections = [
        ("engine, in process", engine_bench.in_process_pairs),
        ("engine, fencing durability", engine_bench.fence_durability),
        ("engine, checksummed AOF frames vs plain writes", engine_bench.checksum_cost),
        ("engine vs redis-server over RESP", engine_bench.over_resp),
        ("engine memory", engine_bench.memory_per_lock),
        ("gateway vs Redlock peers on five redis-servers", gateway_bench.gateway_vs_peers),
        ("lockd's shapes vs etcd, ZooKeeper and Redlock, one run", shapes_bench.shapes_vs_peers),
        ("watch event latency, release at gateway A to a watcher on B", watch_bench.watch_latency),
        ("List cost, 2000 held locks listed a page of 1000 at a time", list_bench.list_cost),
    ]
    print(f"{'benchmark':<58} {'result':>28}  target")
    for title, bench in sections:
        print(f"-- {title}")
        for name, value, target in bench():
            print(f"{name:<58} {value:>28}  {target}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
