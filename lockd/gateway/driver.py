"""Drive a sans-I/O core machine against real nodes with asyncio.

Synchronous (embedded) nodes are answered inline. Under `appendfsync always` embedded
engines group-commit (`lockd.engine.group`): the machine is fed in rounds, each round's
calls made inline, then one batch awaited that fsyncs every engine in parallel for all
concurrent machines, and only then the answers counted (an engine whose fsync failed
answers with its MISCONF failure). RESP nodes get each request through
`Node.send`, whose callback feeds the reply to the machine as it arrives (from the
connection's `data_received`), so a call costs no task and no timer of its own.
Fire-and-forget sends (releases after a failed attempt) are queued on the connections,
which finish them before closing; background machines are tracked tasks.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from lockd.core import NodeReply, Send
from lockd.core.machines import Acquire, Outcome, Release, Renew
from lockd.gateway.nodes import EmbeddedNode, Node
from lockd.gateway.resp_client import Request

__all__ = ["Driver"]

Machine = Acquire | Renew | Release


class Driver:
    """Runs machines against a fixed list of nodes."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self._background: set[asyncio.Task[None]] = set()
        self._synchronous = [n for n in self.nodes if n.synchronous]
        self._groups = {n.group for n in self.nodes if isinstance(n, EmbeddedNode) and n.group}
        self._grouped = [
            n if isinstance(n, EmbeddedNode) and n.group is not None else None for n in self.nodes
        ]
        if self._groups and (len(self._groups) > 1 or len(self._synchronous) < len(self.nodes)):
            # `_run_grouped` counts no answer before its batch; other paths would.
            raise ValueError("group-committed engines must be all the nodes, in one group")
        self.synchronous = len(self._synchronous) == len(self.nodes) and not self._groups
        """True when every node answers inline and durably (embedded engines, not under
        `always`): `run_now` works."""

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
        """Start `machine`, deliver every reply and failure, return its outcome.

        Requests go out through `Node.send` with a callback each: no task and no
        `wait_for` per call. The nodes' transport times a request out from when it is
        written, so the machine's own deadlines are not polled here; when the outcome is
        known, requests not written yet are cancelled."""
        if self.synchronous:
            return self.run_now(machine)
        if self._groups:
            return await self._run_grouped(machine)
        run = _Run(self.nodes, machine, asyncio.get_running_loop().create_future())
        run.begin()
        if machine.outcome is None:
            try:
                await run.done
            finally:
                run.cancel_pending()
        self._commit()
        assert machine.outcome is not None
        return machine.outcome

    async def _run_grouped(self, machine: Machine) -> Outcome:
        """Run `machine` on embedded engines that group-commit: a round of inline calls,
        then the batch that makes them durable, then their answers."""
        (group,) = self._groups
        sends = machine.start(time.monotonic_ns())
        while sends:
            answers: list[tuple[int, int, NodeReply]] = []
            for send in sends:
                reply = self.nodes[send.node].call_now(send.call)
                if send.tag >= 0:
                    answers.append((send.node, send.tag, reply))
            durable = await group.durable()
            sends = []
            for index, tag, reply in answers:
                node = self._grouped[index]
                counted = reply if node is None else node.settled(reply, durable)
                sends.extend(machine.receive(tag, counted, time.monotonic_ns()))
        assert machine.outcome is not None
        return machine.outcome

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


def _discard(reply: NodeReply) -> None:
    """The reply callback of a fire-and-forget send."""


class _Run:
    """One machine driven against nodes whose replies arrive through callbacks.

    Replies that arrive while the machine is being fed (a node that fails at once, an
    embedded node in a mixed set) are queued and fed in order, never re-entrantly."""

    __slots__ = ("_busy", "_inbox", "done", "machine", "nodes", "requests")

    def __init__(self, nodes: list[Node], machine: Machine, done: asyncio.Future[None]) -> None:
        self.nodes = nodes
        self.machine = machine
        self.done = done
        self.requests: list[Request] = []
        self._inbox: collections.deque[tuple[int, NodeReply]] = collections.deque()
        self._busy = False

    def begin(self) -> None:
        """Send the machine's first requests."""
        self._busy = True
        try:
            self._dispatch(self.machine.start(time.monotonic_ns()))
        finally:
            self._busy = False
        self._drain()

    def deliver(self, tag: int, reply: NodeReply) -> None:
        """A node answered request `tag` (or failed it)."""
        if self.machine.outcome is not None:
            return
        self._inbox.append((tag, reply))
        if not self._busy:
            self._drain()

    def _drain(self) -> None:
        machine = self.machine
        self._busy = True
        try:
            while self._inbox and machine.outcome is None:
                tag, reply = self._inbox.popleft()
                self._dispatch(machine.receive(tag, reply, time.monotonic_ns()))
        finally:
            self._busy = False
        if machine.outcome is not None:
            self.cancel_pending()
            if not self.done.done():
                self.done.set_result(None)

    def _dispatch(self, sends: list[Send]) -> None:
        now = time.monotonic_ns()
        for send in sends:
            node = self.nodes[send.node]
            if node.synchronous:
                reply = node.call_now(send.call)  # committed with the machine's outcome
                if send.tag >= 0:
                    self._inbox.append((send.tag, reply))
                continue
            timeout_s = max(send.deadline_ns - now, 0) / 1e9
            if send.tag < 0:
                node.send(send.call, timeout_s, _discard)
                continue
            request = node.send(send.call, timeout_s, functools.partial(self.deliver, send.tag))
            if request is not None:
                self.requests.append(request)

    def cancel_pending(self) -> None:
        """The outcome is known (or nobody waits for it): drop requests not yet written."""
        for request in self.requests:
            request.cancel()
        self.requests.clear()
