"""The simulated world: virtual time and its event queue, clocks, the network, the nodes
(real engines on simulated disks) and the fenced store.

Nothing here reads a real clock or a global random source: every random choice comes
from a `random.Random` handed in by the simulation, so a seed replays exactly.
"""

from __future__ import annotations

import functools
import heapq
import operator
import random
from collections.abc import Callable
from typing import Any

from lockd.core import Call, NodeReply, lock_key
from lockd.core.records import NodeState
from lockd.engine import RELEASE_CHANNEL, Clock, Engine, EngineConfig, FsyncPolicy, WallClock
from lockd.engine.persistence import FenceReservation
from lockd.gateway.nodes import EmbeddedNode
from lockd.resp.protocol import RequestParser
from lockd.resp.replies import CommandError
from lockd.units import MS

__all__ = [
    "MS",
    "HostClock",
    "Network",
    "SimDisk",
    "SimNode",
    "StoreModel",
    "World",
]


Handler = Callable[[Any], None]


class World:
    """Virtual time in nanoseconds and the queue of what happens next.

    Events at the same instant run in the order they were scheduled, so a run depends
    only on the seed. `time` is the source of every simulated clock.
    """

    __slots__ = ("_queue", "_seq", "events", "now", "stopped", "time")

    def __init__(self) -> None:
        self.now = 0
        self.events = 0
        self.stopped = False
        self._queue: list[tuple[int, int, Handler, Any]] = []
        self._seq = 0
        self.time: Callable[[], int] = functools.partial(operator.attrgetter("now"), self)
        """True (simulator) time, as a clock source (C-level: clocks read it a lot)."""

    def at(self, when: int, handler: Handler, arg: Any = None) -> None:
        """Call `handler(arg)` at true time `when` (never before now)."""
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, handler, arg))

    def run(self, until: int) -> None:
        """Run events up to true time `until`, or until a handler sets `stopped`."""
        queue = self._queue
        pop = heapq.heappop
        self.stopped = False
        count = 0
        while queue and queue[0][0] <= until:
            when, _, handler, arg = pop(queue)
            self.now = when
            count += 1
            handler(arg)
            if self.stopped:
                break
        else:
            self.now = max(self.now, until)
        self.events += count


class HostClock:
    """A gateway host's monotonic clock (its gateway's and its clients'): runs at `rate`
    times true time and stands still while the host is paused (a suspended VM's
    CLOCK_MONOTONIC does), so after a pause they believe less time passed than did."""

    __slots__ = ("_anchor", "_base", "paused", "rate")

    def __init__(self, rate: float, base: int) -> None:
        self.rate = rate
        self._anchor = 0
        self._base = base
        self.paused = False

    def now(self, t: int) -> int:
        """The reading at true time `t`."""
        if self.paused:
            return self._base
        return self._base + int((t - self._anchor) * self.rate)

    def pause(self, t: int) -> None:
        """Stop at true time `t`."""
        self._base = self.now(t)
        self.paused = True

    def resume(self, t: int) -> None:
        """Run again from true time `t`, from where it stopped."""
        self._anchor = t
        self.paused = False

    def true_at(self, reading: int, t: int) -> int:
        """The first true time, not before `t`, at which the clock reads `reading` (if
        it is not paused meanwhile)."""
        now = self.now(t)
        if reading <= now:
            return t
        d = int((reading - now) / self.rate)
        while self.now(t + d) < reading:
            d += 1
        return t + d


class _SimReservation(FenceReservation):
    """The fencing reservation on a simulated disk: durable the moment it is written,
    as the real one is (write, fsync, rename, fsync directory)."""

    def __init__(self, disk: SimDisk, block: int) -> None:  # no file: see SimDisk
        self._disk = disk
        self._block = block
        self.reserved = disk.reserved
        self.writes = 0

    def cover(self, value: int) -> None:
        if value > self.reserved:
            self.reserved = self._disk.reserved = value + self._block
            self.writes += 1


