"""The cluster under test, as real processes on loopback, and everything that stops them.

Five `lockd engine`s (or, with `engine="redis"`, five real redis-servers with the
settings lockd requires, each with its wall clock behind the LD_PRELOAD shim
`clockshim.c` when it could be built), each behind one fault-proxy `Link` per gateway; one or two
`lockd serve` gateways whose `--nodes` are their links; one `lockd store`; client worker
processes (`python -m lockd.jepsen.worker`). Every child runs in its own process group,
is told by the kernel to die with the harness (PR_SET_PDEATHSIG, so even a SIGKILLed
harness leaves nothing behind), and `Cluster.stop()` stops all of them: SIGCONT for the
paused, SIGTERM, then SIGKILL to the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lockd.jepsen.history import Event
from lockd.jepsen.proxy import Link

__all__ = ["Cluster", "ClusterConfig", "Service", "WorkerProcess", "build_clock_shim", "free_port"]

log = logging.getLogger("lockd.jepsen")

# Every child starts through this: ask the kernel for SIGKILL when the harness dies, check
# the harness did not die already, then run the module named by the first argument.
_CHILD = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(os.environ['LOCKD_JEPSEN_HARNESS']): sys.exit(70)\n"
    "sys.argv.pop(0)\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)
# The same for a program (redis-server): the death signal survives exec. LD_PRELOAD is
# set for the program only, from LOCKD_JEPSEN_PRELOAD.
_PROGRAM = _CHILD.replace(
    "sys.argv.pop(0)\nrunpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n",
    "env = dict(os.environ)\n"
    "if env.get('LOCKD_JEPSEN_PRELOAD'): env['LD_PRELOAD'] = env['LOCKD_JEPSEN_PRELOAD']\n"
    "os.execve(sys.argv[1], sys.argv[1:], env)\n",
)
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, alive: Callable[[], bool], timeout: float = 20.0) -> None:
    """Return once something accepts connections on `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the process meant to listen on port {port} exited")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")


def build_clock_shim(directory: Path) -> tuple[Path | None, str]:
    """Compile `clockshim.c` into `directory` with the system's C compiler: (the shared
    object, "") or (None, why it could not be built)."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None, "no C compiler (cc, gcc or clang) to build the wall-clock shim"
    source = Path(__file__).with_name("clockshim.c")
    target = directory / "clockshim.so"
    directory.mkdir(parents=True, exist_ok=True)
    built = directory / f".clockshim-{os.getpid()}.so"
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(source), "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return None, f"building the wall-clock shim failed: {done.stderr.strip()[:300]}"
    built.replace(target)  # atomically: a running redis-server keeps the file it mapped
    return target, ""


class Service:
    """One child process: started, killed, restarted, stopped; output to a log file.
    `module` is a Python module run with `args`, or, with `program`, the executable."""

    def __init__(
        self,
        name: str,
        module: str,
        args: list[str],
        log_path: Path,
        port: int = 0,
        *,
        program: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.name = name
        self.module = module
        self.args = args
        self.log_path = log_path
        self.port = port
        self.program = program
        self.env = dict(env or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.paused = False
        self.starts = 0
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        """Started and not yet exited."""
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int:
        """The process id (the group id too)."""
        assert self.proc is not None
        return self.proc.pid

    async def _spawn(self, **pipes: Any) -> None:
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.write(
            f"--- start {self.starts + 1}: {self.module} {' '.join(self.args)}\n".encode()
        )
        self._log.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_")}
        env["PYTHONUNBUFFERED"] = "1"  # the children's flags are exactly those given here
        env["LOCKD_JEPSEN_HARNESS"] = str(os.getpid())
        env["LOCKD_JEPSEN_RUN"] = str(self.log_path.parent.parent)  # marks the run's processes
        env.update(self.env)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PROGRAM if self.program else _CHILD,
            self.module,
            *self.args,
            stderr=self._log,
            start_new_session=True,
            env=env,
            **pipes,
        )
        self.starts += 1
        self.paused = False

    async def start(self) -> None:
        """Start and wait until it listens on its port (if it has one)."""
        if self._log is None:
            self._log = self.log_path.open("ab")
        await self._spawn(stdout=self._log, stdin=asyncio.subprocess.DEVNULL)
        if self.port:
            await wait_for_port(self.port, lambda: self.running)

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the process group (nothing if it is not running)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    async def kill(self) -> None:
        """SIGKILL (an unclean stop, or a power cut in --hold-aof-until-fsync mode)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT."""
        self.signal(signal.SIGCONT)
        self.paused = False

    async def stop(self, graceful: bool = True) -> None:
        """SIGCONT, SIGTERM (when `graceful`), then SIGKILL to the group after a timeout."""
        if self.proc is None:
            return
        if self.running:
            self.resume()
            if graceful:
                self.signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers in the group, if any
        if self.proc.returncode is None:
            await self.proc.wait()

    def close_log(self) -> None:
        """Close the log file (after the process is stopped for good)."""
        if self._log is not None:
            self._log.close()
            self._log = None


class WorkerProcess(Service):
    """A client worker: its stdout is a stream of history events (JSON lines)."""

    def __init__(self, index: int, args: list[str], log_path: Path, sink: Callable[[Event], None]):
        super().__init__(f"worker-{index}", "lockd.jepsen.worker", args, log_path)
        self.index = index
        self.sink = sink
        self.last: Event | None = None
        self.holding: str | None = None  # lock key held, as the events say
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._spawn(stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        while line := await stream.readline():
            try:
                event = Event.from_json(json.loads(line))
            except (ValueError, TypeError) as exc:
                log.warning("%s: bad event line %r (%s)", self.name, line[:200], exc)
                continue
            self.last = event
            if event.f in ("acquire", "campaign") and event.type == "ok":
                self.holding = event.key
            elif event.f in ("release", "resign") and event.type == "invoke":
                self.holding = None
            self.sink(event)

    @property
    def thinking(self) -> bool:
        """Holding a lock between its read and its write (leading, between two writes):
        the moment a pause hurts most."""
        last = self.last
        return (
            self.holding is not None
            and last is not None
            and last.f in ("read", "elect-write")
            and last.type == "ok"
        )

    def tell_stop(self) -> None:
        """Ask the worker to finish its cycle and exit."""
        if self.running and self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.proc.stdin.write(b"stop\n")

    async def finish(self, timeout: float) -> None:
        """Wait for it to exit on its own, then stop it; read its last events."""
        if self.proc is None:
            return
        self.resume()
        self.tell_stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout)
        await self.stop(graceful=False)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 2.0)
            self._reader.cancel()


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Shape and settings of the cluster under test."""

    directory: Path
    nodes: int = 5
    gateways: int = 2
    max_ttl_ms: int = 2000
    node_timeout_ms: int = 200
    unsafe_store: bool = False
    unsafe_wall_clock: bool = False
    power_loss: bool = False
    """Engines run with `--appendfsync no --hold-aof-until-fsync`: SIGKILL is a power cut."""
    disk_faults: bool = False
    """Engines accept LOCKD.DISK (and, without power loss, run `--appendfsync always`, so
    every acknowledged write had to reach the disk)."""
    seed: int = 0
    engine: str = "lockd"
    """`lockd` (`lockd engine` processes) or `redis` (real redis-servers)."""
    clock_shim: Path | None = None
    """With `redis`: the built `clockshim.so` to preload (None: clocks left alone)."""


class Cluster:
    """Engines, links, gateways and the store; `start()`, `stop()`."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        c = config
        self.logs = c.directory / "logs"
        self.engines: list[Service] = []
        self.clock_offsets_ms = [0.0] * c.nodes
        for n in range(c.nodes):
            port = free_port()
            if c.engine == "redis":
                self.engines.append(self._redis(n, port))
                continue
            args = [
                "engine",
                "--port",
                str(port),
                "--dir",
                str(self.node_dir(n)),
                "--max-ttl",
                f"{c.max_ttl_ms}ms",
                "--enable-clock-control",
            ]
            if c.unsafe_wall_clock:
                args.append("--unsafe-wall-clock")
            if c.power_loss:
                args += ["--appendfsync", "no", "--hold-aof-until-fsync"]
            if c.disk_faults:
                args.append("--enable-disk-faults")
                if not c.power_loss:
                    args += ["--appendfsync", "always"]
            self.engines.append(
                Service(f"engine-{n}", "lockd", args, self.logs / f"engine-{n}.log", port)
            )
        self.links: dict[tuple[int, int], Link] = {
            (g, n): Link(f"g{g}-n{n}", "127.0.0.1", self.engines[n].port, c.seed)
            for g in range(c.gateways)
            for n in range(c.nodes)
        }
        self.gateways: list[Service] = []
        self.store_port = free_port()
        store_args = [
            "store",
            "--listen",
            f"127.0.0.1:{self.store_port}",
            "--dir",
            str(self.store_dir),
        ]
        if c.unsafe_store:
            store_args.append("--unsafe-no-token-check")
        self.store = Service("store", "lockd", store_args, self.logs / "store.log", self.store_port)
        self.workers: list[WorkerProcess] = []

    def node_dir(self, node: int) -> Path:
        """Node `node`'s data directory."""
        return self.config.directory / "data" / f"engine-{node}"

    def clock_file(self, node: int) -> Path:
        """The file whose first 8 bytes are redis-server `node`'s wall-clock offset (ns)."""
        return self.config.directory / "data" / f"clock-{node}"

    def _redis(self, n: int, port: int) -> Service:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("--engine redis needs redis-server on PATH")
        from lockd.gateway.nodes import redis_settings_args

        args = [
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.node_dir(n)),
            "--save", "", "--daemonize", "no", "--logfile", "", *redis_settings_args(),
        ]  # fmt: skip
        env = {}
        if self.config.clock_shim is not None:
            env = {
                "LOCKD_JEPSEN_PRELOAD": str(self.config.clock_shim),
                "LOCKD_CLOCK_FILE": str(self.clock_file(n)),
            }
        log_path = self.logs / f"redis-{n}.log"
        return Service(f"redis-{n}", binary, args, log_path, port, program=True, env=env)

    def set_clock_offset(self, node: int, offset_ms: float) -> None:
        """Set redis-server `node`'s wall-clock offset (through the shim's file)."""
        self.clock_offsets_ms[node] = offset_ms
        fd = os.open(self.clock_file(node), os.O_WRONLY)
        try:
            os.pwrite(fd, struct.pack("<q", round(offset_ms * 1e6)), 0)
        finally:
            os.close(fd)

    @property
    def store_dir(self) -> Path:
        """The store's data directory (its log is read by the checkers)."""
        return self.config.directory / "data" / "store"

    @property
    def store_endpoint(self) -> str:
        """host:port of the store."""
        return f"127.0.0.1:{self.store_port}"

    @property
    def gateway_endpoints(self) -> list[str]:
        """host:port of every gateway."""
        return [f"127.0.0.1:{g.port}" for g in self.gateways]

    def services(self) -> list[Service]:
        """Every process, workers first (stopped in this order)."""
        return [*self.workers, *self.gateways, self.store, *self.engines]

    async def start(self) -> None:
        """Start engines, links, store and gateways; returns when all listen."""
        self.logs.mkdir(parents=True, exist_ok=True)
        c = self.config
        if c.engine == "redis":
            for n in range(c.nodes):
                self.node_dir(n).mkdir(parents=True, exist_ok=True)
                self.clock_file(n).write_bytes(bytes(8))
        started = time.monotonic()
        await asyncio.gather(*(e.start() for e in self.engines), self.store.start())
        for link in self.links.values():
            await link.start()
        for g in range(c.gateways):
            port = free_port()
            nodes = ",".join(f"redis://127.0.0.1:{self.links[(g, n)].port}" for n in range(c.nodes))
            args = [
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--nodes",
                nodes,
                "--max-ttl",
                f"{c.max_ttl_ms}ms",
                "--node-timeout",
                f"{c.node_timeout_ms}ms",
                "--shutdown-grace",
                "1s",
            ]
            self.gateways.append(
                Service(f"gateway-{g}", "lockd", args, self.logs / f"gateway-{g}.log", port)
            )
        await asyncio.gather(*(g.start() for g in self.gateways))
        if c.engine == "redis":
            # Brand-new redis-servers refuse grants for the restart delay, counted in whole
            # seconds of uptime (lockd.lua's guard): start the clients after it.
            from lockd.core.quorum import restart_delay_ms

            ready = started + math.ceil(restart_delay_ms(c.max_ttl_ms) / 1000) + 0.2
            await asyncio.sleep(max(0.0, ready - time.monotonic()))

    async def start_worker(
        self, index: int, args: list[str], sink: Callable[[Event], None]
    ) -> WorkerProcess:
        """Start client worker `index` (its events go to `sink`)."""
        worker = WorkerProcess(index, args, self.logs / f"worker-{index}.log", sink)
        self.workers.append(worker)
        await worker.start()
        return worker

    async def stop(self) -> None:
        """Stop every process this cluster started, and the links. Never raises."""
        for worker in self.workers:
            worker.resume()
        results = await asyncio.gather(
            *(s.stop(graceful=not isinstance(s, WorkerProcess)) for s in self.services()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("stopping a process failed: %r", result)
        for link in self.links.values():
            with contextlib.suppress(Exception):
                await link.close()
        for service in self.services():
            service.close_log()

    def pids(self) -> list[int]:
        """Process ids of every running child."""
        return [s.pid for s in self.services() if s.running]
