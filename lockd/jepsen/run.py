"""`lockd jepsen run`: start the cluster, run workers and nemesis, check, report.

The run lays out `DIR/<test>/<timestamp>/`: history.jsonl, results.json (top-level
`valid`, then one entry per checker), report.html, run.json (the configuration and
seed), logs/ (every process's output) and data/ (their directories); `DIR/<test>/latest`
points at the newest run. Whatever happens, every process the run started is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lockd.jepsen.checkers import merge
from lockd.jepsen.checkers.availability import check_availability
from lockd.jepsen.checkers.election import check_election
from lockd.jepsen.checkers.mutex import check_mutex
from lockd.jepsen.checkers.store import check_store
from lockd.jepsen.checkers.tokens import check_tokens
from lockd.jepsen.client import COUNTER
from lockd.jepsen.cluster import Cluster, ClusterConfig, build_clock_shim
from lockd.jepsen.generator import clock_offsets, schedule
from lockd.jepsen.history import NEMESIS, Event, HistoryError, HistoryWriter, load, pair, validate
from lockd.jepsen.nemesis import Nemesis

__all__ = [
    "CHECKERS",
    "WORKLOADS",
    "RunConfig",
    "check_file",
    "check_history",
    "malformed",
    "run",
]

log = logging.getLogger("lockd.jepsen")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; `lockd jepsen run` builds one from its flags."""

    out: Path
    seed: int
    nemeses: tuple[str, ...] = ()
    nodes: int = 5
    gateways: int = 2
    clients: int = 8
    keys: int = 1
    time_limit_s: float = 60.0
    heal_s: float | None = None
    ttl_s: float = 1.0
    max_ttl_ms: int = 2000
    think_max_s: float = 0.2
    node_timeout_ms: int = 200
    unsafe_store: bool = False
    unsafe_wall_clock: bool = False
    unfenced_read: bool = False
    workload: str = "fenced-counter"
    """`fenced-counter` or `election` (WORKLOADS)."""
    observers: int = 2
    """Election workload: worker processes that follow the leaders (`observe`)."""
    test_name: str | None = None
    check_time_limit_s: float = 60.0
    check_memory_mb: int = 1024
    command: str = ""
    engine: str = "lockd"
    """The nodes: `lockd` (`lockd engine` processes) or `redis` (real redis-servers)."""

    @property
    def name(self) -> str:
        """The test's name: workload, unsafe switches and nemeses."""
        if self.test_name:
            return self.test_name
        parts = [self.workload]
        if self.engine != "lockd":
            parts.append(self.engine)
        parts += [
            flag
            for flag, on in (
                ("unsafe-store", self.unsafe_store),
                ("unsafe-wall-clock", self.unsafe_wall_clock),
                ("unfenced-read", self.unfenced_read),
            )
            if on
        ]
        parts.append("+".join(self.nemeses) if self.nemeses else "no-faults")
        return "-".join(parts)

    @property
    def heal_time_s(self) -> float:
        """Length of the final healed phase: past every restart delay, then some."""
        if self.heal_s is not None:
            return self.heal_s
        return max(5.0, 2 * self.max_ttl_ms / 1000 + 3.0)

    def describe(self) -> dict[str, Any]:
        """JSON data for run.json and the history's meta line."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "out"}
        out["out"] = str(self.out)
        out["nemeses"] = list(self.nemeses)
        out["test"] = self.name
        out["heal_s"] = self.heal_time_s
        return out


def _keys(config: RunConfig) -> list[str]:
    return [f"lock-{i}" for i in range(config.keys)]


async def _final_reads(cluster: Cluster, keys: Sequence[str], record: Any) -> None:
    """Read every counter once more after the healed phase (process "final")."""
    from lockd_client import AsyncStoreClient

    async with AsyncStoreClient(cluster.store_endpoint, timeout=5.0) as store:
        for key in keys:
            record(Event("invoke", "final", "read", time.monotonic_ns(), key))
            try:
                result = await store.read(key, COUNTER)
            except Exception as exc:
                record(Event("info", "final", "read", time.monotonic_ns(), key, error=repr(exc)))
                continue
            value = {
                "value": int(result.value) if result.value else None,
                "highest": result.highest_token,
            }
            record(Event("ok", "final", "read", time.monotonic_ns(), key, value))


REDIS_SKIPS = {
    "disk": "Redis has no disk fault injection (lockd engine's LOCKD.DISK); not run",
}
"""Nemeses that do not apply to real Redis nodes, and why."""


def _applicable(config: RunConfig) -> tuple[RunConfig, Path | None, dict[str, str]]:
    """The configuration with the nemeses that apply to its engine, the clock shim to
    preload (real Redis with the clock nemesis), and why each left-out nemesis was."""
    if config.engine != "redis":
        return config, None, {}
    skipped = {k: why for k, why in REDIS_SKIPS.items() if k in config.nemeses}
    shim = None
    if "clock" in config.nemeses:
        shim, why = build_clock_shim(config.out / ".clockshim")
        if shim is None:
            skipped["clock"] = f"{why}; clock faults on Redis need it, so not run"
    for kind, why in skipped.items():
        log.warning("nemesis %s skipped on real Redis: %s", kind, why)
    nemeses = tuple(k for k in config.nemeses if k not in skipped)
    return dataclasses.replace(config, nemeses=nemeses), shim, skipped


async def _execute(
    config: RunConfig, directory: Path, history: HistoryWriter, shim: Path | None
) -> None:
    """Start everything, run the schedule and the healed phase, stop everything."""
    cluster = Cluster(
        ClusterConfig(
            directory,
            nodes=config.nodes,
            gateways=config.gateways,
            max_ttl_ms=config.max_ttl_ms,
            node_timeout_ms=config.node_timeout_ms,
            unsafe_store=config.unsafe_store,
            unsafe_wall_clock=config.unsafe_wall_clock,
            power_loss="power-loss" in config.nemeses,
            disk_faults="disk" in config.nemeses,
            seed=config.seed,
            engine=config.engine,
            clock_shim=shim,
        )
    )

    def nemesis_event(f: str, value: dict[str, Any]) -> None:
        history.append(Event("info", NEMESIS, f, time.monotonic_ns(), value=value))
        log.info("nemesis %s %s", f, json.dumps(value)[:200])

    nemesis = Nemesis(cluster, nemesis_event, config.seed)
    faults = schedule(
        config.seed,
        config.nemeses,
        config.time_limit_s,
        nodes=config.nodes,
        gateways=config.gateways,
        ttl_s=config.ttl_s,
    )
    try:
        log.info(
            "starting %d %s nodes, %d gateways, the store",
            config.nodes,
            "redis-server" if config.engine == "redis" else "engine",
            config.gateways,
        )
        await cluster.start()
        if "clock" in config.nemeses:
            await nemesis.scramble(clock_offsets(config.seed, config.nodes))
        endpoints = cluster.gateway_endpoints
        keys = _keys(config)
        election = config.workload == "election"
        workers = config.clients + (config.observers if election else 0)
        for i in range(workers):
            rotated = endpoints[i % len(endpoints) :] + endpoints[: i % len(endpoints)]
            args = [
                "--workload", config.workload,
                "--index", str(i),
                "--concurrency", str(workers),
                "--gateways", ",".join(rotated),
                "--store", cluster.store_endpoint,
                "--keys", ",".join(keys),
                "--seed", str(config.seed),
                "--ttl", str(config.ttl_s),
                "--think-max", str(config.think_max_s),
                "--time-limit", str(config.time_limit_s + config.heal_time_s + 30),
            ]  # fmt: skip
            if config.unfenced_read:
                args.append("--unfenced-read")
            if i >= config.clients:
                args.append("--observer")
            await cluster.start_worker(i, args, history.append)
        started = time.monotonic()
        history.append(
            Event("info", NEMESIS, "begin", time.monotonic_ns(), value={"faults": len(faults)})
        )
        scheduled_end = 0.0
        for fid, fault in enumerate(faults):
            # Keep the quiet gap even when restarts made the previous fault run long.
            gap = fault.at_s - scheduled_end
            await asyncio.sleep(max(started + fault.at_s - time.monotonic(), gap))
            scheduled_end = fault.at_s + fault.duration_s
            await nemesis.start(fault, fid)
            await asyncio.sleep(fault.duration_s)  # from when it actually started
            await nemesis.stop(fault, fid)
            history.flush()
        await asyncio.sleep(max(0.0, started + config.time_limit_s - time.monotonic()))
        await nemesis.heal_all()
        await asyncio.sleep(config.heal_time_s)
        log.info("stopping the workers")
        await asyncio.gather(*(w.finish(timeout=2 * config.ttl_s + 6.0) for w in cluster.workers))
        if not election:
            await _final_reads(cluster, keys, history.append)
    finally:
        await cluster.stop()


CHECKERS = ("store", "tokens", "mutex", "availability", "stats")
"""The checkers of a well-formed fenced-counter history, in the order results list them."""
WORKLOADS = {"fenced-counter": CHECKERS, "election": ("election", "terms", "stats")}
"""Each workload's checkers (the meta record's `workload`; fenced-counter by default)."""

# Configuration the checkers read from the meta record: name -> (default, integers only).
_CONFIG = {
    "nodes": (5, True),
    "gateways": (2, True),
    "max_ttl_ms": (2000, True),
    "check_time_limit_s": (60.0, False),
    "check_memory_mb": (1024, True),
}


def _config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The checkers' settings from a meta record, and what is wrong with it."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, (default, integer) in _CONFIG.items():
        v = config.get(name, default)
        ok = isinstance(v, int if integer else int | float) and not isinstance(v, bool)
        if not ok or v <= 0:
            kind = "a positive integer" if integer else "a positive number"
            problems.append(f"meta record: {name!r} must be {kind}, not {v!r:.40}")
        out[name] = v
    return out, problems


def malformed(problems: Sequence[str], checkers: Sequence[str] = CHECKERS) -> dict[str, Any]:
    """The results for a malformed history: unknown, and no checker run (a checker reading
    a history it cannot trust proves nothing, either way)."""
    for problem in problems[:10]:
        log.warning("malformed history: %s", problem)
    reason = f"not checked: the history is malformed ({problems[0]})"
    return {
        "valid": "unknown",
        "history": {"valid": "unknown", "problems": list(problems[:50]), "count": len(problems)},
        **{name: {"valid": "unknown", "reason": reason} for name in checkers},
    }


def check_history(
    events: Sequence[Event],
    config: dict[str, Any],
    store_log: Path | None,
) -> dict[str, Any]:
    """Every checker over a history: {"valid": ..., "history": ..., "<checker>": {...}}.

    A malformed history (`validate`, or a bad meta record) is "unknown" with its
    problems, each naming its line; the checkers then do not run. Without a store log
    (None, or no such file) the store's token order is unknown."""
    settings, problems = _config(config)
    workload = config.get("workload", "fenced-counter")
    if workload not in WORKLOADS:
        problems.append(f"meta record: unknown workload {workload!r:.40}")
    problems = validate(events) + problems
    if problems:
        return malformed(problems, WORKLOADS.get(workload, CHECKERS))
    client_events = [e for e in events if not e.is_nemesis]
    nemesis = [e for e in events if e.is_nemesis]
    ops = pair(client_events)
    end = max((e.time for e in events), default=0)
    results: dict[str, Any] = {"history": {"valid": True, "problems": [], "count": 0}}
    if workload == "election":
        results["election"] = check_election(ops)
        results["terms"] = check_tokens(ops, "campaign", "term")
        results["stats"] = _stats(ops, nemesis)
        return {"valid": merge(r["valid"] for r in results.values()), **results}
    results["store"] = check_store(
        ops,
        store_log,
        time_limit_s=float(settings["check_time_limit_s"]),
        memory_limit_bytes=int(settings["check_memory_mb"]) << 20,
    )
    results["tokens"] = check_tokens(ops)
    results["mutex"] = check_mutex(
        ops, nemesis, end, wall_clock_ttls=config.get("engine", "lockd") == "redis"
    )
    results["availability"] = check_availability(
        ops,
        nemesis,
        nodes=settings["nodes"],
        gateways=settings["gateways"],
        max_ttl_ms=settings["max_ttl_ms"],
        end=end,
    )
    results["stats"] = _stats(ops, nemesis)
    return {"valid": merge(r["valid"] for r in results.values()), **results}


