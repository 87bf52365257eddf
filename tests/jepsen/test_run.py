"""`lockd jepsen run` end to end, as CI runs it: real processes, every nemesis.

The safe configuration under all nemeses must be valid (exit 0); the store without its
token check under the pause nemesis, and engines on the wall clock under clock jumps,
must be caught (exit 1). Afterwards no process of the run may be left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

Result = tuple[int, dict[str, Any], Path]

RUNS: dict[str, tuple[str, ...]] = {
    "safe": ("--time-limit", "40", "--seed", "5"),
    "unsafe-store": (
        "--unsafe-store", "--nemesis", "pause", "--time-limit", "25", "--heal-time", "3",
        "--seed", "3",
    ),
    "election": (
        "--workload", "election", "--nemesis", "all", "--time-limit", "40", "--clients", "4",
        "--seed", "11",
    ),
    "election-unsafe-store": (
        "--workload", "election", "--unsafe-store", "--nemesis", "pause", "--time-limit", "25",
        "--heal-time", "3", "--clients", "4", "--seed", "3",
    ),
    "disk": ("--nemesis", "disk", "--time-limit", "20", "--heal-time", "3", "--seed", "7"),
    "redis": ("--engine", "redis", "--time-limit", "22", "--heal-time", "3", "--seed", "2"),
}  # fmt: skip
PAIRS = (("safe", "unsafe-store"), ("election", "election-unsafe-store"), ("disk", "redis"))
"""A run spends most of its time waiting (about 19 s of CPU in a 50 s run), so the
first test of a pair starts both runs and the pair takes the longer one's time."""


class Runs:
    """The runs of `RUNS`, started a pair at a time, each in its own directory."""

    def __init__(self, pool: ThreadPoolExecutor, root: Path) -> None:
        self.pool = pool
        self.root = root
        self.started: dict[str, Future[Result]] = {}

    def out(self, name: str) -> Path:
        """The run's `--out` directory."""
        return self.root / name

    def result(self, name: str) -> Result:
        """Run `name` (and its pair) if not yet started; wait for its result."""
        if name not in self.started:
            pair = next(p for p in PAIRS if name in p)
            for each in pair:
                self.out(each).mkdir()
                self.started[each] = self.pool.submit(_run, self.out(each), *RUNS[each])
        return self.started[name].result()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    with ThreadPoolExecutor(2) as pool:
        yield Runs(pool, tmp_path_factory.mktemp("jepsen-runs"))


def _run(out: Path, *flags: str, timeout: float = 170) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lockd",
            "--log-level",
            "warning",
            "jepsen",
            "run",
            "--out",
            str(out),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    runs = sorted(p for p in out.glob("*/*") if p.is_dir() and not p.is_symlink())
    assert runs, f"no run directory; output:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads((runs[-1] / "results.json").read_text())
    return proc.returncode, results, runs[-1]


