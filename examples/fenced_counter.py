"""Several workers increment one shared counter, kept in `lockd store`, under a lock.

Each increment: take the lock, read the counter, write counter + 1 with the lease's
fencing token, release. One worker pauses inside the lock for longer than its TTL (as a
long GC pause would): its lease expires, another worker takes the lock and writes, and
then the paused worker wakes up and writes its stale value.

  --fencing on  (default): the store refuses the stale write (StaleToken); the worker
                           starts the increment again; no update is lost.
  --fencing off           : every write is sent with the same token, so the store cannot
                           tell; the stale write overwrites newer ones: lost updates.

Needs a running gateway and store:  make run   and   lockd store
"""

from __future__ import annotations

import argparse
import threading
import time

from lockd_client import Client, StaleToken, StoreClient

KEY = "hits"


def resource(args: argparse.Namespace) -> str:
    """One store resource per mode: a resource that has seen real tokens would refuse
    the constant token of `--fencing off`."""
    return f"counters-fencing-{args.fencing}"


def worker(index: int, args: argparse.Namespace, lost: list[int]) -> None:
    """Do `args.increments` increments; worker 0 pauses once inside the lock."""
    client = Client(args.endpoint)
    store = StoreClient(args.store)
    paused = index != 0
    done = 0
    while done < args.increments:
        # The pause stands for a stop-the-world pause: the watchdog is paused too.
        lease = client.acquire("counter", ttl=args.ttl, wait=30, watchdog=paused)
        try:
            value = int(store.read(resource(args), KEY).value or b"0")
            if not paused:
                paused = True
                time.sleep(args.ttl * 2.5)  # the lease expires meanwhile
            token = lease.token if args.fencing == "on" else 1
            store.write(resource(args), KEY, str(value + 1).encode(), token=token)
            done += 1
        except StaleToken as exc:
            lost.append(index)
            print(f"worker {index}: write refused, {exc.message}; retrying the increment")
        finally:
            lease.release()  # quiet for a lease that was already lost
    client.close()
    store.close()


def main() -> None:
    """Run the workers and compare the counter with the number of increments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="127.0.0.1:7400", help="lockd gateway")
    parser.add_argument("--store", default="127.0.0.1:7500", help="lockd store")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--increments", type=int, default=20, help="per worker")
    parser.add_argument("--ttl", type=float, default=0.5, help="lease TTL in seconds")
    parser.add_argument("--fencing", choices=["on", "off"], default="on")
    args = parser.parse_args()

    store = StoreClient(args.store)
    start = int(store.read(resource(args), KEY).value or b"0")
    refused: list[int] = []
    threads = [
        threading.Thread(target=worker, args=(i, args, refused)) for i in range(args.workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = int(store.read(resource(args), KEY).value or b"0")
    expected = args.workers * args.increments
    print(
        f"fencing {args.fencing}: {expected} increments, counter went {start} -> {final}: "
        f"{expected - (final - start)} lost updates, {len(refused)} stale writes refused"
    )
    store.close()


if __name__ == "__main__":
    main()
