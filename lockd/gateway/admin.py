"""ForceRelease: an operator takes a lock back, with an admin credential (never a lease id).

The credential is the gateway's admin token (`--admin-token-file`, sent as
`authorization: Bearer <token>` metadata, compared in constant time) or a verified
client certificate (mutual TLS) whose subject CN is one of `--admin-cn`. The lock is
deleted on every node (`lockd_force_release`, which publishes on `lockd:released` like a
release), so waiters move on and the next grant's larger token supersedes the removed
holder at fenced storage; the holder's watchdog finds the lease gone at its next renewal.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import grpc

from lockd import errors
from lockd.core import lock_key
from lockd.errors import ErrorReason, LockdError
from lockd.gateway.config import GatewayConfig
from lockd.gateway.locks import LockManager
from lockd.gateway.nodes import NodeError

__all__ = ["ForceReleased", "admin_identity", "force_release"]

log = logging.getLogger("lockd.gateway")

BEARER = "bearer "


def _denied(message: str) -> LockdError:
    return LockdError(grpc.StatusCode.PERMISSION_DENIED, ErrorReason.NOT_ADMIN, message)


def _read_token(config: GatewayConfig) -> bytes | None:
    """The admin token, read at each use so it can be rotated without a restart."""
    if config.admin_token_file is None:
        return None
    try:
        token = config.admin_token_file.read_bytes().strip()
    except OSError as exc:
        log.error("cannot read the admin token file %s: %s", config.admin_token_file, exc)
        return None
    return token or None


def admin_identity(config: GatewayConfig, context: Any) -> str:
    """Who the caller is as an admin ("admin token" or "certificate CN=..."), or
    PERMISSION_DENIED NOT_ADMIN saying what is missing."""
    given = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            given = value
    token = _read_token(config)
    if given:
        if not given.lower().startswith(BEARER):
            raise _denied("authorization metadata must be `Bearer <admin token>`")
        if token is not None and hmac.compare_digest(given[len(BEARER) :].strip().encode(), token):
            return "admin token"
        raise _denied("the admin token is wrong (or this gateway has none)")
    if config.admin_cns and config.tls_client_ca is not None:
        # Only a certificate verified against --tls-client-ca names anyone.
        auth = context.auth_context() or {}
        for cn in auth.get("x509_common_name", []):
            name = cn.decode(errors="replace") if isinstance(cn, bytes) else str(cn)
            if name in config.admin_cns:
                return f"certificate CN={name}"
        names = ", ".join(cn.decode(errors="replace") for cn in auth.get("x509_common_name", []))
        raise _denied(f"client certificate CN {names or '(none)'} is not an admin (--admin-cn)")
    raise _denied(
        "ForceRelease needs an admin credential: `authorization: Bearer <admin token>` "
        "metadata, or a client certificate named by --admin-cn"
    )


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
