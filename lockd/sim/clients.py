"""Simulated clients: each runs its sessions as a generator that yields what it waits for
(its gateway's answer, a moment on its host's clock, a store answer). Acquisitions,
renewals and releases go to the client's gateway (`sim/gateway.py`), which waits,
retries and runs the core machines exactly as the real gateway does.

A client reads only its host's clock (drifting, and stopped while the host is paused),
so its idea of its lease can be wrong exactly as a real process's can.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Generator
from typing import Any, Protocol

from lockd.core import Granted, Meta, Renewed, encode_meta
from lockd.core.records import encode_value, supersedes
from lockd.sim.checks import Grant, History, Read, fmt_ns
from lockd.sim.gateway import SimGateway
from lockd.sim.schedule import Job, Observe
from lockd.sim.world import MS, World

__all__ = [
    "AcquireCall",
    "ClientEnv",
    "LeaderCall",
    "ReleaseCall",
    "RenewCall",
    "SimClient",
    "Sleep",
    "StoreRead",
    "StoreWrite",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Sleep:
    """Wait until the host's clock reads `until`."""

    until: int


@dataclasses.dataclass(frozen=True, slots=True)
class AcquireCall:
    """Ask the gateway for `name`; answers (Granted, Grant) or the gateway's refusal."""

    name: bytes
    ttl_ms: int
    wait_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class RenewCall:
    """Ask the gateway to renew (writing owner record `meta` on each node that extends,
    if given: a leader record); answers Renewed or RenewFailed."""

    name: bytes
    lease: bytes
    ttl_ms: int
    meta: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LeaderCall:
    """Ask the gateway who leads election lock `name`; answers a Leader or None."""

    name: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseCall:
    """Ask the gateway to release; answers Released."""

    name: bytes
    lease: bytes


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


Command = AcquireCall | RenewCall | ReleaseCall | LeaderCall | Sleep | StoreRead | StoreWrite
Process = Generator[Command, Any, None]
Subprocess = Generator[Command, Any, bool]


class ClientEnv(Protocol):
    """What a client needs from the simulation."""

    world: World
    history: History

    def send_store(self, client: int, seq: int, op: StoreRead | StoreWrite) -> None:
        """Put a store request on the network."""

    def write_id(self) -> int:
        """A fresh id for a store write."""

    def client_idle(self) -> None:
        """The client finished its queued sessions."""


