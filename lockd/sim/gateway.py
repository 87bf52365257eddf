"""A simulated gateway host: the shipping `LockTable` driven on virtual time, the core
machines driven over the simulated network — the simulator's `gateway/locks.py` and
`gateway/driver.py` — and the host's clock, which its clients share.

A host is one machine (a VM): a gateway and the client processes that reach it over
loopback. They read one monotonic clock, drifting, which stands still while the host is
paused (a suspended VM's `CLOCK_MONOTONIC` does), so after a pause both the gateway and
its clients believe less time passed than did. Everything that reaches a paused host
waits, in order, until it resumes.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from lockd.core import (
    Acquire,
    AcquireReply,
    Granted,
    NodeReply,
    NotGranted,
    Release,
    Released,
    Renew,
    Renewed,
    RenewFailed,
    Send,
)
from lockd.core.messages import lock_name
from lockd.core.quorum import quorum
from lockd.core.records import NodeState, leader_of, merge
from lockd.core.table import (
    AttemptDone,
    Cancel,
    Command,
    Event,
    GiveBack,
    GrantWaiter,
    LeaseEnded,
    LeaseRenewed,
    LockTable,
    Policy,
    ProbeDone,
    Pump,
    RefuseWaiter,
    ReleaseHeard,
    Request,
    StartAttempt,
    StartProbe,
    TimerFired,
    WakeAt,
    held_for_ns,
)
from lockd.errors import ErrorReason
from lockd.sim.checks import Grant, History, fmt_ns
from lockd.sim.schedule import NODES
from lockd.sim.world import MS, HostClock, World

if TYPE_CHECKING:
    from lockd.sim.clients import SimClient

__all__ = ["Env", "SimGateway"]

Machine = Acquire | Renew | Release
RunResult = Granted | NotGranted | Renewed | RenewFailed | Released


class Env(Protocol):
    """What a gateway host needs from the simulation."""

    world: World
    history: History
    node_timeout_ns: int
    max_fence_rounds: int
    unsafe_single_phase_token: bool
    unsafe_no_drift: bool

    def send_node(self, host: int, run: int, send: Send) -> None:
        """Put a machine's request on the network."""

    def send_view(self, host: int, read: int, node: int, name: bytes) -> None:
        """Ask node `node` for its state of lock `name` (`lockd_peek`)."""

    def on_grant(self, grant: Grant) -> None:
        """A lease was delivered to a client (already in the history)."""


@dataclasses.dataclass(slots=True)
class _Run:
    """A machine in flight, and what to do with its outcome."""

    machine: Machine
    done: Callable[[Any], None]
    timer_at: int | None = None


@dataclasses.dataclass(slots=True)
class _Attempt:
    """An acquisition attempt in flight, for the history and the trace."""

    name: bytes
    client: int
    lease: bytes
    started: int  # true time
    tainted: bool = False
    set_by: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class _Read:
    """A read of one lock on every node (a probe, or a Leader call) in flight."""

    name: bytes
    done: Callable[[list[NodeState]], None]
    states: dict[int, NodeState] = dataclasses.field(default_factory=dict)
    """By node: the first answer counts (a duplicated reply is not a second node)."""


