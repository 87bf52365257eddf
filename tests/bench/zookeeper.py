"""ZooKeeper locks through kazoo's `Lock` recipe (ephemeral sequential nodes, a watch on
the predecessor: waiting does not poll). The session is the lease: its timeout is the
lock's TTL."""

from __future__ import annotations

from types import TracebackType
from typing import Any


class LockClient:
    """One kazoo session; `acquire` blocks (on a watch) only when `blocking`."""

    def __init__(self, hosts: str, ttl_s: float, blocking: bool = False, member: int = 0) -> None:
        import logging

        from kazoo.client import KazooClient

        logging.getLogger("kazoo").setLevel(logging.CRITICAL)
        servers = hosts.split(",")
        # Spread clients over the ensemble as etcd's are spread over its members.
        ordered = servers[member % len(servers) :] + servers[: member % len(servers)]
        self.zk = KazooClient(hosts=",".join(ordered), timeout=ttl_s, randomize_hosts=False)
        self.zk.start(timeout=30)
        self.blocking = blocking
        self.locks: dict[str, Any] = {}

    def __enter__(self) -> LockClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.zk.stop()
        self.zk.close()

    def acquire(self, name: str) -> Any:
        """The held `Lock`, or None if it is taken and not `blocking`."""
        lock = self.locks.get(name)
        if lock is None:
            lock = self.locks[name] = self.zk.Lock(f"/bench/{name}")
        got = lock.acquire(blocking=True, timeout=60) if self.blocking else lock.acquire(False)
        return lock if got else None

    def release(self, name: str, lock: Any) -> None:
        """Delete our node: the next waiter's watch fires."""
        lock.release()
