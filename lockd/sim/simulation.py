"""One simulated run: five real engines, the gateway hosts (each the shipping lock
table, with its clients), the network and the store, driven through a schedule, then
healed and checked.

Phases: the schedule's steps happen at their times (sessions are queued on their
clients, faults are applied); once every step happened and every client is idle (or
`MAX_DRAIN_NS` after the last step) the world heals — network whole and calm, every
node up, clocks back within the bound, nobody paused — and every client asks for every
lock once more. Liveness: each lock is granted within `liveness_bound_ns` of the heal.
"""

from __future__ import annotations

import dataclasses
import hashlib

from lockd.core import NodeReply, Send
from lockd.core.quorum import restart_delay_ms
from lockd.core.records import NodeState
from lockd.core.table import Policy
from lockd.engine import EngineConfig
from lockd.sim.checks import Grant, History, Violation, check, fmt_ns
from lockd.sim.clients import SimClient, StoreRead, StoreWrite
from lockd.sim.gateway import SimGateway
from lockd.sim.schedule import (
    NODES,
    ClockJump,
    ClockRate,
    Crash,
    Heal,
    Job,
    Observe,
    Partition,
    Pause,
    Schedule,
    Step,
    Storm,
    rng_for,
)
from lockd.sim.world import MS, HostClock, Network, SimNode, StoreModel, World

__all__ = ["UNSAFE", "RunResult", "Simulation", "liveness_bound_ns"]

UNSAFE = ("single-phase-token", "no-drift", "wall-clock", "no-restart-delay", "volatile-fence")
"""The planted bugs, each a real `unsafe_*` option of the core, the engine or its clock."""

MAX_DRAIN_NS = 30_000 * MS
PROBE_TTL_MS = 200


def liveness_bound_ns(schedule: Schedule) -> int:
    """How soon after the heal every lock must be grantable: a restarted node's delay,
    plus a late message re-setting a key and its TTL running out, plus retries and two
    slow attempts, all on clocks that may run slow by the drift bound."""
    lim, setup = schedule.limits, schedule.setup
    attempt_ms = setup.node_timeout_ms * (lim.max_fence_rounds + 1)
    ms = (
        restart_delay_ms(lim.max_ttl_ms)
        + lim.long_delay_max_ms
        + lim.max_ttl_ms
        + 2 * setup.retry_cap_ms
        + 2 * attempt_ms
        + 100
    )
    return int(ms / (1 - lim.drift_bound)) * MS


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    """What one run found."""

    violations: tuple[Violation, ...]
    digest: str
    events: int
    grants: int
    attempts: int
    writes: int
    refused: int
    crashes: int
    terms: int
    """Leaders whose record reached a quorum (0 in a run without an election)."""
    leader_reads: int
    """Reads of the election that found a leader."""
    overlap_checked: bool
    heal_ns: int
    bound_ns: int
    end_ns: int
    trace: tuple[tuple[int, str, str], ...]