class SimDisk:
    """One node's durable state: its journal (the engine's AOF records) under an fsync
    policy, the fencing reservation, and whether a directory and a clean-shutdown marker
    exist. A crash keeps what was fsynced plus a random prefix of the rest (what the OS
    happened to write back)."""

    SYNC_EVERY_MS = {FsyncPolicy.EVERYSEC: 1000, FsyncPolicy.NO: 30_000}

    def __init__(self, policy: FsyncPolicy) -> None:
        self.policy = policy
        self.used = False  # node.json exists: not a fresh directory
        self.marker: dict[str, Any] | None = None
        self.reserved = 0
        self._durable: list[bytes] = []
        self._parsed: list[list[bytes]] = []
        self._pending: list[tuple[int, bytes]] = []
        self._pending_durable = False
        self._now_ms: Callable[[], int] = lambda: 0

    def attach(self, now_ms: Callable[[], int]) -> None:
        """The clock of the periodic fsync (true time: it is the OS's, not the engine's)."""
        self._now_ms = now_ms

    def journal(self, record: bytes, durable: bool) -> None:
        """The engine's journal: queue one AOF record."""
        self._pending.append((self._now_ms(), record))
        if durable:
            self._pending_durable = True

    def commit(self) -> None:
        """The host's commit point before replying: fsync under `always`."""
        if self._pending_durable and self.policy is FsyncPolicy.ALWAYS:
            self._sync(len(self._pending))

    def _sync(self, count: int) -> None:
        self._durable.extend(record for _, record in self._pending[:count])
        del self._pending[:count]
        self._pending_durable = False

    def crash(self, rng: random.Random) -> int:
        """Power loss: the last periodic fsync and a random prefix of what followed
        survive. Returns how many records were lost."""
        every = self.SYNC_EVERY_MS.get(self.policy)
        synced = 0
        if every is not None:
            last_tick = self._now_ms() // every * every
            while synced < len(self._pending) and self._pending[synced][0] < last_tick:
                synced += 1
        kept = synced + rng.randrange(len(self._pending) - synced + 1)
        lost = len(self._pending) - kept
        self._sync(kept)
        self._pending.clear()
        return lost

    def stop_cleanly(self, marker: dict[str, Any]) -> None:
        """A clean shutdown: everything fsynced, then the marker written."""
        self._sync(len(self._pending))
        self.marker = marker

    def records(self) -> list[list[bytes]]:
        """The durable journal as parsed records (the engine's own RESP parser)."""
        if self._durable:
            parser = RequestParser()
            parser.feed(b"".join(self._durable))
            self._durable.clear()
            while (record := parser.next_command()) is not None:
                self._parsed.append(record)
        return self._parsed


