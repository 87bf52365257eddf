"""The client commands of `lockd` as a user runs them: acquire, renew, release, status."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lockd_client import Client, LockTimeout
from tests.client.helpers import LockdProcess, cli, dead_endpoint


def fields(table: str) -> dict[str, str]:
    """`key  value` lines of a two-column table (keys may contain single spaces)."""
    out = {}
    for line in table.splitlines():
        key, _, value = line.partition("  ")
        out[key.strip()] = value.strip()
    return out


def test_acquire_json_then_status_renew_release(
    serve: LockdProcess, client: Client, lock_name: str
) -> None:
    ep = ("--endpoint", serve.endpoint)
    result = cli("acquire", lock_name, "--ttl", "20s", "--json", *ep)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["name"] == lock_name
    assert isinstance(got["token"], int) and got["token"] > 0
    assert re.fullmatch(r"[0-9a-f]{32}", got["lease_id"])
    assert 0 < got["validity_ms"] <= 20_000
    assert got["ttl_ms"] == 20_000
    assert client.describe(lock_name).fencing_counter == got["token"]

    status = cli("status", lock_name, *ep)
    assert status.returncode == 0, status.stderr
    shown = fields(status.stdout)
    assert shown["lock"] == lock_name
    assert shown["held"] == "yes"
    left = int(shown["ttl left"].removesuffix(" ms"))
    assert 0 < left <= 20_000
    assert shown["fencing counter"] == str(got["token"])
    assert shown["waiters"] == "0"
    assert shown["nodes holding"] == "5 of 5 answering"

    as_json = json.loads(cli("status", lock_name, "--json", *ep).stdout)
    assert as_json["held"] is True and as_json["fencing_counter"] == got["token"]

    # Held: a second acquire without waiting exits 3.
    busy = cli("acquire", lock_name, "--ttl", "5s", *ep)
    assert busy.returncode == 3
    assert "held" in busy.stderr

    renewed = cli("renew", lock_name, "--lease", got["lease_id"], "--ttl", "25s", *ep)
    assert renewed.returncode == 0, renewed.stderr
    match = re.fullmatch(rf"renewed {re.escape(lock_name)}: valid for (\d+) ms\n", renewed.stdout)
    assert match and 20_000 < int(match.group(1)) <= 25_000
    assert client.describe(lock_name).ttl_remaining > 20

    released = cli("release", lock_name, "--lease", got["lease_id"], *ep)
    assert released.returncode == 0, released.stderr
    assert released.stdout == f"released {lock_name} on 5 nodes\n"
    assert not client.describe(lock_name).held

    # The lease is gone: releasing it again fails with exit status 1 (not owned), renewing
    # it with 5 (lease lost), as `lockd run` exits when it loses its lease.
    again = cli("release", lock_name, "--lease", got["lease_id"], *ep)
    assert again.returncode == 1
    assert "does not hold the lock" in again.stderr
    lost = cli("renew", lock_name, "--lease", got["lease_id"], *ep)
    assert lost.returncode == 5
    assert "lost" in lost.stderr


def test_acquire_text_output(serve: LockdProcess, client: Client, lock_name: str) -> None:
    result = cli("acquire", lock_name, "--ttl", "10s", "--endpoint", serve.endpoint)
    assert result.returncode == 0, result.stderr
    shown = fields(result.stdout)
    assert shown["lock"] == lock_name
    token = int(shown["token"])
    assert token == client.describe(lock_name).fencing_counter
    lease_id = shown["lease id"]
    assert re.fullmatch(r"[0-9a-f]{32}", lease_id)
    until = r"\(until \d{4}-\d\d-\d\dT[\d:.]+\+00:00\)"
    valid = re.search(rf"^valid for (\d+) ms {until}$", result.stdout, re.M)
    assert valid and 0 < int(valid.group(1)) <= 10_000, result.stdout
    assert client.release(lock_name, bytes.fromhex(lease_id)) == 5


def test_cluster_status_table(serve: LockdProcess) -> None:
    result = cli("status", "--endpoint", serve.endpoint)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["node", "mode", "state", "latency", "restart", "delay", "error"]
    assert set(lines[1]) <= {"-", " "}
    nodes = [line.split() for line in lines[2:7]]
    assert [n[0] for n in nodes] == [f"embedded:{i}" for i in range(5)]
    assert all(n[1:3] == ["embedded", "up"] for n in nodes)
    assert lines[7] == ""
    assert lines[8].startswith(f"quorum 3 of 5: available (gateway {serve.endpoint}, lockd ")

    as_json = json.loads(cli("status", "--json", "--endpoint", serve.endpoint).stdout)
    assert len(as_json["nodes"]) == 5 and as_json["quorum_available"] is True


def test_status_shows_waiters(serve: LockdProcess, client: Client, lock_name: str) -> None:
    holder = client.acquire(lock_name, ttl=10)
    outcome: list[object] = []

    def wait_for_it() -> None:
        with Client([serve.endpoint]) as other:
            try:
                other.acquire(lock_name, ttl=5, wait=20).release()
                outcome.append("granted")
            except LockTimeout as exc:
                outcome.append(exc)

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    try:
        deadline = time.monotonic() + 20
        while client.describe(lock_name).waiters < 1:
            assert time.monotonic() < deadline, "the waiter never queued"
            time.sleep(0.02)
        shown = fields(cli("status", lock_name, "--endpoint", serve.endpoint).stdout)
        assert shown["held"] == "yes"
        assert shown["waiters"] == "1"
    finally:
        holder.release()
        waiter.join(30)
    assert outcome == ["granted"]


def test_unknown_lock_status(serve: LockdProcess, lock_name: str) -> None:
    shown = fields(cli("status", lock_name, "--endpoint", serve.endpoint).stdout)
    assert shown["held"] == "no"
    assert shown["ttl left"] == "0 ms"
    assert shown["fencing counter"] == "0"


def test_lockd_endpoint_environment_variable(
    serve: LockdProcess, client: Client, lock_name: str
) -> None:
    # Space-separated, tried in order: the dead first one is skipped.
    env = {"LOCKD_ENDPOINT": f"{dead_endpoint()} {serve.endpoint}"}
    result = cli("acquire", lock_name, "--ttl", "10s", "--json", env=env)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert client.describe(lock_name).fencing_counter == got["token"]
    status = cli("status", env=env)
    assert status.returncode == 0 and f"gateway {serve.endpoint}" in status.stdout
    released = cli("release", lock_name, "--lease", got["lease_id"], env=env)
    assert released.returncode == 0, released.stderr
    # Only a dead endpoint in the environment: unavailable, exit 4.
    down = cli("acquire", lock_name, "--timeout", "2s", env={"LOCKD_ENDPOINT": dead_endpoint()})
    assert down.returncode == 4
    # --endpoint wins over the environment.
    flag = cli("status", "--endpoint", serve.endpoint, env={"LOCKD_ENDPOINT": dead_endpoint()})
    assert flag.returncode == 0, flag.stderr


def test_invalid_request_exits_2_from_every_command(serve: LockdProcess) -> None:
    """One exit-status table (lockd.exits): a request lockd calls invalid is a usage error."""
    ep = ("--endpoint", serve.endpoint)
    acquire = cli("acquire", "x", "--ttl", "1h", *ep)
    assert acquire.returncode == 2, acquire.stderr
    assert "ttl" in acquire.stderr.lower()
    run = cli("run", "x", "--ttl", "1h", *ep, "--", "true")
    assert run.returncode == 2, run.stderr
    assert "ttl" in run.stderr.lower()


def test_bad_lease_id_is_a_usage_error(serve: LockdProcess) -> None:
    result = cli("release", "x", "--lease", "not-hex", "--endpoint", serve.endpoint)
    assert result.returncode == 2
    assert "32 hex digits" in result.stderr


def test_status_and_acquire_during_restart_delay(new_serve: Callable[..., LockdProcess]) -> None:
    """After an unclean stop the engines refuse grants for max-TTL plus drift: `lockd
    status` shows the delays and exits 4, `lockd acquire` exits 4 with a retry hint."""
    first = new_serve("--max-ttl", "30s")
    data = Path(first.args[first.args.index("--data-dir") + 1])
    first.kill()
    second = new_serve("--max-ttl", "30s", data_dir=data)
    ep = ("--endpoint", second.endpoint)

    status = cli("status", *ep)
    assert status.returncode == 4, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    nodes = [line for line in lines if line.startswith("embedded:")]
    assert len(nodes) == 5
    for line in nodes:
        delay = re.search(r"  (\d+\.\d) s \((.+?)\)", line)
        assert delay, line
        assert 0 < float(delay.group(1)) <= 30.4
        assert delay.group(2)  # why: the reason is shown
    assert "quorum 3 of 5: NOT AVAILABLE" in status.stdout

    acquire = cli("acquire", "r", "--ttl", "5s", *ep)
    assert acquire.returncode == 4
    hint = re.search(r"\(retry in (\d+\.\d)s\)", acquire.stderr)
    assert hint and 0 < float(hint.group(1)) <= 30.4, acquire.stderr
