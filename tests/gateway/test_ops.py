"""Operating the gateway: health checking, reflection, Prometheus metrics, TLS and
mutual TLS, `lockd serve` as a process, and generated code that matches the proto."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import filecmp
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import click
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lockd.cli import serve as serve_command
from lockd.gateway import Gateway, GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.client.helpers import LockdProcess, serve_process
from tests.gateway.helpers import Stub, channel, eventually, fails, running
from tests.support import REPO, free_port, wait_for_port

SERVICE = "lockd.v1.LockService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_serving_then_not_serving_during_graceful_stop(
    embedded: GatewayConfig,
) -> None:
    async with running(embedded) as gateway, channel(gateway.port) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == SERVING
        unknown = await fails(health.Check(health_pb2.HealthCheckRequest(service="nope.Nope")))
        assert unknown.code == grpc.StatusCode.NOT_FOUND

        stub = Stub(ch)
        held = await stub.Acquire(pb.AcquireRequest(name="g", ttl_ms=5000))
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == SERVING
        # An Acquire waiting when the stop begins is answered at once, not dropped and not
        # kept waiting through the grace period: SHUTTING_DOWN sends it elsewhere.
        in_flight = asyncio.ensure_future(
            fails(stub.Acquire(pb.AcquireRequest(name="g", ttl_ms=1000, wait_ms=10_000)))
        )
        await eventually(lambda: _waiting(stub, "g"))
        stopping = asyncio.ensure_future(gateway.stop(grace=3))
        assert (await asyncio.wait_for(watch.read(), 2)).status == NOT_SERVING
        watch.cancel()
        failure = await asyncio.wait_for(in_flight, 2)
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        await asyncio.wait_for(stopping, 5)
        refused = await fails(stub.Acquire(pb.AcquireRequest(name="g2", ttl_ms=1000), timeout=1))
        assert refused.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert held.lease_id


async def _waiting(stub: Stub, name: str) -> bool:
    return (await stub.Describe(pb.DescribeRequest(name=name))).waiters == 1


async def test_reflection_lists_the_lock_service(embedded: GatewayConfig) -> None:
    async with running(embedded) as gateway, channel(gateway.port) as ch:
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        replies = [r async for r in reflection.ServerReflectionInfo(iter(requests))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
        files = replies[1].file_descriptor_response.file_descriptor_proto
        assert files and any(b"LockService" in f and b"Acquire" in f for f in files)


async def test_reflection_v1_answers_as_v1alpha_does(embedded: GatewayConfig) -> None:
    """grpcurl and other current clients ask grpc.reflection.v1 first."""
    async with running(embedded) as gateway, channel(gateway.port) as ch:
        v1 = ch.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        replies = [r async for r in v1(iter(requests))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {SERVICE, "grpc.reflection.v1.ServerReflection"} <= names
        files = replies[1].file_descriptor_response.file_descriptor_proto
        assert any(b"LockService" in f for f in files)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_metrics_endpoint(embedded: GatewayConfig) -> None:
    config = dataclasses.replace(embedded, metrics_listen="127.0.0.1:0")
    async with running(config) as gateway, channel(gateway.port) as ch:
        assert gateway.metrics_port
        stub = Stub(ch)
        name = "secret-lock-name"
        leases = []
        for _ in range(3):
            got = await stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=5000))
            leases.append(got.lease_id)
            await stub.Renew(pb.RenewRequest(name=name, lease_id=got.lease_id))
            await stub.Release(pb.ReleaseRequest(name=name, lease_id=got.lease_id))
        held = await stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=5000))
        leases.append(held.lease_id)
        await fails(stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=1000)))
        waiter = asyncio.ensure_future(
            stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=1000, wait_ms=5000))
        )
        await eventually(lambda: _waiting(stub, name))

        text = await asyncio.to_thread(_scrape, gateway.metrics_port)
        assert "lockd_grants_total 4.0" in text
        assert "lockd_releases_total 3.0" in text
        assert "lockd_attempt_failures_total" in text
        assert 'lockd_acquire_seconds_count{result="granted"}' in text
        assert 'lockd_acquire_seconds_count{result="lock_held"} 1.0' in text
        assert 'lockd_renew_seconds_count{result="renewed"} 3.0' in text
        assert "lockd_waiters 1.0" in text
        assert 'lockd_node_up{node="embedded:0"} 1.0' in text
        assert "lockd_node_restart_delay_seconds" in text
        for lease in leases:
            for form in (lease.hex(), lease.hex().upper(), base64.b64encode(lease).decode()):
                assert form not in text
        assert name not in text  # names are unbounded label values: never exported
        await stub.Release(pb.ReleaseRequest(name=name, lease_id=held.lease_id))
        await waiter


async def test_session_calls_answered_inline_are_measured_too(embedded: GatewayConfig) -> None:
    """Over embedded engines a Session answers acquire, renew and release without a task;
    they are the same calls as the unary ones, so they are counted the same way."""
    config = dataclasses.replace(embedded, metrics_listen="127.0.0.1:0")
    async with running(config) as gateway, channel(gateway.port) as ch:
        stream = Stub(ch).Session()
        await stream.write(
            pb.SessionRequest(id=1, acquire=pb.AcquireRequest(name="s", ttl_ms=5000))
        )
        got = await stream.read()
        assert got.id == 1 and got.WhichOneof("result") == "acquire"
        lease = got.acquire.lease_id
        await stream.write(pb.SessionRequest(id=2, renew=pb.RenewRequest(name="s", lease_id=lease)))
        renewed = await stream.read()
        assert renewed.id == 2 and 0 < renewed.renew.validity_ms <= 5000
        await stream.write(
            pb.SessionRequest(id=3, release=pb.ReleaseRequest(name="s", lease_id=lease))
        )
        released = await stream.read()
        assert released.id == 3 and released.release.nodes_released == 5
        await stream.write(
            pb.SessionRequest(id=4, renew=pb.RenewRequest(name="s", lease_id=lease, ttl_ms=1000))
        )
        lost = await stream.read()
        assert lost.error.reason == "LEASE_LOST"
        await stream.done_writing()
        text = await asyncio.to_thread(_scrape, gateway.metrics_port)
        assert 'lockd_acquire_seconds_count{result="granted"} 1.0' in text
        assert 'lockd_renew_seconds_count{result="renewed"} 1.0' in text
        assert 'lockd_renew_seconds_count{result="lease_lost"} 1.0' in text
        assert "lockd_releases_total 1.0" in text


async def test_tls(embedded: GatewayConfig, certs: dict[str, Path]) -> None:
    config = dataclasses.replace(
        embedded, tls_cert=certs["server_pem"], tls_key=certs["server_key"]
    )
    async with running(config) as gateway:
        ca = certs["ca_pem"].read_bytes()
        target = f"127.0.0.1:{gateway.port}"
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(target, creds) as ch:
            got = await Stub(ch).Acquire(pb.AcquireRequest(name="tls", ttl_ms=1000))
            assert len(got.lease_id) == 16
        # Plaintext clients, and clients that do not trust the CA, are refused.
        async with grpc.aio.insecure_channel(target) as ch:
            plain = await fails(Stub(ch).Describe(pb.DescribeRequest(name="tls"), timeout=2))
            assert plain.code == grpc.StatusCode.UNAVAILABLE
        rogue_ca = grpc.ssl_channel_credentials(
            root_certificates=certs["rogue-ca_pem"].read_bytes()
        )
        async with grpc.aio.secure_channel(target, rogue_ca) as ch:
            untrusted = await fails(Stub(ch).Describe(pb.DescribeRequest(name="tls"), timeout=2))
            assert untrusted.code == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(embedded: GatewayConfig, certs: dict[str, Path]) -> None:
    config = dataclasses.replace(
        embedded,
        tls_cert=certs["server_pem"],
        tls_key=certs["server_key"],
        tls_client_ca=certs["ca_pem"],
    )
    async with running(config) as gateway:
        ca = certs["ca_pem"].read_bytes()
        target = f"127.0.0.1:{gateway.port}"

        def creds(cert: str | None) -> grpc.ChannelCredentials:
            if cert is None:
                return grpc.ssl_channel_credentials(root_certificates=ca)
            return grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=certs[f"{cert}_key"].read_bytes(),
                certificate_chain=certs[f"{cert}_pem"].read_bytes(),
            )

        async with grpc.aio.secure_channel(target, creds("client")) as ch:
            got = await Stub(ch).Acquire(pb.AcquireRequest(name="mtls", ttl_ms=1000))
            assert len(got.lease_id) == 16
        for cert in (None, "rogue"):
            async with grpc.aio.secure_channel(target, creds(cert)) as ch:
                refused = await fails(Stub(ch).Describe(pb.DescribeRequest(name="m"), timeout=2))
                assert refused.code == grpc.StatusCode.UNAVAILABLE, (cert, refused)


async def test_tls_settings_are_checked(embedded: GatewayConfig, certs: dict[str, Path]) -> None:
    for bad in (
        {"tls_cert": certs["server_pem"]},
        {"tls_key": certs["server_key"]},
        {"tls_client_ca": certs["ca_pem"]},
    ):
        gateway = Gateway(dataclasses.replace(embedded, listen="127.0.0.1:0", **bad))
        with pytest.raises(ValueError, match="--tls-"):
            await gateway.start()
        await gateway.manager.close()


def test_serve_help_explains_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lockd", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    options = [p for p in serve_command.params if isinstance(p, click.Option) and not p.hidden]
    assert len(options) >= 12
    for option in options:
        flag = max(option.opts, key=len)
        assert flag in out, flag
        assert option.help and len(option.help) > 15, flag
    for text in ("HOST:PORT", "redis://", "mutual TLS", "SIGTERM", "[default: 127.0.0.1:7400]"):
        assert text in " ".join(out.split()), text


async def test_serve_process_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "lockd", "serve", "--listen", f"127.0.0.1:{port}",
           "--data-dir", str(tmp_path / "data"), "--shutdown-grace", "2s"]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.to_thread(wait_for_port, port, proc)
        async with channel(port) as ch:
            stub = Stub(ch)
            got = await stub.Acquire(pb.AcquireRequest(name="p", ttl_ms=5000))
            assert len(got.lease_id) == 16 and got.fencing_token == 1
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert len(status.nodes) == 5 and status.quorum == 3 and status.quorum_available
            assert [n.mode for n in status.nodes] == [pb.NODE_MODE_EMBEDDED] * 5
            await stub.Release(pb.ReleaseRequest(name="p", lease_id=got.lease_id))
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
        assert code == 0
        assert time.monotonic() - start < 5
        assert proc.stdout is not None
        output = proc.stdout.read().decode()
        assert "listening" in output and "stopped" in output
        assert got.lease_id.hex() not in output
        # A clean stop: the engines restart without delay.
        for i in range(5):
            assert (tmp_path / "data" / f"node-{i}" / "shutdown.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", f"--python_out={tmp_path}",
           f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
           "protos/lockd/v1/lock_service.proto"]  # fmt: skip
    subprocess.run(
        cmd,
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    generated = sorted(p.name for p in (tmp_path / "lockd" / "v1").iterdir())
    assert generated == ["lock_service_pb2.py", "lock_service_pb2.pyi", "lock_service_pb2_grpc.py"]
    for name in generated:
        fresh, committed = tmp_path / "lockd" / "v1" / name, REPO / "lockd" / "v1" / name
        assert filecmp.cmp(fresh, committed, shallow=False), f"{name} is stale: run `make proto`"


async def test_metrics_endpoint_drops_stalled_clients(
    embedded: GatewayConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scrapers that never finish their request hold no thread for long, and at most
    MAX_SCRAPES at once: the rest are closed at once, and scraping works again after."""
    from lockd.gateway import metrics

    monkeypatch.setattr(metrics._Handler, "timeout", 0.5)
    config = dataclasses.replace(embedded, metrics_listen="127.0.0.1:0")

    def scrape_threads() -> int:
        return sum("process_request" in t.name for t in threading.enumerate())

    async with running(config) as gateway:
        stalled = []
        for _ in range(metrics.MAX_SCRAPES + 24):
            s = socket.create_connection(("127.0.0.1", gateway.metrics_port))
            s.sendall(b"GET /metr")  # and never the rest
            s.settimeout(5)
            stalled.append(s)
        started = time.monotonic()
        closed = await asyncio.to_thread(lambda: [s.recv(1) for s in stalled])
        assert closed == [b""] * len(stalled)  # every one closed by the server ...
        assert time.monotonic() - started < 3  # ... within the timeout, not 60 s
        assert scrape_threads() <= metrics.MAX_SCRAPES
        for s in stalled:
            s.close()
        assert "lockd_grants_total" in await asyncio.to_thread(_scrape, gateway.metrics_port)

        async def settled() -> bool:
            return scrape_threads() == 0

        await eventually(settled)


