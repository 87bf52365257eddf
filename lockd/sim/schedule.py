"""What happens in one run, drawn from its seed before it starts: the setup (clients,
clocks, disks, weather) and a schedule of timed steps, each a client session or a fault.

Generation is pure (a seed in, a `Schedule` out), so a schedule with steps removed is
still a schedule: the shrinker replays subsets of it.
"""

from __future__ import annotations

import dataclasses
import random

from lockd.core.records import election_lock
from lockd.engine import FsyncPolicy

__all__ = [
    "Action",
    "ClockJump",
    "ClockRate",
    "Crash",
    "Envelope",
    "Heal",
    "Job",
    "Observe",
    "Partition",
    "Pause",
    "Schedule",
    "Setup",
    "Step",
    "Storm",
    "generate",
    "rng_for",
]

NODES = 5
ELECTION_RUNS = 0.3
"""The share of runs with an election (campaigns and observers beside the locks)."""


def rng_for(seed: int, stream: str) -> random.Random:
    """The random stream `stream` of run `seed` (seeded by string: stable everywhere)."""
    return random.Random(f"lockd-sim:{seed}:{stream}")


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """The simulator's fixed envelope (the same for every seed)."""

    max_ttl_ms: int = 500
    """Every node's --max-ttl; sessions ask for up to this."""
    drift_bound: float = 0.005
    """Clock rates stay within 1 ± this (both directions: 1% between two clocks, the
    core's drift allowance), except in steps that say `beyond bound`."""
    long_delay_max_ms: int = 1000
    """The longest a delayed message can take (beyond the TTLs: Kleppmann's delay)."""
    max_fence_rounds: int = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Setup:
    """Per-run constants."""

    clients: int
    gateways: int
    """Gateway hosts; client `c` runs on host `c % gateways` (loopback to its gateway)."""
    names: tuple[bytes, ...]
    node_rates: tuple[float, ...]
    host_rates: tuple[float, ...]
    wall_offsets_ms: tuple[int, ...]
    boot_ms: tuple[int, ...]
    fsync: tuple[FsyncPolicy, ...]
    fence_block: int
    node_timeout_ms: int
    retry_cap_ms: int
    loss: float
    dup: float
    long_p: float
    election: bytes | None = None
    """The election lock some sessions campaign for and observe (None: no election)."""

    def describe(self) -> str:
        """One paragraph for traces."""
        rates = " ".join(f"{r:.4f}" for r in self.node_rates)
        hrates = " ".join(f"{r:.4f}" for r in self.host_rates)
        return (
            f"{self.clients} clients on {self.gateways} gateway "
            f"host{'s' if self.gateways > 1 else ''}, locks "
            f"{', '.join(n.decode() for n in self.names)}; "
            f"node clock rates {rates}; gateway host clock rates {hrates}; "
            f"fsync {'/'.join(p.value for p in self.fsync)}; fence block {self.fence_block}; "
            f"node timeout {self.node_timeout_ms} ms; loss {self.loss:.1%}, "
            f"duplication {self.dup:.1%}, long delays {self.long_p:.1%}"
            + (f"; election {self.election.decode()}" if self.election else "")
        )


