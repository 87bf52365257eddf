"""Gateway benchmarks: lockd vs Redlock peers on five local redis-servers, same run.

Workloads (each client is its own process, so no client shares a GIL):
- sequential: 1 client, acquire+release cycles on distinct locks;
- concurrent: 16 clients, distinct locks;
- contended: 8 clients on one lock: successful handoffs/s, failed attempts/s, and handoff
  latency (a release returning → the next holder's acquire returning).
lockd runs as a real `lockd serve` process on its embedded default (five engines, durable
fencing). Its clients use the client library (`lockd_client.AsyncClient`, whose hot path
is one `Session` stream per client).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from tests.support import free_port, redis_server, wait_for_port

Row = tuple[str, str, str]
TTL_MS = 10_000
DURATION_S = 4.0


# -- one client process per system ------------------------------------------------------


def _lockd_worker(
    target: str, names: list[str], seconds: float, wait_ms: int, work_s: float
) -> dict[str, Any]:
    """A lockd client: the client library (Session stream), no watchdog (short holds)."""
    from lockd_client import AsyncClient, LockError

    async def run() -> dict[str, Any]:
        client = AsyncClient(target)
        out: dict[str, Any] = {"ok": 0, "failed": 0, "lat": [], "grants": [], "releases": []}
        stop = time.monotonic() + seconds
        for name in itertools.cycle(names):
            if time.monotonic() >= stop:
                break
            t0 = time.monotonic_ns()
            try:
                lease = await client.acquire(name, TTL_MS / 1000, wait_ms / 1000, watchdog=False)
            except LockError:
                out["failed"] += 1
                continue
            out["grants"].append(time.monotonic_ns())
            if work_s:
                await asyncio.sleep(work_s)
            await lease.release()
            out["releases"].append(time.monotonic_ns())
            out["lat"].append(time.monotonic_ns() - t0)
            out["ok"] += 1
        await client.close()
        return out

    return asyncio.run(run())


def _peer_worker(
    kind: str, ports: list[int], names: list[str], seconds: float, blocking: bool, work_s: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": 0, "failed": 0, "lat": [], "grants": [], "releases": []}
    clients = [redis.Redis(port=p, protocol=2) for p in ports]
    stop = time.monotonic() + seconds
    if kind == "redlock-py":
        from redlock import Redlock as RedlockPy

        # One try per call: our loop polls every 1 ms (its default 200 ms would be unfairly
        # slow) and counts every failed try.
        dlm = RedlockPy(
            [{"port": p, "protocol": 2} for p in ports], retry_count=1, retry_delay=0.001
        )

        def acquire(name: str) -> Any:
            return dlm.lock(name, TTL_MS) or None

        def release(name: str, handle: Any) -> None:
            dlm.unlock(handle)
    elif kind == "pottery":
        from pottery import Redlock as Pottery

        locks = {
            n: Pottery(key=n, masters=set(clients), auto_release_time=TTL_MS / 1000) for n in names
        }

        def acquire(name: str) -> Any:
            return locks[name] if locks[name].acquire(blocking=False) else None

        def release(name: str, handle: Any) -> None:
            handle.release()
    else:  # redis-py's Lock on one node

        def acquire(name: str) -> Any:
            lock = clients[0].lock(name, timeout=TTL_MS / 1000, sleep=0.001)
            return lock if lock.acquire(blocking=False) else None

        def release(name: str, handle: Any) -> None:
            handle.release()

    for name in itertools.cycle(names):
        if time.monotonic() >= stop:
            break
        t0 = time.monotonic_ns()
        handle = acquire(name)
        while handle is None:
            out["failed"] += 1
            if not blocking or time.monotonic() >= stop:
                break
            time.sleep(0.001)
            handle = acquire(name)
        if handle is None:
            continue
        out["grants"].append(time.monotonic_ns())
        if work_s:
            time.sleep(work_s)
        release(name, handle)
        out["releases"].append(time.monotonic_ns())
        out["lat"].append(time.monotonic_ns() - t0)
        out["ok"] += 1
    return out


# -- workloads ---------------------------------------------------------------------------


def _run(clients: int, target: Any, *args: Any) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(clients) as pool:
        return pool.starmap(target, [a for a in args])


def _pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6


def _handoffs(results: list[dict[str, Any]]) -> list[int]:
    events = sorted(
        [(t, "g") for r in results for t in r["grants"]]
        + [(t, "r") for r in results for t in r["releases"]]
    )
    gaps = []
    last_release = None
    for t, kind in events:
        if kind == "r":
            last_release = t
        elif last_release is not None:
            gaps.append(t - last_release)
            last_release = None
    return gaps


def _systems(lockd_target: str, ports: list[int]) -> dict[str, tuple[Any, Any]]:
    """name -> (worker function, extra args factory(names, seconds, blocking, work))."""
    return {
        "lockd": (
            _lockd_worker,
            lambda names, secs, blocking, work: (
                lockd_target,
                names,
                secs,
                30_000 if blocking else 0,
                work,
            ),
        ),
        "redlock-py": (
            _peer_worker,
            lambda names, secs, blocking, work: ("redlock-py", ports, names, secs, blocking, work),
        ),
        "pottery": (
            _peer_worker,
            lambda names, secs, blocking, work: ("pottery", ports, names, secs, blocking, work),
        ),
        "redis-py Lock (1 node)": (
            _peer_worker,
            lambda names, secs, blocking, work: ("redis-py", ports, names, secs, blocking, work),
        ),
    }


def _lockd_failed_attempts(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    return sum(
        float(v)
        for v in re.findall(
            r'^lockd_attempt_failures_total\{reason="\w+"\} ([\d.e+]+)$', text, re.M
        )
    )


def run_all(seconds: float = DURATION_S) -> tuple[list[Row], dict[str, Any]]:
    """Every workload on every system; rows for the table and raw numbers for the docs."""
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        ports = [
            stack.enter_context(redis_server(Path(tmp) / f"r{i}", "--appendfsync", "everysec"))
            for i in range(5)
        ]
        port, mport = free_port(), free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lockd",
                "--log-level",
                "warning",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(Path(tmp) / "lockd"),
                "--metrics-listen",
                f"127.0.0.1:{mport}",
            ]
        )
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)
        wait_for_port(port, proc)
        systems = _systems(f"127.0.0.1:{port}", ports)
        for workload, clients, blocking, work in (
            ("sequential", 1, False, 0.0),
            ("concurrent x16", 16, False, 0.0),
            ("contended x8", 8, True, 0.0),
        ):
            rows.append((f"-- {workload}", "", ""))
            for system, (fn, make_args) in systems.items():
                before = _lockd_failed_attempts(mport) if system == "lockd" else 0.0
                args = []
                for c in range(clients):
                    if workload.startswith("contended"):
                        names = ["bench-contended-" + system]
                    else:
                        names = [f"bench-{uuid.uuid4().hex[:8]}-{c}-{i}" for i in range(64)]
                    args.append(make_args(names, seconds, blocking, work))
                results = _run(clients, fn, *args)
                ok = sum(r["ok"] for r in results)
                failed = sum(r["failed"] for r in results)
                if system == "lockd":
                    failed += int(_lockd_failed_attempts(mport) - before)
                lat = [x for r in results for x in r["lat"]]
                entry: dict[str, Any] = {
                    "ok_per_s": ok / seconds,
                    "failed_per_s": failed / seconds,
                    "p50_ms": _pct(lat, 0.5),
                    "p99_ms": _pct(lat, 0.99),
                }
                if workload.startswith("contended"):
                    gaps = _handoffs(results)
                    entry["handoff_p50_ms"] = _pct(gaps, 0.5)
                    entry["handoff_p99_ms"] = _pct(gaps, 0.99)
                raw.setdefault(workload, {})[system] = entry
                detail = (
                    f"{entry['ok_per_s']:,.0f}/s fail {entry['failed_per_s']:,.0f}/s "
                    f"p50 {entry['p50_ms']:.2f} p99 {entry['p99_ms']:.2f} ms"
                )
                if "handoff_p50_ms" in entry:
                    detail += f" handoff p50 {entry['handoff_p50_ms']:.2f} ms"
                rows.append((f"{system}", detail, ""))
            base = raw[workload]["redlock-py"]["ok_per_s"]
            target = {"sequential": "≥ 1.5", "concurrent x16": "≥ 3", "contended x8": "≥ 10"}[
                workload
            ]
            ratio = raw[workload]["lockd"]["ok_per_s"] / base if base else float("inf")
            rows.append(("  lockd / redlock-py", f"{ratio:.2f}", target))
    return rows, raw


def gateway_vs_peers() -> list[Row]:
    """The table rows (for `make bench`); also draws docs/bench-gateway.svg."""
    from tests.bench.plot import gateway_svg

    rows, raw = run_all()
    gateway_svg(raw, Path(__file__).resolve().parents[2] / "docs" / "bench-gateway.svg")
    return rows


if __name__ == "__main__":
    for name, value, target in gateway_vs_peers():
        print(f"{name:<30} {value:>70}  {target}")
