"""Acquire, renew and release as sans-I/O state machines (DESIGN §4).

A driver calls `start(now)`, sends every returned `Send`, feeds each answer back with
`receive(tag, reply, now)`, and calls `tick(now)` at `next_deadline()` so unanswered
requests count as failures. When `outcome` is set the machine is finished; `Send`s it
returns after that (releases of partial acquisitions) are fire-and-forget.
"""

from __future__ import annotations

from lockd.core.messages import (
    AcquireCall,
    AcquireReply,
    Call,
    ExtendCall,
    FenceCall,
    FenceReply,
    Granted,
    NodeFailure,
    NodeReply,
    NotGranted,
    Reason,
    ReleaseCall,
    Released,
    Renewed,
    RenewFailed,
    Send,
    fence_key,
    lock_key,
)
from lockd.core.quorum import RENEW_ROUNDS, quorum, renew_again, validity_ns
from lockd.units import MS

__all__ = ["Acquire", "Release", "Renew"]

Outcome = Granted | NotGranted | Renewed | RenewFailed | Released
TIMEOUT = NodeFailure("timed out", timed_out=True)


class _Machine:
    """Rounds of one call broadcast to every node, with per-request deadlines."""

    def __init__(self, nodes: int, node_timeout_ns: int) -> None:
        if nodes < 1:
            raise ValueError("need at least one node")
        self.nodes = nodes
        self.quorum = quorum(nodes)
        self.node_timeout_ns = node_timeout_ns
        self.outcome: Outcome | None = None
        self._next_tag = 0
        self._waiting: dict[int, tuple[int, int]] = {}  # tag -> (node, deadline) this round

    def _broadcast(self, now: int, calls: list[Call]) -> list[Send]:
        """Start a round: one call per node; earlier rounds' answers are ignored."""
        self._waiting.clear()
        sends = []
        deadline = now + self.node_timeout_ns
        for node, call in enumerate(calls):
            tag = self._next_tag
            self._next_tag += 1
            self._waiting[tag] = (node, deadline)
            sends.append(Send(node, tag, call, deadline))
        return sends

    def _fire_and_forget(self, now: int, calls: list[Call]) -> list[Send]:
        self._waiting.clear()
        deadline = now + self.node_timeout_ns
        sends = [Send(node, -1, call, deadline) for node, call in enumerate(calls)]
        return sends

    def next_deadline(self) -> int | None:
        """When `tick` must be called next (None: nothing outstanding)."""
        if self.outcome is not None or not self._waiting:
            return None
        return min(deadline for _, deadline in self._waiting.values())

    def receive(self, tag: int, reply: NodeReply, now: int) -> list[Send]:
        """A node answered request `tag`."""
        entry = self._waiting.pop(tag, None)
        if entry is None or self.outcome is not None:
            return []
        return self._on_reply(entry[0], reply, now)

    def tick(self, now: int) -> list[Send]:
        """Count requests past their deadline as failed."""
        sends: list[Send] = []
        for tag, (node, deadline) in list(self._waiting.items()):
            if self.outcome is not None:
                break
            if deadline <= now and tag in self._waiting:
                del self._waiting[tag]
                sends += self._on_reply(node, TIMEOUT, now)
        return sends

    def _on_reply(self, node: int, reply: NodeReply, now: int) -> list[Send]:
        raise NotImplementedError


