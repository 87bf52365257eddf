"""Lock clients of every system the benchmarks compare, one OS process per client.

`run_clients(system, target, workload, clients, seconds)` starts `clients` processes that
each loop acquire → release for `seconds` and returns the summed counts. Workloads:
`sequential` and `concurrent` use distinct locks per client; `contended` puts every
client on one lock and blocks until it is granted.

Systems: `lockd` (the client library over gRPC), `etcd` (its v3 lock API over gRPC with
a lease per lock, as lockd's acquire gives, through stubs generated at bench time from
etcd's protos), `zookeeper` (kazoo's `Lock`), and the Redlock libraries.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing as mp
import time
import uuid
from collections.abc import Callable
from typing import Any

TTL_S = 10.0


@dataclasses.dataclass
class Result:
    """What a workload's clients did together."""

    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    lat_ns: list[int] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """Successful cycles per second."""
        return self.ok / self.seconds if self.seconds else 0.0


Cycle = tuple[Callable[[str], Any], Callable[[str, Any], None]]


def _loop(names: list[str], seconds: float, blocking: bool, cycle: Cycle) -> dict[str, Any]:
    acquire, release = cycle
    out: dict[str, Any] = {"ok": 0, "failed": 0, "lat": []}
    stop = time.monotonic() + seconds
    for name in itertools.cycle(names):
        if time.monotonic() >= stop:
            break
        t0 = time.monotonic_ns()
        handle = acquire(name)
        while handle is None:
            out["failed"] += 1
            if not blocking or time.monotonic() >= stop:
                break
            time.sleep(0.001)
            handle = acquire(name)
        if handle is None:
            continue
        release(name, handle)
        out["lat"].append(time.monotonic_ns() - t0)
        out["ok"] += 1
    return out


def _lockd_worker(target: str, names: list[str], seconds: float, blocking: bool) -> dict[str, Any]:
    import asyncio

    from lockd_client import AsyncClient, LockError

    async def run() -> dict[str, Any]:
        client = AsyncClient(target)
        out: dict[str, Any] = {"ok": 0, "failed": 0, "lat": []}
        stop = time.monotonic() + seconds
        wait = 30.0 if blocking else 0.0
        for name in itertools.cycle(names):
            if time.monotonic() >= stop:
                break
            t0 = time.monotonic_ns()
            try:
                lease = await client.acquire(name, TTL_S, wait, watchdog=False)
            except LockError:
                out["failed"] += 1
                continue
            try:
                await lease.release()
            except LockError:
                out["failed"] += 1
                continue
            out["lat"].append(time.monotonic_ns() - t0)
            out["ok"] += 1
        await client.close()
        return out

    return asyncio.run(run())


def _worker(
    system: str, target: str, names: list[str], seconds: float, blocking: bool, index: int
) -> dict[str, Any]:
    if system == "lockd":
        return _lockd_worker(target, names, seconds, blocking)
    if system == "etcd":
        from tests.bench import etcd

        # etcd's Lock waits on the server: every acquire blocks until granted.
        with etcd.LockClient(target.split(","), TTL_S, member=index) as client:
            return _loop(names, seconds, blocking, (client.acquire, client.release))
    if system == "zookeeper":
        from tests.bench import zookeeper

        with zookeeper.LockClient(target, TTL_S, blocking, member=index) as zk:
            return _loop(names, seconds, blocking, (zk.acquire, zk.release))
    return _redlock_worker(system, target, names, seconds, blocking)


def _redlock_worker(
    system: str, target: str, names: list[str], seconds: float, blocking: bool
) -> dict[str, Any]:
    import redis

    ports = [int(url.rsplit(":", 1)[1]) for url in target.split(",")]
    if system == "redlock-py":
        from redlock import Redlock as RedlockPy

        # One try per call: the loop polls every 1 ms and counts every failed try.
        dlm = RedlockPy(
            [{"port": p, "protocol": 2} for p in ports], retry_count=1, retry_delay=0.001
        )
        return _loop(
            names,
            seconds,
            blocking,
            (lambda n: dlm.lock(n, int(TTL_S * 1000)) or None, lambda n, h: dlm.unlock(h)),
        )
    if system == "pottery":
        from pottery import Redlock as Pottery

        masters = {redis.Redis(port=p, protocol=2) for p in ports}
        locks = {n: Pottery(key=n, masters=masters, auto_release_time=TTL_S) for n in names}
        return _loop(
            names,
            seconds,
            blocking,
            (
                lambda n: locks[n] if locks[n].acquire(blocking=False) else None,
                lambda n, h: h.release(),
            ),
        )
    raise ValueError(f"unknown system {system!r}")


def lock_names(system: str, workload: str, clients: int) -> list[list[str]]:
    """Per client: the locks it cycles through."""
    if workload == "contended":
        return [[f"bench-contended-{system}-{uuid.uuid4().hex[:6]}"]] * clients
    run = uuid.uuid4().hex[:8]
    return [[f"bench-{run}-{c}-{i}" for i in range(64)] for c in range(clients)]