def check_file(history: Path) -> dict[str, Any]:
    """`lockd jepsen check`: check a history.jsonl with the store log the run left beside
    it (data/store/store.log); a file that cannot be read as a history is "unknown"."""
    try:
        meta, events = load(history)
    except (HistoryError, OSError) as exc:
        return malformed([str(exc)])
    return check_history(events, meta, history.parent / "data" / "store" / "store.log")


def _stats(ops: Sequence[Any], nemesis: Sequence[Event]) -> dict[str, Any]:
    by_f: dict[str, Counter[str]] = {}
    for op in ops:
        by_f.setdefault(op.f, Counter())[op.outcome] += 1
    faults = Counter((e.value or {}).get("fault") for e in nemesis if e.f == "start")
    oks = sum(c["ok"] for c in by_f.values())
    return {
        "valid": oks > 0,
        "operations": len(ops),
        "by_function": {f: dict(c) for f, c in sorted(by_f.items())},
        "faults": dict(faults),
    }


def _link_latest(test_dir: Path, run_dir: Path) -> None:
    latest = test_dir / "latest"
    tmp = test_dir / f".latest-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    tmp.replace(latest)


async def _main(
    config: RunConfig, directory: Path, history: HistoryWriter, shim: Path | None
) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await _execute(config, directory, history, shim)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def run(config: RunConfig) -> tuple[Path, dict[str, Any]]:
    """Run one test; returns its directory and results (also written there)."""
    config, shim, skipped = _applicable(config)
    test_dir = config.out / config.name
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")[:-3]
    directory = test_dir / stamp
    directory.mkdir(parents=True)
    _link_latest(test_dir, directory)
    meta = {
        **config.describe(),
        "skipped_nemeses": skipped,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "t0": time.monotonic_ns(),
        "command": config.command or shlex.join(sys.argv),
    }
    (directory / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    history = HistoryWriter(directory / "history.jsonl", meta)
    try:
        asyncio.run(_main(config, directory, history, shim))
    except asyncio.CancelledError:  # SIGTERM: everything is stopped by now
        raise KeyboardInterrupt from None
    finally:
        history.close()
    log.info("checking the history")
    _, events = load(directory / "history.jsonl")
    results = check_history(events, meta, directory / "data" / "store" / "store.log")
    (directory / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    from lockd.jepsen.report import write_report

    write_report(directory / "report.html", meta, events, results)
    return directory, results