class Acquire(_Machine):
    """One acquisition attempt: phase 1 SET NX on all nodes, phase 2 fencing.

    Granted iff a quorum set the key and then a quorum accepted token T, with validity
    left. Any failure releases every node (a timed-out node may have set the key).

    The `unsafe_*` switches exist only for the simulator's planted bugs (`lockd sim
    --unsafe`): `unsafe_single_phase_token` skips phase 2 and takes as token the largest
    counter of the granting nodes (with engines whose `lockd_acquire` increments it:
    `EngineConfig.unsafe_single_phase_token`); `unsafe_no_drift` drops the drift term.
    """

    def __init__(
        self,
        name: bytes,
        ttl_ms: int,
        lease: bytes,
        nodes: int,
        node_timeout_ns: int,
        max_fence_rounds: int = 5,
        *,
        unsafe_single_phase_token: bool = False,
        unsafe_no_drift: bool = False,
        meta: bytes | None = None,
    ) -> None:
        super().__init__(nodes, node_timeout_ns)
        self.meta = meta
        """The owner record written with the lock on each node (`encode_meta`), if any."""
        self.name = name
        self.ttl_ms = ttl_ms
        self.lease = lease
        self.max_fence_rounds = max_fence_rounds
        self.unsafe_single_phase_token = unsafe_single_phase_token
        self.unsafe_no_drift = unsafe_no_drift
        self._granting_counter = 0  # single-phase token: largest counter of granting nodes
        self.started_ns = 0
        self._lock_key = lock_key(name)
        self._fence_key = fence_key(name)
        self._fencing = False
        self._acquired: set[int] = set()
        self._held = 0
        self._restarting: list[int] = []
        self._failures: list[str] = []
        self._answered = 0
        self._counter = 0  # highest counter any node reported
        self._token = 0
        self._accepted = 0
        self._rejected = 0
        self._fence_round = 0

    def start(self, now: int) -> list[Send]:
        """Phase 1: `lockd_acquire` on every node in parallel."""
        self.started_ns = now
        call = AcquireCall(self._lock_key, self._fence_key, self.lease, self.ttl_ms, self.meta)
        return self._broadcast(now, [call] * self.nodes)

    def _on_reply(self, node: int, reply: NodeReply, now: int) -> list[Send]:
        if self._fencing:
            return self._on_fence_reply(reply, now)
        self._answered += 1
        if isinstance(reply, AcquireReply):
            self._counter = max(self._counter, reply.counter)
            if reply.acquired:
                self._acquired.add(node)
                self._granting_counter = max(self._granting_counter, reply.counter)
            else:
                self._held += 1
        elif isinstance(reply, NodeFailure) and reply.restart_delay_ms is not None:
            self._restarting.append(reply.restart_delay_ms)
        else:
            self._failures.append(reply.message if isinstance(reply, NodeFailure) else repr(reply))
        if len(self._acquired) >= self.quorum:
            validity = validity_ns(self.ttl_ms, self.started_ns, now, self.unsafe_no_drift)
            if validity <= 0:
                return self._fail(now, Reason.TOO_SLOW, "quorum reached after the TTL ran out")
            if self.unsafe_single_phase_token:
                self.outcome = Granted(self.lease, self._granting_counter, validity, now)
                self._waiting.clear()
                return []
            return self._start_fence_round(now)
        if self.nodes - self._answered + len(self._acquired) < self.quorum:
            return self._fail_phase1(now)
        return []

    def _fail_phase1(self, now: int) -> list[Send]:
        got, held, need = len(self._acquired), self._held, self.quorum
        if got + held >= need:
            return self._fail(
                now, Reason.HELD, f"held by another lease on {held} of {self.nodes} nodes"
            )
        if self._restarting and got + held + len(self._restarting) >= need:
            wait_ms = sorted(self._restarting)[need - got - held - 1]
            return self._fail(
                now,
                Reason.RESTARTING,
                f"{len(self._restarting)} of {self.nodes} nodes are in their "
                f"delayed restart; enough are back in {wait_ms} ms",
                wait_ms * MS,
            )
        failed = self.nodes - got - held
        first = self._failures[0] if self._failures else "restarting"
        return self._fail(
            now,
            Reason.NO_QUORUM,
            f"{failed} of {self.nodes} nodes failed (first: {first}); need {need}",
        )

    def _start_fence_round(self, now: int) -> list[Send]:
        self._fencing = True
        self._fence_round += 1
        # Larger than any counter seen and than the last round's token, which unanswered
        # nodes may have accepted: each round's token is new.
        self._token = max(self._counter, self._token) + 1
        self._accepted = 0
        self._rejected = 0
        return self._broadcast(now, [FenceCall(self._fence_key, self._token)] * self.nodes)

    def _on_fence_reply(self, reply: NodeReply, now: int) -> list[Send]:
        if isinstance(reply, FenceReply):
            self._counter = max(self._counter, reply.counter)
            if reply.accepted:
                self._accepted += 1
            else:
                self._rejected += 1
        else:
            self._rejected += 1
        if self._accepted >= self.quorum:
            validity = validity_ns(self.ttl_ms, self.started_ns, now, self.unsafe_no_drift)
            if validity <= 0:
                return self._fail(now, Reason.TOO_SLOW, "fenced after the TTL ran out")
            self.outcome = Granted(self.lease, self._token, validity, now)
            self._waiting.clear()
            return []
        if self.nodes - self._rejected < self.quorum:
            if self._fence_round >= self.max_fence_rounds:
                return self._fail(
                    now,
                    Reason.FENCE_CONTENDED,
                    f"no token accepted by a quorum in {self._fence_round} rounds",
                )
            if validity_ns(self.ttl_ms, self.started_ns, now, self.unsafe_no_drift) <= 0:
                return self._fail(now, Reason.TOO_SLOW, "fencing outlasted the TTL")
            return self._start_fence_round(now)
        return []

    def _fail(self, now: int, reason: Reason, detail: str, retry_after_ns: int = 0) -> list[Send]:
        self.outcome = NotGranted(reason, detail, retry_after_ns)
        return self._fire_and_forget(now, [ReleaseCall(self._lock_key, self.lease)] * self.nodes)


