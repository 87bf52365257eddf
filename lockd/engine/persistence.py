"""Durable state of one engine node: append-only file, fencing reservation, node files.

Files in a node's data directory (0700; files 0600: the AOF holds live lease ids):
- `appendonly.aof`: every mutation as a RESP command, in checksummed frames
  (`lockd.durable`: header `LOCKD aof 2`, one frame per commit), replayed on start.
  Deadlines are engine-clock milliseconds, valid only within the clock epoch named by
  the last `EPOCH` record (the boot id for the monotonic clock), so volatile keys from an
  earlier boot are dropped on replay: the delayed restart covers them. A torn tail is
  cut; any other damage refuses the start (`lockd repair` writes a repaired copy). A
  version 1 file (bare RESP) is read once and rewritten as version 2, kept as
  `appendonly.aof.v1`.
- `fence.reserve`: the fencing high-water mark with its CRC, always fsynced before any
  counter above the previous mark is acknowledged. A restart lifts every counter to at
  least this mark, so counters never go backwards even when the AOF lost its tail. It is
  created with the directory; missing or damaged later, the node refuses to start.
- `node.json`: written once when the directory is first used (absent means fresh).
- `shutdown.json`: written by a clean shutdown, removed at start: its absence at start
  after the first run means the last stop was unclean.

A write or fsync that fails puts the AOF in an error state (`error`): the engine then
refuses writes (Redis's MISCONF) and the AOF retries, with backoff, by cutting the file
back to what was last fsynced and writing everything since again (so pages the kernel
dropped after a failed fsync are rewritten from memory, not trusted).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
import os
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lockd.durable import (
    FRAME,
    NO_FAULTS,
    CorruptFile,
    DiskFaults,
    FrameReader,
    Salvage,
    cut_tail,
    encode_frame,
    errno_name,
    fdatasync,
    file_header,
    fsync,
    fsync_dir,
    header_seed,
    keep_copy,
    open_private,
    repair_hint,
    salvage,
    write_all,
    write_durably,
)
from lockd.resp.protocol import ProtocolError, RequestParser, encode_command

__all__ = [
    "AppendOnlyFile",
    "FenceReservation",
    "FsyncJob",
    "FsyncPolicy",
    "attempt",
    "clock_epoch",
    "read_aof",
    "read_json",
    "read_reservation",
    "repair_aof",
    "write_aof",
    "write_json_durably",
    "write_reservation",
]

log = logging.getLogger("lockd.engine")

AOF_NAME = "appendonly.aof"
RESERVATION_NAME = "fence.reserve"
NODE_NAME = "node.json"
SHUTDOWN_NAME = "shutdown.json"
DATA_FILES = (AOF_NAME, RESERVATION_NAME, NODE_NAME, SHUTDOWN_NAME)

AOF_HEADER = file_header(b"aof")
AOF_SEED = header_seed(AOF_HEADER)
_REWRITE_FRAME = 4096  # records per frame in a rewritten file
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
REWRITE_BACKOFF_MIN_S = 1.0
REWRITE_BACKOFF_MAX_S = 300.0


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


def write_json_durably(path: Path, value: dict[str, Any], faults: DiskFaults = NO_FAULTS) -> None:
    """Atomically replace `path` with `value` as JSON, with a CRC of it (`crc32`), and
    fsync it and its directory."""
    crc = zlib.crc32(json.dumps(value, sort_keys=True).encode())
    write_durably(
        path, json.dumps({**value, "crc32": crc}, sort_keys=True).encode() + b"\n", faults
    )


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing, unreadable or fails its CRC
    (files written before the CRC have none and are taken as they are)."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    if "crc32" in value:
        crc = value.pop("crc32")
        if crc != zlib.crc32(json.dumps(value, sort_keys=True).encode()):
            return None
    return value


# -- the fencing reservation -------------------------------------------------------------------

_RESERVATION = re.compile(rb"lockd-fence 2 (0|[1-9][0-9]{0,17}) ([0-9a-f]{8})\n")
_RESERVATION_V1 = re.compile(rb"(0|[1-9][0-9]{0,17})\n?")


def _reservation_body(value: int) -> bytes:
    return b"lockd-fence 2 %d" % value


def fence_floor_hint(path: Path) -> str:
    """What to do when a reservation cannot be trusted."""
    return (
        "the node refuses to start rather than hand out a fencing token it may have given "
        f"before. Restore {path.name} from a backup, or set a floor above every token this "
        f"node may have accepted: `lockd repair --fence-floor N {path}`"
    )


def read_reservation(path: Path) -> tuple[int, bool] | None:
    """(value, whether it is in the checksum-less version 1 format), or None when the
    file is missing. Damage (a checksum mismatch, a changed or added character) raises
    `CorruptFile`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    m = _RESERVATION.fullmatch(raw)
    if m is not None:
        value = int(m[1])
        if int(m[2], 16) == zlib.crc32(_reservation_body(value)):
            return value, False
        raise CorruptFile(path, 0, "fencing reservation checksum mismatch", fence_floor_hint(path))
    m = _RESERVATION_V1.fullmatch(raw)
    if m is not None:
        return int(m[1]), True
    raise CorruptFile(
        path, 0, f"unreadable fencing reservation ({raw[:40]!r})", fence_floor_hint(path)
    )


