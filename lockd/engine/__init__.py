"""The engine node: a small Redis-like keyspace that holds locks and fencing counters."""

from lockd.engine.clock import Clock, WallClock
from lockd.engine.engine import RELEASE_CHANNEL, Engine, EngineConfig
from lockd.engine.persistence import FsyncPolicy

__all__ = [
    "RELEASE_CHANNEL",
    "Clock",
    "Engine",
    "EngineConfig",
    "FsyncPolicy",
    "WallClock",
]