class Renew(_Machine):
    """Extend a held lease on every node; renewed on a quorum with validity left,
    otherwise lost (and released everywhere, so nobody waits on its leftovers).

    A round that misses the quorum only because nodes did not answer in time is sent
    again to every node (`renew_again`: up to `max_rounds`, while an answer could still
    leave validity) before the lease is declared lost: a burst that delays answers does
    not cost a lease that the nodes still hold. Validity always counts from the first
    round's start. `unsafe_no_drift` (simulator only) drops the drift term, as in
    `Acquire`. With `meta`, each node that extends also replaces the owner record (an
    election's Proclaim): renewed means a quorum of holders carry the new record."""

    def __init__(
        self,
        name: bytes,
        lease: bytes,
        ttl_ms: int,
        nodes: int,
        node_timeout_ns: int,
        *,
        max_rounds: int = RENEW_ROUNDS,
        unsafe_no_drift: bool = False,
        meta: bytes | None = None,
    ) -> None:
        super().__init__(nodes, node_timeout_ns)
        self.ttl_ms = ttl_ms
        self.lease = lease
        self.meta = meta
        self.max_rounds = max_rounds
        self.unsafe_no_drift = unsafe_no_drift
        self.started_ns = 0
        self.rounds = 0
        self._lock_key = lock_key(name)
        self._ok = 0
        self._not_ok = 0
        self._timed_out = 0
        self._errors: list[str] = []  # this round's error answers (a node's MISCONF, say)

    def start(self, now: int) -> list[Send]:
        """`lockd_extend` on every node."""
        self.started_ns = now
        return self._round(now)

    def _round(self, now: int) -> list[Send]:
        self.rounds += 1
        self._ok = self._not_ok = self._timed_out = 0
        self._errors = []
        return self._broadcast(
            now, [ExtendCall(self._lock_key, self.lease, self.ttl_ms, self.meta)] * self.nodes
        )

    def _on_reply(self, node: int, reply: NodeReply, now: int) -> list[Send]:
        if reply is True:
            self._ok += 1
        else:
            self._not_ok += 1
            if isinstance(reply, NodeFailure):
                if reply.timed_out:
                    self._timed_out += 1
                else:
                    self._errors.append(reply.message)
        validity = validity_ns(self.ttl_ms, self.started_ns, now, self.unsafe_no_drift)
        if self._ok >= self.quorum:
            if validity > 0:
                self.outcome = Renewed(validity, now)
                self._waiting.clear()
                return []
            return self._lost(now, "extended on a quorum, but after the TTL ran out")
        if self.nodes - self._not_ok < self.quorum:
            if renew_again(
                self._ok,
                self._timed_out + len(self._waiting),
                self.quorum,
                self.rounds,
                self.max_rounds,
                validity,
                self.node_timeout_ns,
            ):
                return self._round(now)
            return self._lost(now, self._shortfall())
        return []

    def _shortfall(self) -> str:
        """Why the last round missed its quorum, node by node."""
        tries = f" (in {self.rounds} rounds)" if self.rounds > 1 else ""
        errors = self._errors
        gone = self._not_ok - self._timed_out - len(errors)
        unanswered = self._timed_out + len(self._waiting)
        parts = [f"{gone} no longer held it"] if gone else []
        if errors:
            parts.append(f"{len(errors)} failed (first: {errors[0]})")
        if unanswered:
            parts.append(f"{unanswered} did not answer before the quorum was out of reach")
        cause = "too few nodes could extend it" if errors else "the lease expired or was taken over"
        return (
            f"extended on only {self._ok} of {self.nodes} nodes{tries}: {', '.join(parts)}; {cause}"
        )

    def _lost(self, now: int, detail: str) -> list[Send]:
        self.outcome = RenewFailed(detail)
        return self._fire_and_forget(now, [ReleaseCall(self._lock_key, self.lease)] * self.nodes)


class Release(_Machine):
    """Compare-and-delete on every node; finished when all answered or timed out."""

    def __init__(self, name: bytes, lease: bytes, nodes: int, node_timeout_ns: int) -> None:
        super().__init__(nodes, node_timeout_ns)
        self.lease = lease
        self._lock_key = lock_key(name)
        self._released = 0
        self._answered = 0
        self._done = 0

    def start(self, now: int) -> list[Send]:
        """`lockd_release` on every node."""
        return self._broadcast(now, [ReleaseCall(self._lock_key, self.lease)] * self.nodes)

    def _on_reply(self, node: int, reply: NodeReply, now: int) -> list[Send]:
        self._done += 1
        if not isinstance(reply, NodeFailure):
            self._answered += 1
            self._released += reply is True
        if self._done == self.nodes:
            self.outcome = Released(self._released, self._answered)
        return []