def write_reservation(path: Path, value: int, faults: DiskFaults = NO_FAULTS) -> None:
    """Durably replace the reservation with `value` (and its CRC)."""
    body = _reservation_body(value)
    write_durably(path, body + b" %08x\n" % zlib.crc32(body), faults)


def _nothing() -> None:
    pass


class FenceReservation:
    """A durable upper bound on every fencing counter the node has acknowledged.

    Raising a counter above the bound first moves the bound `block` values ahead and
    fsyncs it: one fsync per `block` values, whatever the AOF's fsync policy. A failed
    write leaves the bound where it was and sets `error` until `retry()` succeeds.
    """

    def __init__(
        self,
        path: Path,
        block: int = 1024,
        reserved: int = 0,
        faults: DiskFaults = NO_FAULTS,
        on_error_change: Callable[[], None] = _nothing,
    ) -> None:
        self._path = path
        self._on_error_change = on_error_change
        self._block = block
        self._faults = faults
        self.reserved = reserved
        self.writes = 0
        self.error: str | None = None
        self._wanted = reserved

    def cover(self, value: int) -> None:
        """Make sure `value` is at or below the durable reservation (raises OSError)."""
        if value > self.reserved:
            new = value + self._block
            self._wanted = max(self._wanted, new)
            try:
                write_reservation(self._path, new, self._faults)
            except OSError as exc:
                self._failed(exc)
                raise
            self.reserved = new
            self.writes += 1
            if self.error is not None:
                self.error = None
                self._on_error_change()

    def retry(self) -> bool:
        """Try again to write the reservation a failed `cover` wanted; True once healthy."""
        if self.error is None:
            return True
        try:
            write_reservation(self._path, self._wanted, self._faults)
        except OSError as exc:
            self._failed(exc)
            return False
        self.reserved = self._wanted
        self.writes += 1
        log.warning("fencing reservation %s: writable again", self._path)
        self.error = None
        self._on_error_change()
        return True

    def _failed(self, exc: OSError) -> None:
        cause = f"writing {self._path} failed ({errno_name(exc)})"
        if cause != self.error:
            log.error("fencing reservation: %s; refusing writes until it succeeds", cause)
        self.error = cause
        self._on_error_change()


# -- the append-only file -----------------------------------------------------------------------

_AOF_OPS = frozenset({b"SET", b"PEXPIREAT", b"PERSIST", b"DEL", b"EPOCH"})


def _records_of(payload: bytes | memoryview) -> list[list[bytes]] | None:
    """The RESP records of one frame, or None if it does not hold whole records."""
    parser = RequestParser()
    parser.feed(bytes(payload))
    records: list[list[bytes]] = []
    try:
        while (record := parser.next_command()) is not None:
            records.append(record)
    except ProtocolError:
        return None
    return records if parser.buffered() == 0 and records else None


