"""The nemesis: breaks the cluster as the schedule says, and records what it did.

- kill: SIGKILL engines (restarted on the same directory when healed) or a gateway.
- power-loss: SIGKILL engines that run with `--appendfsync no --hold-aof-until-fsync`, so
  every write not yet fsynced is lost, as in a power cut; then restart them.
- pause: SIGSTOP a client worker for 1-1.25 or 2-3 TTLs, preferably one that holds a
  lock between its read and its write, then SIGCONT.
- clock: through `LOCKD.CLOCK` on each engine: a wall-clock offset per node from the
  start (`scramble`), then in each fault drift (within what the gateways allow for) and
  steps of the wall clock, forward past the TTL and backward.
- partition: cut, delay or degrade gateway-node links at the fault proxies.
- disk: through `LOCKD.DISK` on a minority of engines, make every disk write fail with
  ENOSPC, EIO or EPERM; those nodes turn read-only (MISCONF) until healed.
Every fault heals at its end; `heal_all` undoes everything before the final phase.

With real redis-servers as nodes (`--engine redis`), kill, pause and partition are the
same; `clock` moves the servers' wall clocks through the LD_PRELOAD shim's file instead
(offsets and steps; rates are not modelled: Redis measures TTLs on the wall clock, so a
step is the fault that matters); `power-loss` becomes a lost disk: SIGKILL a minority
and restart them with an empty directory (with `appendfsync always` a power cut loses
nothing Redis acknowledged, so the worst case is the node that lost its data: lockd.lua's
restart guard must keep it out of every grant for its delay). `disk` does not apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis
import redis.exceptions

from lockd.jepsen.cluster import Cluster, WorkerProcess
from lockd.jepsen.generator import Fault

__all__ = ["Nemesis"]

log = logging.getLogger("lockd.jepsen")

Record = Callable[[str, dict[str, Any]], None]


class Nemesis:
    """Applies `Fault`s to a `Cluster`; `record(f, value)` writes nemesis events."""

    def __init__(self, cluster: Cluster, record: Record, seed: int) -> None:
        self.cluster = cluster
        self.record = record
        self.rng = random.Random(f"{seed}/nemesis-targets")
        self._clock_task: asyncio.Task[list[str]] | None = None
        self._paused: list[WorkerProcess] = []

    @property
    def _redis(self) -> bool:
        return self.cluster.config.engine == "redis"

    async def _clock(self, node: int, *command: str) -> str:
        if self._redis:
            return self._redis_clock(node, command[0], float(command[1]))
        return await self._engine_command(node, "LOCKD.CLOCK", *command)

    def _redis_clock(self, node: int, op: str, value: float) -> str:
        """OFFSET/JUMP of a redis-server's wall clock through the shim; RATE is skipped."""
        c = self.cluster
        if op == "RATE" or c.config.clock_shim is None:
            return ""
        offset = value if op == "OFFSET" else c.clock_offsets_ms[node] + value
        try:
            c.set_clock_offset(node, offset)
        except OSError as exc:
            return f"node {node}: clock {op} {value}: {exc}"
        return ""

    async def _disk(self, node: int, *command: str) -> str:
        return await self._engine_command(node, "LOCKD.DISK", *command)

    async def _engine_command(self, node: int, name: str, *command: str) -> str:
        engine = self.cluster.engines[node]
        client = aredis.Redis(port=engine.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            await client.execute_command(name, *command)  # type: ignore[no-untyped-call]
            return ""
        except (redis.exceptions.RedisError, OSError) as exc:
            return f"node {node}: {name} {' '.join(command)}: {exc}"
        finally:
            await client.aclose()

    async def _run_clock(self, fault: Fault) -> list[str]:
        started = time.monotonic()
        errors: list[str] = []
        for step in fault.clock:
            wait = started + step.at_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            error = await self._clock(step.node, step.op.upper(), repr(step.value))
            if error:
                errors.append(error)
        return errors

    async def _pick_worker(self) -> WorkerProcess | None:
        """A worker thinking inside its lock if one shows up soon; else a holder; else any."""
        workers = [w for w in self.cluster.workers if w.running and not w.paused]
        if not workers:
            return None
        for _ in range(300):  # up to 1.5 s
            thinking = [w for w in workers if w.thinking]
            if thinking:
                return self.rng.choice(thinking)
            await asyncio.sleep(0.005)
        holders = [w for w in workers if w.holding is not None]
        return self.rng.choice(holders or workers)

    async def start(self, fault: Fault, fid: int) -> None:
        """Break what `fault` says; records a `start` event."""
        c = self.cluster
        info: dict[str, Any] = {**fault.describe(), "id": fid}
        if fault.kind == "power-loss" and self._redis:
            # A lost disk, on a minority only: a majority that lost its fencing counters
            # could hand out a token again (Lua cannot reserve ahead as the engine does).
            lost = fault.nodes[: len(c.engines) - (len(c.engines) // 2 + 1)] or fault.nodes[:1]
            await asyncio.gather(*(c.engines[n].kill() for n in lost))
            for n in lost:
                shutil.rmtree(c.node_dir(n), ignore_errors=True)
                c.node_dir(n).mkdir(parents=True)
            info["lost_data"] = list(lost)
        elif fault.kind in ("kill", "power-loss"):
            await asyncio.gather(
                *(c.engines[n].kill() for n in fault.nodes),
                *(c.gateways[g].kill() for g in fault.gateways if g < len(c.gateways)),
            )
        elif fault.kind == "pause":
            worker = await self._pick_worker()
            if worker is not None:
                info["state"] = (
                    "thinking" if worker.thinking else "holding" if worker.holding else "idle"
                )
                worker.pause()
                self._paused.append(worker)
                info["paused_workers"] = [worker.index]
        elif fault.kind == "clock":
            self._clock_task = asyncio.create_task(self._run_clock(fault))
        elif fault.kind == "disk":
            errors = await asyncio.gather(
                *(self._disk(n, "FAIL", fault.errno) for n in fault.nodes)
            )
            info["errors"] = [e for e in errors if e]
        elif fault.kind == "partition":
            for link in fault.links:
                proxy = c.links.get(link)
                if proxy is None:
                    continue
                if fault.shape == "delay":
                    proxy.set_delay(fault.delay_ms, fault.delay_ms / 4)
                elif fault.shape == "loss":
                    proxy.set_loss(fault.loss)
                else:
                    proxy.partition()
        self.record("start", info)

    async def stop(self, fault: Fault, fid: int) -> None:
        """Heal `fault`; records a `stop` event."""
        c = self.cluster
        info: dict[str, Any] = {"fault": fault.kind, "id": fid}
        if fault.kind in ("kill", "power-loss"):
            errors = await asyncio.gather(
                *(c.engines[n].start() for n in fault.nodes if not c.engines[n].running),
                *(c.gateways[g].start() for g in fault.gateways if g < len(c.gateways)),
                return_exceptions=True,
            )
            info["restart_errors"] = [repr(e) for e in errors if e is not None]
        elif fault.kind == "pause":
            for worker in self._paused:
                worker.resume()
            self._paused.clear()
        elif fault.kind == "clock":
            if self._clock_task is not None:
                self._clock_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    info["errors"] = await self._clock_task
                self._clock_task = None
            await asyncio.gather(*(self._clock(n, "RATE", "1.0") for n in range(len(c.engines))))
        elif fault.kind == "partition":
            for link in fault.links:
                if link in c.links:
                    c.links[link].heal()
        elif fault.kind == "disk":
            healed = await asyncio.gather(*(self._disk(n, "HEAL") for n in fault.nodes))
            info["errors"] = [e for e in healed if e]
        self.record("stop", info)

    async def scramble(self, offsets: list[float]) -> None:
        """Set every node's wall-clock offset (before the workers start); records it."""
        errors = await asyncio.gather(
            *(self._clock(n, "OFFSET", repr(ms)) for n, ms in enumerate(offsets))
        )
        self.record(
            "scramble",
            {"fault": "clock-offsets", "offsets_ms": offsets, "errors": [e for e in errors if e]},
        )

    async def heal_all(self) -> None:
        """Undo every fault (restart what is down, resume, heal links, true clock rates);
        records a `healed` event: the final phase starts."""
        c = self.cluster
        if self._clock_task is not None:
            self._clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_task
            self._clock_task = None
        for worker in c.workers:
            worker.resume()
        for link in c.links.values():
            link.heal()
        down = [s for s in (*c.engines, *c.gateways) if not s.running]
        results = await asyncio.gather(*(s.start() for s in down), return_exceptions=True)
        errors = [repr(r) for r in results if r is not None]
        clock = await asyncio.gather(
            *(self._clock(n, "RATE", "1.0") for n in range(len(c.engines)))
        )
        if c.config.disk_faults:
            clock += await asyncio.gather(*(self._disk(n, "HEAL") for n in range(len(c.engines))))
        self.record(
            "healed",
            {
                "fault": "heal",
                "restarted": [s.name for s in down],
                "errors": errors + [e for e in clock if e],
            },
        )