# -- steps -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A client's unit of work: acquire `name` through its gateway (which waits up to
    `wait_ms`), do `writes` read-then-write rounds on the fenced store over `hold_ms`
    (renewing the lease if `renew`), then release it — or, if not `release`, walk away
    and let it expire. A client does its sessions one at a time, in order.

    A `campaign` is the same on an election's lock, as the gateway's Campaign runs it:
    once granted, the leader record `<term>:<value>` is written with an extend, each
    renewal writes a new value (Proclaim), the writes carry the term, and release is
    Resign."""

    client: int
    name: bytes
    ttl_ms: int
    wait_ms: int
    hold_ms: int
    writes: int
    renew: bool
    release: bool
    campaign: bool = False

    def __str__(self) -> str:
        end = "release" if self.release else "abandon"
        renew = ", renew" if self.renew else ""
        what = "campaign" if self.campaign else "session"
        return (
            f"c{self.client} {what} on {self.name.decode()}: ttl {self.ttl_ms} ms, wait "
            f"{self.wait_ms} ms, hold {self.hold_ms} ms, {self.writes} writes{renew}, {end}"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Observe:
    """A client's session observing election lock `name` for `ms`: it reads the leader
    from the nodes every `every_ms` (as the gateway's Observe poller does) and is sent
    each leader that supersedes the last one it was sent."""

    client: int
    name: bytes
    ms: int
    every_ms: int

    def __str__(self) -> str:
        name = self.name.decode()
        return f"c{self.client} observes {name} for {self.ms} ms, every {self.every_ms} ms"


@dataclasses.dataclass(frozen=True, slots=True)
class Partition:
    """From now on (until the next partition or heal), these (gateway, node) links drop
    every message."""

    cuts: frozenset[tuple[int, int]]
    shape: str

    def __str__(self) -> str:
        return f"partition: {self.shape}"


@dataclasses.dataclass(frozen=True, slots=True)
class Heal:
    """Every link works again."""

    def __str__(self) -> str:
        return "heal the network"


@dataclasses.dataclass(frozen=True, slots=True)
class Crash:
    """Stop `nodes`: cleanly, or by power loss (the unfsynced journal tail is lost);
    each comes back after `down_ms`."""

    nodes: tuple[int, ...]
    clean: bool
    down_ms: int

    def __str__(self) -> str:
        how = "stop cleanly" if self.clean else "crash (power loss)"
        nodes = ",".join(f"n{n}" for n in self.nodes)
        return f"{how} {nodes}, restart after {self.down_ms} ms"


@dataclasses.dataclass(frozen=True, slots=True)
class ClockJump:
    """Step node `node`'s wall clock (an NTP step). Monotonic time does not move."""

    node: int
    delta_ms: int

    def __str__(self) -> str:
        return f"n{self.node} wall clock jumps {self.delta_ms:+d} ms"


@dataclasses.dataclass(frozen=True, slots=True)
class ClockRate:
    """Node `node`'s clocks run at `rate` times true time from now on."""

    node: int
    rate: float
    beyond_bound: bool

    def __str__(self) -> str:
        note = " (beyond the drift bound)" if self.beyond_bound else ""
        return f"n{self.node} clock rate {self.rate:.4f}{note}"


@dataclasses.dataclass(frozen=True, slots=True)
class Pause:
    """Gateway host `host` (its gateway and clients) stops for `ms` (a suspended VM, a
    long GC or SIGSTOP); its clock stops too."""

    host: int
    ms: int

    def __str__(self) -> str:
        return f"pause host g{self.host} for {self.ms} ms"


@dataclasses.dataclass(frozen=True, slots=True)
class Storm:
    """For `ms`, extra loss, duplication and long delays on every node link."""

    ms: int
    loss: float
    dup: float
    long_p: float

    def __str__(self) -> str:
        return (
            f"network storm for {self.ms} ms: +{self.loss:.0%} loss, +{self.dup:.0%} "
            f"duplication, +{self.long_p:.0%} long delays"
        )


Action = Job | Observe | Partition | Heal | Crash | ClockJump | ClockRate | Pause | Storm


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """`action` at `at_ms` of true time; `index` is its place in the full schedule."""

    index: int
    at_ms: int
    action: Action


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A run: setup plus steps (a subset of the generated ones when shrunk)."""

    seed: int
    setup: Setup
    steps: tuple[Step, ...]
    limits: Envelope

    def keep(self, indices: set[int]) -> Schedule:
        """Only the steps whose index is in `indices`."""
        return dataclasses.replace(self, steps=tuple(s for s in self.steps if s.index in indices))


# -- generation --------------------------------------------------------------------------


def generate(seed: int, steps: int, limits: Envelope | None = None) -> Schedule:
    """The schedule of run `seed` with `steps` steps."""
    lim = limits or Envelope()
    rng = rng_for(seed, "schedule")
    bound = lim.drift_bound
    clients = rng.choice((2, 3, 3, 4))
    gateways = rng.choice((1, 2, clients))
    setup = Setup(
        clients=clients,
        gateways=gateways,
        names=(b"a",) if rng.random() < 0.6 else (b"a", b"b"),
        node_rates=tuple(1 + rng.uniform(-bound, bound) for _ in range(NODES)),
        host_rates=tuple(1 + rng.uniform(-bound, bound) for _ in range(gateways)),
        wall_offsets_ms=tuple(rng.randrange(-500, 500) for _ in range(NODES)),
        boot_ms=tuple(rng.randrange(10**9) for _ in range(NODES)),
        fsync=tuple(rng.choice(list(FsyncPolicy)) for _ in range(NODES)),
        fence_block=rng.choice((1, 16, 1024)),
        node_timeout_ms=rng.choice((10, 50, 200)),
        retry_cap_ms=rng.choice((50, 100, 200)),
        loss=rng.choice((0.0, 0.01, 0.05)),
        dup=rng.choice((0.0, 0.01, 0.05)),
        long_p=rng.choice((0.0, 0.001, 0.01)),
    )
    # Elections draw from their own stream, so the rest of a seed's schedule is the same
    # with or without them.
    elections = rng_for(seed, "elections")
    if elections.random() < ELECTION_RUNS:
        setup = dataclasses.replace(setup, election=election_lock(b"e"))
    fault_rate = rng.choice((0.1, 0.2, 0.35))
    weights = {
        "partition": rng.choice((0, 2, 4)),
        "heal": 2,
        "crash": rng.choice((0, 1, 2)),
        "jump": rng.choice((0, 1, 3)),
        "rate": rng.choice((0, 1, 2)),
        "pause": rng.choice((0, 0, 1, 2)),
        "storm": rng.choice((0, 1, 2)),
    }
    kinds = [k for k, w in weights.items() for _ in range(w)]
    wild_clocks = rng.random() < 0.1  # this run's clocks may drift beyond the bound
    gap_ms = rng.choice((30, 60, 120))
    out: list[Step] = []
    t = 0
    for index in range(steps):
        t += int(rng.expovariate(1 / gap_ms))
        if rng.random() < fault_rate:
            action = _fault(rng, rng.choice(kinds), setup, lim, wild_clocks)
        else:
            action = _session(rng, setup, lim)
            if setup.election is not None:
                action = _election(elections, action, setup.election)
        out.append(Step(index, t, action))
    return Schedule(seed, setup, tuple(out), lim)


def _session(rng: random.Random, setup: Setup, lim: Envelope) -> Job:
    ttl = rng.randrange(5, lim.max_ttl_ms // 10 + 1) * 10
    return Job(
        client=rng.randrange(setup.clients),
        name=rng.choice(setup.names),
        ttl_ms=ttl,
        wait_ms=rng.choice((0, rng.randrange(1000))),
        hold_ms=rng.randrange(3 * ttl // 2 + 1),
        writes=rng.randrange(4),
        renew=rng.random() < 0.8,
        release=rng.random() < 0.85,
    )


def _election(rng: random.Random, job: Job, election: bytes) -> Job | Observe:
    """Turn some sessions of a run with an election into campaigns or observers."""
    r = rng.random()
    if r < 0.4:
        return dataclasses.replace(job, name=election, campaign=True)
    if r < 0.6:
        return Observe(job.client, election, rng.randrange(100, 2000), rng.choice((10, 50, 250)))
    return job


def _fault(rng: random.Random, kind: str, setup: Setup, lim: Envelope, wild_clocks: bool) -> Action:
    if kind == "partition":
        return _partition(rng, setup.gateways)
    if kind == "crash":
        r = rng.random()
        count = 1 if r < 0.7 else (3 if r < 0.9 else NODES)
        nodes = tuple(sorted(rng.sample(range(NODES), count)))
        down = rng.choice((0, rng.randrange(100), rng.randrange(2000)))
        return Crash(nodes, rng.random() < 0.25, down)
    if kind == "jump":
        return ClockJump(rng.randrange(NODES), rng.randrange(-2000, 2001))
    if kind == "rate":
        if wild_clocks and rng.random() < 0.3:
            return ClockRate(rng.randrange(NODES), rng.uniform(0.9, 1.1), True)
        bound = lim.drift_bound
        return ClockRate(rng.randrange(NODES), 1 + rng.uniform(-bound, bound), False)
    if kind == "pause":
        return Pause(rng.randrange(setup.gateways), rng.randrange(lim.max_ttl_ms // 2, 2000))
    if kind == "storm":
        return Storm(rng.randrange(100, 2000), rng.uniform(0.1, 0.5), 0.1, 0.05)
    return Heal()


def _partition(rng: random.Random, gateways: int) -> Partition:
    shape = rng.choice(("isolate", "split", "one-gateway", "ring"))
    cuts: set[tuple[int, int]] = set()
    if shape == "isolate":
        lost = rng.sample(range(NODES), rng.choice((1, 2)))
        cuts = {(g, n) for g in range(gateways) for n in lost}
        label = f"nodes {sorted(lost)} cut off from every gateway"
    elif shape == "split":
        label_parts = []
        for g in range(gateways):
            seen = rng.sample(range(NODES), rng.choice((2, 3, 3, 4)))
            cuts |= {(g, n) for n in range(NODES) if n not in seen}
            label_parts.append(f"g{g} sees {sorted(seen)}")
        label = "; ".join(label_parts)
    elif shape == "one-gateway":
        g = rng.randrange(gateways)
        lost = rng.sample(range(NODES), rng.choice((2, 3, 5)))
        cuts = {(g, n) for n in lost}
        label = f"g{g} cut off from nodes {sorted(lost)}"
    else:
        first = rng.randrange(NODES)
        label_parts = []
        for g in range(gateways):
            seen = [(first + g + i) % NODES for i in range(3)]
            cuts |= {(g, n) for n in range(NODES) if n not in seen}
            label_parts.append(f"g{g} sees {sorted(seen)}")
        label = "majorities ring: " + "; ".join(label_parts)
    return Partition(frozenset(cuts), label)