def _strays(out: Path) -> list[str]:
    """Live processes started by a run under `out` (the harness marks every child's
    environment with LOCKD_JEPSEN_RUN, its run directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        for var in environ:
            if var.startswith(b"LOCKD_JEPSEN_RUN=") and str(out) in var.decode():
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _layout(run: Path) -> None:
    assert (run.parent / "latest").resolve() == run.resolve()
    for name in ("history.jsonl", "results.json", "report.html", "run.json"):
        assert (run / name).is_file(), name
    html = (run / "report.html").read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    meta = json.loads((run / "history.jsonl").read_text().splitlines()[0])
    assert meta["type"] == "meta" and isinstance(meta["seed"], int)


@pytest.mark.timeout(200)
def test_safe_configuration_under_every_nemesis_is_valid(runs: Runs) -> None:
    code, results, run = runs.result("safe")
    assert results["valid"] is True, json.dumps(results, indent=1)[:3000]
    assert code == 0
    _layout(run)
    assert set(results["stats"]["faults"]) == {
        "kill", "power-loss", "pause", "clock", "partition", "disk",
    }  # fmt: skip
    assert results["tokens"]["grants"] > 50
    assert results["mutex"]["lease_violations"] == 0
    assert results["store"]["lost_updates"]["lost"] == 0
    assert _strays(runs.out("safe")) == []


@pytest.mark.timeout(200)
def test_store_without_its_token_check_is_caught(runs: Runs) -> None:
    code, results, _ = runs.result("unsafe-store")
    assert code == 1 and results["valid"] is False
    store = results["store"]
    assert store["valid"] is False and store["lost_updates"]["lost"] > 0
    assert store["token_order"]["decreases"] > 0
    assert results["mutex"]["held_overlaps_during_pauses"] > 0
    assert _strays(runs.out("unsafe-store")) == []


@pytest.mark.timeout(200)
def test_election_workload_under_every_nemesis_is_valid(runs: Runs) -> None:
    code, results, _ = runs.result("election")
    assert results["valid"] is True, json.dumps(results, indent=1)[:3000]
    assert code == 0
    election = results["election"]
    assert results["terms"]["grants"] > 20 and election["observations"] > 10
    assert election["deposed_writes_acknowledged"] == 0
    assert _strays(runs.out("election")) == []


@pytest.mark.timeout(200)
def test_election_workload_with_a_store_that_ignores_terms_is_caught(runs: Runs) -> None:
    code, results, _ = runs.result("election-unsafe-store")
    assert code == 1 and results["valid"] is False
    assert results["election"]["deposed_writes_acknowledged"] > 0
    assert results["terms"]["valid"] is True
    assert _strays(runs.out("election-unsafe-store")) == []


@pytest.mark.timeout(200)
def test_engines_on_the_wall_clock_are_caught(tmp_path: Path) -> None:
    # Whether a 20 s run lines a clock step up with a held lease depends on timing, not
    # only on the seed (it was caught in 8 of 8 seeds, and missed once in CI-like runs):
    # one of three seeded runs (run at once: they mostly wait) must catch the bug, and
    # every run's store stays safe.
    seeds = ("4", "5", "6")
    for seed in seeds:
        (tmp_path / f"seed-{seed}").mkdir()
    with ThreadPoolExecutor(len(seeds)) as pool:
        flags = ("--unsafe-wall-clock", "--nemesis", "clock", "--time-limit", "20",
                 "--heal-time", "3", "--seed")  # fmt: skip
        done = list(pool.map(lambda seed: _run(tmp_path / f"seed-{seed}", *flags, seed), seeds))
    caught = 0
    for seed, (code, results, _) in zip(seeds, done, strict=True):
        assert results["store"]["valid"] is True  # fencing still holds the store safe
        assert _strays(tmp_path / f"seed-{seed}") == []
        assert code in (0, 1), f"seed {seed}: exit {code}"
        if code == 1:
            assert results["valid"] is False
            assert results["mutex"]["valid"] is False
            assert results["mutex"]["lease_violations"] > 0
            caught += 1
    assert caught, "engines on the wall clock were not caught in three seeded runs"


def _start(out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_")}
    cmd = [sys.executable, "-m", "lockd", "jepsen", "run", "--out", str(out), "--nemesis",
           "pause", "--time-limit", "120", "--clients", "2", "--seed", "1"]  # fmt: skip
    # Ctrl-C as a terminal delivers it: a suite started in the background by a shell
    # without job control inherits SIGINT ignored, which the harness would inherit too
    # (and rightly keep running). A handled signal is reset to its default by exec; no
    # preexec_fn, whose fork runs grpc's fork handlers in a process with grpc threads.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with (out / "harness.out").open("w") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_for_workers(out: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        histories = list(out.glob("*/*/history.jsonl"))
        if histories and '"f":"acquire"' in histories[0].read_text():
            return
        time.sleep(0.2)
    raise AssertionError("the run never got going")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C stops everything (exit 130); even a SIGKILLed harness leaves nothing
    behind, since every child is told by the kernel to die with it."""
    proc = _start(tmp_path)
    try:
        _wait_for_workers(tmp_path, proc)
        expected = 5 + 1 + 2 + 2  # engines, store, gateways, workers
        deadline = time.monotonic() + 20
        while len(_strays(tmp_path)) < expected and time.monotonic() < deadline:
            time.sleep(0.1)  # the second worker may start after the first one's events
        assert len(_strays(tmp_path)) == expected
        proc.send_signal(sig)
        code = proc.wait(30)
        assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _strays(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _strays(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(200)
def test_disk_faults_on_a_minority_lose_nothing(runs: Runs) -> None:
    code, results, run = runs.result("disk")
    assert results["valid"] is True, json.dumps(results, indent=1)[:3000]
    assert code == 0
    assert results["stats"]["faults"].get("disk", 0) >= 2
    assert results["store"]["lost_updates"]["lost"] == 0
    assert results["store"]["token_order"]["decreases"] == 0
    assert results["tokens"]["grants"] > 20
    events = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()[1:]]
    starts = [
        e for e in events if e.get("f") == "start" and (e.get("value") or {}).get("fault") == "disk"
    ]
    assert starts and all(not e["value"]["errors"] for e in starts)
    logs = "".join(p.read_text() for p in (run / "logs").glob("engine-*.log"))
    assert "refusing writes" in logs and "writable again" in logs  # the faults really bit


@pytest.mark.redis
@pytest.mark.timeout(150)
def test_real_redis_under_every_nemesis_that_applies(runs: Runs) -> None:
    """Five real redis-servers (the settings lockd requires) as nodes, every nemesis that
    applies; clock steps move the servers' wall clocks through the LD_PRELOAD shim. Lease
    overlaps under clock steps are expected on Redis and reported apart; any other is a
    violation, and the store must refuse every stale write (no lost update)."""
    code, results, run = runs.result("redis")
    assert results["valid"] is True, json.dumps(results, indent=1)[:3000]
    assert code == 0
    _layout(run)
    meta = json.loads((run / "run.json").read_text())
    assert meta["engine"] == "redis" and "fenced-counter-redis" in meta["test"]
    assert set(meta["skipped_nemeses"]) == {"disk"}, meta["skipped_nemeses"]
    assert set(results["stats"]["faults"]) == {"kill", "power-loss", "pause", "clock", "partition"}
    assert (run / "logs" / "redis-0.log").read_text().count("Ready to accept connections") >= 1
    mutex = results["mutex"]
    assert mutex["lease_violations"] == 0
    assert "lease_overlaps_under_clock_steps" in mutex and "wall clock" in mutex["note"]
    assert results["store"]["lost_updates"]["lost"] == 0
    assert results["store"]["token_order"]["decreases"] == 0
    assert results["tokens"]["grants"] > 20
    assert "expected on real Redis" in (run / "report.html").read_text()
    assert _strays(runs.out("redis")) == []