def _v1_record_after(data: bytes, start: int) -> bool:
    """Whether a whole AOF record starts at or after `start` (version 1 has no checksums)."""
    at = data.find(b"*", start)
    while at >= 0:
        parser = RequestParser()
        parser.feed(data[at : at + 4096])
        with contextlib.suppress(ProtocolError):
            record = parser.next_command()
            if record and record[0] in _AOF_OPS:
                return True
        at = data.find(b"*", at + 1)
    return False


def _chunks(records: Iterable[bytes], size: int = _REWRITE_FRAME) -> Iterator[bytes]:
    chunk: list[bytes] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield b"".join(chunk)
            chunk.clear()
    if chunk:
        yield b"".join(chunk)


FsyncJob = Callable[[], None]
"""An fsync to run (on any thread) between `commit_write()` and `commit_synced()`."""


def attempt(job: FsyncJob) -> OSError | None:
    """Run an fsync job; what it raised, or None."""
    try:
        job()
    except OSError as exc:
        return exc
    return None


def _write_frames(path: Path, payloads: Iterable[bytes], faults: DiskFaults = NO_FAULTS) -> int:
    """Write a whole AOF (header, one frame per payload) to `path` and fsync it; returns
    the chain's CRC."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, faults)
    try:
        write_all(fd, AOF_HEADER, faults)
        crc = AOF_SEED
        for payload in payloads:
            frame, crc = encode_frame(payload, crc)
            write_all(fd, frame, faults)
        fsync(fd, faults)
    finally:
        os.close(fd)
    return crc


class AppendOnlyFile:
    """The mutation log with Redis's fsync policies, background rewrite, and MISCONF.

    `append()` queues a record; `commit()` frames the queued records, hands them to the
    OS (and fsyncs under `always` when a record needed it) and must run before replies
    are sent: it returns False when records that needed an fsync did not get one.
    `tick()` does the periodic work. With `hold_until_fsync` (test mode) records stay in
    this process until an fsync point, so SIGKILL loses exactly what a power cut would.
    """

    def __init__(
        self,
        path: Path,
        policy: FsyncPolicy,
        hold_until_fsync: bool = False,
        faults: DiskFaults = NO_FAULTS,
        on_error_change: Callable[[], None] = _nothing,
    ) -> None:
        self.path = path
        self._on_error_change = on_error_change
        self.policy = policy
        self.always = policy is FsyncPolicy.ALWAYS
        self.hold_until_fsync = hold_until_fsync
        self.faults = faults
        self._fd = -1
        self._pending: list[bytes] = []
        self._pending_durable = False
        self.durable_appends = 0
        """Records appended that need an fsync under `always` (hosts compare it)."""
        self._crc = AOF_SEED
        # Frames not in the file yet (held in test mode, or after a failed write), and
        # the file's size through its last whole write.
        self._kept: list[bytes] = []
        self._good_size = 0
        self._written = 0  # writes to the file so far
        self._synced = 0  # ... of which the last fsync covered this many
        self._jobs: list[int] = []  # fsync jobs out (the writes each covers)
        self.needs_rewrite = False
        """An fsync failed: only a rewrite from memory makes the file trustworthy again."""
        self._last_fsync = time.monotonic()
        self.size = 0
        self.base_size = 0
        self.fsyncs = 0
        self.legacy = False
        """A version 1 file was loaded: `upgrade()` must run before `open()`."""
        self.error: str | None = None
        """Why the file cannot be written (None when healthy): writes are refused."""
        self.error_since = 0.0
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_S
        self._rewrite: _Rewrite | None = None
        self.last_rewrite_ok = True
        self.rewrites = 0
        self.rewrite_failures = 0  # in a row
        self._rewrite_not_before = 0.0

    # -- loading -----------------------------------------------------------------------

    def load(self) -> Iterator[list[bytes]]:
        """Yield every record; cut a torn tail (logged); raise `CorruptFile` on damage."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        if data.startswith(AOF_HEADER):
            yield from self._load_frames(data)
        elif len(data) < len(AOF_HEADER) and AOF_HEADER.startswith(data):
            if data:
                self._cut(data, 0, "torn file header")
        elif data[:1] == b"*":
            yield from self._load_v1(data)
        else:
            raise CorruptFile(
                self.path, 0, "not a lockd append-only file header", repair_hint(self.path)
            )

    def _load_frames(self, data: bytes) -> Iterator[list[bytes]]:
        reader = FrameReader(data, len(AOF_HEADER), AOF_SEED)
        count = 0
        for offset, payload in reader:
            records = _records_of(payload)
            if records is None:
                raise CorruptFile(
                    self.path, offset, "unreadable records in a frame", repair_hint(self.path)
                )
            count += len(records)
            yield from records
        if reader.damage is not None:
            raise CorruptFile(self.path, reader.end, reader.damage, repair_hint(self.path))
        self._crc = reader.crc
        if reader.torn is not None:
            self._cut(data, reader.end, f"torn tail ({reader.torn}): kept {count} records")

    def _load_v1(self, data: bytes) -> Iterator[list[bytes]]:
        parser = RequestParser()
        parser.feed(data)
        good = 0
        while True:
            try:
                record = parser.next_command()
            except ProtocolError:
                if _v1_record_after(data, good + 1):
                    raise CorruptFile(
                        self.path, good, "corrupt version 1 record", repair_hint(self.path)
                    ) from None
                break
            if record is None:
                break
            good = parser.offset()
            yield record
        if good < len(data):
            log.warning(
                "AOF %s: torn tail of a version 1 file (%d bytes at byte %d) left out",
                self.path,
                len(data) - good,
                good,
            )
        self.legacy = True

    def _cut(self, data: bytes, good: int, what: str) -> None:
        cut_tail("AOF", self.path, data, good, what, log)

    def upgrade(self, records: Iterable[bytes]) -> None:
        """Replace a version 1 file by a version 2 one holding `records` (the state it
        loaded); the old file is kept as `appendonly.aof.v1`."""
        tmp = self.path.with_name(self.path.name + ".upgrade")
        self._crc = _write_frames(tmp, _chunks(records))
        keep_copy(self.path, ".v1")
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self.legacy = False
        log.warning(
            "AOF %s: upgraded to format 2 (the old file is kept as %s.v1)", self.path, AOF_NAME
        )

    def open(self) -> None:
        """Open for appending (after `load`)."""
        self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.faults)
        self.size = os.fstat(self._fd).st_size
        if self.size == 0:
            write_all(self._fd, AOF_HEADER, self.faults)
            fsync(self._fd, self.faults)
            self.size = len(AOF_HEADER)
            self._crc = AOF_SEED
        self.base_size = self._good_size = self.size
        fsync_dir(self.path.parent)

    # -- writing -----------------------------------------------------------------------

    def append(self, record: bytes, durable: bool = True) -> None:
        """Queue one record; `durable=False` means it needs no fsync even under `always`."""
        self._pending.append(record)
        if durable:
            self._pending_durable = True
            self.durable_appends += 1
        if self._rewrite is not None:
            self._rewrite.tail.append(record)

    @property
    def write_pending(self) -> bool:
        """True when records are queued for the next `commit()`."""
        return bool(self._pending)

    @property
    def sync_pending(self) -> bool:
        """True when the next `commit()` must fsync (`always` and a durable record)."""
        return self._pending_durable and self.always

    def commit(self) -> bool:
        """Frame the queued records and hand them to the OS; fsync now if the policy says
        so. False when records that needed an fsync are not durable (`error` says why)."""
        step = self.commit_write()
        if isinstance(step, bool):
            return step
        return self.commit_synced(attempt(step))

    def commit_write(self) -> bool | FsyncJob:
        """The first half of `commit()`, on the caller's thread: frame the queued records
        and hand them to the OS. A bool is the commit's result when no fsync is due;
        otherwise run the returned job (an fsync: any thread, it releases the GIL) and
        pass what it raised, or None, to `commit_synced()` on the caller's thread. While
        the job runs the file stays open: `tick()` and rewrites wait for it."""
        pending = self._pending
        if not pending:
            return True
        payload = b"".join(pending)
        pending.clear()
        crc = self._crc = zlib.crc32(payload, self._crc)
        n = len(payload)
        frame = FRAME.pack(n, crc, ((n * 0x9E3779B1) ^ crc ^ 0xA5A5A5A5) & 0xFFFFFFFF) + payload
        self.size += len(frame)
        sync = self._pending_durable and self.always
        self._pending_durable = False
        if self._kept or self.error is not None or self.hold_until_fsync:
            self._kept.append(frame)
            if self.error is not None:
                return not sync  # kept for the retry
            return self._write_kept() if sync else True
        try:
            write_all(self._fd, frame, self.faults)
        except OSError as exc:
            self._kept.append(frame)
            self._fail(exc, "write")
            return not sync
        self._good_size = self.size
        self._written += 1
        return self._fsync_job() if sync else True

    def commit_synced(self, error: OSError | None) -> bool:
        """The second half of `commit()`: the fsync job's outcome. False (error state)
        when it failed."""
        # Jobs may finish out of order (a synchronous commit during an outstanding job):
        # crediting the oldest's coverage is never more than what is on disk.
        written = self._jobs.pop(0)
        if error is not None:
            # The kernel may have dropped the pages it failed to write and will not say
            # so again (fsyncgate): only rewriting the file from memory is safe now.
            self.needs_rewrite = True
            self._fail(error, "fsync")
            return False
        self.fsyncs += 1
        self._last_fsync = time.monotonic()
        self._synced = max(self._synced, written)
        return True

    @property
    def syncing(self) -> bool:
        """True while an fsync job from `commit_write()` has not been reported back."""
        return bool(self._jobs)

    @property
    def _dirty(self) -> bool:
        """Written since the last fsync."""
        return self._written != self._synced

    def _fsync_job(self) -> FsyncJob:
        self._jobs.append(self._written)
        return functools.partial(fdatasync, self._fd, self.faults)

    def _write_kept(self) -> bool | FsyncJob:
        """Write the kept frames; the fsync job, or False (error state) on failure."""
        if self._kept:
            try:
                write_all(self._fd, b"".join(self._kept), self.faults)
            except OSError as exc:
                self._fail(exc, "write")
                return False
            self._kept.clear()
            self._good_size = self.size
            self._written += 1
        return self._fsync_job()

    def _sync(self) -> bool:
        """Write the kept frames and fsync; False (error state) on failure."""
        step = self._write_kept()
        return step if isinstance(step, bool) else self.commit_synced(attempt(step))

    def _fail(self, exc: OSError, op: str) -> None:
        """Enter (or stay in) the error state: writes are refused until a retry works.
        Logged once per change of cause, not per attempt."""
        cause = f"{op} to {self.path} failed ({errno_name(exc)})"
        now = time.monotonic()
        if self.error is None:
            self.error_since = now
            self._retry_delay = RETRY_MIN_S
            log.error("AOF: %s; refusing writes until the disk takes them again", cause)
        elif errno_name(exc) not in self.error:
            log.error("AOF: still failing, now: %s", cause)
        else:
            cause = self.error
        self.error = cause
        self._on_error_change()
        self._retry_at = now + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)

    @property
    def retry_due(self) -> bool:
        """True when a disk error stands and its next retry is due."""
        return self.error is not None and time.monotonic() >= self._retry_at

    def _recover(self) -> bool:
        """After a failed write: cut the file back to its last whole write and write the
        kept frames again, then fsync. After a failed fsync this cannot help (the engine
        rewrites the file from memory instead: `needs_rewrite`)."""
        if self.needs_rewrite:
            return False
        op = "truncate"
        try:
            if self.faults.armed:
                self.faults.check("truncate")
            os.ftruncate(self._fd, self._good_size)
            op = "write"
            if self._kept:
                write_all(self._fd, b"".join(self._kept), self.faults)
            op = "fsync"
            fsync(self._fd, self.faults)
        except OSError as exc:
            self._fail(exc, op)
            return False
        self._kept.clear()
        self._good_size = self.size
        self.fsyncs += 1
        self._last_fsync = time.monotonic()
        self._synced = self._written
        self._healed("")
        return True

    def _healed(self, how: str) -> None:
        log.warning(
            "AOF %s: writable again after %.1f s%s",
            self.path,
            time.monotonic() - self.error_since,
            how,
        )
        self.error = None
        self._on_error_change()

    def tick(self) -> None:
        """Periodic duties: retrying after a disk error, `everysec` fsync, finishing a
        background rewrite."""
        if self._jobs:
            return  # the file is being fsynced: nothing may truncate or replace it now
        now = time.monotonic()
        if self._rewrite is not None and self._rewrite.done.is_set():
            self._finish_rewrite()
        if self.error is not None:
            if now >= self._retry_at:
                self._recover()
            return
        if not (self._dirty or self._kept):
            return
        if self.policy is FsyncPolicy.NO and not self.hold_until_fsync:
            return  # the OS decides
        interval = 30.0 if self.policy is FsyncPolicy.NO else 1.0
        if now - self._last_fsync >= interval:
            self._sync()

    def close(self) -> bool:
        """Write and fsync everything (clean shutdown); False if that failed. The host
        must not have an fsync job out (`syncing`)."""
        if self._fd < 0:
            return True
        if self._jobs:
            raise RuntimeError(f"AOF {self.path}: closed while an fsync job is out")
        if self._rewrite is not None:
            self._rewrite.done.wait()
            self._finish_rewrite()
        self.commit()
        done = self._recover() if self.error is not None else self._sync()
        os.close(self._fd)
        self._fd = -1
        if not done:
            log.error("AOF %s: closed with writes that are not on disk (%s)", self.path, self.error)
        return done

    # -- rewrite -------------------------------------------------------------------------

    @property
    def rewriting(self) -> bool:
        """True while a background rewrite runs."""
        return self._rewrite is not None

    def rewrite_due(self, min_size: int) -> bool:
        """Whether an automatic rewrite should start: the file doubled (and is over
        `min_size`), the disk is healthy, and the backoff after a failure has passed."""
        return (
            self._rewrite is None
            and self.error is None
            and self.size >= max(min_size, 2 * self.base_size)
            and time.monotonic() >= self._rewrite_not_before
        )

    def start_rewrite(self, records: Iterable[bytes]) -> None:
        """Compact in the background: write `records` (a snapshot) to a new file.

        Records appended meanwhile go to the old file as usual and are also kept to be
        appended to the new one, which then atomically replaces the old.
        """
        if self._rewrite is not None:
            return
        self.commit()
        self._rewrite = _Rewrite(
            self.path.with_name(self.path.name + ".rewrite"), records, self.faults
        )

    def _finish_rewrite(self) -> None:
        rw = self._rewrite
        assert rw is not None
        self._rewrite = None
        self.rewrites += 1
        error = rw.error
        crc = rw.crc
        if error is None:
            try:
                self.commit()
                fd = open_private(rw.path, os.O_WRONLY | os.O_APPEND, self.faults)
                try:
                    if rw.tail:
                        frame, crc = encode_frame(b"".join(rw.tail), crc)
                        write_all(fd, frame, self.faults)
                    fsync(fd, self.faults)
                finally:
                    os.close(fd)
                if self.faults.armed:
                    self.faults.check("rename")
                os.replace(rw.path, self.path)
            except OSError as exc:
                error = exc
        if error is not None:
            with contextlib.suppress(OSError):
                rw.path.unlink()
            if self.error is not None and isinstance(error, OSError):
                self._fail(error, "rewrite")  # a recovery attempt: retried with its backoff
            else:
                self._rewrite_failed(error)
            return
        os.close(self._fd)
        self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._crc = crc
        self.size = self.base_size = os.fstat(self._fd).st_size
        self._kept.clear()  # everything kept is in the new, fsynced file
        self._good_size = self.size
        self._synced = self._written
        self.last_rewrite_ok = True
        if self.rewrite_failures:
            log.info(
                "AOF rewritten (%d bytes) after %d failed attempts",
                self.size,
                self.rewrite_failures,
            )
        else:
            log.info("AOF rewritten: %d bytes", self.size)
        self.rewrite_failures = 0
        self._rewrite_not_before = 0.0
        try:
            fsync_dir(self.path.parent)
        except OSError as exc:
            self._fail(exc, "fsync of the directory")
            return
        if self.error is not None:
            self.needs_rewrite = False
            self._healed(" (rewritten from memory)")

    def _rewrite_failed(self, error: BaseException) -> None:
        """Back off exponentially (capped); log the first failure, not every retry."""
        self.last_rewrite_ok = False
        self.rewrite_failures += 1
        delay = min(REWRITE_BACKOFF_MIN_S * 2 ** (self.rewrite_failures - 1), REWRITE_BACKOFF_MAX_S)
        self._rewrite_not_before = time.monotonic() + delay
        cause = errno_name(error) if isinstance(error, OSError) else repr(error)
        if self.rewrite_failures == 1:
            log.error(
                "AOF rewrite failed: %s; retrying with backoff (at most every %.0f s, logged "
                "again when one succeeds)",
                cause,
                REWRITE_BACKOFF_MAX_S,
            )
        else:
            log.debug("AOF rewrite failed again (%d in a row): %s", self.rewrite_failures, cause)


