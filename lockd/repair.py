"""`lockd repair`: check a data file and write a repaired copy (the damaged one is kept).

Modelled on `redis-check-aof --fix`: the engine and the store refuse to start on damage
that is not a torn tail, naming the file and this command. `repair(path)` works out the
kind of file from its name: `appendonly.aof` and `store.log` keep every record that
still checks; `fence.reserve` cannot be rebuilt from its bytes, so it takes the floor
to set (`fence_floor`), which must be above every token the node may have accepted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lockd.durable import Salvage, keep_copy
from lockd.engine.persistence import (
    AOF_NAME,
    RESERVATION_NAME,
    read_reservation,
    repair_aof,
    write_reservation,
)
from lockd.store.log import LOG_NAME, repair_store_log

__all__ = ["RepairReport", "repair"]


@dataclasses.dataclass(frozen=True)
class RepairReport:
    """What `repair` found and did."""

    path: Path
    damaged: bool
    written: bool
    summary: str


def repair(path: Path, *, dry_run: bool = False, fence_floor: int | None = None) -> RepairReport:
    """Check `path`; when it is damaged (and not `dry_run`) write a repaired file in its
    place and keep the damaged one as `<name>.broken`."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory: name the damaged file")
    if path.name == RESERVATION_NAME:
        return _reservation(path, dry_run, fence_floor)
    if fence_floor is not None:
        raise ValueError("--fence-floor applies only to fence.reserve")
    if path.name == AOF_NAME:
        result = repair_aof(path, dry_run)
    elif path.name == LOG_NAME:
        result = repair_store_log(path, dry_run)
    else:
        raise ValueError(f"{path}: not a lockd data file ({AOF_NAME}, {LOG_NAME} or fence.reserve)")
    if result is None:
        return RepairReport(path, False, False, f"{path}: intact (a torn tail is cut at start)")
    return RepairReport(path, True, not dry_run, _describe(path, result, dry_run))


def _describe(path: Path, result: Salvage, dry_run: bool) -> str:
    ranges = ", ".join(f"{length} bytes at byte {offset}" for offset, length in result.dropped)
    done = (
        "nothing written (dry run)"
        if dry_run
        else f"repaired file written; the damaged one is kept as {path.name}.broken"
    )
    extra = ""
    if path.name == AOF_NAME:
        extra = (
            " The node applies its full restart delay when it starts again; keys written "
            "in the dropped ranges are lost, fencing counters are safe through fence.reserve."
        )
    elif path.name == LOG_NAME:
        extra = (
            " Writes in the dropped ranges are lost, and with them possibly the highest token "
            "of their resources: make sure those resources' locks have granted larger tokens "
            "before writers use the store again."
        )
    return (
        f"{path}: damaged; kept {len(result.payloads)} intact frames, dropped "
        f"{result.dropped_bytes} bytes ({ranges}); {done}.{extra}"
    )


def _reservation(path: Path, dry_run: bool, floor: int | None) -> RepairReport:
    try:
        found = read_reservation(path)
    except RuntimeError as exc:
        found, problem = None, str(exc)
    else:
        problem = "missing" if found is None else ""
    if found is not None and not found[1] and floor is None:
        return RepairReport(path, False, False, f"{path}: intact (floor {found[0]})")
    if floor is None:
        raise ValueError(
            f"{path}: {problem or 'version 1 format'}; a reservation cannot be rebuilt from its "
            "bytes: pass --fence-floor N, N above every token this node may have accepted"
        )
    if found is not None and floor < found[0]:
        raise ValueError(f"{path}: --fence-floor {floor} is below the current {found[0]}")
    if not dry_run:
        if path.exists():
            keep_copy(path, ".broken")
        write_reservation(path, floor)
    done = "nothing written (dry run)" if dry_run else "written"
    return RepairReport(path, bool(problem), not dry_run, f"{path}: floor {floor} {done}")
