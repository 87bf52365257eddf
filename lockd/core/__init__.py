"""The quorum core: Redlock with drift accounting and two-phase fencing, as sans-I/O
state machines. Fed node replies and the current time, they say what to send to which
node and when the outcome is known; they never read a clock, sleep or open a socket.
The asyncio gateway and the deterministic simulator drive the same objects."""

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
    NotGranted,
    Reason,
    ReleaseCall,
    Released,
    Renewed,
    RenewFailed,
    Reply,
    Send,
    decode_meta,
    encode_meta,
    fence_key,
    lock_key,
    lock_name,
)
from lockd.core.quorum import drift_ns, quorum, retry_delay_ns, validity_ns

__all__ = [
    "Acquire",
    "AcquireCall",
    "AcquireReply",
    "Call",
    "ExtendCall",
    "FenceCall",
    "FenceReply",
    "Granted",
    "Meta",
    "NodeFailure",
    "NotGranted",
    "Reason",
    "Release",
    "ReleaseCall",
    "Released",
    "Renew",
    "RenewFailed",
    "Renewed",
    "Reply",
    "Send",
    "decode_meta",
    "drift_ns",
    "encode_meta",
    "fence_key",
    "lock_key",
    "lock_name",
    "quorum",
    "retry_delay_ns",
    "validity_ns",
]