class _Rewrite:
    """A rewrite in progress: the snapshot writer thread and the records since."""

    def __init__(self, path: Path, records: Iterable[bytes], faults: DiskFaults) -> None:
        self.path = path
        self.tail: list[bytes] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.crc = AOF_SEED
        self._faults = faults
        threading.Thread(target=self._run, args=(records,), name="aof-rewrite", daemon=True).start()

    def _run(self, records: Iterable[bytes]) -> None:
        try:
            self.crc = _write_frames(self.path, _chunks(records), self._faults)
        except BaseException as exc:  # reported by _finish_rewrite, never lost
            self.error = exc
        finally:
            self.done.set()


def record(*args: bytes) -> bytes:
    """One AOF record."""
    return encode_command(*args)


def read_aof(path: Path) -> list[list[bytes]]:
    """The records of an AOF, read-only: up to a torn tail or damage (for tests, tools)."""
    data = path.read_bytes()
    records: list[list[bytes]] = []
    for _, payload in FrameReader(data, len(AOF_HEADER), AOF_SEED):
        records.extend(_records_of(payload) or [])
    return records


def write_aof(path: Path, records: Iterable[bytes]) -> None:
    """Write a whole AOF holding `records` (encoded commands) and fsync it."""
    _write_frames(path, _chunks(records))


