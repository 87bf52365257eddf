"""Drive a sans-I/O core machine against real nodes with asyncio.

Synchronous (embedded) nodes are answered inline; RESP nodes get one task per request.
Fire-and-forget sends (releases after a failed attempt), and the lock table's attempts
and probes over RESP nodes, run in the background and are tracked so they are neither
garbage-collected nor lost at shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from lockd.core import NodeFailure, Reply, Send
from lockd.core.machines import Acquire, Outcome, Release, Renew
from lockd.gateway.nodes import Node

__all__ = ["Driver"]

Machine = Acquire | Renew | Release


class Driver:
    """Runs machines against a fixed list of nodes."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self._background: set[asyncio.Task[None]] = set()
        self._synchronous = [n for n in self.nodes if n.synchronous]
        self.synchronous = len(self._synchronous) == len(self.nodes)
        """True when every node answers inline (embedded engines): `run_now` works."""

    def run_now(self, machine: Machine) -> Outcome:
        """Run `machine` to its outcome without yielding (every node synchronous)."""
        assert self.synchronous
        pending = collections.deque(machine.start(time.monotonic_ns()))
        while pending:
            send = pending.popleft()
            reply = self.nodes[send.node].call_now(send.call)
            if send.tag >= 0:
                pending.extend(machine.receive(send.tag, reply, time.monotonic_ns()))
        self._commit()
        assert machine.outcome is not None
        return machine.outcome

    def _commit(self) -> None:
        # One commit (write, and fsync under `always`) per node per machine, not per call.
        for node in self._synchronous:
            node.commit()

    async def run(self, machine: Machine) -> Outcome:
        """Start `machine`, deliver every reply and timeout, return its outcome."""
        if self.synchronous:
            return self.run_now(machine)
        replies: asyncio.Queue[tuple[int, Reply]] = asyncio.Queue()
        pending: collections.deque[Send] = collections.deque(machine.start(time.monotonic_ns()))
        while True:
            while pending:
                send = pending.popleft()
                node = self.nodes[send.node]
                if send.tag < 0:
                    self._fire_and_forget(node, send)
                elif node.synchronous:
                    reply = node.call_now(send.call)
                    pending.extend(machine.receive(send.tag, reply, time.monotonic_ns()))
                else:
                    self._track(asyncio.create_task(self._call(node, send, replies)))
            if machine.outcome is not None:
                self._commit()
                return machine.outcome
            deadline = machine.next_deadline()
            assert deadline is not None, "a machine without outcome must be waiting"
            timeout = max(0.0, (deadline - time.monotonic_ns()) / 1e9)
            try:
                tag, reply = await asyncio.wait_for(replies.get(), timeout)
            except TimeoutError:
                pending.extend(machine.tick(time.monotonic_ns()))
            else:
                pending.extend(machine.receive(tag, reply, time.monotonic_ns()))

    @staticmethod
    async def _call(node: Node, send: Send, replies: asyncio.Queue[tuple[int, Reply]]) -> None:
        timeout = max(0.0, (send.deadline_ns - time.monotonic_ns()) / 1e9)
        try:
            reply = await asyncio.wait_for(node.call(send.call), timeout)
        except TimeoutError:
            reply = NodeFailure("timed out")
        replies.put_nowait((send.tag, reply))

    def _fire_and_forget(self, node: Node, send: Send) -> None:
        if node.synchronous:
            node.call_now(send.call)  # committed with the machine's outcome
            return
        self._track(asyncio.create_task(self._call(node, send, asyncio.Queue())))

    def run_in_background(self, machine: Machine) -> None:
        """Run `machine` without waiting for it (releases nobody waits for)."""

        async def run() -> None:
            await self.run(machine)

        self._track(asyncio.create_task(run()))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task that `drain` waits for."""
        self._track(asyncio.create_task(work))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for requests still in flight, and what they start (at shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