class SimGateway:
    """Gateway `index` and its host: the lock table, the machines it runs, the clock."""

    def __init__(
        self,
        index: int,
        env: Env,
        policy: Policy,
        rng: random.Random,
        leases: random.Random,
        clock: HostClock,
    ) -> None:
        self.index = index
        self.env = env
        self.clock = clock
        self.table = LockTable(NODES, policy, rng)
        self._pump = Pump(self.table, self._do)
        self.clients: dict[int, SimClient] = {}
        self.paused_until = 0
        self._leases = leases
        self._who = f"g{index}"
        self._deferred: list[tuple[Callable[[Any], None], Any]] = []
        self._ids = itertools.count()
        self._runs: dict[int, _Run] = {}
        self._attempts: dict[int, _Attempt] = {}
        self._reads: dict[int, _Read] = {}
        self._requests: dict[int, tuple[int, int, int]] = {}  # waiter -> client, seq, ttl
        self._granting: dict[bytes, tuple[Grant, Granted, _Attempt]] = {}  # lease -> grant

    # -- the host: clock, pauses, timers -------------------------------------------------

    def now(self) -> int:
        """The host's clock."""
        now: int = self.clock.now(self.env.world.now)
        return now

    def deliver(self, handler: Callable[[Any], None], arg: Any) -> None:
        """Run `handler(arg)` now, or when the host resumes if it is paused."""
        if self.clock.paused:
            self._deferred.append((handler, arg))
        else:
            handler(arg)

    def at_clock(self, reading: int, handler: Callable[[Any], None], arg: Any) -> None:
        """Run `handler(arg)` when the host's clock reads `reading`."""
        world = self.env.world
        world.at(self.clock.true_at(reading, world.now), self._at_clock, (reading, handler, arg))

    def _at_clock(self, item: tuple[int, Callable[[Any], None], Any]) -> None:
        if self.clock.paused:
            self._deferred.append((self._at_clock, item))
            return
        reading, handler, arg = item
        world = self.env.world
        if self.clock.now(world.now) < reading:  # the clock stood still in a pause
            world.at(self.clock.true_at(reading, world.now), self._at_clock, item)
            return
        handler(arg)

    def pause(self, until: int) -> None:
        """Stop the host (gateway, clients, clock) until true time `until`."""
        world = self.env.world
        self.note(f"host paused until {fmt_ns(until)}")
        for attempt in self._attempts.values():
            attempt.tainted = True
        for client in self.clients.values():
            if client.holding is not None:
                client.holding.tainted = True
        if not self.clock.paused:
            self.clock.pause(world.now)
        self.paused_until = max(self.paused_until, until)
        world.at(until, self._resume_at, until)

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
        self.note("resumed; its clock lost the pause")
        deferred, self._deferred = self._deferred, []
        for handler, arg in deferred:
            handler(arg)
        for client in self.clients.values():
            client.resumed()

    def note(self, text: str, who: str | None = None) -> None:
        """A trace line (only when tracing)."""
        history = self.env.history
        if history.tracing:
            history.note(self.env.world.now, who or self._who, text)

    # -- the clients' calls ------------------------------------------------------------------

    def acquire(self, client: int, seq: int, name: bytes, ttl_ms: int, wait_ms: int) -> None:
        """Client `client` asks for `name`; it hears back through `on_answer(seq, ...)`."""
        waiter = next(self._ids)
        self._requests[waiter] = (client, seq, ttl_ms)
        now = self.now()
        self.feed(Request(waiter, name, ttl_ms, now + wait_ms * MS, now))

    def renew(
        self, client: int, seq: int, name: bytes, lease: bytes, ttl_ms: int, meta: bytes | None
    ) -> None:
        """Renew `lease` (writing owner record `meta` if given: Campaign's leader record,
        Proclaim); the client hears `Renewed` or `RenewFailed`."""
        env = self.env
        machine = Renew(
            name,
            lease,
            ttl_ms,
            NODES,
            env.node_timeout_ns,
            unsafe_no_drift=env.unsafe_no_drift,
            meta=meta,
        )

        def done(outcome: Renewed | RenewFailed) -> None:
            now = self.now()
            if isinstance(outcome, Renewed):
                self.feed(LeaseRenewed(name, lease, ttl_ms, machine.started_ns, now))
            else:
                # The lease is lost and released on every node: its window ends here,
                # whether or not its client is still there to be told.
                self.env.history.end_lease(lease, self.env.world.now)
                self.feed(LeaseEnded(name, lease, now))
            self._answer(client, seq, outcome)

        self._run(machine, done)

    def release(self, client: int, seq: int, name: bytes, lease: bytes) -> None:
        """Release `lease`; the client hears `Released`."""

        def done(outcome: Released) -> None:
            self.feed(LeaseEnded(name, lease, self.now()))
            self._answer(client, seq, outcome)

        self._run(Release(name, lease, NODES, self.env.node_timeout_ns), done)

    def leader(self, client: int, seq: int, name: bytes) -> None:
        """Read election lock `name` on every node; the client hears the leader a quorum
        shows (`Leader`) or None, as the gateway's Leader and Observe read it."""

        def done(states: list[NodeState]) -> None:
            self._answer(client, seq, leader_of(merge(states, quorum(NODES)))[0])

        self._read(name, done)

    def cancel(self, client: int) -> None:
        """Client `client` went away: its waiting ends (a held lease stays until it
        expires)."""
        self.deliver(self._cancel, client)

    def _cancel(self, client: int) -> None:
        for waiter in [w for w, (c, _, _) in self._requests.items() if c == client]:
            del self._requests[waiter]
            self.feed(Cancel(waiter, self.now()))

    def _answer(self, client: int, seq: int, result: object) -> None:
        world = self.env.world
        world.at(world.now, self.clients[client].on_answer, (seq, result))

    # -- the table -------------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand `event` to the table and carry out its commands, and those of the events
        they cause, in order (`Pump`)."""
        self._pump.feed(event)

    def _do(self, cmd: Command) -> None:
        env = self.env
        if isinstance(cmd, StartAttempt):
            lease = self._leases.getrandbits(128).to_bytes(16, "big")
            client = self._requests[cmd.waiter][0] if cmd.waiter in self._requests else -1
            self._attempts[cmd.attempt] = _Attempt(cmd.name, client, lease, env.world.now)
            env.history.attempts += 1
            machine = Acquire(
                cmd.name,
                cmd.ttl_ms,
                lease,
                NODES,
                env.node_timeout_ns,
                env.max_fence_rounds,
                unsafe_single_phase_token=env.unsafe_single_phase_token,
                unsafe_no_drift=env.unsafe_no_drift,
            )
            self._run(machine, lambda outcome: self._attempted(cmd, outcome))
        elif isinstance(cmd, GrantWaiter):
            self._granted(cmd)
        elif isinstance(cmd, RefuseWaiter):
            if cmd.waiter in self._requests:
                client, seq, ttl_ms = self._requests.pop(cmd.waiter)
                self.note(
                    f"acquire ttl {ttl_ms}ms refused: {ErrorReason.Name(cmd.reason)} "
                    f"({cmd.detail}); gives up",
                    f"c{client}",
                )
                self._answer(client, seq, cmd)
        elif isinstance(cmd, WakeAt):
            self.at_clock(cmd.at_ns, self._timer, (cmd.name, cmd.at_ns))
        elif isinstance(cmd, StartProbe):
            self._probe(cmd.name)
        else:
            assert isinstance(cmd, GiveBack)
            self.note(f"gives back {cmd.name.decode()} lease {cmd.lease.hex()[:8]}: caller left")
            self._run(Release(cmd.name, cmd.lease, NODES, env.node_timeout_ns), _ignore)

    def _attempted(self, cmd: StartAttempt, outcome: Granted | NotGranted) -> None:
        attempt = self._attempts.pop(cmd.attempt)
        history = self.env.history
        if isinstance(outcome, Granted):
            world = self.env.world
            grant = Grant(
                cmd.name,
                attempt.client,
                outcome.lease,
                outcome.token,
                attempt.started,
                world.now,
                self.clock.true_at(outcome.deadline_ns, world.now),
                attempt.tainted,
            )
            history.grants.append(grant)
            if cmd.waiter in self._requests:
                self._granting[outcome.lease] = (grant, outcome, attempt)
            else:
                grant.end = world.now  # given back at once: its caller left
        elif history.tracing:
            self.note(
                f"attempt on {cmd.name.decode()} for c{attempt.client}: "
                f"{outcome.reason.value} ({outcome.detail})"
            )
        self.feed(AttemptDone(cmd.attempt, outcome, self.now()))

    def _granted(self, cmd: GrantWaiter) -> None:
        grant, outcome, attempt = self._granting.pop(cmd.granted.lease)
        client, seq, _ = self._requests.pop(cmd.waiter)
        assert client == grant.client
        nodes = ",".join(f"n{n}" for n in sorted(attempt.set_by))
        self.note(
            f"granted {grant.name.decode()} token {grant.token} lease "
            f"{grant.lease.hex()[:8]} by {nodes}, valid {fmt_ns(outcome.validity_ns)} "
            f"(until {fmt_ns(grant.end)} true time)",
            f"c{client}",
        )
        self.env.on_grant(grant)
        self._answer(client, seq, (outcome, grant))

    def _timer(self, item: tuple[bytes, int]) -> None:
        self.feed(TimerFired(item[0], self.now()))

    def on_release_heard(self, lock_key: bytes) -> None:
        """A node's `lockd:released` message arrived."""
        name = lock_name(lock_key)
        if name is not None:
            self.deliver(lambda _: self.feed(ReleaseHeard(name, self.now())), None)

    # -- reads of the nodes ------------------------------------------------------------

    def _probe(self, name: bytes) -> None:
        def done(states: list[NodeState]) -> None:
            held = held_for_ns([state.pttl_ms for state in states], NODES)
            self.note(f"probe of {name.decode()}: held for {fmt_ns(held)} more")
            self.feed(ProbeDone(name, held, self.now()))

        self._read(name, done)

    def _read(self, name: bytes, done: Callable[[list[NodeState]], None]) -> None:
        """Ask every node for lock `name`; `done` gets the answers that came within the
        node timeout."""
        read = next(self._ids)
        self._reads[read] = _Read(name, done)
        for node in range(NODES):
            self.env.send_view(self.index, read, node, name)
        self.at_clock(self.now() + self.env.node_timeout_ns, self._read_done, read)

    def on_view(self, item: tuple[int, int, NodeState]) -> None:
        """Node `node` answered a read."""
        read_id, node, state = item
        read = self._reads.get(read_id)
        if read is not None:
            read.states.setdefault(node, state)
            if len(read.states) == NODES:
                self._read_done(read_id)

    def _read_done(self, read_id: int) -> None:
        read = self._reads.pop(read_id, None)
        if read is not None:
            read.done(list(read.states.values()))

    # -- machines ----------------------------------------------------------------------------

    def live(self, run: int) -> bool:
        """Whether machine `run` still listens for replies."""
        return run in self._runs

    def _run(self, machine: Machine, done: Callable[[Any], None]) -> None:
        run = next(self._ids)
        self._runs[run] = _Run(machine, done)
        self._after(run, machine.start(self.now()))

    def _after(self, run_id: int, sends: list[Send]) -> None:
        run = self._runs[run_id]
        for send in sends:
            self.env.send_node(self.index, run_id, send)
        machine = run.machine
        if machine.outcome is not None:
            del self._runs[run_id]
            run.done(machine.outcome)
            return
        deadline = machine.next_deadline()
        if deadline is not None and deadline != run.timer_at:
            run.timer_at = deadline
            self.at_clock(deadline, self._tick, (run_id, deadline))

    def on_reply(self, item: tuple[int, int, int, NodeReply]) -> None:
        """Node `node`'s answer to machine `run` arrived."""
        run_id, node, tag, reply = item
        run = self._runs.get(run_id)
        if run is None:
            return
        if isinstance(reply, AcquireReply) and reply.acquired and self.env.history.tracing:
            for attempt in self._attempts.values():
                if isinstance(run.machine, Acquire) and attempt.lease == run.machine.lease:
                    attempt.set_by.append(node)
        self._after(run_id, run.machine.receive(tag, reply, self.now()))

    def _tick(self, item: tuple[int, int]) -> None:
        run_id, deadline = item
        run = self._runs.get(run_id)
        if run is not None and run.timer_at == deadline:
            self._after(run_id, run.machine.tick(self.now()))


def _ignore(_: object) -> None:
    pass
