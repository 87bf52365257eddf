"""`lockd run NAME -- CMD` as a real process: environment, exit statuses, release,
signal forwarding, and stopping CMD before the lease's deadline when the lease is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockd_client import Client
from tests.client.helpers import CLEAN_ENV, LockdProcess, cli, dead_endpoint, drift, lockd_cmd

PY = sys.executable

# CMD for the signal tests: records when it started and when it got SIGTERM (monotonic
# clock, shared by every process on the host), then waits to be stopped.
TRAPPER = textwrap.dedent(
    """
    import os, signal, sys, time
    marker = sys.argv[1]
    status = int(sys.argv[2])

    def log(line):
        with open(marker, "a") as f:
            f.write(line + "\\n")
            f.flush()
            os.fsync(f.fileno())

    def on_term(signum, frame):
        log(f"term {time.monotonic()!r}")
        if status >= 0:
            sys.exit(status)
        # status < 0: ignore SIGTERM and carry on until killed

    signal.signal(signal.SIGTERM, on_term)
    log(f"started {time.monotonic()!r} {os.getpid()} {os.environ['LOCKD_FENCING_TOKEN']}")
    while True:
        time.sleep(0.05)
    """
)


def events(marker: Path) -> dict[str, list[str]]:
    """The marker file's lines, by their first word."""
    out: dict[str, list[str]] = {}
    if marker.exists():
        *lines, _partial = marker.read_text().split("\n")  # only whole lines
        for line in lines:
            word, *rest = line.split()
            out[word] = rest
    return out


