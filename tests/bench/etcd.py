"""etcd's v3 lock API over its gRPC, with stubs generated at bench time.

Only the messages and services the benchmark calls are declared (`Lease` from
etcdserverpb's rpc.proto, `Lock` from v3lockpb's v3lock.proto), with etcd's package
names and field numbers, so the wire format is etcd's. grpcio-tools (a dev dependency)
compiles them into a cache directory on first use. A lock is held the way etcd's
`concurrency.Mutex` holds it: a lease with the lock's TTL (`LeaseGrant`), then `Lock`
(which waits on the server until the lock is free); release revokes the lease, which
deletes the lock key with it.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

STUBS = Path(__file__).resolve().parents[2] / "var" / "bench" / "etcd-stubs"

RPC_PROTO = """syntax = "proto3";
package etcdserverpb;
message ResponseHeader {
  uint64 cluster_id = 1; uint64 member_id = 2; int64 revision = 3; uint64 raft_term = 4;
}
message LeaseGrantRequest { int64 TTL = 1; int64 ID = 2; }
message LeaseGrantResponse {
  ResponseHeader header = 1; int64 ID = 2; int64 TTL = 3; string error = 4;
}
message LeaseRevokeRequest { int64 ID = 1; }
message LeaseRevokeResponse { ResponseHeader header = 1; }
message LeaseKeepAliveRequest { int64 ID = 1; }
message LeaseKeepAliveResponse { ResponseHeader header = 1; int64 ID = 2; int64 TTL = 3; }
service Lease {
  rpc LeaseGrant(LeaseGrantRequest) returns (LeaseGrantResponse);
  rpc LeaseRevoke(LeaseRevokeRequest) returns (LeaseRevokeResponse);
  rpc LeaseKeepAlive(stream LeaseKeepAliveRequest) returns (stream LeaseKeepAliveResponse);
}
"""

LOCK_PROTO = """syntax = "proto3";
package v3lockpb;
import "etcd_rpc.proto";
message LockRequest { bytes name = 1; int64 lease = 2; }
message LockResponse { etcdserverpb.ResponseHeader header = 1; bytes key = 2; }
message UnlockRequest { bytes key = 1; }
message UnlockResponse { etcdserverpb.ResponseHeader header = 1; }
service Lock {
  rpc Lock(LockRequest) returns (LockResponse);
  rpc Unlock(UnlockRequest) returns (UnlockResponse);
}
"""


def stubs() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """(rpc_pb2, rpc_pb2_grpc, lock_pb2, lock_pb2_grpc), generated if missing."""
    if not (STUBS / "etcd_lock_pb2_grpc.py").exists():
        from grpc_tools import protoc

        STUBS.mkdir(parents=True, exist_ok=True)
        (STUBS / "etcd_rpc.proto").write_text(RPC_PROTO)
        (STUBS / "etcd_lock.proto").write_text(LOCK_PROTO)
        for name in ("etcd_rpc.proto", "etcd_lock.proto"):
            code = protoc.main(
                [
                    "protoc",
                    f"-I{STUBS}",
                    f"--python_out={STUBS}",
                    f"--grpc_python_out={STUBS}",
                    str(STUBS / name),
                ]
            )
            if code != 0:
                raise RuntimeError(f"protoc failed on {name}")
    if str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))
    names = ("etcd_rpc_pb2", "etcd_rpc_pb2_grpc", "etcd_lock_pb2", "etcd_lock_pb2_grpc")
    rpc, rpc_grpc, lock, lock_grpc = (importlib.import_module(n) for n in names)
    return rpc, rpc_grpc, lock, lock_grpc


def wait_ready(endpoints: list[str], timeout: float = 30.0) -> None:
    """Until every member grants and revokes a lease (the cluster has a leader)."""
    deadline = time.monotonic() + timeout
    for endpoint in endpoints:
        while True:
            try:
                with LockClient([endpoint], 5.0) as client:
                    client.revoke(client.grant())
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


class LockClient:
    """A synchronous etcd lock client on one member (index `member` of `endpoints`)."""

    def __init__(self, endpoints: list[str], ttl_s: float, member: int = 0) -> None:
        import grpc

        self.rpc, rpc_grpc, self.lockpb, lock_grpc = stubs()
        self.ttl = max(1, round(ttl_s))
        self.channel = grpc.insecure_channel(endpoints[member % len(endpoints)])
        self.lease = rpc_grpc.LeaseStub(self.channel)
        self.lock = lock_grpc.LockStub(self.channel)

    def __enter__(self) -> LockClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.channel.close()

    def grant(self) -> int:
        """A new lease with the lock TTL; its id."""
        return int(self.lease.LeaseGrant(self.rpc.LeaseGrantRequest(TTL=self.ttl), timeout=30).ID)

    def revoke(self, lease: int) -> None:
        """Revoke `lease` (deleting the keys attached to it)."""
        self.lease.LeaseRevoke(self.rpc.LeaseRevokeRequest(ID=lease), timeout=30)

    def acquire(self, name: str) -> Any:
        """Lease, then Lock (waits on the server while held); the lease id."""
        lease = self.grant()
        self.lock.Lock(self.lockpb.LockRequest(name=name.encode(), lease=lease), timeout=60)
        return lease

    def release(self, name: str, lease: Any) -> None:
        """Revoke the lock's lease: deletes the lock key, waking the next waiter."""
        self.revoke(lease)
