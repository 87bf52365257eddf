"""Durable state of one engine node: append-only file, fencing reservation, node files.

Files in a node's data directory:
- `appendonly.aof`: every mutation as a RESP command, replayed on start. Deadlines are
  engine-clock milliseconds, valid only within the clock epoch named by the last `EPOCH`
  record (the boot id for the monotonic clock), so volatile keys from an earlier boot are
  dropped on replay: the delayed restart covers them.
- `fence.reserve`: the fencing high-water mark, always fsynced before any counter above
  the previous mark is acknowledged. A restart lifts every counter to at least this mark,
  so counters never go backwards even when the AOF lost its tail.
- `node.json`: written once when the directory is first used (absent means fresh).
- `shutdown.json`: written by a clean shutdown, removed at start: its absence at start
  after the first run means the last stop was unclean.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lockd.resp.protocol import ProtocolError, RequestParser, encode_command

__all__ = [
    "AppendOnlyFile",
    "FenceReservation",
    "FsyncPolicy",
    "clock_epoch",
    "read_json",
    "write_json_durably",
]

log = logging.getLogger("lockd.engine")

AOF_NAME = "appendonly.aof"
RESERVATION_NAME = "fence.reserve"
NODE_NAME = "node.json"
SHUTDOWN_NAME = "shutdown.json"


class FsyncPolicy(enum.StrEnum):
    """When the AOF is fsynced: after every write, once a second, or when the OS likes."""

    ALWAYS = "always"
    EVERYSEC = "everysec"
    NO = "no"


def clock_epoch() -> str:
    """The id of this boot: monotonic-clock deadlines compare only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-" + uuid.uuid4().hex  # never equal: treat every start as a new boot


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_durably(path: Path, value: dict[str, Any]) -> None:
    """Atomically replace `path` with `value` as JSON and fsync it and its directory."""
    _write_durably(path, json.dumps(value, sort_keys=True).encode() + b"\n")


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class FenceReservation:
    """A durable upper bound on every fencing counter the node has acknowledged.

    Raising a counter above the bound first moves the bound `block` values ahead and
    fsyncs it: one fsync per `block` values, whatever the AOF's fsync policy.
    """

    def __init__(self, path: Path, block: int = 1024) -> None:
        self._path = path
        self._block = block
        self.reserved = self._load()
        self.writes = 0

    def _load(self) -> int:
        try:
            text = self._path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError:
            # A torn or corrupt reservation cannot be trusted; refuse rather than reuse.
            raise RuntimeError(
                f"fencing reservation {self._path} is unreadable ({text[:40]!r}); restore it "
                "or set it by hand to a value above every token this node granted"
            ) from None

    def cover(self, value: int) -> None:
        """Make sure `value` is at or below the durable reservation."""
        if value > self.reserved:
            new = value + self._block
            _write_durably(self._path, b"%d\n" % new)
            self.reserved = new
            self.writes += 1


