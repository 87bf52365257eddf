"""The deterministic simulator (`lockd sim`), in the FoundationDB / TigerBeetle
tradition: the real engines, the real quorum core and the gateway's real lock table
under virtual time, with a simulated network, clocks, disks, clients and fenced store,
every random choice drawn from one seed, so that any failure replays exactly from it.

`world` (time, network, clocks, disks, nodes, store), `schedule` (what a seed does),
`gateway` (a gateway host driving the lock table and the core machines), `clients`
(the sessions of client processes), `simulation` (one run), `checks` (the
properties), `run` (seeds, shrinking, traces).
"""

from lockd.sim.checks import PROPERTIES, Grant, History, Violation
from lockd.sim.run import (
    DEFAULT_STEPS,
    Failure,
    SimConfig,
    Summary,
    explore,
    format_trace,
    replay_command,
    run_seed,
    schedule_for,
    shrink,
)
from lockd.sim.schedule import Envelope, Schedule, generate
from lockd.sim.simulation import UNSAFE, RunResult, Simulation, liveness_bound_ns

__all__ = [
    "DEFAULT_STEPS",
    "PROPERTIES",
    "UNSAFE",
    "Envelope",
    "Failure",
    "Grant",
    "History",
    "RunResult",
    "Schedule",
    "SimConfig",
    "Simulation",
    "Summary",
    "Violation",
    "explore",
    "format_trace",
    "generate",
    "liveness_bound_ns",
    "replay_command",
    "run_seed",
    "schedule_for",
    "shrink",
]
