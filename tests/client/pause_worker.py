"""Client A of Kleppmann's pause scenario, run as its own process by test_pause.py.

    python pause_worker.py GATEWAY STORE TTL

Acquires lock "resource" (watchdog on), checks the lease, prints one JSON line with its
token and deadline, then blocks reading stdin: the test stops this process there
(SIGSTOP) for longer than the TTL. Once resumed and told `write`, it writes to the store
with its token *without checking the lease again* (the pause struck between its check
and its write), then prints one JSON line: what the store said and whether the lease
reports itself lost.
"""

from __future__ import annotations

import json
import sys
import time

from lockd_client import Client, LeaseLost, StaleToken, StoreClient


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> int:
    gateway, store_endpoint, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    lost_calls: list[float] = []
    with Client([gateway], timeout=10) as client, StoreClient(store_endpoint) as store:
        lease = client.acquire(
            "resource", ttl=ttl, wait=10, on_lost=lambda _: lost_calls.append(time.monotonic())
        )
        lease.check()  # held: the write below is "safe" as far as A can tell
        report(event="acquired", token=lease.token, deadline=lease.deadline)
        command = sys.stdin.readline().strip()  # <- the test SIGSTOPs A while it waits here
        resumed = time.monotonic()
        if command != "write":
            report(event="aborted", command=command)
            return 1
        outcome: dict[str, object]
        try:
            highest = store.write("resource", "value", b"written by A", lease=lease)
            outcome = {"write": "accepted", "highest_token": highest}
        except StaleToken as exc:
            outcome = {
                "write": "refused",
                "error": type(exc).__name__,
                "reason": exc.reason,
                "highest_token": exc.highest_token,
                "message": exc.message,
            }
        try:
            lease.check()
            lost, lost_reason = False, ""
        except LeaseLost as exc:
            lost, lost_reason = True, exc.reason
        report(
            event="wrote",
            token=lease.token,
            resumed=resumed,
            deadline=lease.deadline,
            lost=lost,
            lost_reason=lost_reason,
            held=lease.held,
            on_lost_calls=len(lost_calls),
            **outcome,
        )
        lease.release()  # quiet for a lost lease
    return 0


if __name__ == "__main__":
    sys.exit(main())
