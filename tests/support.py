"""Test helpers: free ports, real `lockd engine` / `redis-server` processes, and a gate
that holds an engine's fsyncs."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from lockd.durable import DiskFaults
from lockd.gateway.nodes import redis_settings_args

REPO = Path(__file__).resolve().parent.parent
LUA_LIBRARY = REPO / "lockd" / "engine" / "lua" / "lockd.lua"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0
) -> None:
    """Block until something accepts connections on `port` (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening:\n{out}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class EngineProcess:
    """A `lockd engine` subprocess on a free port; restartable on the same directory."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None) -> None:
        self.directory = directory
        self.extra = list(extra)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EngineProcess:
        """Start and wait until it listens."""
        cmd = [
            sys.executable,
            "-m",
            "lockd",
            "engine",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            *self.extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        return self

    def client(self, **kwargs: object) -> redis.Redis:
        """A redis-py client for this engine."""
        options: dict[str, object] = {"socket_timeout": 10, **kwargs}
        return redis.Redis(port=self.port, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: an unclean stop."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM: a clean stop; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def output(self) -> str:
        """Everything the process printed (after it exited)."""
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")

    def close(self) -> None:
        """Stop it if still running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def redis_server_binary() -> str | None:
    """Path of redis-server, or None when it is not installed."""
    return shutil.which("redis-server")


class RedisProcess:
    """A real redis-server on a free port with the settings lockd requires (appendonly,
    appendfsync always, noeviction); restartable on the same port and directory."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None) -> None:
        binary = redis_server_binary()
        assert binary is not None, "redis-server is not installed (make test installs it)"
        self.directory = directory
        self.port = free_port() if port is None else port
        self.cmd = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", *redis_settings_args(), *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, load_library: bool = True) -> RedisProcess:
        """Start and wait until it listens; load lockd's Lua library (no restart guard)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        if load_library:
            r = self.client()
            r.function_load(LUA_LIBRARY.read_text(), replace=True)
            r.close()
        return self

    def client(self) -> redis.Redis:
        """A redis-py client for this server."""
        return redis.Redis(port=self.port, socket_timeout=10)

    def kill(self, wipe: bool = False) -> None:
        """SIGKILL; with `wipe`, its data directory is emptied too (a node that lost it)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if wipe:
            shutil.rmtree(self.directory)

    def close(self) -> None:
        """Stop it if still running."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def redis_server(
    directory: Path, *extra: str, port: int | None = None, load_library: bool = True
) -> Iterator[int]:
    """A real redis-server on `port` (default: a free one) with lockd's Lua library
    loaded (unless not `load_library`); yields the port."""
    server = RedisProcess(directory, *extra, port=port)
    try:
        yield server.start(load_library).port
    finally:
        server.close()


class FsyncGate:
    """Holds the fsyncs of an engine's files (its `DiskFaults`) until `open()`: then each
    held one, and every later one, succeeds or fails with `fail_with`. Built on the disk
    fault injection (armed, so every sync consults it); other operations pass."""

    def __init__(self, faults: DiskFaults, fail_with: int | None = None) -> None:
        self.faults = faults
        self.fail_with = fail_with
        self.entered = threading.Event()
        """Set once an fsync is being held."""
        self.opened = threading.Event()
        self._real = faults.check
        faults.check = self._check  # type: ignore[method-assign]
        faults.errno = fail_with or errno.EIO  # armed: fsyncs come through _check

    def _check(self, operation: str) -> None:
        if operation != "fsync":
            return
        self.entered.set()
        if not self.opened.wait(30):
            raise AssertionError("the fsync gate was never opened")
        if self.fail_with is not None:
            raise OSError(self.fail_with, f"{os.strerror(self.fail_with)} (injected)")

    def open(self) -> None:
        """Let the held fsyncs (and later ones) through."""
        self.opened.set()

    def remove(self) -> None:
        """Disarm: the disk works again."""
        self.opened.set()
        self.faults.check = self._real  # type: ignore[method-assign]
        self.faults.heal()
