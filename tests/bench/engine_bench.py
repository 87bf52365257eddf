"""Engine benchmarks (issue: engine node). Each returns rows for the summary table.

Every comparison runs its baseline side by side in the same run, since this machine is
shared and noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from lockd.engine import Engine, EngineConfig, FsyncPolicy
from tests.support import EngineProcess, redis_server

Row = tuple[str, str, str]

LEASE = b"0123456789abcdef"
TTL = b"30000"


def _rate(n: int, fn: Callable[[int], None], seconds: float = 2.0) -> float:
    """Operations per second of fn(i) over about `seconds` (best of 3 slices)."""
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        i = 0
        while True:
            for _ in range(n):
                fn(i)
                i += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        best = max(best, i / elapsed)
    return best


def in_process_pairs() -> list[Row]:
    """lockd_acquire + lockd_release pairs/s on one embedded engine."""
    rows = []
    keys = [b"lock:{%d}" % i for i in range(1024)]
    fences = [b"fence:{%d}" % i for i in range(1024)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, directory in (("in memory", None), ("AOF everysec", Path(tmp))):
            engine = Engine(EngineConfig(dir=directory))

            def pair(i: int, engine: Engine = engine) -> None:
                key = keys[i & 1023]
                engine.lock_acquire(key, fences[i & 1023], LEASE, TTL)
                engine.lock_release(key, LEASE)
                engine.commit()

            rate = _rate(10_000, pair)
            engine.close()
            rows.append((f"in-process acquire+release pairs/s ({label})", f"{rate:,.0f}", "≥ 200k"))
    return rows


def fence_durability() -> list[Row]:
    """Fence advances/s with appendfsync always vs no (the reservation should make them equal)."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in (FsyncPolicy.NO, FsyncPolicy.ALWAYS, FsyncPolicy.NO, FsyncPolicy.ALWAYS):
            engine = Engine(
                EngineConfig(dir=Path(tmp) / f"{policy}-{len(rates)}", appendfsync=policy)
            )

            def advance(i: int, engine: Engine = engine) -> None:
                engine.fence_advance(b"fence:{bench}", b"%d" % (i + 1))
                engine.commit()

            rate = _rate(5_000, advance)
            rates[policy] = max(rates.get(policy, 0.0), rate)
            engine.close()
    ratio = rates[FsyncPolicy.ALWAYS] / rates[FsyncPolicy.NO]
    return [
        ("fence advances/s, appendfsync no", f"{rates[FsyncPolicy.NO]:,.0f}", ""),
        ("fence advances/s, appendfsync always", f"{rates[FsyncPolicy.ALWAYS]:,.0f}", ""),
        ("  always / no", f"{ratio:.2f}", "≥ 0.95"),
    ]


def _resp_pairs(port: int, seconds: float = 2.0) -> float:
    r = redis.Redis(port=port)
    lease = LEASE

    def pair(i: int) -> None:
        key = f"lock:{{{i & 1023}}}"
        r.fcall("lockd_acquire", 2, key, f"fence:{{{i & 1023}}}", lease, TTL)
        r.fcall("lockd_release", 1, key, lease)

    rate = _rate(500, pair, seconds)
    r.close()
    return rate


def _redis_benchmark(port: int) -> dict[str, float]:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", "100000", "-q", "-P", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    found = re.findall(r"(SET|GET): ([\d.]+) requests per second", out.replace("\r", "\n"))
    return {name: float(rate) for name, rate in found}


def over_resp() -> list[Row]:
    """redis-py FCALL pairs/s and redis-benchmark, lockd engine vs redis-server, same run."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = EngineProcess(Path(tmp) / "engine").start()
        try:
            # Same durability as the engine's default: appendfsync everysec.
            with redis_server(Path(tmp), "--appendfsync", "everysec") as redis_port:
                lockd_rate = _resp_pairs(engine.port)
                redis_rate = _resp_pairs(redis_port)
                rows.append(
                    ("redis-py acquire+release pairs/s: lockd engine", f"{lockd_rate:,.0f}", "")
                )
                rows.append(
                    (
                        "redis-py acquire+release pairs/s: redis-server (Lua)",
                        f"{redis_rate:,.0f}",
                        "",
                    )
                )
                rows.append(("  lockd / redis", f"{lockd_rate / redis_rate:.2f}", ""))
                lockd_bench = _redis_benchmark(engine.port)
                redis_bench = _redis_benchmark(redis_port)
                for op in ("SET", "GET"):
                    rows.append(
                        (
                            f"redis-benchmark {op} req/s: lockd / redis",
                            f"{lockd_bench[op]:,.0f} / {redis_bench[op]:,.0f} = "
                            f"{lockd_bench[op] / redis_bench[op]:.2f}",
                            "",
                        )
                    )
        finally:
            engine.close()
    return rows


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_lock(count: int = 1_000_000) -> list[Row]:
    """Resident bytes per live lock key (key, 16-byte lease id, deadline), 1M keys."""
    engine = Engine(EngineConfig(max_ttl_ms=3_600_000))
    fence = b"fence:{x}"
    before = _rss_bytes()
    for i in range(count):  # key and lease bytes are created here, so they are counted
        engine.lock_acquire(b"lock:{orders/%d}" % i, fence, os.urandom(16), b"3600000")
    after = _rss_bytes()
    per_key = (after - before) / count
    estimate = engine.keyspace.used_memory / count
    return [
        (f"memory per live lock ({count:,} keys, RSS delta)", f"{per_key:,.0f} B", ""),
        ("  engine's own estimate (used_memory / keys)", f"{estimate:,.0f} B", ""),
    ]
