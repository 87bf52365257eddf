"""Kleppmann's pause scenario, end to end with real processes.

Client A (its own process) takes lock "resource" with a 1.5 s TTL and is frozen with
SIGSTOP past its TTL. Client B takes the lock (a larger token) and writes. A wakes up and
writes with its old token, believing it still holds the lock: the fenced store refuses it
naming B's token, A's lease reports lost, and the store keeps B's value.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from lockd_client import Client, StoreClient
from tests.client.helpers import CLEAN_ENV, HERE, LockdProcess

TTL = 1.5


class Lines:
    """The worker's stdout, line by line, read by a thread so waits can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put("")

    def event(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next JSON line (fails if the worker exits or stays silent)."""
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker silent for {timeout}s") from None
        assert line, f"worker exited ({self.proc.wait(10)}) without reporting"
        event: dict[str, Any] = json.loads(line)
        return event


def test_paused_holder_is_fenced_off(
    new_serve: Callable[..., LockdProcess], store: LockdProcess
) -> None:
    gateway = new_serve("--max-ttl", "10s")
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "pause_worker.py"), gateway.endpoint, store.endpoint, str(TTL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    stopped = False
    lines: Lines | None = None
    try:
        lines = Lines(worker)
        acquired = lines.event()
        assert acquired["event"] == "acquired"
        token_a = acquired["token"]

        # A is paused (a GC pause, a swapped-out VM) while it still believes it holds
        # the lock.
        os.kill(worker.pid, signal.SIGSTOP)
        stopped = True
        paused_at = time.monotonic()

        with Client([gateway.endpoint], timeout=10) as b, StoreClient(store.endpoint) as s:
            # B waits for A's lease to run out: nobody renews it while A is frozen.
            lease_b = b.acquire("resource", ttl=10, wait=15)
            granted_at = time.monotonic()
            assert lease_b.token > token_a
            # The lock moved only once A's lease was over, and A is still frozen.
            assert granted_at > paused_at
            assert granted_at >= acquired["deadline"]
            assert s.write("resource", "value", b"written by B", lease=lease_b) == lease_b.token

            # Keep A frozen until well past its TTL, then let it carry on.
            while time.monotonic() < acquired["deadline"] + TTL:
                time.sleep(0.05)
            os.kill(worker.pid, signal.SIGCONT)
            stopped = False
            assert worker.stdin is not None
            worker.stdin.write("write\n")
            worker.stdin.flush()
            wrote = lines.event()

            assert wrote["event"] == "wrote"
            assert wrote["resumed"] > acquired["deadline"]  # A slept through its deadline
            assert wrote["write"] == "refused", wrote
            assert wrote["error"] == "StaleToken"
            assert wrote["reason"] == "STALE_TOKEN"
            assert wrote["highest_token"] == lease_b.token  # names the token that beat A
            assert str(lease_b.token) in wrote["message"]
            assert wrote["lost"] is True
            assert wrote["held"] is False
            assert wrote["on_lost_calls"] == 1

            # B's write stands.
            result = s.read("resource", "value")
            assert (result.value, result.highest_token) == (b"written by B", lease_b.token)
            assert lease_b.held
            lease_b.check()
            lease_b.release()
        assert worker.wait(30) == 0
    finally:
        if stopped:
            os.kill(worker.pid, signal.SIGCONT)
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        if lines is not None:
            lines.thread.join(10)  # it reads until the worker's stdout ends
        for stream in (worker.stdin, worker.stdout):
            if stream is not None:
                stream.close()
