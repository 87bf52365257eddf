"""Three replicas elect a leader; only the leader writes to `lockd store`, with its term.

Each replica campaigns in election "primary". The leader first claims the store with its
term (a write with the term as fencing token), then works in a loop: check it still
leads, do its work (a sleep), write the result with its term. The demo freezes the
leader with SIGSTOP, as a long GC pause or a stalled VM would, for longer than its TTL:

- its lease runs out and a waiting replica leads with a larger term, then writes;
- the frozen leader wakes up (SIGCONT) and sends the write it had prepared: the store
  refuses it (StaleToken), since a larger term has written. It notices it was deposed
  and campaigns again as a follower.

  python examples/leader_election.py                 # the demo: 3 replicas, 1 failover
  python examples/leader_election.py --trials 20     # 20 failovers in a row
  python examples/leader_election.py replica NAME    # one replica (JSON lines on stdout)

Needs a running gateway and store:  make run   and   lockd store
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from lockd_client import Client, LeaseLost, LockError, StaleToken, StoreClient

ELECTION = "primary"
RESOURCE = "leader-election-demo"
"""The store resource is this plus the election name."""
KEY = "state"


def emit(name: str, event: str, term: int, **extra: Any) -> None:
    """One JSON line: what this replica did, stamped with the host's monotonic clock."""
    line = {"replica": name, "event": event, "term": term, "t": time.monotonic(), **extra}
    print(json.dumps(line), flush=True)


def replica(args: argparse.Namespace) -> None:
    """Campaign forever; while leading, write (claim, then work results) with the term."""
    client = Client(args.endpoint, owner=args.name)
    store = StoreClient(args.store)
    election = client.election(args.election)
    resource = f"{RESOURCE}/{args.election}"
    while True:
        with (
            contextlib.suppress(LockError),
            election.campaign(args.name.encode(), ttl=args.ttl) as leader,
        ):
            term = leader.term
            emit(args.name, "leader", term)
            seq = 0
            while True:
                try:
                    if seq:
                        leader.check()
                        emit(args.name, "working", term)
                        time.sleep(args.interval)  # the work; a pause here makes a late write
                    seq += 1
                    store.write(resource, KEY, f"{args.name} term {term} #{seq}", token=term)
                    emit(args.name, "write", term, seq=seq)
                except LeaseLost:
                    emit(args.name, "lost", term)
                    break
                except StaleToken as exc:
                    emit(args.name, "refused", term, highest=exc.metadata.get("highest_token"))
                    break


@dataclasses.dataclass
class Trial:
    """One failover: who led, who took over, and what happened to the late write."""

    old: str
    old_term: int
    new: str
    new_term: int
    failover_s: float
    """SIGSTOP of the old leader -> the new leader's first accepted write."""
    late_write_refused: bool


class Replicas:
    """Three replica processes and the events they print."""

    def __init__(self, args: argparse.Namespace, count: int = 3) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.procs: dict[str, subprocess.Popen[str]] = {}
        for i in range(count):
            name = f"r{i + 1}"
            argv = [sys.executable, os.path.abspath(__file__), "replica", name]
            argv += ["--endpoint", args.endpoint, "--store", args.store]
            argv += ["--ttl", str(args.ttl), "--interval", str(args.interval)]
            argv += ["--election", args.election]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            self.procs[name] = proc
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.events.put(json.loads(line))

    def next(self, timeout: float, **match: Any) -> dict[str, Any]:
        """The next event with these fields (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no event {match} within {timeout} s")
            event = self.events.get(timeout=left)
            if all(event.get(k) == v for k, v in match.items()):
                return event

    def failover(self, ttl: float) -> Trial:
        """Freeze the leader past its TTL as it starts its work (its next write is then
        prepared, past its check); wait for the next leader's first write; wake the old
        one and see its late write refused."""
        while not self.events.empty():  # only work started from now on will do
            self.events.get_nowait()
        working = self.next(30, event="working")
        old, old_term = working["replica"], working["term"]
        proc = self.procs[old]
        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        while True:
            taken = self.next(10 * ttl + 10, event="write")
            if taken["replica"] != old and taken["term"] > old_term:
                break
        failover = taken["t"] - stopped
        time.sleep(max(0.0, stopped + 2 * ttl - time.monotonic()))  # frozen past its TTL
        proc.send_signal(signal.SIGCONT)
        late = self.next(10, replica=old)
        return Trial(
            old,
            old_term,
            taken["replica"],
            taken["term"],
            failover,
            late["event"] == "refused" and late["term"] == old_term,
        )

    def close(self) -> None:
        """Stop every replica."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def demo(args: argparse.Namespace) -> list[Trial]:
    """Run three replicas through `args.trials` failovers; print each."""
    replicas = Replicas(args)
    trials = []
    try:
        for _ in range(args.trials):
            trial = replicas.failover(args.ttl)
            trials.append(trial)
            print(
                f"{trial.old} (term {trial.old_term}) frozen; {trial.new} leads with term "
                f"{trial.new_term} and wrote {trial.failover_s * 1000:.0f} ms after the "
                f"freeze; {trial.old}'s late write: "
                f"{'refused by the store' if trial.late_write_refused else 'NOT REFUSED'}",
                flush=True,
            )
    finally:
        replicas.close()
    store = StoreClient(args.store)
    final = store.read(f"{RESOURCE}/{args.election}", KEY)
    store.close()
    print(f"store holds {(final.value or b'').decode()!r} (highest term {final.highest_token})")
    return trials


def main() -> None:
    """`demo` (default) or `replica NAME`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="demo", choices=["demo", "replica"])
    parser.add_argument("name", nargs="?", default="r1", help="replica name")
    parser.add_argument("--endpoint", default="127.0.0.1:7400", help="lockd gateway")
    parser.add_argument("--store", default="127.0.0.1:7500", help="lockd store")
    parser.add_argument("--election", default=ELECTION)
    parser.add_argument("--ttl", type=float, default=1.0, help="leader lease TTL, seconds")
    parser.add_argument("--interval", type=float, default=0.2, help="work between writes")
    parser.add_argument("--trials", type=int, default=1, help="failovers to run")
    args = parser.parse_args()
    if args.mode == "replica":
        replica(args)
        return
    trials = demo(args)
    sys.exit(0 if all(t.late_write_refused and t.new_term > t.old_term for t in trials) else 1)


if __name__ == "__main__":
    main()
