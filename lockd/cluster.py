"""`lockd cluster`: the production shape on one machine, for trying it out. Five
`lockd engine` processes (each its own data directory and port) and a gateway in this
process pointed at them over RESP. The engines die with this process (PR_SET_PDEATHSIG)
and are stopped cleanly (SIGTERM) when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from lockd.engine import FsyncPolicy
from lockd.gateway import Gateway, GatewayConfig
from lockd.serving import run_until_signal

__all__ = ["ClusterConfig", "run"]

log = logging.getLogger("lockd.cluster")

# Each engine starts through this: die with the parent, then run `lockd engine`.
_CHILD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv.pop(1)): sys.exit(70)\n"
    "from lockd.cli import main\n"
    "main(prog_name='lockd')\n"
)
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """What `lockd cluster` starts."""

    data_dir: Path = Path("./var/cluster")
    listen: str = "127.0.0.1:7400"
    first_engine_port: int = 7381
    """Engines listen on this port and the next ones, on 127.0.0.1."""
    engines: int = 5
    appendfsync: FsyncPolicy = FsyncPolicy.EVERYSEC
    max_ttl_ms: int = 60_000


class _Engines:
    """The engine processes: started and waited for, stopped with SIGTERM."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.ports = [config.first_engine_port + i for i in range(config.engines)]
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        c = self.config
        for i, port in enumerate(self.ports):
            directory = c.data_dir / f"engine-{i}"
            directory.mkdir(parents=True, exist_ok=True)
            log_file = (c.data_dir / f"engine-{i}.log").open("ab")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD, str(os.getpid()),
                "engine", "--port", str(port), "--dir", str(directory),
                "--appendfsync", c.appendfsync.value, "--max-ttl", f"{c.max_ttl_ms}ms",
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            )  # fmt: skip
            log_file.close()
            self.procs.append(proc)
        await asyncio.gather(*(self._wait_listening(p, port) for p, port in self._pairs()))
        log.info("engines up on 127.0.0.1 ports %s (logs in %s)", self.ports, c.data_dir)

    def _pairs(self) -> list[tuple[asyncio.subprocess.Process, int]]:
        return list(zip(self.procs, self.ports, strict=True))

    async def _wait_listening(self, proc: asyncio.subprocess.Process, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"the engine on port {port} exited with {proc.returncode}; see "
                    f"{self.config.data_dir}/engine-{self.ports.index(port)}.log"
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            if loop.time() > deadline:
                raise TimeoutError(f"the engine on port {port} did not start listening")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def run(config: ClusterConfig) -> None:
    """Start the engines and a gateway over them; stop both on SIGTERM or SIGINT."""
    engines = _Engines(config)
    gateway: Gateway | None = None

    async def start() -> None:
        nonlocal gateway
        try:
            await engines.start()
            gateway = Gateway(
                GatewayConfig(
                    listen=config.listen,
                    nodes=tuple(f"redis://127.0.0.1:{port}" for port in engines.ports),
                    max_ttl_ms=config.max_ttl_ms,
                )
            )
            await gateway.start()
        except BaseException:
            await engines.stop()
            raise

    async def stop() -> None:
        if gateway is not None:
            await gateway.stop()
        await engines.stop()

    await run_until_signal(start, stop, "lockd cluster")
