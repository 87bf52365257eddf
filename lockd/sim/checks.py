"""What a run recorded, and the properties checked on it (Jepsen's checkers: history in,
violations out).

- token-unique: no two grants of a lock share a fencing token.
- token-monotonic: a grant whose attempt started after another grant was decided (in
  true time) has the larger token.
- stale-write: the store never accepts a write after it accepted an operation of a
  different lease with a token at least as large.
- lost-write: every write the store acknowledged is in the final value's history.
- liveness: once the network heals and the nodes are back, each lock is granted within
  a bound.
- overlap: the validity windows of different holders never overlap in true time —
  Redlock's own promise, so only for holders that were not paused and only in runs whose
  clock drift stayed within the bound.
"""

from __future__ import annotations

import dataclasses

from lockd.sim.world import MS, StoreModel

__all__ = ["PROPERTIES", "Grant", "History", "Violation", "check", "fmt_ns"]

PROPERTIES = (
    "token-unique",
    "token-monotonic",
    "stale-write",
    "lost-write",
    "liveness",
    "overlap",
)


def fmt_ns(ns: int) -> str:
    """True time for people: milliseconds with one decimal."""
    return f"{ns / MS:.1f}ms"


@dataclasses.dataclass(slots=True)
class Grant:
    """One granted lease, with its validity window in true time: from the decision to
    `end` (when the holder's own clock reaches its deadline, or earlier when it releases
    or learns the lease is lost). `tainted`: the holder was paused during the attempt or
    the window, so its clock lied and Redlock promises nothing about the window."""

    name: bytes
    client: int
    lease: bytes
    token: int
    started: int
    decided: int
    end: int
    tainted: bool = False

    def __str__(self) -> str:
        return (
            f"c{self.client} token {self.token} on {self.name.decode()} "
            f"[{fmt_ns(self.decided)}, {fmt_ns(self.end)})"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    """A property that failed, when (true time) and how."""

    prop: str
    at_ns: int
    detail: str

    def __str__(self) -> str:
        return f"{self.prop} at {fmt_ns(self.at_ns)}: {self.detail}"


@dataclasses.dataclass(slots=True)
class History:
    """Everything the checkers look at, plus a readable trace when `tracing`."""

    tracing: bool = False
    grants: list[Grant] = dataclasses.field(default_factory=list)
    acked: list[tuple[int, bytes, int, int]] = dataclasses.field(default_factory=list)
    """Acknowledged writes: (true time, lock name, write id, client)."""
    trace: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    attempts: int = 0

    def note(self, at: int, who: str, text: str) -> None:
        """Add a trace line (call only when `tracing`)."""
        self.trace.append((at, who, text))


def check(
    history: History,
    store: StoreModel,
    overlap_checked: bool,
    liveness: list[Violation],
) -> list[Violation]:
    """Every property, in the order above; safety first."""
    out: list[Violation] = []
    out += _tokens(history.grants)
    out += _stale_writes(store)
    out += _lost_writes(history, store)
    if overlap_checked:
        out += _overlaps(history.grants)
    out += liveness
    return out


def _by_name(grants: list[Grant]) -> dict[bytes, list[Grant]]:
    out: dict[bytes, list[Grant]] = {}
    for g in grants:
        out.setdefault(g.name, []).append(g)
    return out


def _tokens(grants: list[Grant]) -> list[Violation]:
    out: list[Violation] = []
    for name, gs in sorted(_by_name(grants).items()):
        seen: dict[int, Grant] = {}
        for g in sorted(gs, key=lambda g: g.decided):
            first = seen.setdefault(g.token, g)
            if first is not g:
                out.append(
                    Violation(
                        "token-unique",
                        g.decided,
                        f"token {g.token} of {name.decode()} granted twice: to {first} and to {g}",
                    )
                )
        # Real-time order: sweep attempts by start time over grants by decision time.
        decided = sorted(gs, key=lambda g: g.decided)
        best: Grant | None = None
        i = 0
        for g in sorted(gs, key=lambda g: g.started):
            while i < len(decided) and decided[i].decided < g.started:
                if best is None or decided[i].token > best.token:
                    best = decided[i]
                i += 1
            if best is not None and g.token <= best.token:
                out.append(
                    Violation(
                        "token-monotonic",
                        g.decided,
                        f"{g} (attempt started at {fmt_ns(g.started)}) is not above "
                        f"{best}, decided before that attempt started",
                    )
                )
    return out


def _stale_writes(store: StoreModel) -> list[Violation]:
    out: list[Violation] = []
    top: dict[bytes, tuple[int, set[bytes]]] = {}  # name -> (highest token, its leases)
    for at, name, lease, token, kind, write_id in store.accepted:
        highest, leases = top.get(name, (0, set()))
        if token > highest:
            top[name] = (token, {lease})
            continue
        if kind == "write" and leases - {lease}:
            out.append(
                Violation(
                    "stale-write",
                    at,
                    f"write {write_id} on {name.decode()} with token {token} accepted after "
                    f"another lease used token {highest}",
                )
            )
        leases.add(lease)
    return out


def _lost_writes(history: History, store: StoreModel) -> list[Violation]:
    out: list[Violation] = []
    chains: dict[bytes, set[int]] = {}
    for at, name, write_id, client in history.acked:
        chain = chains.get(name)
        if chain is None:
            chain = chains[name] = store.chain(name)
        if write_id not in chain:
            out.append(
                Violation(
                    "lost-write",
                    at,
                    f"write {write_id} of c{client} on {name.decode()} was acknowledged, "
                    "then overwritten by a write that had not seen it",
                )
            )
    return out


def _overlaps(grants: list[Grant]) -> list[Violation]:
    out: list[Violation] = []
    for name, gs in sorted(_by_name(grants).items()):
        latest: Grant | None = None  # the untainted window reaching furthest so far
        for g in sorted((g for g in gs if not g.tainted), key=lambda g: g.decided):
            if latest is not None and g.decided < latest.end and g.lease != latest.lease:
                out.append(
                    Violation(
                        "overlap",
                        g.decided,
                        f"validity windows overlap on {name.decode()} for "
                        f"{fmt_ns(latest.end - g.decided)}: {latest} and {g}",
                    )
                )
            if latest is None or g.end > latest.end:
                latest = g
    return out