class SimNode:
    """One of the five nodes: a real `Engine` (in memory, on the node's clock) whose
    journal and reservation live on a `SimDisk`; calls go through the gateway's own
    `EmbeddedNode` so replies are mapped exactly as in production."""

    def __init__(
        self,
        index: int,
        world: World,
        config: EngineConfig,
        policy: FsyncPolicy,
        rate: float,
        boot_ms: int,
        wall_offset_ms: int,
        use_wall_clock: bool,
    ) -> None:
        self.index = index
        self.config = config
        self.disk = SimDisk(policy)
        # The machine's clocks, which outlive the engine process: monotonic (drifting)
        # and wall (drifting and stepped). The engine reads the wall one only when unsafe.
        self.mono = Clock(world.time)
        self.mono.jump(boot_ms)  # monotonic clocks of machines share no origin
        self.wall = WallClock(world.time)
        self.wall.jump(wall_offset_ms)
        self.set_rate(rate)
        self.use_wall_clock = use_wall_clock
        self.disk.attach(lambda: world.now // MS)
        self.engine: Engine | None = None
        self._node: EmbeddedNode | None = None
        self.starts = 0
        self.on_release: Callable[[int, bytes], None] | None = None
        """Called with (node, lock key) when the engine publishes a release."""

    @property
    def up(self) -> bool:
        """True while the engine process runs."""
        return self.engine is not None

    def set_rate(self, rate: float) -> None:
        """Drift both clocks of this machine."""
        self.mono.set_rate(rate)
        self.wall.set_rate(rate)

    def start(self) -> Engine:
        """Start the engine process on the disk's state (`Engine.recover`, as `_open`)."""
        engine = Engine(self.config, self.wall if self.use_wall_clock else self.mono)
        engine.keyspace.journal = self.disk.journal
        if not self.config.unsafe_volatile_fence:
            engine.reservation = _SimReservation(self.disk, self.config.fence_block)
        fresh = not self.disk.used
        self.disk.used = True
        engine.recover(
            fresh=fresh,
            marker=self.disk.marker,
            max_ttl_ever_ms=self.config.max_ttl_ms,
            fence_reserved=self.disk.reserved,
            records=self.disk.records(),
        )
        self.disk.marker = None
        self.disk.commit()
        engine.subscribe(RELEASE_CHANNEL, self._published)
        self.engine = engine
        self._node = EmbeddedNode(engine, self.index)
        self.starts += 1
        return engine

    def _published(self, channel: bytes, message: bytes) -> None:
        if self.on_release is not None:
            self.on_release(self.index, message)

    def stop(self, clean: bool, rng: random.Random) -> int:
        """Stop the process: cleanly (marker, all flushed) or by power loss (unfsynced
        journal tail lost). Returns how many records were lost."""
        engine = self.engine
        assert engine is not None
        self.engine = self._node = None
        if clean:
            self.disk.stop_cleanly(engine.shutdown_marker())
            return 0
        return self.disk.crash(rng)

    def call(self, call: Call) -> NodeReply:
        """Answer one lock-function call, then commit as a host must before replying."""
        assert self._node is not None
        reply = self._node.call_now(call)
        self.disk.commit()
        return reply

    def peek(self, name: bytes) -> NodeState | None:
        """Lock `name` on this node, as `lockd_peek` answers: PTTL, counter, record; None
        when it refuses (RESTARTDELAY), which a gateway counts as no answer."""
        assert self.engine is not None
        try:
            pttl, counter, record = self.engine.lock_peek(lock_key(name))
        except CommandError:
            return None
        assert isinstance(pttl, int) and isinstance(counter, int)
        return NodeState(pttl, counter, record if isinstance(record, bytes) else None)


class Network:
    """Links between gateway hosts and nodes (and the store): per-link latency, loss,
    duplication, long delays (which reorder), partitions (cut host-node pairs) and
    storms (a while of much worse weather). Each link draws from its own random stream,
    so removing a fault elsewhere leaves a link's luck alone."""

    STORE = -1
    """The node index of the store in `link()`: its links delay but never lose."""

    def __init__(
        self,
        rng_for: Callable[[str], random.Random],
        hosts: int,
        nodes: int,
        loss: float,
        dup: float,
        long_p: float,
        long_max_ns: int,
    ) -> None:
        self.base = (loss, dup, long_p)
        self.weather = self.base
        """(loss, duplication, long-delay) probabilities right now."""
        self.long_max_ns = long_max_ns
        self.cut: set[tuple[int, int]] = set()
        self._links: dict[tuple[str, int, int], tuple[random.Random, int]] = {}
        for h in range(hosts):
            for n in [*range(nodes), self.STORE]:
                for way in ("req", "rep", "pub"):
                    rng = rng_for(f"link:{way}:{h}:{n}")
                    latency = 50_000 + rng.randrange(450_000)  # 0.05 to 0.5 ms one way
                    self._links[way, h, n] = (rng, latency)

    def delays(self, way: str, host: int, node: int, lossless: bool = False) -> tuple[int, ...]:
        """Delivery delays of one message in direction `way` ("req", "rep", or "pub" for
        a node's release notices) of the link between `host` and `node`: () lost, two
        values duplicated."""
        rng, latency = self._links[way, host, node]
        loss, dup, long_p = self.weather
        if loss and not lossless and rng.random() < loss:
            return ()
        first = latency + int(rng.random() * latency)
        if long_p and rng.random() < long_p:
            first += rng.randrange(self.long_max_ns)
        if dup and not lossless and rng.random() < dup:
            return first, latency + int(rng.random() * 4 * latency)
        return (first,)


class StoreModel:
    """The protected resource: per lock name a value under a fencing token. Reads and
    writes present the holder's token; one below the highest the store has seen is
    refused, and an accepted one raises the highest. (`lockd store` differs: its Read
    takes no token, and a read-modify-write is made safe by CompareAndSet instead; the
    model fences reads so that a lost write can only come from the lock service.)

    Each write's value is the id of that write and remembers the value it was based on
    (the read before it), so the chain from the final value lists every write that was
    not lost."""

    def __init__(self) -> None:
        self.highest: dict[bytes, int] = {}
        self.value: dict[bytes, int | None] = {}
        self.based_on: dict[int, int | None] = {}
        # Accepted operations in order: (true time, name, lease, token, kind, write id).
        self.accepted: list[tuple[int, bytes, bytes, int, str, int]] = []
        self.refused = 0

    def read(self, now: int, name: bytes, lease: bytes, token: int) -> tuple[bool, int | None]:
        """A fenced read: (accepted, value)."""
        if token < self.highest.get(name, 0):
            self.refused += 1
            return False, None
        self.highest[name] = token
        self.accepted.append((now, name, lease, token, "read", 0))
        return True, self.value.get(name)

    def write(
        self, now: int, name: bytes, lease: bytes, token: int, write_id: int, based_on: int | None
    ) -> bool:
        """A fenced write of value `write_id`: accepted?"""
        if token < self.highest.get(name, 0):
            self.refused += 1
            return False
        self.highest[name] = token
        self.value[name] = write_id
        self.based_on[write_id] = based_on
        self.accepted.append((now, name, lease, token, "write", write_id))
        return True

    def chain(self, name: bytes) -> set[int]:
        """Every write the final value of `name` descends from."""
        seen: set[int] = set()
        value = self.value.get(name)
        while value is not None and value not in seen:
            seen.add(value)
            value = self.based_on.get(value)
        return seen
