"""What a group-commit batch costs on this disk: write + fdatasync of one file, against
five files fdatasynced in parallel on threads (as the embedded engines' batch does),
timing when the third (a quorum) and when the last finished.

    .venv/bin/python -m tests.bench.fsync_bench [--rounds 300] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import tempfile
import time

RECORD = b"x" * 150  # about one acquire's AOF frame


def _synced(fd: int) -> float:
    os.fdatasync(fd)
    return time.perf_counter()


def measure(rounds: int, directory: str) -> dict[str, tuple[float, float]]:
    """label -> (p50, p90) in milliseconds."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        fds = [
            os.open(f"{tmp}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) for i in range(5)
        ]
        one: list[float] = []
        third: list[float] = []
        last: list[float] = []
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            for _ in range(rounds):
                start = time.perf_counter()
                for fd in fds:
                    os.write(fd, RECORD)
                ends = sorted(pool.map(_synced, fds))
                third.append(ends[2] - start)
                last.append(ends[4] - start)
                start = time.perf_counter()
                os.write(fds[0], RECORD)
                os.fdatasync(fds[0])
                one.append(time.perf_counter() - start)
        for fd in fds:
            os.close(fd)

    def pct(xs: list[float]) -> tuple[float, float]:
        xs = sorted(xs)
        return xs[len(xs) // 2] * 1e3, xs[len(xs) * 9 // 10] * 1e3

    return {
        "one file": pct(one),
        "five in parallel, third done": pct(third),
        "five in parallel, all done": pct(last),
    }


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    for label, (p50, p90) in measure(args.rounds, args.dir).items():
        print(f"{label:<32} p50 {p50:.2f} ms  p90 {p90:.2f} ms")


if __name__ == "__main__":
    main()
