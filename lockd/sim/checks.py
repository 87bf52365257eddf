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

Elections are locks, so one leader per term is token-unique, terms increasing in real
time is token-monotonic, and a deposed leader's write refused is stale-write (leaders
write with their term). Beyond those:

- leader-explained: every leader a read found (term, value) is a term granted on that
  election, with a value that term's leader wrote.
- leader-fresh: a read that starts after a leader's record was on a quorum (its
  Campaign returned), or after another read returned a term, never finds a smaller one.
- observe-order: what each observer is sent never goes back in term, and a term repeats
  only with a new value.
"""

from __future__ import annotations

import dataclasses

from lockd.sim.world import MS, StoreModel

__all__ = ["PROPERTIES", "Grant", "History", "Read", "Violation", "check", "fmt_ns"]

PROPERTIES = (
    "token-unique",
    "token-monotonic",
    "stale-write",
    "lost-write",
    "leader-explained",
    "leader-fresh",
    "observe-order",
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
class Read:
    """A read of an election's leader from the nodes, in true time: what it found
    (`term` None: no leader), and whether it was sent to its observer (an Observe call,
    numbered in the run)."""

    name: bytes
    client: int
    observer: int
    started: int
    ended: int
    term: int | None
    value: bytes
    sent: bool

    def __str__(self) -> str:
        found = f"term {self.term} {self.value.decode()!r}" if self.term else "no leader"
        return (
            f"c{self.client}'s read of {self.name.decode()} "
            f"[{fmt_ns(self.started)}, {fmt_ns(self.ended)}]: {found}"
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
    proclaimed: dict[tuple[bytes, int], set[bytes]] = dataclasses.field(default_factory=dict)
    """The values each leader wrote: (election lock, term) -> values."""
    led: list[tuple[int, bytes, int]] = dataclasses.field(default_factory=list)
    """Leader records known on a quorum: (true time, election lock, term)."""
    reads: list[Read] = dataclasses.field(default_factory=list)
    observers: int = 0
    """Observe calls so far (numbering them)."""

    def end_lease(self, lease: bytes, at: int) -> None:
        """The window of the grant of `lease` ends at `at` (true time) if not before."""
        for grant in reversed(self.grants):
            if grant.lease == lease:
                grant.end = min(grant.end, at)
                return

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
    out += _leaders(history)
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


def _leaders(history: History) -> list[Violation]:
    out: list[Violation] = []
    granted = {(g.name, g.token) for g in history.grants}
    for r in history.reads:
        if r.term is None:
            continue
        if (r.name, r.term) not in granted:
            detail = "a term never granted"
        elif r.value not in history.proclaimed.get((r.name, r.term), set()):
            detail = "a value that term's leader never wrote"
        else:
            continue
        out.append(Violation("leader-explained", r.ended, f"{r} found {detail}"))
    # Real time: sweep reads by start over what was known, by the time it was.
    known = sorted(
        [(at, name, term, f"term {term}'s record on a quorum") for at, name, term in history.led]
        + [(r.ended, r.name, r.term, str(r)) for r in history.reads if r.term is not None]
    )
    best: dict[bytes, tuple[int, str]] = {}
    i = 0
    for r in sorted(history.reads, key=lambda r: r.started):
        while i < len(known) and known[i][0] < r.started:
            _, name, term, why = known[i]
            if term > best.get(name, (0, ""))[0]:
                best[name] = (term, why)
            i += 1
        newer = best.get(r.name)
        if r.term is not None and newer is not None and r.term < newer[0]:
            out.append(
                Violation("leader-fresh", r.ended, f"{r} is older than {newer[1]} before it")
            )
    last: dict[int, Read] = {}
    for r in sorted((r for r in history.reads if r.sent), key=lambda r: r.ended):
        seen = last.get(r.observer)
        assert r.term is not None
        if seen is not None:
            assert seen.term is not None
            if r.term < seen.term or (r.term == seen.term and r.value == seen.value):
                out.append(Violation("observe-order", r.ended, f"{r} was sent after {seen}"))
        last[r.observer] = r
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
