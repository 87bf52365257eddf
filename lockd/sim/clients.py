"""Simulated clients: each runs its sessions as a generator that yields what it waits for
(a core machine's outcome, a moment on its own clock, a store answer), and this module
is the event loop that drives the real `Acquire`, `Renew` and `Release` machines — the
simulator's counterpart of `lockd/gateway/driver.py`.

A client reads only its own clock (drifting, and stopped while it is paused), so its
idea of its lease can be wrong exactly as a real process's can.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Generator
from typing import Any, Protocol

from lockd.core import (
    Acquire,
    AcquireReply,
    Granted,
    NotGranted,
    Reason,
    Release,
    Renew,
    Renewed,
    Reply,
    Send,
    retry_delay_ns,
)
from lockd.sim.checks import Grant, History, fmt_ns
from lockd.sim.schedule import NODES, Session
from lockd.sim.world import MS, ClientClock, World

__all__ = ["Env", "SimClient", "Sleep", "StoreRead", "StoreWrite"]

Machine = Acquire | Renew | Release


@dataclasses.dataclass(frozen=True, slots=True)
class Sleep:
    """Wait until the client's clock reads `until` — or, if `name` is set, until told
    that a holder of lock `name` released it (as a gateway wakes its waiters)."""

    until: int
    name: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StoreRead:
    """A fenced read of lock `name`'s resource; answers (accepted, value)."""

    name: bytes
    lease: bytes
    token: int


@dataclasses.dataclass(frozen=True, slots=True)
class StoreWrite:
    """A fenced write of value `write_id` (based on the value read); answers accepted."""

    name: bytes
    lease: bytes
    token: int
    write_id: int
    based_on: int | None


Command = Machine | Sleep | StoreRead | StoreWrite
Process = Generator[Command, Any, None]
Subprocess = Generator[Command, Any, bool]


class Env(Protocol):
    """What a client needs from the simulation."""

    world: World
    history: History
    node_timeout_ns: int
    max_fence_rounds: int
    unsafe_single_phase_token: bool
    unsafe_no_drift: bool

    def send_node(self, client: int, seq: int, send: Send) -> None:
        """Put a machine's request on the network."""

    def send_store(self, client: int, seq: int, op: StoreRead | StoreWrite) -> None:
        """Put a store request on the network."""

    def write_id(self) -> int:
        """A fresh id for a store write."""

    def released(self, client: int, name: bytes) -> None:
        """Client `client` released its lease on `name`: wake who waits for it."""

    def client_idle(self) -> None:
        """The client finished its queued sessions."""

    def on_grant(self, grant: Grant) -> None:
        """A lease was granted (already in the history)."""


