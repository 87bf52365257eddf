"""ForceRelease: an operator takes a lock back, with an admin credential (never a lease id).

The credential is checked by `lockd.admin.admin_identity` (the admin token, or an admin
client certificate), as the store's ResetFence does. The lock is
deleted on every node (`lockd_force_release`, which publishes on `lockd:released` like a
release), so waiters move on and the next grant's larger token supersedes the removed
holder at fenced storage; the holder's watchdog finds the lease gone at its next renewal.
"""

from __future__ import annotations

import asyncio
import logging

from lockd import errors
from lockd.core import lock_key
from lockd.errors import ErrorReason
from lockd.gateway.locks import LockManager
from lockd.gateway.nodes import NodeError

__all__ = ["ForceReleased", "force_release"]

log = logging.getLogger("lockd.gateway")


class ForceReleased:
    """What a forced release did: nodes that held the lock, the highest counter seen."""

    def __init__(self, released: int, answered: int, counter: int) -> None:
        self.released = released
        self.answered = answered
        self.counter = counter


async def force_release(manager: LockManager, name: bytes, who: str) -> ForceReleased:
    """Delete lock `name` on every node whatever lease holds it, and log it (WARNING)."""
    key = lock_key(name)

    async def one(index: int) -> tuple[int, int] | None:
        try:
            reply = await asyncio.wait_for(
                manager.nodes[index].fcall(b"lockd_force_release", [key], []),
                manager.node_timeout_s,
            )
        except (NodeError, TimeoutError):
            return None
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        released, counter = reply
        if not isinstance(released, int) or not isinstance(counter, int):
            return None
        return released, counter

    answers = [a for a in await asyncio.gather(*(one(i) for i in range(len(manager.nodes)))) if a]
    if not answers:
        raise errors.unavailable(
            ErrorReason.QUORUM_UNAVAILABLE, "no node answered the forced release"
        )
    outcome = ForceReleased(sum(r for r, _ in answers), len(answers), max(c for _, c in answers))
    manager.on_release(key)  # wake this gateway's waiters now (the nodes publish too)
    log.warning(
        "forced release of lock %r by %s: held on %d of %d answering nodes, fencing "
        "counter (the removed holder's token, or more) %d",
        name.decode(errors="replace"),
        who,
        outcome.released,
        outcome.answered,
        outcome.counter,
    )
    return outcome
