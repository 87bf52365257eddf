"""Profile a `lockd serve --nodes` gateway under load with py-spy, and summarise it.

    .venv/bin/python -m tests.bench.profile_gateway
        [--shape engines|redis|embedded|embedded-always] [--clients 16] [--seconds 10]
        [--workload concurrent] [--out var/profile]

Runs `--clients` client processes doing acquire+release cycles on distinct locks while
py-spy samples the gateway (`--nonblocking`: C frames such as getpid() are folded
into their Python caller), then prints
where the samples went: by the file of the innermost Python frame (lockd, redis-py,
grpc, asyncio, ...) and the share of samples under a few functions of interest.
`embedded-always` runs the embedded gateway with `--appendfsync always` and samples idle
threads too (`--idle`: a thread waiting in fsync is idle to py-spy); only the event-loop
(main) thread is summarised, and the fsync threads' share is shown apart.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench import shapes
from tests.bench.peers import run_clients
from tests.bench.shapes_bench import wait_grants

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")

CATEGORIES = (
    ("redis-py", "redis/"),
    ("lockd node transport", "lockd/gateway/resp_client.py"),
    ("lockd RESP codec", "lockd/resp/"),
    ("lockd (other)", "lockd/"),
    ("grpc", "grpc"),
    ("protobuf", "protobuf"),
    ("asyncio", "asyncio/"),
)
INCLUSIVE = (
    "wait_for", "getpid", "create_task", "_call", "data_received", "writelines", "fsync",
    "fdatasync",
)  # fmt: skip
_POOL_THREAD = "concurrent/futures/thread.py"
_MAIN_THREAD = "_run_module_as_main"


def summarise(raw: Path, main_only: bool = False) -> list[tuple[str, float]]:
    """(label, percent of samples) rows from py-spy's raw (collapsed) output; with
    `main_only`, of the event-loop (main) thread's samples, idle ones included, plus the
    fsync threads' samples in fsync per loop sample (the mean number of fsyncs running)."""
    leaf: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = pool = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        if _POOL_THREAD in stack:  # the fsync threads, not the event loop
            pool += count if "fsync (" in stack or "fdatasync (" in stack else 0
            continue
        if main_only and not stack.startswith(_MAIN_THREAD):
            continue  # grpc's own threads, idle
        total += count
        frames = stack.split(";")
        names = {f.split(" (", 1)[0] for f in frames}
        for fn in INCLUSIVE:
            if fn in names:
                under[fn] += count
        category = "other (C, interpreter)"
        for frame in reversed(frames):
            m = _FRAME.match(frame)
            if m is None or not m.group("file").endswith(".py"):
                continue
            for label, needle in CATEGORIES:
                if m.group("file").startswith(needle) or "/" + needle in m.group("file"):
                    category = label
                    break
            else:
                category = "other Python"
            idle = m.group("func").rsplit(".", 1)[-1] in ("select", "poll", "_run_once")
            if idle and category in ("asyncio", "other Python"):
                category = "idle (epoll) and loop"
            break
        if frames[-1].split(" (", 1)[0] in ("epoll_wait", "select", "poll"):
            category = "idle (epoll) and loop"
        leaf[category] += count
    if total == 0:
        return []
    rows = [(f"self: {k}", 100 * v / total) for k, v in leaf.most_common()]
    rows += [(f"under {k}()", 100 * under[k] / total) for k in INCLUSIVE]
    if pool:  # 100 % = one fsync in progress all the time, on average
        rows.append(("fsync threads in fsync, per loop sample", 100 * pool / total))
    return rows


def profile(
    shape: str, clients: int, seconds: float, out: Path, workload: str = "concurrent"
) -> list[tuple[str, float]]:
    """Run the load, sample the gateway, return the summary (raw stacks saved in `out`)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"gateway-{shape}.txt"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        nodes = ""
        extra: tuple[str, ...] = ()
        if shape == "engines":
            nodes = stack.enter_context(shapes.engine_nodes(base)).target
        elif shape == "redis":
            nodes = stack.enter_context(shapes.redis_nodes(base)).target
            extra = ("--max-ttl", "11s")  # young redis-servers: a short restart delay
        elif shape == "embedded-always":
            extra = ("--appendfsync", "always")
        served = stack.enter_context(shapes.gateway(base, nodes, *extra))
        wait_grants(served.target)
        idle = ["--idle"] if shape == "embedded-always" else []
        recorder = subprocess.Popen(
            [spy, "record", "--nonblocking", "-r", "200", "-f", "raw", *idle,
             "-d", str(int(seconds)), "-o", str(raw), "-p", str(served.pids[0])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        result = run_clients("lockd", served.target, workload, clients, seconds + 1)
        recorder.wait(60)
    print(f"{shape}: {result.ok / result.seconds:,.0f} cycles/s, {clients} clients, {workload}")
    return summarise(raw, main_only=bool(idle))


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", choices=("engines", "redis", "embedded", "embedded-always"), default="engines"
    )
    parser.add_argument(
        "--workload", choices=("sequential", "concurrent", "contended"), default="concurrent"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("var/profile"))
    args = parser.parse_args()
    for label, pct in profile(args.shape, args.clients, args.seconds, args.out, args.workload):
        print(f"{label:<40} {pct:5.1f} %")


if __name__ == "__main__":
    main()
