"""etcd and ZooKeeper on loopback for the benchmarks (Debian's etcd-server and zookeeper,
which `make bench` installs): a 3-member etcd cluster, one etcd member, a 3-server
ZooKeeper ensemble. Each yields a `shapes.Served` (client target, server pids)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.bench.shapes import Served
from tests.support import free_port, wait_for_port

ZK_CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"


def available() -> dict[str, bool]:
    """Which peer servers are installed."""
    return {
        "etcd": shutil.which("etcd") is not None,
        "zookeeper": Path("/usr/share/java/zookeeper.jar").exists() and bool(shutil.which("java")),
    }


@contextlib.contextmanager
def _processes(cmds: list[tuple[list[str], Path]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd, log in cmds:
            with log.open("wb") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextlib.contextmanager
def etcd_cluster(tmp: Path, members: int = 3) -> Iterator[Served]:
    """`members` etcd members (fsync on every commit, etcd's default) on loopback."""
    client_ports = [free_port() for _ in range(members)]
    peer_ports = [free_port() for _ in range(members)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(peer_ports))
    token = f"bench-{client_ports[0]}"
    cmds = []
    for i, (cport, pport) in enumerate(zip(client_ports, peer_ports, strict=True)):
        cmds.append(
            (
                [
                    "etcd",
                    "--name",
                    f"m{i}",
                    "--data-dir",
                    str(tmp / f"etcd-{cport}"),
                    "--listen-client-urls",
                    f"http://127.0.0.1:{cport}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{cport}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{pport}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{pport}",
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    token,
                    "--logger",
                    "zap",
                    "--log-level",
                    "error",
                ],
                tmp / f"etcd-{cport}.log",
            )
        )
    with _processes(cmds) as procs:
        for port, proc in zip(client_ports, procs, strict=True):
            wait_for_port(port, proc, timeout=30)
        target = ",".join(f"127.0.0.1:{p}" for p in client_ports)
        from tests.bench import etcd

        etcd.wait_ready(target.split(","))
        yield Served(target, tuple(p.pid for p in procs))


@contextlib.contextmanager
def zookeeper_ensemble(tmp: Path, servers: int = 3) -> Iterator[Served]:
    """A ZooKeeper ensemble of `servers` (forceSync on, its default) on loopback."""
    client_ports = [free_port() for _ in range(servers)]
    quorum = [(free_port(), free_port()) for _ in range(servers)]
    cmds = []
    for i, cport in enumerate(client_ports, 1):
        data = tmp / f"zk-{cport}"
        data.mkdir(parents=True)
        (data / "myid").write_text(f"{i}\n")
        lines = [
            "tickTime=500",  # sessions may be as short as 1 s (2 ticks)
            "initLimit=20",
            "syncLimit=10",
            f"dataDir={data}",
            f"clientPort={cport}",
            "clientPortAddress=127.0.0.1",
            "maxClientCnxns=0",
            "admin.enableServer=false",
        ]
        lines += [f"server.{j}=127.0.0.1:{a}:{b}" for j, (a, b) in enumerate(quorum, 1)]
        (data / "zoo.cfg").write_text("\n".join(lines) + "\n")
        cmds.append(
            (
                [
                    "java",
                    "-Xmx256m",
                    "-cp",
                    ZK_CLASSPATH,
                    "-Dzookeeper.root.logger=WARN,CONSOLE",
                    "-Dzookeeper.log.dir=" + str(data),
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                    str(data / "zoo.cfg"),
                ],
                tmp / f"zk-{cport}.log",
            )
        )
    with _processes(cmds) as procs:
        for port, proc in zip(client_ports, procs, strict=True):
            wait_for_port(port, proc, timeout=60)
        target = ",".join(f"127.0.0.1:{p}" for p in client_ports)
        _zk_ready(target)
        yield Served(target, tuple(p.pid for p in procs))


def _zk_ready(hosts: str, timeout: float = 60.0) -> None:
    """Wait until the ensemble has a leader and serves writes."""
    from kazoo.client import KazooClient

    deadline = time.monotonic() + timeout
    while True:
        zk = KazooClient(hosts=hosts, timeout=5.0)
        try:
            zk.start(timeout=5.0)
            zk.ensure_path("/bench")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            zk.stop()
            zk.close()