class SimClient:
    """One client process on a gateway host: a queue of sessions, run one at a time."""

    def __init__(self, index: int, env: ClientEnv, gateway: SimGateway) -> None:
        self.index = index
        self.env = env
        self.gateway = gateway
        gateway.clients[index] = self
        self.queue: collections.deque[Job | Observe] = collections.deque()
        self.holding: Grant | None = None
        self._proc: Process | None = None
        self.seq = 0
        """Bumped at every wait: answers carrying an older value are stale."""
        self._who = f"c{index}"

    # -- sessions ------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No session running or queued."""
        return self._proc is None and not self.queue

    def enqueue(self, session: Job | Observe) -> None:
        """Queue a session; start it now if nothing else runs."""
        self.queue.append(session)
        if self._proc is None and not self.gateway.clock.paused:
            self._next_session()

    def cancel(self) -> None:
        """Drop the session under way and the queue; a held lease is abandoned (it
        expires with its TTL)."""
        self.queue.clear()
        if self._proc is not None:
            self._proc.close()
            self._proc = None
        self.gateway.cancel(self.index)
        self.holding = None
        self.seq += 1

    def resumed(self) -> None:
        """The host runs again."""
        if self._proc is None and self.queue:
            self._next_session()

    def _next_session(self) -> None:
        if not self.queue:
            self.env.client_idle()
            return
        session = self.queue.popleft()
        self._proc = (
            self._observe(session) if isinstance(session, Observe) else self._session(session)
        )
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
        gateway, seq = self.gateway, self.seq
        if isinstance(cmd, Sleep):
            gateway.at_clock(cmd.until, self._on_wake, seq)
        elif isinstance(cmd, StoreRead | StoreWrite):
            self.env.send_store(self.index, seq, cmd)
        elif isinstance(cmd, AcquireCall):
            gateway.acquire(self.index, seq, cmd.name, cmd.ttl_ms, cmd.wait_ms)
        elif isinstance(cmd, RenewCall):
            gateway.renew(self.index, seq, cmd.name, cmd.lease, cmd.ttl_ms, cmd.meta)
        elif isinstance(cmd, LeaderCall):
            gateway.leader(self.index, seq, cmd.name)
        else:
            gateway.release(self.index, seq, cmd.name, cmd.lease)

    def _on_wake(self, seq: int) -> None:
        if seq == self.seq:
            self._advance(None)

    def on_answer(self, item: tuple[int, Any]) -> None:
        """The gateway answered."""
        self.gateway.deliver(self._answered, item)

    def on_store_reply(self, item: tuple[int, Any]) -> None:
        """The store answered."""
        self.gateway.deliver(self._answered, item)

    def _answered(self, item: tuple[int, Any]) -> None:
        seq, result = item
        if seq == self.seq:
            self._advance(result)

    # -- one session ---------------------------------------------------------------------

    def _now(self) -> int:
        return self.gateway.now()

    def _note(self, text: str) -> None:
        history = self.env.history
        if history.tracing:
            history.note(self.env.world.now, self._who, text)

    def _session(self, s: Job) -> Process:
        world = self.env.world
        name = s.name.decode()
        answer = yield AcquireCall(s.name, s.ttl_ms, s.wait_ms)
        if not isinstance(answer, tuple):
            return  # refused (the gateway's trace says why)
        outcome, grant = answer
        assert isinstance(outcome, Granted) and isinstance(grant, Grant)
        lease = outcome.lease
        self.holding = grant
        deadline = outcome.deadline_ns
        hold_until = outcome.decided_ns + s.hold_ms * MS
        writes = [
            outcome.decided_ns + s.hold_ms * MS * (i + 1) // (s.writes + 1) for i in range(s.writes)
        ]
        renew_at = outcome.decided_ns + outcome.validity_ns // 3 if s.renew else None
        expired = False
        if s.campaign:  # Campaign returns once the leader record is on a quorum
            renewed = yield self._proclaim(s, lease, outcome.token)
            if not isinstance(renewed, Renewed):
                grant.end = min(grant.end, world.now)
                self._note(f"leader record of {name} term {outcome.token} not written: lost")
                return
            deadline = renewed.deadline_ns
            grant.end = self.gateway.clock.true_at(deadline, world.now)
            self.env.history.led.append((world.now, s.name, outcome.token))
            self._note(f"leads {name} with term {outcome.token}")
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
                if s.campaign:
                    renewed = yield self._proclaim(s, lease, outcome.token)
                else:
                    renewed = yield RenewCall(s.name, lease, s.ttl_ms)
                if isinstance(renewed, Renewed):
                    deadline = renewed.deadline_ns
                    grant.end = self.gateway.clock.true_at(deadline, world.now)
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
            yield ReleaseCall(s.name, lease)
        elif not expired:
            self._note(f"walks away from {name} token {outcome.token} (lets it expire)")
        self.holding = None

    def _proclaim(self, s: Job, lease: bytes, term: int) -> RenewCall:
        """A renewal that writes a new leader value (Campaign's record, then Proclaim's),
        noted as written before it is sent: a read may find it on a quorum even when the
        renewal is refused."""
        history = self.env.history
        values = history.proclaimed.setdefault((s.name, term), set())
        value = b"c%d/%d" % (self.index, len(values))
        values.add(value)
        meta = encode_meta(Meta(b"c%d" % self.index, encode_value(term, value), 0))
        return RenewCall(s.name, lease, s.ttl_ms, meta)

    def _observe(self, o: Observe) -> Process:
        """Read the leader every `every_ms` for `ms`, sending the observer each leader
        that supersedes the last one sent (the gateway's Observe rule)."""
        world = self.env.world
        history = self.env.history
        end = self._now() + o.ms * MS
        sent: tuple[int, bytes] | None = None
        history.observers += 1
        observer = history.observers
        while self._now() < end:
            started = world.now
            found = yield LeaderCall(o.name)
            send = found is not None and supersedes(found, sent)
            read = Read(
                o.name,
                self.index,
                observer,
                started,
                world.now,
                found.term if found is not None else None,
                found.value if found is not None else b"",
                send,
            )
            history.reads.append(read)
            if found is not None and send:
                sent = (found.term, found.value)
                self._note(f"observes {read}")
            yield Sleep(self._now() + o.every_ms * MS)

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
