"""Generators: what to do next, decided from the seed alone (no clocks, no I/O).

`Workload` gives one worker its fenced-counter cycles; `schedule` lays out the nemesis's
faults for a whole run; the partition shapes are pure functions of the cluster's size and
a random source. The same seed gives the same cycles, faults and shapes: a run is
described by its seed, though real processes make its timing differ.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

__all__ = [
    "FAULTS",
    "SHAPES",
    "ClockStep",
    "Cycle",
    "Fault",
    "Workload",
    "clock_offsets",
    "parse_nemeses",
    "partition_links",
    "schedule",
]

FAULTS = ("kill", "power-loss", "pause", "clock", "partition", "disk")
"""Nemesis kinds, in the order `--nemesis all` lists them."""
SHAPES = ("one", "minority", "majority", "majorities-ring", "bridge", "delay", "loss")
"""Partition-nemesis shapes: five cut patterns of gateway-node links, then degraded links."""

SAFE_DRIFT = 0.005
"""Largest clock-rate error the clock nemesis applies (gateways allow 1% + 2 ms)."""
DISK_ERRORS = ("ENOSPC", "EIO", "EPERM")
"""What the disk nemesis makes writes fail with: a full disk, a dying one, `chattr +i`."""

Link = tuple[int, int]  # (gateway, node)


def _rng(seed: int, *scope: object) -> random.Random:
    """An independent, reproducible random source for one purpose of one run."""
    return random.Random("/".join(str(s) for s in (seed, *scope)))


@dataclasses.dataclass(frozen=True, slots=True)
class Cycle:
    """One pass of the fenced-counter loop: idle, acquire (waiting up to `wait_s`),
    then inside the lock claim, read, think, write value+1, release."""

    key: str
    idle_s: float
    wait_s: float
    think_s: float


class Workload:
    """One worker's cycles, reproducible from (seed, worker)."""

    def __init__(
        self,
        seed: int,
        worker: int,
        keys: Sequence[str],
        *,
        ttl_s: float,
        think_max_s: float,
        idle_max_s: float = 0.05,
    ) -> None:
        if not keys:
            raise ValueError("the workload needs at least one key")
        self.keys = list(keys)
        self.ttl_s = ttl_s
        self.think_max_s = think_max_s
        self.idle_max_s = idle_max_s
        self._rng = _rng(seed, "worker", worker)

    def next(self) -> Cycle:
        """The next cycle."""
        r = self._rng
        return Cycle(
            key=r.choice(self.keys),
            idle_s=r.uniform(0.0, self.idle_max_s),
            # Mostly short waits, so attempts keep coming while a lock is held; some long.
            wait_s=r.choice((0.1, 0.25, 0.5, 2 * self.ttl_s)),
            think_s=r.uniform(0.0, self.think_max_s),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ClockStep:
    """One clock action of a clock fault, `at_s` after the fault starts: `rate` sets the
    node's clock rate, `jump` steps its wall clock by `value` ms, `offset` sets it."""

    at_s: float
    node: int
    op: str
    value: float


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One nemesis window: `kind` starts `at_s` after the run began, heals `duration_s`
    later. Which fields matter depends on the kind."""

    kind: str
    at_s: float
    duration_s: float
    nodes: tuple[int, ...] = ()
    gateways: tuple[int, ...] = ()
    shape: str = ""
    links: tuple[Link, ...] = ()
    delay_ms: float = 0.0
    loss: float = 0.0
    clock: tuple[ClockStep, ...] = ()
    workers: int = 0
    errno: str = ""

    def describe(self) -> dict[str, Any]:
        """The fault as JSON data (what the history records)."""
        out: dict[str, Any] = {"fault": self.kind, "duration_s": round(self.duration_s, 3)}
        if self.nodes:
            out["nodes"] = list(self.nodes)
        if self.gateways:
            out["gateways"] = list(self.gateways)
        if self.shape:
            out["shape"] = self.shape
        if self.links:
            out["links"] = [list(link) for link in self.links]
        if self.delay_ms:
            out["delay_ms"] = round(self.delay_ms, 1)
        if self.loss:
            out["loss"] = round(self.loss, 3)
        if self.clock:
            out["clock"] = [
                {"at_s": round(s.at_s, 3), "node": s.node, "op": s.op, "value": round(s.value, 4)}
                for s in self.clock
            ]
        if self.workers:
            out["workers"] = self.workers
        if self.errno:
            out["errno"] = self.errno
        return out


def clock_offsets(seed: int, nodes: int, spread_ms: float = 10_000.0) -> list[float]:
    """Each node's wall-clock offset for the whole run (nodes disagree on the time)."""
    r = _rng(seed, "clock-offsets")
    return [round(r.uniform(-spread_ms, spread_ms), 3) for _ in range(nodes)]


# -- partition shapes ------------------------------------------------------------------------


def _all_links(gateways: int, nodes: Sequence[int]) -> set[Link]:
    return {(g, n) for g in range(gateways) for n in nodes}


def partition_links(shape: str, gateways: int, nodes: int, rng: random.Random) -> frozenset[Link]:
    """The gateway-node links a partition `shape` cuts (or degrades, for delay and loss).

    one / minority / majority: that many nodes cut off from every gateway (majority leaves
    no quorum). majorities-ring: each gateway sees a different majority of the nodes.
    bridge: the nodes split in two halves and a bridge node; even gateways see one half,
    odd gateways the other, all see the bridge. delay / loss: a random half or more of the
    links.
    """
    order = list(range(nodes))
    rng.shuffle(order)
    quorum = nodes // 2 + 1
    if shape == "one":
        return frozenset(_all_links(gateways, order[:1]))
    if shape == "minority":
        return frozenset(_all_links(gateways, order[: max(1, quorum - 1)]))
    if shape == "majority":
        return frozenset(_all_links(gateways, order[:quorum]))
    if shape == "majorities-ring":
        cut: set[Link] = set()
        for g in range(gateways):
            seen = {order[(g + j) % nodes] for j in range(quorum)}
            cut |= {(g, n) for n in range(nodes) if n not in seen}
        return frozenset(cut)
    if shape == "bridge":
        half = (nodes - 1) // 2
        sides = (order[:half], order[half + 1 :])
        cut = set()
        for g in range(gateways):
            cut |= {(g, n) for n in sides[(g + 1) % 2]}
        return frozenset(cut)
    if shape in ("delay", "loss"):
        links = sorted(_all_links(gateways, order))
        return frozenset(rng.sample(links, rng.randint(max(1, len(links) // 2), len(links))))
    raise ValueError(f"unknown partition shape {shape!r}; known: {', '.join(SHAPES)}")


# -- the nemesis schedule --------------------------------------------------------------------


def _fault(
    kind: str, at: float, r: random.Random, nodes: int, gateways: int, ttl_s: float
) -> Fault:
    quorum = nodes // 2 + 1
    if kind == "kill":
        if gateways and r.random() < 0.3:
            return Fault(kind, at, r.uniform(1.0, 3.0), gateways=(r.randrange(gateways),))
        count = r.choice((1, 1, 2, quorum))
        return Fault(
            kind, at, r.uniform(1.0, 4.0), nodes=tuple(sorted(r.sample(range(nodes), count)))
        )
    if kind == "power-loss":
        count = r.choice((1, quorum, nodes))
        return Fault(
            kind, at, r.uniform(0.5, 3.0), nodes=tuple(sorted(r.sample(range(nodes), count)))
        )
    if kind == "pause":
        # Just past the lease (the successor is mid-cycle when the sleeper wakes) or long.
        factor = r.uniform(1.0, 1.25) if r.random() < 0.5 else r.uniform(2.0, 3.0)
        return Fault(kind, at, factor * ttl_s, workers=1)
    if kind == "clock":
        duration = r.uniform(3.0, 6.0)
        steps: list[ClockStep] = []
        for node in range(nodes):
            if r.random() < 0.6:
                steps.append(
                    ClockStep(0.0, node, "rate", r.uniform(1 - SAFE_DRIFT, 1 + SAFE_DRIFT))
                )
        t = r.uniform(0.0, 0.5)
        while t < duration - 0.5:
            # Steps of the wall clock: mostly forward past the TTL, on a majority or more.
            hit = r.sample(range(nodes), r.choice((1, quorum, quorum, nodes)))
            forward = r.random() < 0.8
            for node in sorted(hit):
                ms = (
                    r.uniform(1.5, 5.0) * ttl_s * 1000
                    if forward
                    else -r.uniform(0.2, 1.0) * ttl_s * 1000
                )
                steps.append(ClockStep(round(t, 3), node, "jump", ms))
            t += r.uniform(0.5, 1.5)
        return Fault(kind, at, duration, clock=tuple(steps))
    if kind == "partition":
        shape = r.choice(SHAPES)
        links = tuple(sorted(partition_links(shape, max(1, gateways), nodes, r)))
        delay = r.uniform(50.0, 400.0) if shape == "delay" else 0.0
        loss = r.uniform(0.05, 0.3) if shape == "loss" else 0.0
        return Fault(
            kind, at, r.uniform(3.0, 6.0), shape=shape, links=links, delay_ms=delay, loss=loss
        )
    if kind == "disk":
        # Writes fail on a minority: those nodes turn read-only (MISCONF), the rest serve.
        count = r.choice((1, nodes - quorum))
        return Fault(
            kind,
            at,
            r.uniform(2.0, 5.0),
            nodes=tuple(sorted(r.sample(range(nodes), count))),
            errno=r.choice(DISK_ERRORS),
        )
    raise ValueError(f"unknown nemesis {kind!r}; known: {', '.join(FAULTS)}")


def parse_nemeses(text: str) -> tuple[str, ...]:
    """The fault kinds of a `--nemesis` value: comma-separated kinds, `all` or `none`."""
    if text.strip() in ("all", ""):
        return FAULTS
    if text.strip() == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        raise ValueError(
            f"unknown nemesis {', '.join(unknown)}; known: {', '.join(FAULTS)}, all, none"
        )
    return kinds


def schedule(
    seed: int,
    faults: Sequence[str],
    time_limit_s: float,
    *,
    nodes: int,
    gateways: int,
    ttl_s: float,
    start_s: float = 2.0,
) -> list[Fault]:
    """Faults one after another until `time_limit_s`: a quiet gap of 1-3 s, then a fault
    of a kind drawn from `faults` (each kind in turn, in a shuffled order per round).
    Every fault heals by `time_limit_s`; after it the run has its healed phase."""
    for kind in faults:
        if kind not in FAULTS:
            raise ValueError(f"unknown nemesis {kind!r}; known: {', '.join(FAULTS)}")
    r = _rng(seed, "nemesis")
    out: list[Fault] = []
    at = start_s
    kinds: list[str] = []
    for _ in range(10_000):  # bounded: each fault moves `at` forward by >= 1 s
        if not faults:
            break
        if not kinds:
            kinds = list(dict.fromkeys(faults))
            r.shuffle(kinds)
        fault = _fault(kinds.pop(), at, r, nodes, gateways, ttl_s)
        if fault.at_s + fault.duration_s > time_limit_s:
            break
        out.append(fault)
        at = fault.at_s + fault.duration_s + r.uniform(1.0, 3.0)
    return out
