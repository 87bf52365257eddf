"""A client worker process: `python -m lockd.jepsen.worker --index I ...`.

Loops the fenced-counter cycle its `Workload` generator dictates: acquire, claim (write
its token to the resource so the read below is fenced), read the counter, think, write
value+1 with the token, release. Every invocation and completion is one JSON line on
stdout, timed with `time.monotonic_ns()`. After an `info` the process id is retired and
the worker goes on as process id + concurrency (the lease, if any, is released first).
It stops after its time or cycle limit, or when the harness writes `stop` (or closes
stdin), at the end of the current cycle. Running as its own process is the point: the
nemesis pauses it with SIGSTOP while it believes it holds a lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from lockd.jepsen.client import Completion, FencedCounterClient
from lockd.jepsen.generator import Workload

__all__ = ["main"]


class Worker:
    """The loop; `emit` writes events."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.process = args.index
        self.client = FencedCounterClient(
            args.gateways.split(","), args.store, timeout_s=args.timeout
        )
        self.workload = Workload(
            args.seed, args.index, args.keys.split(","), ttl_s=args.ttl, think_max_s=args.think_max
        )
        self.stopping = asyncio.Event()

    def emit(
        self, kind: str, f: str, key: str, value: Any, t: int, error: str | None = None
    ) -> None:
        event: dict[str, Any] = {"type": kind, "process": self.process, "f": f, "key": key}
        event["value"] = value
        event["time"] = t
        if error is not None:
            event["error"] = error
        event["worker"] = self.args.index
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    async def op(self, f: str, key: str, value: Any) -> Completion:
        """Invoke, complete, record both; retire the process id after an info."""
        self.emit("invoke", f, key, value, time.monotonic_ns())
        done = await self.client.invoke(f, key, value)
        self.emit(done.type, f, key, done.value, done.time, done.error)
        if done.type == "info":
            self.process += self.args.concurrency
        return done

    async def cycle(self) -> None:
        plan = self.workload.next()
        await asyncio.sleep(plan.idle_s)
        key = plan.key
        got = await self.op("acquire", key, {"ttl_s": self.args.ttl, "wait_s": plan.wait_s})
        if got.type != "ok":
            if got.type == "fail":
                await asyncio.sleep(0.01)  # refused at once (held, no quorum): a short breath
            return
        token = got.value["token"]
        try:
            if not self.args.unfenced_read:
                claim = await self.op("claim", key, {"token": token})
                if claim.type != "ok":
                    return
            read = await self.op("read", key, None)
            if read.type != "ok":
                return
            await asyncio.sleep(plan.think_s)  # inside the lock: where a pause hurts
            current = read.value["value"] or 0
            await self.op("write", key, {"value": current + 1, "token": token})
        finally:
            if self.client.lease is not None:
                await self.op("release", key, {"token": token})

    async def run(self) -> int:
        await self.client.open()
        stdin = asyncio.create_task(self._watch_stdin())
        deadline = time.monotonic() + self.args.time_limit
        try:
            for _ in range(self.args.max_cycles):
                if self.stopping.is_set() or time.monotonic() >= deadline:
                    break
                await self.cycle()
        finally:
            stdin.cancel()
            await self.client.close()
        return 0

    async def _watch_stdin(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line or line.strip() == b"stop":
                self.stopping.set()
                return


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the worker loop."""
    p = argparse.ArgumentParser(prog="python -m lockd.jepsen.worker", description=__doc__)
    p.add_argument("--index", type=int, required=True, help="worker index (first process id)")
    p.add_argument("--concurrency", type=int, required=True, help="number of workers")
    p.add_argument("--gateways", required=True, help="comma-separated gateway host:port")
    p.add_argument("--store", required=True, help="store host:port")
    p.add_argument("--keys", default="lock-0", help="comma-separated lock names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ttl", type=float, default=1.0, help="lease TTL, seconds")
    p.add_argument("--think-max", type=float, default=0.2, help="longest think, seconds")
    p.add_argument("--timeout", type=float, default=2.0, help="client call timeout, seconds")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds to run at most")
    p.add_argument("--max-cycles", type=int, default=1_000_000)
    p.add_argument("--unfenced-read", action="store_true", help="skip the claim (unsafe)")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(Worker(args).run())
    return 130


if __name__ == "__main__":
    sys.exit(main())
