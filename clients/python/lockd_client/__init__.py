"""lockd's client library: distributed locks with fencing tokens.

    from lockd_client import Client
    with Client(["127.0.0.1:7400"]).lock("orders/42", ttl=10) as lease:
        ...  # write with lease.token; lease.check() raises once it may be lost

`AsyncClient` is the asyncio version; `Client` wraps it without duplicating logic.
"""

from lockd_client._transport import TLS
from lockd_client.aio import (
    AsyncClient,
    AsyncElection,
    AsyncLeadership,
    AsyncLease,
    ClusterInfo,
    HeldLock,
    LeaderInfo,
    LockInfo,
    NodeInfo,
    WatchEvent,
)
from lockd_client.errors import (
    ErrorReason,
    InvalidRequest,
    LeaseLost,
    LockError,
    LockTimeout,
    NoLeader,
    NotLeader,
    NotOwned,
    Overloaded,
    PermissionDenied,
    Unavailable,
    reason_name,
)
from lockd_client.store import AsyncStoreClient, StaleToken, StoreClient, StoreError, ValueChanged
from lockd_client.sync import Client, Election, Leadership, Lease

__all__ = [
    "TLS",
    "AsyncClient",
    "AsyncElection",
    "AsyncLeadership",
    "AsyncLease",
    "AsyncStoreClient",
    "Client",
    "ClusterInfo",
    "Election",
    "ErrorReason",
    "HeldLock",
    "InvalidRequest",
    "LeaderInfo",
    "Leadership",
    "Lease",
    "LeaseLost",
    "LockError",
    "LockInfo",
    "LockTimeout",
    "NoLeader",
    "NodeInfo",
    "NotLeader",
    "NotOwned",
    "Overloaded",
    "PermissionDenied",
    "StaleToken",
    "StoreClient",
    "StoreError",
    "Unavailable",
    "ValueChanged",
    "WatchEvent",
    "reason_name",
]
