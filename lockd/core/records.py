"""What a read of the nodes adds up to (pure): a lock's holder and owner record as a
quorum shows it (`merge`), and an election's leader in it (`leader_of`).

Owner records ride with the lock on every node (`meta:{name}`, `encode_meta`). An
election `E` is the lock `election_lock(E)`, and its leader record is the lock's value
`<term>:<value>` (`encode_value`), written by an extend after the grant. The gateway
(Describe, List, Leader, Observe) and the simulator read through these same functions.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from lockd.core.messages import Meta, decode_meta

__all__ = [
    "ELECTION_PREFIX",
    "FOREVER_MS",
    "TERM_DIGITS",
    "Holder",
    "Leader",
    "NodeState",
    "decode_value",
    "election_lock",
    "encode_value",
    "leader_of",
    "merge",
    "supersedes",
]

FOREVER_MS = 2**62
"""The PTTL a lock key without a TTL (written by hand) sorts as: never expiring."""
ELECTION_PREFIX = b"@election/"
"""Lock names under this prefix are elections' (Acquire refuses them)."""
TERM_DIGITS = 20
"""The most digits a term has (2**64 - 1)."""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeState:
    """One node's answer about one lock: PTTL (-2 not held), counter, raw record."""

    pttl_ms: int
    counter: int
    record: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    """A lock as a quorum of nodes sees it, with its owner record."""

    held: bool
    ttl_remaining_ms: int
    fencing_counter: int
    nodes_answered: int
    nodes_holding: int
    meta: Meta | None


def merge(states: Sequence[NodeState], quorum: int) -> Holder:
    """What the answering nodes' states add up to: held when a quorum holds it, TTL left
    until fewer than a quorum do, the highest counter, and the record a quorum of
    holders agree on (the same attempt wrote it on each)."""
    holding = [s for s in states if s.pttl_ms != -2]
    pttls = sorted((s.pttl_ms if s.pttl_ms >= 0 else FOREVER_MS for s in holding), reverse=True)
    held = len(pttls) >= quorum
    meta = None
    records = collections.Counter(s.record for s in holding if s.record is not None)
    if held and records:
        record, count = records.most_common(1)[0]
        meta = decode_meta(record) if count >= quorum else None
    return Holder(
        held=held,
        ttl_remaining_ms=pttls[quorum - 1] if held else 0,
        fencing_counter=max((s.counter for s in states), default=0),
        nodes_answered=len(states),
        nodes_holding=len(holding),
        meta=meta,
    )


# -- elections ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Leader:
    """An election's leader as a quorum of nodes shows it."""

    term: int
    value: bytes
    owner: bytes
    ttl_remaining_ms: int


def election_lock(election: bytes) -> bytes:
    """The lock that holds `election`'s leadership."""
    return ELECTION_PREFIX + election


def encode_value(term: int, value: bytes) -> bytes:
    """The election lock's value: the term, `:`, the candidate's value."""
    return b"%d:%b" % (term, value)


def decode_value(raw: bytes) -> tuple[int, bytes] | None:
    """(term, value) from `encode_value`, or None (a record written before the term was
    known: the candidate has not been told it leads yet)."""
    term, sep, value = raw.partition(b":")
    if not sep or not term.isdigit() or len(term) > TERM_DIGITS:
        return None
    return int(term), value


def leader_of(holder: Holder) -> tuple[Leader | None, bool]:
    """The leader in a read of an election's lock (or None), and whether the lock is held
    by a candidate whose record has no term yet (about to lead: look again soon)."""
    if not holder.held:
        return None, False
    decoded = decode_value(holder.meta.value) if holder.meta is not None else None
    if holder.meta is None or decoded is None:
        return None, True
    term, value = decoded
    return Leader(term, value, holder.meta.owner, holder.ttl_remaining_ms), False


def supersedes(found: Leader, sent: tuple[int, bytes] | None) -> bool:
    """Whether an observer that was last sent `sent` (term, value) is sent `found`: a
    larger term, or a new value in the same term (Observe's order)."""
    if sent is None:
        return True
    term, value = sent
    return found.term > term or (found.term == term and found.value != value)