class AppendOnlyFile:
    """The mutation log with Redis's fsync policies and background rewrite.

    `append()` queues a record; `commit()` hands queued records to the OS (and fsyncs
    under `always` when a record needed it) and must run before replies are sent; `tick()`
    does the once-a-second work. With `hold_until_fsync` (test mode) records stay in this
    process until an fsync point, so SIGKILL loses exactly what a power cut would.
    """

    def __init__(self, path: Path, policy: FsyncPolicy, hold_until_fsync: bool = False) -> None:
        self.path = path
        self.policy = policy
        self.hold_until_fsync = hold_until_fsync
        self._fd = -1
        self._pending: list[bytes] = []
        self._pending_durable = False
        self._held: list[bytes] = []  # written "to the OS" in hold mode, not yet on disk
        self._unsynced = False
        self._last_fsync = time.monotonic()
        self.size = 0
        self.base_size = 0
        self.fsyncs = 0
        self._rewrite: _Rewrite | None = None
        self.last_rewrite_ok = True
        self.rewrites = 0

    # -- loading -----------------------------------------------------------------------

    def load(self) -> Iterator[list[bytes]]:
        """Yield every whole record; cut a torn tail off the file (logged)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        parser = RequestParser()
        parser.feed(data)
        good = 0
        count = 0
        while True:
            try:
                record = parser.next_command()
            except ProtocolError as exc:
                log.warning("AOF %s: corrupt record at byte %d (%s)", self.path, good, exc)
                break
            if record is None:
                break
            good = parser.offset()
            count += 1
            yield record
        if good < len(data):
            log.warning(
                "AOF %s: truncated tail (torn write): kept %d whole records (%d bytes), "
                "dropped the last %d bytes",
                self.path,
                count,
                good,
                len(data) - good,
            )
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())

    def open(self) -> None:
        """Open for appending (after `load`)."""
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self._fd).st_size
        self.base_size = self.size
        fsync_dir(self.path.parent)

    # -- writing -----------------------------------------------------------------------

    def append(self, record: bytes, durable: bool = True) -> None:
        """Queue one record; `durable=False` means it needs no fsync even under `always`."""
        self._pending.append(record)
        if durable:
            self._pending_durable = True
        if self._rewrite is not None:
            self._rewrite.tail.append(record)

    @property
    def write_pending(self) -> bool:
        """True when records are queued for the next `commit()`."""
        return bool(self._pending)

    def commit(self) -> None:
        """Hand queued records to the OS; fsync now if the policy says so."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self.size += len(data)
        sync = self.policy is FsyncPolicy.ALWAYS and self._pending_durable
        self._pending_durable = False
        if self.hold_until_fsync:
            self._held.append(data)
            if sync:
                self._flush_held()
                self._fsync()
            else:
                self._unsynced = True
            return
        _write_all(self._fd, data)
        if sync:
            self._fsync()
        else:
            self._unsynced = True

    def tick(self) -> None:
        """Once-a-second duties: `everysec` fsync, finishing a background rewrite."""
        if self._rewrite is not None and self._rewrite.done.is_set():
            self._finish_rewrite()
        now = time.monotonic()
        if not self._unsynced:
            return
        interval = {FsyncPolicy.EVERYSEC: 1.0, FsyncPolicy.NO: 30.0}.get(self.policy)
        if interval is not None and now - self._last_fsync >= interval:
            if self.hold_until_fsync:
                self._flush_held()
            if self.policy is FsyncPolicy.EVERYSEC or self.hold_until_fsync:
                self._fsync()

    def close(self) -> None:
        """Write and fsync everything (clean shutdown)."""
        if self._fd < 0:
            return
        if self._rewrite is not None:
            self._rewrite.done.wait()
            self._finish_rewrite()
        self.commit()
        self._flush_held()
        self._fsync()
        os.close(self._fd)
        self._fd = -1

    def _flush_held(self) -> None:
        if self._held:
            _write_all(self._fd, b"".join(self._held))
            self._held.clear()

    def _fsync(self) -> None:
        os.fsync(self._fd)
        self.fsyncs += 1
        self._unsynced = False
        self._last_fsync = time.monotonic()

    # -- rewrite -------------------------------------------------------------------------

    @property
    def rewriting(self) -> bool:
        """True while a background rewrite runs."""
        return self._rewrite is not None

    def start_rewrite(self, records: Iterable[bytes]) -> None:
        """Compact in the background: write `records` (a snapshot) to a new file.

        Records appended meanwhile go to the old file as usual and are also kept to be
        appended to the new one, which then atomically replaces the old.
        """
        if self._rewrite is not None:
            return
        self.commit()
        self._rewrite = _Rewrite(self.path.with_name(self.path.name + ".rewrite"), records)

    def _finish_rewrite(self) -> None:
        rw = self._rewrite
        assert rw is not None
        self._rewrite = None
        self.rewrites += 1
        if rw.error is not None:
            self.last_rewrite_ok = False
            log.error("AOF rewrite failed: %s", rw.error)
            with contextlib.suppress(OSError):
                rw.path.unlink()
            return
        self.commit()
        tail = b"".join(rw.tail)
        fd = os.open(rw.path, os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, tail)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(rw.path, self.path)
        fsync_dir(self.path.parent)
        os.close(self._fd)
        self._held.clear()  # everything held is in the new, fsynced file
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.size = os.fstat(self._fd).st_size
        self.base_size = self.size
        self._unsynced = False
        self.last_rewrite_ok = True
        log.info("AOF rewritten: %d bytes", self.size)


class _Rewrite:
    """A rewrite in progress: the snapshot writer thread and the records since."""

    def __init__(self, path: Path, records: Iterable[bytes]) -> None:
        self.path = path
        self.tail: list[bytes] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(records,), name="aof-rewrite", daemon=True).start()

    def _run(self, records: Iterable[bytes]) -> None:
        try:
            with open(self.path, "wb") as f:
                chunk: list[bytes] = []
                for record in records:
                    chunk.append(record)
                    if len(chunk) >= 4096:
                        f.write(b"".join(chunk))
                        chunk.clear()
                f.write(b"".join(chunk))
                f.flush()
                os.fsync(f.fileno())
        except BaseException as exc:  # reported by _finish_rewrite, never lost
            self.error = exc
        finally:
            self.done.set()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def record(*args: bytes) -> bytes:
    """One AOF record."""
    return encode_command(*args)
