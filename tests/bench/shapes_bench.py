"""lockd's three deployment shapes against etcd, ZooKeeper and the Redlock libraries, in
one run: every server is started first, then each workload runs on every system in
turn, so machine noise hits all of them alike. Read the ratios.

Systems: `lockd serve` embedded; `lockd serve --nodes` over five `lockd engine`
processes; the same over five real redis-servers (appendonly yes, appendfsync always,
noeviction, as the gateway demands), which also serve redlock-py and pottery; embedded
with `--appendfsync always` (every write fsynced, as etcd does); a 3-member
etcd cluster and a single etcd member (v3 lock API, a lease per lock); a 3-server
ZooKeeper ensemble (kazoo's Lock). Workloads: sequential (1 client), concurrent (16
clients, distinct locks), contended (8 clients, one lock, blocking), each client its
own process; then 200 holders keeping one lock each alive (lockd shapes, etcd, ZooKeeper).
Server CPU is read from /proc for every server process of a system (gateway and nodes).

    .venv/bin/python -m tests.bench.shapes_bench [--seconds 4] [--systems NAME,...]

`--systems` keeps the systems whose names contain one of the given words (case-blind),
e.g. `--systems "embedded,1 member"`; the holders round is skipped unless `--holders`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.bench import peer_servers, peers, shapes

Row = tuple[str, str, str]
WORKLOADS = (("sequential", 1), ("concurrent", 16), ("contended", 8))
EMBEDDED = "lockd embedded"
EMBEDDED_ALWAYS = "lockd embedded, always"
ENGINES = "lockd, 5 engines"
REDIS = "lockd, 5 redis"
ETCD3 = "etcd, 3 members"
ETCD1 = "etcd, 1 member"
ZK = "ZooKeeper, 3 servers"
HOLDERS = 200


@contextlib.contextmanager
def _systems(
    tmp: Path, only: tuple[str, ...] = ()
) -> Iterator[dict[str, tuple[str, shapes.Served]]]:
    """name -> (client kind, served), every server running (with `only`, those whose
    names contain one of its words)."""
    have = peer_servers.available()

    def wanted(*names: str) -> bool:
        return not only or any(w.lower() in n.lower() for n in names for w in only)

    with contextlib.ExitStack() as stack:

        def up(make: Callable[[], contextlib.AbstractContextManager[shapes.Served]]) -> Any:
            return stack.enter_context(make())

        systems: dict[str, tuple[str, shapes.Served]] = {}
        on_redis = (REDIS, "redlock-py, 5 redis", "pottery, 5 redis")
        # Young redis-servers count as restarting for max-TTL + drift: start them first.
        if wanted(*on_redis):
            redis = up(lambda: shapes.redis_nodes(tmp))
            redis_gw = up(lambda: shapes.gateway(tmp, redis.target, "--max-ttl", "11s"))
        if wanted(EMBEDDED):
            systems[EMBEDDED] = ("lockd", up(lambda: shapes.gateway(tmp)))
        if wanted(EMBEDDED_ALWAYS):
            systems[EMBEDDED_ALWAYS] = (
                "lockd",
                up(lambda: shapes.gateway(tmp, "", "--appendfsync", "always")),
            )
        if wanted(ENGINES):
            engines = up(lambda: shapes.engine_nodes(tmp))
            gw = up(lambda: shapes.gateway(tmp, engines.target))
            systems[ENGINES] = ("lockd", shapes.Served(gw.target, gw.pids + engines.pids))
        if wanted(REDIS):
            systems[REDIS] = ("lockd", shapes.Served(redis_gw.target, redis_gw.pids + redis.pids))
        if have["etcd"] and wanted(ETCD3):
            systems[ETCD3] = ("etcd", up(lambda: peer_servers.etcd_cluster(tmp, 3)))
        if have["etcd"] and wanted(ETCD1):
            systems[ETCD1] = ("etcd", up(lambda: peer_servers.etcd_cluster(tmp, 1)))
        if have["zookeeper"] and wanted(ZK):
            systems[ZK] = ("zookeeper", up(lambda: peer_servers.zookeeper_ensemble(tmp)))
        for name in on_redis[1:]:
            if wanted(name):
                systems[name] = (name.split(",")[0], redis)
        for kind, served in systems.values():
            if kind == "lockd":
                wait_grants(served.target)
        yield systems


def wait_grants(target: str, timeout: float = 60.0) -> None:
    """Until a lockd gateway grants (its nodes are past any restart delay)."""
    import asyncio

    from lockd_client import AsyncClient, LockError

    async def run() -> None:
        async with AsyncClient(target) as client:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    lease = await client.acquire("bench-ready", 1.0, 5.0, watchdog=False)
                    await lease.release()
                    return
                except LockError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

    asyncio.run(run())


def _ratio(raw: dict[str, Any], a: str, b: str, workload: str) -> str:
    try:
        return f"{raw[workload][a]['rate'] / raw[workload][b]['rate']:.2f}"
    except (KeyError, ZeroDivisionError):
        return "n/a"


def run_all(
    seconds: float = 4.0, only: tuple[str, ...] = (), holders: bool = True
) -> tuple[list[Row], dict[str, Any]]:
    """Every workload on every system (or those `only` names); table rows and raw figures."""
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, _systems(Path(tmp), only) as systems:
        for workload, clients in WORKLOADS:
            rows.append((f"-- {workload}, {clients} client(s): cycles/s, server CPU/cycle", "", ""))
            for name, (kind, served) in systems.items():
                if kind == "pottery" and workload != "sequential":
                    continue  # pottery polls: minutes of failed tries teach nothing new
                cpu0 = shapes.cpu_seconds(served.pids)
                result = peers.run_clients(kind, served.target, workload, clients, seconds)
                cpu = shapes.cpu_seconds(served.pids) - cpu0
                per = cpu / result.ok * 1000 if result.ok else float("nan")
                lat = sorted(result.lat_ns)
                p50 = lat[len(lat) // 2] / 1e6 if lat else float("nan")
                raw.setdefault(workload, {})[name] = {
                    "rate": result.rate,
                    "cpu_ms": per,
                    "failed": result.failed,
                    "p50_ms": p50,
                }
                rows.append(
                    (
                        f"  {name}",
                        f"{result.rate:,.0f}/s  {per:.2f} ms CPU  p50 {p50:.2f} ms"
                        f"  fail {result.failed}",
                        "",
                    )
                )
            for a, b, target in (
                (ENGINES, ETCD3, "≥ 1.5"),
                (ENGINES, ZK, "≥ 1.5"),
                (REDIS, ETCD3, "≥ 2"),
                (EMBEDDED, ETCD1, "≥ 1.6" if workload == "sequential" else ""),
                (EMBEDDED_ALWAYS, ETCD1, "≥ 1"),
                (ENGINES, "redlock-py, 5 redis", ""),
            ):
                if a in systems and b in systems:
                    rows.append((f"  {a} / {b}", _ratio(raw, a, b, workload), target))
            for peer in (ETCD3, ZK):
                if ENGINES not in systems or peer not in systems:
                    continue
                mine = raw[workload].get(ENGINES, {}).get("cpu_ms", float("nan"))
                theirs = raw[workload].get(peer, {}).get("cpu_ms", float("nan"))
                rows.append(
                    (f"  CPU/cycle {ENGINES} vs {peer}", f"{mine:.2f} vs {theirs:.2f} ms", "below")
                )
        if holders:
            rows.append(
                (f"-- {HOLDERS} holders, each keeping one lock alive for 8 s (TTL 5 s)", "", "")
            )
        for name, (kind, served) in systems.items() if holders else ():
            if kind not in ("lockd", "etcd", "zookeeper") or name == ETCD1:
                continue
            cpu0, t0 = shapes.cpu_seconds(served.pids), time.monotonic()
            out = peers.run_holders(kind, served.target, HOLDERS)
            cpu = shapes.cpu_seconds(served.pids) - cpu0
            share = 100 * cpu / (time.monotonic() - t0)
            raw.setdefault("holders", {})[name] = {**out, "cpu_pct": share}
            rows.append(
                (
                    f"  {name}",
                    f"acquired {out.get('acquired', 0)}, lost {out.get('lost', 0)}, "
                    f"releases failed {out.get('release failed', 0)}, server CPU {share:.0f} %",
                    "0 lost, 0 failed",
                )
            )
    return rows, raw


def shapes_vs_peers() -> list[Row]:
    """The table rows, for `make bench`."""
    return run_all()[0]


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--systems", default="", help="comma-separated name words")
    parser.add_argument("--holders", action="store_true", help="with --systems: hold too")
    args = parser.parse_args()
    only = tuple(w.strip() for w in args.systems.split(",") if w.strip())
    for name, value, target in run_all(args.seconds, only, not only or args.holders)[0]:
        print(f"{name:<58} {value:>48}  {target}", flush=True)


if __name__ == "__main__":
    main()
