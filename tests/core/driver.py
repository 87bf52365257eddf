"""A test driver for the sans-I/O machines: delivers replies and ticks, keeps a log of
what the machine must take into account, and checks the driving contract at every step.

The contract (lockd/core/machines.py): a reply counts only while its request is live,
i.e. sent in the current round, not yet answered, not yet timed out by `tick`, and
before the outcome. Once the outcome is set it never changes, nothing more is sent and
`next_deadline()` is None. A NotGranted or RenewFailed outcome comes with ReleaseCall
sends (tag -1) of the machine's lease to every node; other outcomes send nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lockd.core import (
    Acquire,
    Call,
    NodeReply,
    NotGranted,
    Release,
    ReleaseCall,
    Renew,
    RenewFailed,
    Send,
    lock_key,
)

MS = 1_000_000

Machine = Acquire | Renew | Release


@dataclasses.dataclass(frozen=True)
class Counted:
    """A reply the machine had to take into account; `reply` None means timed out."""

    now: int
    send: Send
    reply: NodeReply | None


class Driver:
    """Drives one machine by hand, recording every step and checking the contract."""

    def __init__(self, machine: Machine, name: bytes = b"res") -> None:
        self.machine = machine
        self.name = name
        self.now = 0
        self.started = False
        self.live: dict[int, Send] = {}
        self.sent: dict[int, Send] = {}
        self.rounds: list[list[Send]] = []
        self.counted: list[Counted] = []
        self.releases: list[Send] = []
        self.decided_step: int | None = None
        self.steps = 0

    # -- driving -------------------------------------------------------------------------

    def start(self, now: int = 0) -> list[Send]:
        """`machine.start(now)`."""
        assert not self.started
        self.started = True
        self.now = now
        sends = self.machine.start(now)
        return self._after(sends)

    def deliver(self, tag: int, reply: NodeReply, now: int | None = None) -> list[Send]:
        """Feed `reply` to request `tag` (stale or not) at `now` (default: unchanged)."""
        self._advance(now)
        before = self.machine.outcome
        send = self.live.pop(tag, None)
        if send is not None and before is None:
            self.counted.append(Counted(self.now, send, reply))
        sends = self.machine.receive(tag, reply, self.now)
        return self._after(sends, before)

    def reply(self, node: int, reply: NodeReply, now: int | None = None) -> list[Send]:
        """Answer the latest request sent to `node`."""
        return self.deliver(self.latest(node).tag, reply, now)

    def replies(self, replies: Sequence[NodeReply | None], now: int | None = None) -> list[Send]:
        """Answer the latest request of every node, in node order; None: no answer."""
        sends: list[Send] = []
        for node, reply in enumerate(replies):
            if reply is not None:
                sends += self.reply(node, reply, now)
        return sends

    def tick(self, now: int | None = None) -> list[Send]:
        """`machine.tick(now)`, by default at `machine.next_deadline()`."""
        if now is None:
            deadline = self.machine.next_deadline()
            assert deadline is not None, "tick with nothing outstanding"
            now = max(deadline, self.now)
        self._advance(now)
        before = self.machine.outcome
        if before is None:
            for tag, send in sorted(self.live.items()):
                if send.deadline_ns <= self.now:
                    del self.live[tag]
                    self.counted.append(Counted(self.now, send, None))
        sends = self.machine.tick(self.now)
        return self._after(sends, before)

    # -- looking -------------------------------------------------------------------------

    def latest(self, node: int) -> Send:
        """The request most recently sent to `node`."""
        for send in reversed(self.rounds[-1] if self.rounds else []):
            if send.node == node:
                return send
        raise AssertionError(f"nothing sent to node {node}")

    @property
    def round(self) -> list[Send]:
        """The current round's sends."""
        return self.rounds[-1]

    def calls(self) -> list[Call]:
        """The current round's calls, in node order."""
        return [send.call for send in self.round]

    # -- the contract --------------------------------------------------------------------

    def _advance(self, now: int | None) -> None:
        if now is not None:
            assert now >= self.now, "time runs forward"
            self.now = now

    def _after(self, sends: list[Send], before: object = None) -> list[Send]:
        self.steps += 1
        m = self.machine
        outcome = m.outcome
        nodes = m.nodes
        if before is not None:
            assert outcome is before, f"outcome changed from {before} to {outcome}"
            assert sends == [], f"sends after the outcome: {sends}"
        elif outcome is not None:
            self.decided_step = self.steps
            self.live.clear()
            if isinstance(outcome, NotGranted | RenewFailed):
                lease = m.lease
                assert [s.node for s in sends] == list(range(nodes)), sends
                for s in sends:
                    assert s.tag == -1, s
                    assert s.call == ReleaseCall(lock_key(self.name), lease), s
                self.releases = list(sends)
            else:
                assert sends == [], f"{outcome} came with sends {sends}"
        elif sends:
            assert [s.node for s in sends] == list(range(nodes)), sends
            tags = [s.tag for s in sends]
            assert all(t >= 0 and t not in self.sent for t in tags), tags
            assert len(set(tags)) == nodes
            assert all(s.deadline_ns == self.now + m.node_timeout_ns for s in sends)
            self.live = {s.tag: s for s in sends}
            self.sent.update(self.live)
            self.rounds.append(list(sends))
        if outcome is not None:
            assert m.next_deadline() is None, "a deadline after the outcome"
        else:
            assert self.live, "undecided with nothing outstanding: it would hang"
            assert m.next_deadline() == min(s.deadline_ns for s in self.live.values())
        return sends
