"""Admin credentials, shared by the gateway (ForceRelease) and the store (ResetFence).

The credential is the server's admin token (`--admin-token-file`, sent as
`authorization: Bearer <token>` metadata, compared in constant time, the file read at
each use so the token can be rotated without a restart) or a verified client
certificate (mutual TLS, `--tls-client-ca`) whose subject CN is one of `--admin-cn`.
Anything else is PERMISSION_DENIED NOT_ADMIN, saying what is missing.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any, Protocol

import grpc

from lockd.errors import ErrorReason, LockdError

__all__ = ["AdminConfig", "admin_identity"]

log = logging.getLogger("lockd")

BEARER = "bearer "


class AdminConfig(Protocol):
    """The settings a server's admin check reads (GatewayConfig, StoreConfig)."""

    @property
    def admin_token_file(self) -> Path | None: ...

    @property
    def admin_cns(self) -> tuple[str, ...]: ...

    @property
    def tls_client_ca(self) -> Path | None: ...


def _denied(message: str) -> LockdError:
    return LockdError(grpc.StatusCode.PERMISSION_DENIED, ErrorReason.NOT_ADMIN, message)


def _read_token(config: AdminConfig) -> bytes | None:
    """The admin token, read at each use so it can be rotated without a restart."""
    if config.admin_token_file is None:
        return None
    try:
        token = config.admin_token_file.read_bytes().strip()
    except OSError as exc:
        log.error("cannot read the admin token file %s: %s", config.admin_token_file, exc)
        return None
    return token or None


def admin_identity(config: AdminConfig, context: Any, call: str) -> str:
    """Who the caller of admin call `call` is ("admin token" or "certificate CN=..."),
    or PERMISSION_DENIED NOT_ADMIN saying what is missing."""
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
        raise _denied("the admin token is wrong (or this server has none)")
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
        f"{call} needs an admin credential: `authorization: Bearer <admin token>` "
        "metadata, or a client certificate named by --admin-cn"
    )