class SimClient:
    """One client process: a queue of sessions, run one at a time."""

    def __init__(self, index: int, env: Env, rng: random.Random, clock: ClientClock) -> None:
        self.index = index
        self.env = env
        self.rng = rng
        self.clock = clock
        self.retry_cap_ms = 100
        self.queue: collections.deque[Session] = collections.deque()
        self.holding: Grant | None = None
        self.paused_until = 0
        self._proc: Process | None = None
        self._machine: Machine | None = None
        self.seq = 0
        """Bumped at every wait: events carrying an older value are stale."""
        self._timer_at: int | None = None
        self._deferred: list[tuple[Any, Any]] = []
        self._attempt_tainted = False
        self._who = f"c{index}"
        self.waiting_for: bytes | None = None
        """The lock whose release would wake this client now."""
        self.waiting_since = 0
        """When (true time) the current session started waiting for it."""
        self._set_by: list[int] = []  # nodes that set the key for the attempt (traced)

    # -- sessions ------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No session running or queued."""
        return self._proc is None and not self.queue

    def enqueue(self, session: Session) -> None:
        """Queue a session; start it now if nothing else runs."""
        self.queue.append(session)
        if self._proc is None and not self.clock.paused:
            self._next_session()

    def cancel(self) -> None:
        """Drop the session under way and the queue; a held lease is abandoned (it
        expires with its TTL)."""
        self.queue.clear()
        if self._proc is not None:
            self._proc.close()
            self._proc = None
        self._machine = None
        self.holding = None
        self.seq += 1

    def _next_session(self) -> None:
        if not self.queue:
            self.env.client_idle()
            return
        self._proc = self._session(self.queue.popleft())
        self._advance(None)

    def _advance(self, value: Any) -> None:
        proc = self._proc
        assert proc is not None
        try:
            cmd = proc.send(value)
        except StopIteration:
            self._proc = None
            self.holding = None
            self._next_session()
            return
        self.seq += 1
        world = self.env.world
        self.waiting_for = None
        if isinstance(cmd, Sleep):
            self.waiting_for = cmd.name
            world.at(self.clock.true_at(cmd.until, world.now), self._on_wake, (self.seq, cmd.until))
        elif isinstance(cmd, StoreRead | StoreWrite):
            self.env.send_store(self.index, self.seq, cmd)
        else:
            self._machine = cmd
            self._timer_at = None
            self._set_by = []
            self._after(cmd.start(self.clock.now(world.now)))

    # -- driving a machine ---------------------------------------------------------------

    def _after(self, sends: list[Send]) -> None:
        machine = self._machine
        assert machine is not None
        for send in sends:
            self.env.send_node(self.index, self.seq, send)
        if machine.outcome is not None:
            self._machine = None
            self._advance(machine.outcome)
            return
        deadline = machine.next_deadline()
        if deadline is not None and deadline != self._timer_at:
            self._timer_at = deadline
            world = self.env.world
            world.at(self.clock.true_at(deadline, world.now), self._on_timer, (self.seq, deadline))

    def on_reply(self, arg: tuple[int, int, int, Reply]) -> None:
        """Node `node`'s answer arrived."""
        if self.clock.paused:
            self._deferred.append((self.on_reply, arg))
            return
        seq, node, tag, reply = arg
        machine = self._machine
        if seq != self.seq or machine is None:
            return
        if self.env.history.tracing and isinstance(reply, AcquireReply) and reply.acquired:
            self._set_by.append(node)
        self._after(machine.receive(tag, reply, self.clock.now(self.env.world.now)))

    def _on_timer(self, arg: tuple[int, int]) -> None:
        if self.clock.paused:
            self._deferred.append((self._on_timer, arg))
            return
        seq, deadline = arg
        machine = self._machine
        if seq != self.seq or machine is None or deadline != self._timer_at:
            return
        now = self.env.world.now
        if self.clock.now(now) < deadline:  # the clock stood still in a pause
            self.env.world.at(self.clock.true_at(deadline, now), self._on_timer, arg)
            return
        self._after(machine.tick(self.clock.now(now)))

    def _on_wake(self, arg: tuple[int, int]) -> None:
        if self.clock.paused:
            self._deferred.append((self._on_wake, arg))
            return
        seq, until = arg
        if seq != self.seq:
            return
        now = self.env.world.now
        if self.clock.now(now) < until:
            self.env.world.at(self.clock.true_at(until, now), self._on_wake, arg)
            return
        self._advance(None)

    def on_release_notice(self, seq: int) -> None:
        """The lock this client waits for was released: try now."""
        if self.clock.paused:
            self._deferred.append((self.on_release_notice, seq))
        elif seq == self.seq and self.waiting_for is not None:
            self._advance(None)

    def on_store_reply(self, arg: tuple[int, Any]) -> None:
        """The store answered."""
        if self.clock.paused:
            self._deferred.append((self.on_store_reply, arg))
            return
        seq, result = arg
        if seq == self.seq:
            self._advance(result)

    # -- pauses --------------------------------------------------------------------------

    def pause(self, until: int) -> None:
        """Stop running (and stop the clock) until true time `until`."""
        now = self.env.world.now
        if self.env.history.tracing:
            self.env.history.note(now, self._who, f"paused until {fmt_ns(until)}")
        self._attempt_tainted = True
        if self.holding is not None:
            self.holding.tainted = True
        if not self.clock.paused:
            self.clock.pause(now)
        self.paused_until = max(self.paused_until, until)
        self.env.world.at(until, self._resume_at, until)

    def _resume_at(self, until: int) -> None:
        if until >= self.paused_until:
            self.resume()

    def resume(self) -> None:
        """Run again; what arrived meanwhile is handled now, in order."""
        if not self.clock.paused:
            return
        now = self.env.world.now
        self.clock.resume(now)
        self.paused_until = now
        if self.env.history.tracing:
            self.env.history.note(now, self._who, "resumed; its clock lost the pause")
        deferred, self._deferred = self._deferred, []
        for handler, arg in deferred:
            handler(arg)
        if self._proc is None and self.queue:
            self._next_session()

    # -- one session ---------------------------------------------------------------------

    def _now(self) -> int:
        return self.clock.now(self.env.world.now)

    def _note(self, text: str) -> None:
        history = self.env.history
        if history.tracing:
            history.note(self.env.world.now, self._who, text)

    def _session(self, s: Session) -> Process:
        env = self.env
        world = env.world
        name = s.name.decode()
        give_up = self._now() + s.wait_ms * MS
        attempt = 0
        while True:
            lease = self.rng.getrandbits(128).to_bytes(16, "big")
            started = world.now
            self._attempt_tainted = False
            env.history.attempts += 1
            outcome = yield Acquire(
                s.name,
                s.ttl_ms,
                lease,
                NODES,
                env.node_timeout_ns,
                env.max_fence_rounds,
                unsafe_single_phase_token=env.unsafe_single_phase_token,
                unsafe_no_drift=env.unsafe_no_drift,
            )
            if isinstance(outcome, Granted):
                break
            assert isinstance(outcome, NotGranted)
            now = self._now()
            if now >= give_up:
                self._note(
                    f"acquire {name} ttl {s.ttl_ms}ms: {outcome.reason.value} "
                    f"({outcome.detail}); gives up"
                )
                return
            if outcome.reason is Reason.RESTARTING:
                delay = outcome.retry_after_ns + self.rng.randrange(MS, 5 * MS)
            else:
                delay = retry_delay_ns(self.rng, attempt, 10, self.retry_cap_ms)
            attempt += 1
            self._note(
                f"acquire {name} ttl {s.ttl_ms}ms: {outcome.reason.value} "
                f"({outcome.detail}); retries in {fmt_ns(delay)}"
            )
            held = outcome.reason is Reason.HELD
            if attempt == 1:
                self.waiting_since = world.now
            yield Sleep(min(now + delay, give_up), s.name if held else None)

        deadline = outcome.deadline_ns
        grant = Grant(
            s.name,
            self.index,
            lease,
            outcome.token,
            started,
            world.now,
            self.clock.true_at(deadline, world.now),
            self._attempt_tainted,
        )
        env.history.grants.append(grant)
        env.on_grant(grant)
        self.holding = grant
        nodes = ",".join(f"n{n}" for n in sorted(self._set_by))
        self._note(
            f"granted {name} token {outcome.token} lease {lease.hex()[:8]} by {nodes}, valid "
            f"{fmt_ns(outcome.validity_ns)} (until {fmt_ns(grant.end)} true time)"
        )
        hold_until = outcome.decided_ns + s.hold_ms * MS
        writes = [
            outcome.decided_ns + s.hold_ms * MS * (i + 1) // (s.writes + 1) for i in range(s.writes)
        ]
        renew_at = outcome.decided_ns + outcome.validity_ns // 3 if s.renew else None
        expired = False
        while True:
            now = self._now()
            if now >= deadline:
                expired = True
                self._note(f"lease on {name} (token {outcome.token}) expired by its clock")
                break
            due = min(hold_until, deadline, writes[0] if writes else hold_until)
            if renew_at is not None and renew_at < hold_until:
                due = min(due, renew_at)
            if due > now:
                yield Sleep(due)
                continue
            if renew_at is not None and renew_at <= now < hold_until:
                renewed = yield Renew(
                    s.name,
                    lease,
                    s.ttl_ms,
                    NODES,
                    env.node_timeout_ns,
                    unsafe_no_drift=env.unsafe_no_drift,
                )
                if isinstance(renewed, Renewed):
                    deadline = renewed.deadline_ns
                    grant.end = self.clock.true_at(deadline, world.now)
                    renew_at = renewed.decided_ns + renewed.validity_ns // 3
                    self._note(
                        f"renewed {name} token {outcome.token} until {fmt_ns(grant.end)} true time"
                    )
                    continue
                grant.end = min(grant.end, world.now)
                expired = True
                self._note(f"renewal of {name} token {outcome.token} failed: lease lost")
                break
            if writes and writes[0] <= now:
                writes.pop(0)
                ok = yield from self._read_write(s.name, lease, outcome.token, deadline)
                if not ok:
                    break
                continue
            break  # held for as long as it wanted
        if s.release and not expired:
            grant.end = min(grant.end, world.now)
            self._note(f"releases {name} token {outcome.token}")
            yield Release(s.name, lease, NODES, env.node_timeout_ns)
            env.released(self.index, s.name)
        elif not expired:
            self._note(f"walks away from {name} token {outcome.token} (lets it expire)")
        self.holding = None

    def _read_write(self, name: bytes, lease: bytes, token: int, deadline: int) -> Subprocess:
        """Read the resource, then write a new value based on it; each only while the
        lease is valid by this client's clock. Whether the write was accepted."""
        if self._now() >= deadline:
            return False
        accepted, value = yield StoreRead(name, lease, token)
        if not accepted:
            self._note(f"store refused read of {name.decode()} with token {token}: stale")
            return False
        if self._now() >= deadline:
            return False
        write_id = self.env.write_id()
        ok = yield StoreWrite(name, lease, token, write_id, value)
        history = self.env.history
        if ok:
            history.acked.append((self.env.world.now, name, write_id, self.index))
            self._note(
                f"store acknowledged write {write_id} on {name.decode()} "
                f"(token {token}, based on {value})"
            )
        else:
            self._note(
                f"store refused write {write_id} on {name.decode()} with token {token}: stale"
            )
        return bool(ok)
