"""lockd: a distributed lock service with fencing tokens.

Redlock over five engine nodes, monotonic-clock expiry, durable fencing counters and
delayed restart. See docs/ARCHITECTURE.md for the design.
"""

__version__ = "0.1.0"