async def test_open_files_near_the_limit_are_logged(tmp_path: Path) -> None:
    """With its open-files limit nearly used up by idle connections, the gateway says so
    (it gave new clients DEADLINE_EXCEEDED and logged nothing: grpc's failed accepts never
    reach Python), and says when it is below again."""
    proc = serve_process(tmp_path / "data").start()
    sockets: list[socket.socket] = []
    try:
        held = len(os.listdir(f"/proc/{proc.pid}/fd"))
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (held + 40, held + 40))
        for _ in range(60):  # more than it may open: the limit is surely exhausted
            sockets.append(socket.create_connection(("127.0.0.1", proc.port)))
        await _logged(proc, "open files: new connections will be refused")
        for s in sockets:
            s.close()
        await _logged(proc, "open files again")
    finally:
        for s in sockets:
            s.close()
        proc.close()


async def test_open_files_share_is_checked_before_exhaustion(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At 90 % of the limit the server already warns, and at 100 % (when even listing its
    open files fails with EMFILE) it keeps warning instead of giving up watching."""
    from lockd import serving

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    held = iter([int(limit * 0.95), -1, 3])

    def listdir(path: str) -> list[str]:
        n = next(held, 3)
        if n < 0:
            raise OSError(errno.EMFILE, "Too many open files")
        return ["x"] * n

    monkeypatch.setattr(serving, "OPEN_FILES_CHECK_S", 0.01)
    monkeypatch.setattr(serving.os, "listdir", listdir)
    watcher = asyncio.create_task(serving.watch_open_files("probe"))
    try:

        async def said_again() -> bool:
            return "open files again" in caplog.text

        await eventually(said_again)
    finally:
        watcher.cancel()
    refused = [r.getMessage() for r in caplog.records if "will be refused" in r.getMessage()]
    assert refused == [
        f"probe holds {int(limit * 0.95)} of its {limit} open files: new connections will "
        "be refused; raise the open-files limit (ulimit -n) or reduce idle clients",
        f"probe holds {limit} of its {limit} open files: new connections will be refused; "
        "raise the open-files limit (ulimit -n) or reduce idle clients",
    ]


async def _logged(proc: LockdProcess, text: str, timeout: float = 15.0) -> None:
    """Until the process has printed `text` (it checks its open files every 5 s)."""
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        assert time.monotonic() < deadline, proc.output()[-2000:]
        await asyncio.sleep(0.2)