def run_clients(system: str, target: str, workload: str, clients: int, seconds: float) -> Result:
    """`clients` processes running `workload` against `system` at `target`."""
    blocking = workload == "contended"
    names = lock_names(system, workload, clients)
    ctx = mp.get_context("spawn")
    with ctx.Pool(clients) as pool:
        outs = pool.starmap(
            _worker, [(system, target, names[c], seconds, blocking, c) for c in range(clients)]
        )
    result = Result(seconds=seconds)
    for out in outs:
        result.ok += out["ok"]
        result.failed += out["failed"]
        result.lat_ns += out["lat"]
    return result


# -- holders: many clients each holding one lock and keeping it alive --------------------


def _hold_lockd(target: str, names: list[str], ttl_s: float, until: float) -> dict[str, int]:
    import asyncio

    from lockd_client import AsyncClient, LockError

    async def run() -> dict[str, int]:
        out = {"acquired": 0, "acquire failed": 0, "lost": 0, "release failed": 0}
        client = AsyncClient(target)

        def lost(lease: object) -> None:
            out["lost"] += 1

        async def one(name: str) -> None:
            try:
                lease = await client.acquire(name, ttl_s, 30.0, on_lost=lost)
            except LockError:
                out["acquire failed"] += 1
                return
            out["acquired"] += 1
            await asyncio.sleep(max(0.0, until - time.monotonic()))
            try:
                await lease.release()
            except LockError:
                out["release failed"] += 1

        await asyncio.gather(*(one(n) for n in names))
        await client.close()
        return out

    return asyncio.run(run())


def _hold_etcd(
    target: str, names: list[str], ttl_s: float, until: float, index: int
) -> dict[str, int]:
    import asyncio

    import grpc

    from tests.bench import etcd

    rpc, rpc_grpc, lockpb, lock_grpc = etcd.stubs()
    endpoints = target.split(",")

    async def run() -> dict[str, int]:
        out = {"acquired": 0, "acquire failed": 0, "lost": 0, "release failed": 0}
        async with grpc.aio.insecure_channel(endpoints[index % len(endpoints)]) as channel:
            leases = rpc_grpc.LeaseStub(channel)
            locks = lock_grpc.LockStub(channel)

            async def one(name: str) -> None:
                ttl = max(1, round(ttl_s))
                try:
                    lease = (await leases.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=30)).ID
                    await locks.Lock(
                        lockpb.LockRequest(name=name.encode(), lease=lease), timeout=30
                    )
                except grpc.aio.AioRpcError:
                    out["acquire failed"] += 1
                    return
                out["acquired"] += 1
                # etcd's clientv3 keepalive: a stream per lease, a request every TTL/3.
                stream = leases.LeaseKeepAlive()
                while time.monotonic() < until:
                    await asyncio.sleep(min(ttl / 3, max(0.0, until - time.monotonic())))
                    try:
                        await stream.write(rpc.LeaseKeepAliveRequest(ID=lease))
                        if (await stream.read()).TTL <= 0:
                            out["lost"] += 1
                            return
                    except grpc.aio.AioRpcError:
                        out["lost"] += 1
                        return
                await stream.done_writing()
                try:
                    await leases.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=30)
                except grpc.aio.AioRpcError:
                    out["release failed"] += 1

            await asyncio.gather(*(one(n) for n in names))
        return out

    return asyncio.run(run())


def _hold_zookeeper(
    target: str, names: list[str], ttl_s: float, until: float, index: int
) -> dict[str, int]:
    import threading

    from kazoo.protocol.states import KazooState

    from tests.bench import zookeeper

    out = {"acquired": 0, "acquire failed": 0, "lost": 0, "release failed": 0}
    guard = threading.Lock()

    def one(i: int, name: str) -> None:
        client = zookeeper.LockClient(target, ttl_s, blocking=True, member=index + i)
        lost = threading.Event()
        client.zk.add_listener(lambda state: lost.set() if state == KazooState.LOST else None)
        try:
            lock = client.acquire(name)
            with guard:
                out["acquired" if lock else "acquire failed"] += 1
            time.sleep(max(0.0, until - time.monotonic()))
            if lost.is_set():
                with guard:
                    out["lost"] += 1
            elif lock:
                try:
                    client.release(name, lock)
                except Exception:
                    with guard:
                        out["release failed"] += 1
        finally:
            client.__exit__(None, None, None)

    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _holder_worker(
    system: str, target: str, names: list[str], ttl_s: float, until: float, index: int
) -> dict[str, int]:
    if system == "lockd":
        return _hold_lockd(target, names, ttl_s, until)
    if system == "etcd":
        return _hold_etcd(target, names, ttl_s, until, index)
    return _hold_zookeeper(target, names, ttl_s, until, index)


def run_holders(
    system: str, target: str, holders: int = 200, seconds: float = 8.0, ttl_s: float = 5.0
) -> dict[str, int]:
    """`holders` clients (in four processes) that each acquire one lock at the same
    moment, keep it alive for `seconds` and release it; summed outcome counts."""
    processes = 4
    run = uuid.uuid4().hex[:8]
    per = [[f"hold-{run}-{p}-{i}" for i in range(holders // processes)] for p in range(processes)]
    until = time.monotonic() + 3.0 + seconds  # processes start within ~3 s
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes) as pool:
        outs = pool.starmap(
            _holder_worker,
            [(system, target, per[p], ttl_s, until, p * len(per[p])) for p in range(processes)],
        )
    total: dict[str, int] = {}
    for out in outs:
        for key, value in out.items():
            total[key] = total.get(key, 0) + value
    return total
