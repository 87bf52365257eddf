"""Engine benchmarks (issue: engine node). Each returns rows for the summary table.

    .venv/bin/python -m tests.bench.engine_bench [BENCH ...]   (default: all of them)

Every comparison runs its baseline side by side in the same run, since this machine is
shared and noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import redis

from lockd.durable import write_all
from lockd.engine import Engine, EngineConfig, FsyncPolicy
from lockd.engine.persistence import AppendOnlyFile, record
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


class _PlainCommits(AppendOnlyFile):
    """The AOF without frames: queued records written as they are (the version 1 commit,
    no CRC, no frame header), the baseline of `checksum_cost`."""

    def commit(self) -> bool:
        pending = self._pending
        if not pending:
            return True
        payload = b"".join(pending)
        pending.clear()
        self._pending_durable = False
        self.size += len(payload)
        write_all(self._fd, payload, self.faults)
        return True


def _cpu_us(fn: Callable[[int], None], n: int = 20_000) -> float:
    """CPU microseconds per fn(i) (`time.process_time`, so other processes on this shared
    machine count less): one slice of `n` calls."""
    start = time.process_time()
    for i in range(n):
        fn(i)
    return (time.process_time() - start) / n * 1e6


def checksum_cost(slices: int = 7) -> list[Row]:
    """What the checksummed frames (issue 12) cost per commit: the AOF's framed commit of
    two records vs the same records written plain, and in-process acquire+release pairs
    with one commit each on each kind of file; best of `slices`, framed and plain
    alternating so the machine's noise hits both alike."""
    two = [
        record(b"SET", b"lock:{orders/12345}", LEASE, b"PEXPIREAT", b"1764550000000"),
        record(b"SET", b"fence:{orders/12345}", b"1031"),
    ]
    size = sum(len(r) for r in two)
    keys = [b"lock:{%d}" % i for i in range(1024)]
    fences = [b"fence:{%d}" % i for i in range(1024)]
    commit_us: dict[str, list[float]] = {"framed": [], "plain": []}
    pair_rate: dict[str, list[float]] = {"framed": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "framed": AppendOnlyFile(Path(tmp) / "framed.aof", FsyncPolicy.EVERYSEC),
            "plain": _PlainCommits(Path(tmp) / "plain.aof", FsyncPolicy.EVERYSEC),
        }
        engines = {}
        for kind, aof in files.items():
            aof.open()
            engine = Engine(EngineConfig(dir=Path(tmp) / kind))
            assert engine.aof is not None
            engine.aof.close()
            pairs_aof = type(aof)(Path(tmp) / f"{kind}-pairs.aof", FsyncPolicy.EVERYSEC)
            pairs_aof.open()
            engine.aof = pairs_aof
            engines[kind] = engine
        for _ in range(slices):
            for kind, aof in files.items():

                def commit(i: int, aof: AppendOnlyFile = aof) -> None:
                    aof.append(two[0], False)
                    aof.append(two[1], False)
                    aof.commit()

                def pair(i: int, engine: Engine = engines[kind]) -> None:
                    key = keys[i & 1023]
                    engine.lock_acquire(key, fences[i & 1023], LEASE, TTL)
                    engine.lock_release(key, LEASE)
                    engine.commit()

                commit_us[kind].append(_cpu_us(commit))
                pair_rate[kind].append(1e6 / _cpu_us(pair))
        for aof in files.values():
            aof.close()
        for engine in engines.values():
            engine.close()
    payload = b"".join(two)

    def crc(i: int) -> None:
        zlib.crc32(payload)

    def empty(i: int) -> None:
        pass

    crc_ns = 1000 * (
        min(_cpu_us(crc, 200_000) for _ in range(slices))
        - min(_cpu_us(empty, 200_000) for _ in range(slices))
    )
    framed, plain = min(commit_us["framed"]), min(commit_us["plain"])
    framed_rate, plain_rate = max(pair_rate["framed"]), max(pair_rate["plain"])
    return [
        (f"AOF commit of two records ({size} B), CPU: framed", f"{framed:.2f} µs", ""),
        ("  plain write (no frame, no CRC)", f"{plain:.2f} µs", ""),
        ("  framing cost per commit", f"{framed - plain:.2f} µs", ""),
        (f"zlib CRC32 of {size} B, CPU (call overhead subtracted)", f"{crc_ns:.0f} ns", ""),
        ("in-process pairs/s, one commit each, CPU: framed", f"{framed_rate:,.0f}", ""),
        ("  plain", f"{plain_rate:,.0f}", ""),
        ("  framed / plain", f"{framed_rate / plain_rate:.2f}", ""),
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


BENCHES: dict[str, Callable[[], list[Row]]] = {
    "pairs": in_process_pairs,
    "fence": fence_durability,
    "checksum": checksum_cost,
    "resp": over_resp,
    "memory": memory_per_lock,
}


def main() -> None:
    """Run the named engine benchmarks (all by default) and print their rows."""
    import sys

    names = sys.argv[1:] or list(BENCHES)
    for name in names:
        for row, value, target in BENCHES[name]():
            print(f"{row:<58} {value:>28}  {target}", flush=True)


if __name__ == "__main__":
    main()
