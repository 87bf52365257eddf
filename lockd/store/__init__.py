"""The sample fenced storage (`lockd store`, gRPC `lockd.v1.FencedStore`).

A durable key-value store that accepts a write only if its fencing token is >= the
highest token it has accepted for the write's resource, and says which token beat it
when it refuses. Writes are fsynced to an append-only log (several per fsync under
load) before they are acknowledged; the log is replayed on start.
"""

from lockd.store.fenced import DEFAULT_MAX_VALUE_BYTES, FencedStore
from lockd.store.server import StoreConfig, StoreServer, create_server, serve

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "FencedStore",
    "StoreConfig",
    "StoreServer",
    "create_server",
    "serve",
]