def repair_aof(path: Path, dry_run: bool = False) -> Salvage | None:
    """Check an AOF; if it is damaged, write a repaired one that keeps every intact frame
    (version 1: every record before the damage) and keep the damaged file as
    `appendonly.aof.broken`. Returns what was dropped, or None when no repair is needed
    (a torn tail is cut by the engine itself). With `dry_run` nothing is written."""
    data = path.read_bytes()
    if data[:1] == b"*":
        records: list[bytes] = []
        parser = RequestParser()
        parser.feed(data)
        good = 0
        with contextlib.suppress(ProtocolError):
            while (rec := parser.next_command()) is not None:
                records.append(encode_command(*rec))
                good = parser.offset()
        if good == len(data) or not _v1_record_after(data, good + 1):
            return None
        result = Salvage([b"".join(records)], [(good, len(data) - good)])
    else:
        reader = FrameReader(data, len(AOF_HEADER), AOF_SEED)
        for _ in reader:
            pass
        if data.startswith(AOF_HEADER) and reader.damage is None:
            return None
        result = salvage(data, len(AOF_HEADER), AOF_SEED, lambda p: _records_of(p) is not None)
        if not data.startswith(AOF_HEADER):
            result.dropped.insert(0, (0, len(AOF_HEADER)))
    if not dry_run:
        keep_copy(path, ".broken")
        tmp = path.with_name(path.name + ".repair")
        _write_frames(tmp, [p for p in result.payloads if p])
        os.replace(tmp, path)
        fsync_dir(path.parent)
    return result
