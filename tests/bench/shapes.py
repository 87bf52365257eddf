"""The deployment shapes the benchmarks run, as context managers over real processes.

- `embedded_gateway`: `lockd serve` on its default (five engines in the process);
- `engine_nodes`: five `lockd engine` processes; `redis_nodes`: five real redis-servers
  (appendonly yes, appendfsync always, noeviction: the settings the gateway demands);
- `gateway`: a `lockd serve --nodes ...` process over either.
Every process is its own OS process, so `psutil`-free CPU accounting can read
/proc/PID/stat for each of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support import EngineProcess, free_port, redis_server, wait_for_port

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes and their reaped children."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (1-based); after ")" they start at 11.
        total += sum(int(x) for x in fields[11:15]) / _TICKS
    return total


@dataclasses.dataclass(frozen=True)
class Served:
    """A running system: where clients connect, and the server processes to meter."""

    target: str
    pids: tuple[int, ...]
    metrics_port: int = 0


@contextlib.contextmanager
def engine_nodes(tmp: Path, n: int = 5, max_ttl: str = "60s") -> Iterator[Served]:
    """`n` `lockd engine` processes (appendfsync everysec, their default)."""
    procs = [EngineProcess(tmp / f"engine-{i}", "--max-ttl", max_ttl) for i in range(n)]
    try:
        for proc in procs:
            proc.start()
        pids = tuple(p.proc.pid for p in procs if p.proc is not None)
        urls = ",".join(f"redis://127.0.0.1:{p.port}" for p in procs)
        yield Served(urls, pids)
    finally:
        for proc in procs:
            proc.close()


@contextlib.contextmanager
def redis_nodes(tmp: Path, n: int = 5) -> Iterator[Served]:
    """`n` real redis-servers with the settings lockd's gateway requires."""
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(redis_server(tmp / f"redis-{i}")) for i in range(n)]
        yield Served(",".join(f"redis://127.0.0.1:{p}" for p in ports), _pids_on(ports))


def _pids_on(ports: Sequence[int]) -> tuple[int, ...]:
    """Pids of the processes listening on these loopback ports (from /proc/net/tcp)."""
    inodes: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        port = int(parts[1].split(":")[1], 16)
        if parts[3] == "0A" and port in ports:  # LISTEN
            inodes[parts[9]] = port
    found: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    found[inodes[link[8:-1]]] = int(pid)
    return tuple(found[p] for p in ports if p in found)


@contextlib.contextmanager
def gateway(
    tmp: Path, nodes: str = "", *extra: str, source: Path | None = None
) -> Iterator[Served]:
    """A `lockd serve` process: over `nodes` (comma-separated URLs) or embedded; the code
    of the checkout at `source` when given (another commit, for side-by-side runs)."""
    port, mport = free_port(), free_port()
    cmd = [sys.executable, "-m", "lockd", "--log-level", "warning", "serve",
           "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{mport}",
           "--data-dir", str(tmp / f"gateway-{port}"), *extra]  # fmt: skip
    if nodes:
        cmd += ["--nodes", nodes]
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), str(source / "clients" / "python")])
    proc = subprocess.Popen(cmd, env=env)
    try:
        wait_for_port(port, proc, timeout=30)
        yield Served(f"127.0.0.1:{port}", (proc.pid,), mport)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