def wait_for(marker: Path, word: str, proc: subprocess.Popen[bytes], timeout: float) -> list[str]:
    """Poll the marker file until it has a `word` line (fails if `proc` exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        found = events(marker).get(word)
        if found is not None:
            return found
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"lockd run exited {proc.returncode} before {word!r}: {out}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {word!r} in {marker} after {timeout}s")
        time.sleep(0.01)


def spawn_run(endpoint: str, name: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        lockd_cmd("run", name, "--endpoint", endpoint, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=CLEAN_ENV,
    )


def trapper(tmp_path: Path, status: int = 0) -> tuple[Path, list[str]]:
    script = tmp_path / "trapper.py"
    script.write_text(TRAPPER)
    marker = tmp_path / "marker"
    return marker, [PY, str(script), str(marker), str(status)]


def test_command_sees_token_and_name_and_its_status_is_returned(
    serve: LockdProcess, client: Client, lock_name: str
) -> None:
    code = "import os; print(os.environ['LOCKD_FENCING_TOKEN'], os.environ['LOCKD_LOCK_NAME'])"
    before = client.describe(lock_name).fencing_counter
    result = cli(
        "run", lock_name, "--endpoint", serve.endpoint, "--ttl", "10s", "--",
        PY, "-c", code + "; raise SystemExit(7)",
    )  # fmt: skip
    assert result.returncode == 7, result.stderr
    token, name = result.stdout.split()
    assert name == lock_name
    assert int(token) > before
    assert int(token) == client.describe(lock_name).fencing_counter
    # Released on exit: the lock is free at once.
    assert not client.describe(lock_name).held
    with client.acquire(lock_name, ttl=5, wait=0) as lease:
        assert lease.token > int(token)


def test_lock_released_after_normal_exit(
    serve: LockdProcess, client: Client, lock_name: str
) -> None:
    result = cli("run", lock_name, "--endpoint", serve.endpoint, "--ttl", "20s", "--", "true")
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    with client.acquire(lock_name, ttl=5, wait=0) as lease:  # no waiting: it was released
        assert lease.held
    assert time.monotonic() - started < 5


def test_death_by_signal_is_128_plus_n(serve: LockdProcess, client: Client, lock_name: str) -> None:
    result = cli("run", lock_name, "--endpoint", serve.endpoint, "--", "sh", "-c", "kill -9 $$")
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    result = cli("run", lock_name, "--endpoint", serve.endpoint, "--", "sh", "-c", "kill -USR1 $$")
    assert result.returncode == 128 + signal.SIGUSR1, result.stderr
    client.acquire(lock_name, ttl=5, wait=0).release()  # released after those too


def test_held_for_the_whole_wait_exits_3(
    serve: LockdProcess, client: Client, lock_name: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    with client.acquire(lock_name, ttl=10):
        started = time.monotonic()
        result = cli(
            "run", lock_name, "--endpoint", serve.endpoint, "--wait", "1s", "--",
            "touch", str(ran),
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert elapsed >= 1.0
    assert "held" in result.stderr
    assert not ran.exists()


def test_no_gateway_exits_4(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    result = cli(
        "run", "x", "--endpoint", dead_endpoint(), "--timeout", "3s", "--", "touch", str(ran)
    )
    assert result.returncode == 4, result.stderr
    assert "lockd run:" in result.stderr
    assert not ran.exists()


def test_missing_command_exits_127_and_releases(
    serve: LockdProcess, client: Client, lock_name: str, tmp_path: Path
) -> None:
    result = cli(
        "run", lock_name, "--endpoint", serve.endpoint, "--", str(tmp_path / "no-such-command")
    )
    assert result.returncode == 127, result.stderr
    assert "cannot run" in result.stderr
    client.acquire(lock_name, ttl=5, wait=0).release()


def test_sigterm_is_forwarded(
    serve: LockdProcess, client: Client, lock_name: str, tmp_path: Path
) -> None:
    marker, argv = trapper(tmp_path, status=42)
    run = spawn_run(serve.endpoint, lock_name, "--ttl", "10s", "--", *argv)
    try:
        wait_for(marker, "started", run, timeout=30)
        assert client.describe(lock_name).held
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 42  # CMD handled it and chose its status
        assert "term" in events(marker)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        if run.stdout is not None:
            run.stdout.close()
    client.acquire(lock_name, ttl=5, wait=0).release()


def dead(pid: int) -> bool:
    """Whether process `pid` has exited (gone, or a zombie not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


@pytest.mark.parametrize("on_term", ["exits", "ignores"])
def test_lost_lease_stops_command_before_deadline(
    new_serve: Callable[..., LockdProcess], tmp_path: Path, on_term: str
) -> None:
    """The gateway is SIGKILLed while CMD runs: renewals fail, the watchdog declares the
    lease lost ahead of its deadline, and CMD gets SIGTERM before that deadline; a CMD
    that ignores SIGTERM is SIGKILLed by the deadline."""
    ttl = 4.0  # the watchdog gives up 10% (0.4 s) ahead of the deadline
    gateway = new_serve("--max-ttl", "10s")
    marker, argv = trapper(tmp_path, status=0 if on_term == "exits" else -1)
    run = spawn_run(gateway.endpoint, "job", "--ttl", f"{ttl}s", "--", *argv)
    try:
        pid = int(wait_for(marker, "started", run, timeout=30)[1])
        with Client([gateway.endpoint], timeout=5) as observer:
            # Kill just after a grant or renewal reached the nodes (more than 90% of the TTL
            # left), so that no renewal can succeed between this look and the kill: the
            # next one is due a third of the validity later.
            deadline = time.monotonic() + 10
            while True:
                info = observer.describe("job")
                looked = time.monotonic()
                assert info.held
                if info.ttl_remaining >= 0.9 * ttl:
                    break
                assert looked < deadline, "never saw a fresh renewal"
                time.sleep(0.01)
            killed = time.monotonic()
            gateway.kill()
        # No renewal can have been sent in between: the next was due a third of the
        # validity after the last, which was less than a tenth of the TTL before `looked`.
        assert killed - looked < ttl / 3 - ttl / 10 - 0.1
        # The lease's deadline cannot be later than the nodes' expiry less the drift
        # allowance: the gateway counts validity from before it reached any node.
        latest_deadline = looked + info.ttl_remaining - drift(ttl) + 0.001
        while not dead(pid):
            assert time.monotonic() < latest_deadline + 10, "CMD still runs"
            time.sleep(0.005)
        died = time.monotonic()
        status = run.wait(30)
        output = run.stdout.read().decode() if run.stdout else ""
        assert status == 5, output
        assert "lost" in output
        term = events(marker).get("term")
        assert term is not None, f"CMD never got SIGTERM: {output}"
        termed = float(term[0])
        assert killed < termed < latest_deadline, (killed, termed, latest_deadline)
        if on_term == "ignores":
            # SIGKILL at the deadline: not later, give or take the scheduler's latency.
            assert termed < died <= latest_deadline + 0.5, (died, latest_deadline)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        if run.stdout is not None:
            run.stdout.close()


def test_lost_lease_with_an_unreachable_gateway_exits_promptly(
    new_serve: Callable[..., LockdProcess], tmp_path: Path
) -> None:
    """The gateway is stopped (SIGSTOP: connections hang, nothing is refused): the lease
    is lost and CMD stopped in time, and `lockd run` exits 5 soon after, instead of
    waiting out the client timeout (10 s) on a release nobody can answer."""
    gateway = new_serve("--max-ttl", "10s")
    marker, argv = trapper(tmp_path, status=0)
    run = spawn_run(gateway.endpoint, "job", "--ttl", "3s", "--", *argv)
    try:
        pid = int(wait_for(marker, "started", run, timeout=30)[1])
        stopped = time.monotonic()
        gateway.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        while not dead(pid):
            assert time.monotonic() < stopped + 3 + 5, "CMD still runs"
            time.sleep(0.005)
        died = time.monotonic()
        assert died < stopped + 3  # before the lease's deadline (at most the TTL away)
        status = run.wait(30)
        exited = time.monotonic()
        output = run.stdout.read().decode() if run.stdout else ""
        assert status == 5, output
        assert "term" in events(marker)
        assert exited - died < 2.0, (exited - died, output)
    finally:
        if gateway.proc is not None and gateway.proc.poll() is None:
            gateway.proc.send_signal(signal.SIGCONT)
        if run.poll() is None:
            run.kill()
            run.wait(10)
        if run.stdout is not None:
            run.stdout.close()


def test_waits_for_the_lock_then_runs(serve: LockdProcess, client: Client, lock_name: str) -> None:
    """With --wait, `lockd run` queues behind the holder and runs once it is released."""
    lease = client.acquire(lock_name, ttl=10)
    run = subprocess.Popen(
        lockd_cmd("run", lock_name, "--endpoint", serve.endpoint, "--wait", "20s", "--", "true"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=CLEAN_ENV,
    )
    try:
        deadline = time.monotonic() + 20
        while client.describe(lock_name).waiters == 0:
            assert run.poll() is None, "lockd run did not wait"
            assert time.monotonic() < deadline, "lockd run never queued"
            time.sleep(0.02)
        lease.release()
        assert run.wait(30) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    client.acquire(lock_name, ttl=5, wait=0).release()  # and released it again
