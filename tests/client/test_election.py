"""Elections from the client library (blocking and asyncio) against a `lockd serve`
process: campaign as a context manager, proclaim, resign, leader, observe, and loss
reported through on_lost / check()."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from lockd import exits
from lockd_client import (
    AsyncClient,
    Client,
    InvalidRequest,
    LeaseLost,
    LockTimeout,
    NoLeader,
    NotLeader,
    NotOwned,
)
from lockd_client.errors import from_status
from tests.client.helpers import CLEAN_ENV, LockdProcess, cli, gateway, lockd_cmd
from tests.client.test_failover import engines, shared  # noqa: F401 (fixture)
from tests.support import EngineProcess


def test_campaign_leads_for_the_block_then_resigns(client: Client, lock_name: str) -> None:
    election = client.election(lock_name)
    with pytest.raises(NoLeader) as raised:
        election.leader()
    assert raised.value.reason == "NO_LEADER"
    with election.campaign(b"replica-1", ttl=5) as leader:
        leader.check()
        assert leader.term > 0 and leader.held and leader.election == lock_name
        now = election.leader()
        assert (now.term, now.value) == (leader.term, b"replica-1")
        leader.proclaim(b"replica-1:v2")
        assert election.leader().value == b"replica-1:v2"
        assert election.leader().term == leader.term
        # A rival waiting with a bound gives up; it does not lead.
        with pytest.raises(LockTimeout):
            election.lead(b"rival", ttl=5, wait=0.3)
    with pytest.raises(NoLeader):
        election.leader()
    with election.campaign(b"again", ttl=5) as later:
        assert later.term > leader.term


def test_watchdog_keeps_leadership_past_the_ttl(client: Client, lock_name: str) -> None:
    with client.election(lock_name).campaign(b"v", ttl=0.6) as leader:
        time.sleep(1.5)
        leader.check()
        assert client.election(lock_name).leader().term == leader.term


def test_loss_is_reported_before_the_deadline(client: Client, lock_name: str) -> None:
    lost = threading.Event()
    election = client.election(lock_name)
    leader = election.lead(b"v", ttl=1.0, on_lost=lambda _: lost.set())
    # Something else ends the leadership (as an admin's forced release would).
    client.release(f"@election/{lock_name}", leader.lease_id)
    assert lost.wait(1.0)
    assert time.monotonic() < leader.deadline
    with pytest.raises(LeaseLost):
        leader.check()
    with pytest.raises(LeaseLost):
        leader.proclaim(b"late")
    leader.resign()  # quiet: it was already lost


def test_election_reasons_map_to_their_exceptions() -> None:
    resign = from_status(grpc.StatusCode.FAILED_PRECONDITION, "no", "NOT_LEADER")
    assert isinstance(resign, NotLeader) and isinstance(resign, NotOwned)
    assert isinstance(from_status(grpc.StatusCode.NOT_FOUND, "none", "NO_LEADER"), NoLeader)


def test_bad_election_names_and_values(client: Client) -> None:
    with pytest.raises(InvalidRequest) as raised:
        client.election("").leader()
    assert raised.value.reason == "BAD_NAME"
    with pytest.raises(InvalidRequest) as raised:
        client.election("x").lead(b"v" * 1001, ttl=5)
    assert raised.value.reason == "BAD_VALUE"


def test_observe_follows_leaders_in_term_order(client: Client, lock_name: str) -> None:
    election = client.election(lock_name)
    seen: list[tuple[int, bytes]] = []
    done = threading.Event()

    def follow() -> None:
        with Client([client.endpoint]) as other:
            for leader in other.election(lock_name).observe():
                seen.append((leader.term, leader.value))
                if len(seen) == 3:
                    break
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.3)
    with election.campaign(b"a", ttl=5) as first:
        time.sleep(0.4)
        first.proclaim(b"a2")
        time.sleep(0.4)
    with election.campaign(b"b", ttl=5) as second:
        assert done.wait(5)
    assert seen == [(first.term, b"a"), (first.term, b"a2"), (second.term, b"b")]


async def test_asyncio_campaign_and_observe(serve: LockdProcess, lock_name: str) -> None:
    async with AsyncClient([serve.endpoint]) as client:
        election = client.election(lock_name)
        changes = election.observe()
        first = asyncio.ensure_future(anext(changes))
        async with election.campaign(b"async", ttl=5) as leader:
            seen = await asyncio.wait_for(first, 5)
            assert (seen.term, seen.value) == (leader.term, b"async")
            await leader.proclaim(b"async2")
            assert (await election.leader()).value == b"async2"
            assert (await asyncio.wait_for(anext(changes), 5)).value == b"async2"
        await changes.aclose()
        with pytest.raises(NoLeader):
            await election.leader()


def test_cli_elect_runs_the_command_as_leader(
    serve: LockdProcess, client: Client, lock_name: str
) -> None:
    ep = ("--endpoint", serve.endpoint)
    show = "import os; print(os.environ['LOCKD_TERM'], os.environ['LOCKD_FENCING_TOKEN'], "
    show += "os.environ['LOCKD_ELECTION'], os.environ['LOCKD_LOCK_NAME'])"
    done = cli(
        "elect", lock_name, "replica-x", *ep, "--ttl", "5s", "--", sys.executable, "-c", show
    )
    assert done.returncode == 0, done.stderr
    term, token, election, lock = done.stdout.split()
    assert int(term) == int(token) > 0
    assert (election, lock) == (lock_name, f"@election/{lock_name}")
    with pytest.raises(NoLeader):  # resigned when CMD exited
        client.election(lock_name).leader()
    # CMD's status is passed on; a leader in place makes --wait run out with status 3.
    failed = cli("elect", lock_name, "v", *ep, "--", sys.executable, "-c", "raise SystemExit(7)")
    assert failed.returncode == 7
    with client.election(lock_name).campaign(b"other", ttl=5):
        waited = cli("elect", lock_name, "v", *ep, "--wait", "300ms", "--", "true")
        assert waited.returncode == exits.NOT_ACQUIRED, waited.stderr
    usage = cli("elect", lock_name, *ep)
    assert usage.returncode == exits.USAGE


def test_cli_elect_stops_the_command_when_leadership_is_lost(
    new_serve: Callable[..., LockdProcess], tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("admin-secret")
    gateway = new_serve("--admin-token-file", str(token_file))
    marker = tmp_path / "marker"
    script = (
        "import os, time\n"
        f"open({str(marker)!r}, 'w').write(os.environ['LOCKD_TERM'] + '\\n')\n"
        "time.sleep(60)\n"
    )
    argv = ["elect", "e", "v", "--endpoint", gateway.endpoint, "--ttl", "3s"]
    proc = subprocess.Popen(
        lockd_cmd(*argv, "--", sys.executable, "-c", script),
        env=CLEAN_ENV,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not marker.exists() or not marker.read_text().endswith("\n"):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        term = int(marker.read_text())
        with Client([gateway.endpoint]) as admin:
            assert admin.election("e").leader().term == term
            deposed = time.monotonic()
            assert admin.force_release("@election/e", "admin-secret") == 5
            with admin.election("e").campaign(b"successor", ttl=5) as successor:
                assert successor.term > term
                # CMD is stopped at the next renewal, before the old lease's deadline.
                assert proc.wait(10) == exits.LEASE_LOST
                assert time.monotonic() - deposed < 3.0
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_leader_election_example_end_to_end(serve: LockdProcess, store: LockdProcess) -> None:
    """The example with real processes: three replicas, the leader frozen past its TTL,
    a new leader with a larger term, the old leader's late write refused by the store."""
    example = Path(__file__).parents[2] / "examples" / "leader_election.py"
    argv = [sys.executable, str(example), "--endpoint", serve.endpoint, "--store"]
    argv += [store.endpoint, "--ttl", "1", "--trials", "2", "--election", "example-e2e"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=CLEAN_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert sum("late write: refused by the store" in line for line in lines) == 2, lines
    assert "store holds" in lines[-1]


def test_cli_elect_observe_prints_leaders(
    serve: LockdProcess, client: Client, lock_name: str
) -> None:
    argv = lockd_cmd("elect", "--observe", lock_name, "--json", "--endpoint", serve.endpoint)
    proc = subprocess.Popen(argv, env=CLEAN_ENV, stdout=subprocess.PIPE, text=True)
    try:
        with client.election(lock_name).campaign(b"cli-seen", ttl=5, owner="o-1") as leader:
            assert proc.stdout is not None
            line = json.loads(proc.stdout.readline())
            assert (line["term"], line["value"], line["owner"]) == (leader.term, "cli-seen", "o-1")
            assert line["election"] == lock_name
            leader.proclaim(b"cli-seen-2")
            assert json.loads(proc.stdout.readline())["value"] == "cli-seen-2"
        usage = cli("elect", "--observe", lock_name, "value", "--endpoint", serve.endpoint)
        assert usage.returncode == exits.USAGE
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_observe_and_leadership_move_to_another_gateway(
    engines: list[EngineProcess],  # noqa: F811 (fixture)
) -> None:
    config = shared(engines)
    async with gateway(config) as gw1, gateway(config) as gw2:
        ends = [f"127.0.0.1:{gw1.port}", f"127.0.0.1:{gw2.port}"]
        async with AsyncClient(ends, timeout=5) as client, AsyncClient([ends[1]]) as other:
            changes = client.election("moving").observe()
            leader = await client.election("moving").lead(b"a", ttl=1.5)
            first = await asyncio.wait_for(anext(changes), 5)
            assert (first.term, first.value) == (leader.term, b"a")
            await gw1.stop(grace=0.5)  # where both the leadership and the observer were
            stopped = time.monotonic()
            while time.monotonic() < stopped + 3 * 1.5:  # renewed through gw2 meanwhile
                leader.check()
                await asyncio.sleep(0.05)
            await leader.proclaim(b"a2")
            # The observer carried on at gw2 without repeating what it had yielded.
            moved = await asyncio.wait_for(anext(changes), 5)
            assert (moved.term, moved.value) == (leader.term, b"a2")
            await leader.resign()
            successor = await other.election("moving").lead(b"b", ttl=1.5)
            taken = await asyncio.wait_for(anext(changes), 5)
            assert (taken.term, taken.value) == (successor.term, b"b")
            assert successor.term > leader.term
            await successor.resign()
            await changes.aclose()