class Simulation:
    """A run of `schedule`, with planted bug `unsafe` (one of `UNSAFE`) or none."""

    def __init__(self, schedule: Schedule, unsafe: str | None = None, trace: bool = False):
        if unsafe is not None and unsafe not in UNSAFE:
            raise ValueError(f"unknown unsafe option {unsafe!r}; one of {', '.join(UNSAFE)}")
        self.schedule = schedule
        setup, lim, seed = schedule.setup, schedule.limits, schedule.seed
        self.world = World()
        self.history = History(tracing=trace)
        self.node_timeout_ns = setup.node_timeout_ms * MS
        self.max_fence_rounds = lim.max_fence_rounds
        self.unsafe_single_phase_token = unsafe == "single-phase-token"
        self.unsafe_no_drift = unsafe == "no-drift"
        config = EngineConfig(
            dir=None,
            max_ttl_ms=lim.max_ttl_ms,
            fence_block=setup.fence_block,
            unsafe_no_restart_delay=unsafe == "no-restart-delay",
            unsafe_volatile_fence=unsafe == "volatile-fence",
            unsafe_single_phase_token=self.unsafe_single_phase_token,
        )
        self.nodes = [
            SimNode(
                i,
                self.world,
                config,
                setup.fsync[i],
                setup.node_rates[i],
                setup.boot_ms[i],
                setup.wall_offsets_ms[i],
                use_wall_clock=unsafe == "wall-clock",
            )
            for i in range(NODES)
        ]
        for node in self.nodes:
            node.on_release = self._published
            node.start()
        self._restart_seq = [0] * NODES
        self.net = Network(
            lambda stream: rng_for(seed, stream),
            setup.gateways,
            NODES,
            setup.loss,
            setup.dup,
            setup.long_p,
            lim.long_delay_max_ms * MS,
        )
        self.store = StoreModel()
        policy = Policy(backoff_cap_ms=setup.retry_cap_ms)
        self.gateways: list[SimGateway] = []
        for g in range(setup.gateways):
            rng = rng_for(seed, f"gateway:{g}")
            clock = HostClock(setup.host_rates[g], rng.randrange(10**15))
            leases = rng_for(seed, f"leases:{g}")
            self.gateways.append(SimGateway(g, self, policy, rng, leases, clock))
        self.clients = [
            SimClient(i, self, self.gateways[i % setup.gateways]) for i in range(setup.clients)
        ]
        self._crash_rng = rng_for(seed, "crash")
        self._storms = 0
        self._write_ids = 0
        self.crashes = 0
        self.beyond_bound = False
        self.healed_at: int | None = None
        self.first_after_heal: dict[bytes, int] = {}
        self._steps_left = len(schedule.steps)
        self._last_step_ns = max((s.at_ms * MS for s in schedule.steps), default=0)
        for step in schedule.steps:
            self.world.at(step.at_ms * MS, self._apply, step)

    # -- Env, for the clients --------------------------------------------------------------

    def send_node(self, host: int, run: int, send: Send) -> None:
        """A gateway's request to a node: cut, lost, delayed, duplicated or delivered."""
        net = self.net
        if (host, send.node) in net.cut:
            return
        world = self.world
        for delay in net.delays("req", host, send.node):
            world.at(world.now + delay, self._at_node, (host, run, send))

    def _at_node(self, arg: tuple[int, int, Send]) -> None:
        host, run, send = arg
        node = self.nodes[send.node]
        if node.engine is None or (host, send.node) in self.net.cut:
            return
        reply = node.call(send.call)
        if send.tag < 0 or not self.gateways[host].live(run):
            return  # fire-and-forget, or the machine already moved on: nobody would listen
        world = self.world
        for delay in self.net.delays("rep", host, send.node):
            world.at(world.now + delay, self._at_gateway, (host, send.node, run, send.tag, reply))

    def _at_gateway(self, arg: tuple[int, int, int, int, NodeReply]) -> None:
        host, node, run, tag, reply = arg
        if (host, node) not in self.net.cut:
            gateway = self.gateways[host]
            gateway.deliver(gateway.on_reply, (run, node, tag, reply))

    def send_view(self, host: int, probe: int, node: int, name: bytes) -> None:
        """A gateway's probe of one node: the PTTL of lock `name`'s key."""
        if (host, node) in self.net.cut:
            return
        world = self.world
        for delay in self.net.delays("req", host, node):
            world.at(world.now + delay, self._view_at_node, (host, probe, node, name))

    def _view_at_node(self, arg: tuple[int, int, int, bytes]) -> None:
        host, probe, n, name = arg
        node = self.nodes[n]
        if node.engine is None or (host, n) in self.net.cut:
            return
        state = node.peek(name)
        if state is None:
            return  # refused: no answer
        world = self.world
        for delay in self.net.delays("rep", host, n):
            world.at(world.now + delay, self._view_at_gateway, (host, n, probe, state))

    def _view_at_gateway(self, arg: tuple[int, int, int, NodeState]) -> None:
        host, node, probe, state = arg
        if (host, node) not in self.net.cut:
            gateway = self.gateways[host]
            gateway.deliver(gateway.on_view, (probe, node, state))

    def _published(self, node: int, lock_key: bytes) -> None:
        """Node `node` published a release: every gateway subscribed to it hears of it."""
        world = self.world
        for host in range(len(self.gateways)):
            if (host, node) not in self.net.cut:
                for delay in self.net.delays("pub", host, node):
                    world.at(world.now + delay, self._heard, (host, node, lock_key))

    def _heard(self, arg: tuple[int, int, bytes]) -> None:
        host, node, lock_key = arg
        if (host, node) not in self.net.cut:
            self.gateways[host].on_release_heard(lock_key)

    def send_store(self, client: int, seq: int, op: StoreRead | StoreWrite) -> None:
        """A client's request to the store (delayed, never lost or duplicated)."""
        world = self.world
        host = self.clients[client].gateway.index
        delay = self.net.delays("req", host, Network.STORE, lossless=True)[0]
        world.at(world.now + delay, self._at_store, (client, seq, op))

    def _at_store(self, arg: tuple[int, int, StoreRead | StoreWrite]) -> None:
        client, seq, op = arg
        world = self.world
        result: object
        if isinstance(op, StoreRead):
            result = self.store.read(world.now, op.name, op.lease, op.token)
        else:
            result = self.store.write(
                world.now, op.name, op.lease, op.token, op.write_id, op.based_on
            )
        host = self.clients[client].gateway.index
        delay = self.net.delays("rep", host, Network.STORE, lossless=True)[0]
        world.at(world.now + delay, self.clients[client].on_store_reply, (seq, result))

    def write_id(self) -> int:
        """A fresh id for a store write."""
        self._write_ids += 1
        return self._write_ids

    def client_idle(self) -> None:
        """Heal once every step happened and every client is idle."""
        done = self.healed_at is None and self._steps_left == 0
        if done and all(c.idle for c in self.clients):
            self.world.at(self.world.now, self._heal, None)

    # -- the nemesis -----------------------------------------------------------------------

    def _note(self, who: str, text: str) -> None:
        if self.history.tracing:
            self.history.note(self.world.now, who, text)

    def _apply(self, step: Step) -> None:
        self._steps_left -= 1
        if self.healed_at is not None:
            return
        action = step.action
        now = self.world.now
        if not isinstance(action, Job | Observe):
            self._note("nemesis", f"step {step.index}: {action}")
        if isinstance(action, Job | Observe):
            self.clients[action.client].enqueue(action)
        elif isinstance(action, Partition):
            self.net.cut = set(action.cuts)
        elif isinstance(action, Heal):
            self.net.cut = set()
        elif isinstance(action, Crash):
            for n in action.nodes:
                self._stop(n, action.clean, action.down_ms * MS)
        elif isinstance(action, ClockJump):
            self.nodes[action.node].wall.jump(action.delta_ms)
        elif isinstance(action, ClockRate):
            self.nodes[action.node].set_rate(action.rate)
            self.beyond_bound |= action.beyond_bound
        elif isinstance(action, Pause):
            self.gateways[action.host].pause(now + action.ms * MS)
        elif isinstance(action, Storm):
            loss, dup, long_p = self.net.base
            self.net.weather = (loss + action.loss, dup + action.dup, long_p + action.long_p)
            self._storms += 1
            self.world.at(now + action.ms * MS, self._storm_over, self._storms)
        if self._steps_left == 0:
            self.client_idle()

    def _storm_over(self, storm: int) -> None:
        if storm == self._storms and self.healed_at is None:
            self.net.weather = self.net.base

    def _stop(self, n: int, clean: bool, down_ns: int) -> None:
        node = self.nodes[n]
        if not node.up:
            return
        lost = node.stop(clean, self._crash_rng)
        self.crashes += not clean
        if lost:
            self._note(f"n{n}", f"lost {lost} unfsynced journal records")
        self._restart_seq[n] += 1
        self.world.at(self.world.now + down_ns, self._restart, (n, self._restart_seq[n]))

    def _restart(self, arg: tuple[int, int]) -> None:
        n, seq = arg
        node = self.nodes[n]
        if node.up or seq != self._restart_seq[n]:
            return
        engine = node.start()
        if self.history.tracing:
            left = engine.restart_delay_remaining_ms()
            why = (
                f"refuses acquisitions for {left} ms ({engine.restart_reason})"
                if left
                else "no delay"
            )
            self._note(f"n{n}", f"restarted: fence floor {engine.fence_floor}, {why}")

    def _heal(self, _: object) -> None:
        if self.healed_at is not None:
            return
        world = self.world
        self.healed_at = world.now
        world.stopped = True
        self._note("nemesis", "heal: network whole and calm, every node up, clocks in bound")
        self.net.cut = set()
        self.net.weather = (0.0, 0.0, 0.0)
        bound = self.schedule.limits.drift_bound
        for i, node in enumerate(self.nodes):
            if not 1 - bound <= node.mono.rate <= 1 + bound:
                node.set_rate(self.schedule.setup.node_rates[i])
            if not node.up:
                self._restart_seq[i] += 1
                self._restart((i, self._restart_seq[i]))
        for client in self.clients:
            client.cancel()
        for gateway in self.gateways:
            gateway.resume()
        client = self.clients[-1]  # one client takes every lock (and leads the election)
        for name in self._names:
            campaign = name == self.schedule.setup.election
            client.enqueue(
                Job(client.index, name, PROBE_TTL_MS, 10**9, 10, 1, False, True, campaign)
            )

    # -- running -----------------------------------------------------------------------------

    @property
    def _names(self) -> tuple[bytes, ...]:
        """Every lock of the run, the election's included."""
        setup = self.schedule.setup
        return setup.names + ((setup.election,) if setup.election is not None else ())

    def on_grant(self, grant: Grant) -> None:
        """After the heal, stop once every lock was granted again."""
        if self.healed_at is not None:
            self.first_after_heal.setdefault(grant.name, grant.decided)
            if len(self.first_after_heal) == len(self._names):
                self.world.stopped = True

    def run(self) -> RunResult:
        """Run to the end and check every property."""
        world = self.world
        world.run(self._last_step_ns + MAX_DRAIN_NS)
        if self.healed_at is None:
            self._heal(None)
        heal = self.healed_at
        assert heal is not None
        bound = liveness_bound_ns(self.schedule)
        world.run(heal + bound + 1)
        liveness = [
            Violation(
                "liveness",
                heal + bound,
                f"{name.decode()} not granted within {fmt_ns(bound)} of the heal at {fmt_ns(heal)}",
            )
            for name in self._names
            if self.first_after_heal.get(name, heal + bound + 1) > heal + bound
        ]
        overlap_checked = not self.beyond_bound
        violations = check(self.history, self.store, overlap_checked, liveness)
        return RunResult(
            violations=tuple(violations),
            digest=self._digest(),
            events=world.events,
            grants=len(self.history.grants),
            attempts=self.history.attempts,
            writes=len(self.history.acked),
            refused=self.store.refused,
            crashes=self.crashes,
            terms=len(self.history.led),
            leader_reads=sum(r.term is not None for r in self.history.reads),
            overlap_checked=overlap_checked,
            heal_ns=heal,
            bound_ns=bound,
            end_ns=world.now,
            trace=tuple(self.history.trace),
        )

    def _digest(self) -> str:
        h = hashlib.sha256()
        h.update(repr((self.world.now, self.world.events)).encode())
        for g in self.history.grants:
            h.update(
                repr((g.name, g.client, g.lease, g.token, g.started, g.decided, g.end)).encode()
            )
        h.update(repr(self.store.accepted).encode())
        return h.hexdigest()[:16]
