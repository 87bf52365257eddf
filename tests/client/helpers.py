"""Helpers for the client tests: `lockd serve` / `lockd store` processes, the CLI,
in-process gateways, and polling with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lockd.gateway import Gateway, GatewayConfig
from tests.support import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# Subprocesses must not pick up the developer's LOCKD_* settings.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_")}


def lockd_cmd(*args: str) -> list[str]:
    """argv of `lockd ARGS...` run with this interpreter."""
    return [sys.executable, "-m", "lockd", *args]


def cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run `lockd ARGS...` to completion; stdout/stderr captured as text."""
    return subprocess.run(
        lockd_cmd(*args),
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, **(env or {})},
        timeout=timeout,
        check=False,
    )


def wait_serving(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """Block until the gRPC server on `port` reports SERVING on the standard health
    service (or fail, with the process's fate, after `timeout`)."""
    wait_for_port(port, None if proc is None else proc, timeout)
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not SERVING after {timeout}s")
            time.sleep(0.05)


class LockdProcess:
    """A long-running `lockd ...` subprocess serving gRPC on `port`; its output goes to a
    log file (a pipe nobody reads could fill up and stall it)."""

    def __init__(self, args: Sequence[str], port: int, log: Path) -> None:
        self.args = list(args)
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """host:port for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> LockdProcess:
        """Start it and wait until it is SERVING."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                lockd_cmd(*self.args), stdout=out, stderr=subprocess.STDOUT, env=CLEAN_ENV
            )
        try:
            wait_serving(self.port, self.proc, timeout)
        except BaseException as exc:
            self.close()
            raise RuntimeError(f"{self.args[0]} did not start:\n{self.output()}") from exc
        return self

    def kill(self) -> None:
        """SIGKILL: an unclean stop (embedded engines die with it)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(15)

    def terminate(self) -> int:
        """SIGTERM: a graceful stop; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def output(self) -> str:
        """What it logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        """Kill it if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)


def serve_process(data_dir: Path, *extra: str) -> LockdProcess:
    """`lockd serve` on a free port with five embedded engines under `data_dir` (not
    started)."""
    port = free_port()
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *extra]
    return LockdProcess(args, port, data_dir.parent / f"{data_dir.name}.log")


def store_process(directory: Path) -> LockdProcess:
    """`lockd store` on a free port storing under `directory` (not started)."""
    port = free_port()
    args = ["store", "--listen", f"127.0.0.1:{port}", "--dir", str(directory)]
    return LockdProcess(args, port, directory.parent / f"{directory.name}.log")


@contextlib.asynccontextmanager
async def gateway(config: GatewayConfig) -> AsyncIterator[Gateway]:
    """An in-process gateway in this event loop on a free port, stopped at the end."""
    gw = Gateway(dataclasses.replace(config, listen="127.0.0.1:0"))
    try:
        await gw.start()
    except BaseException:
        await gw.manager.close()
        raise
    try:
        yield gw
    finally:
        await gw.stop(grace=0.5)


def dead_endpoint() -> str:
    """An address nothing listens on."""
    return f"127.0.0.1:{free_port()}"


def eventually(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        time.sleep(interval)


async def aeventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """`eventually` for coroutine checks."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(interval)


def drift(ttl: float) -> float:
    """The drift allowance the gateway subtracts from a TTL (1% plus 2 ms), seconds."""
    return ttl * 0.01 + 0.002
