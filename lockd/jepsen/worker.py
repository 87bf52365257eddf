"""A client worker process: `python -m lockd.jepsen.worker --index I ...`.

`--workload fenced-counter` (default) loops the fenced-counter cycle its `Workload`
generator dictates: acquire, claim (write its token to the resource so the read below is
fenced), read the counter, think, write value+1 with the token, release.
`--workload election` loops a candidate's life: campaign (the client library keeps the
leadership with its watchdog), write to the store with the term at once and after each
think while it still believes it leads, resign. `--observer` instead follows the
election's leaders (`observe`), recording each change.

Every invocation and completion is one JSON line on stdout, timed with
`time.monotonic_ns()`. After an `info` the process id is retired and the worker goes on
as process id + concurrency (the lease, if any, is released first). It stops after its
time or cycle limit, or when the harness writes `stop` (or closes stdin), at the end of
the current cycle. Running as its own process is the point: the nemesis pauses it with
SIGSTOP while it believes it holds a lock or leads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from lockd.jepsen.client import Completion, ElectionClient, FencedCounterClient
from lockd.jepsen.generator import Workload
from lockd_client import LockError

__all__ = ["ELECTION_WRITES", "main"]

ELECTION_WRITES = 5
"""Writes a leader makes per term (the first at once, each later one after a think)."""


class Worker:
    """The loop; `emit` writes events."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.process = args.index
        gateways = args.gateways.split(",")
        self.client: FencedCounterClient | ElectionClient = (
            ElectionClient(gateways, args.store, timeout_s=args.timeout)
            if args.workload == "election"
            else FencedCounterClient(gateways, args.store, timeout_s=args.timeout)
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
        if self.args.observer:
            await self.observe()
        elif isinstance(self.client, ElectionClient):
            await self.lead(self.client)
        else:
            await self.count(self.client)

    async def lead(self, client: ElectionClient) -> None:
        """Campaign; while leading, write the term now and after each think; resign."""
        plan = self.workload.next()
        await asyncio.sleep(plan.idle_s)
        key, me = plan.key, f"w{self.args.index}"
        ask = {"value": me, "ttl_s": self.args.ttl, "wait_s": plan.wait_s}
        got = await self.op("campaign", key, ask)
        if got.type != "ok":
            if got.type == "fail":
                await asyncio.sleep(0.01)
            return
        term = got.value["term"]
        try:
            for seq in range(ELECTION_WRITES):
                if seq:
                    leader = client.leader
                    if leader is None or not leader.held:
                        return  # it knows it was deposed: no write
                    await asyncio.sleep(plan.think_s)  # where a pause makes a late write
                value = f"{me} term {term} #{seq}"
                wrote = await self.op("elect-write", key, {"term": term, "value": value})
                if wrote.type != "ok":
                    return
        finally:
            if client.leader is not None:
                await self.op("resign", key, {"term": term})

    async def observe(self) -> None:
        """Follow the leaders of the first key until stopped; one `observe` per change."""
        assert isinstance(self.client, ElectionClient)
        key = self.args.keys.split(",")[0]
        changes = self.client.client.election(key).observe()
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            while True:
                change = asyncio.ensure_future(anext(changes))
                await asyncio.wait({change, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not change.done():
                    change.cancel()
                    return
                leader = change.result()
                now = time.monotonic_ns()
                value = {"term": leader.term, "value": leader.value.decode(errors="replace")}
                self.emit("invoke", "observe", key, None, now)
                self.emit("ok", "observe", key, value, now)
        except LockError:
            await asyncio.sleep(0.1)  # its gateways are down: follow again
        finally:
            stopping.cancel()
            await asyncio.gather(changes.aclose(), return_exceptions=True)

    async def count(self, client: FencedCounterClient) -> None:
        """One fenced-counter cycle."""
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
            if client.lease is not None:
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
    p.add_argument("--workload", choices=["fenced-counter", "election"], default="fenced-counter")
    p.add_argument("--observer", action="store_true", help="election: follow the leaders")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(Worker(args).run())
    return 130


if __name__ == "__main__":
    sys.exit(main())
