"""The quorum core: Redlock with drift accounting and two-phase fencing, as sans-I/O
state machines. Fed node replies and the current time, they say what to send to which
node and when the outcome is known; they never read a clock, sleep or open a socket.
The asyncio gateway and the deterministic simulator drive the same objects, and the
same `LockTable` (table.py): a gateway's waiting, holders, limits and retries."""

from lockd.core.machines import Acquire, Release, Renew
from lockd.core.messages import (
    AcquireCall,
    AcquireReply,
    Call,
    ExtendCall,
    FenceCall,
    FenceReply,
    Granted,
    Meta,
    NodeFailure,
    NodeReply,
    NotGranted,
    Reason,
    ReleaseCall,
    Released,
    Renewed,
    RenewFailed,
    Send,
    decode_meta,
    encode_meta,
    fence_key,
    lock_key,
    lock_name,
)
from lockd.core.quorum import (
    RENEW_ROUNDS,
    drift_ns,
    quorum,
    renew_again,
    retry_delay_ns,
    validity_ns,
)
from lockd.core.table import LockTable

__all__ = [
    "RENEW_ROUNDS",
    "Acquire",
    "AcquireCall",
    "AcquireReply",
    "Call",
    "ExtendCall",
    "FenceCall",
    "FenceReply",
    "Granted",
    "LockTable",
    "Meta",
    "NodeFailure",
    "NodeReply",
    "NotGranted",
    "Reason",
    "Release",
    "ReleaseCall",
    "Released",
    "Renew",
    "RenewFailed",
    "Renewed",
    "Send",
    "decode_meta",
    "drift_ns",
    "encode_meta",
    "fence_key",
    "lock_key",
    "lock_name",
    "quorum",
    "renew_again",
    "retry_delay_ns",
    "validity_ns",
]
