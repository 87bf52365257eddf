"""The store's durable state: an append-only log of accepted writes, replayed on start.

`store.log` is a framed file (`lockd.durable`): the header `LOCKD store 3`, its
*durable end* (a u64 byte offset and its CRC32), then one checksummed frame per append
(a batch of writes fsynced together), each holding RESP records

    W <resource> <key> <value> <token>
    R <resource>

Each append rewrites the durable end in place (pwrite) in the same fsync as its frame,
to the end of the previous append, already acknowledged (not its own: the two writes
reach the disk in either order, so a crash may keep the field and tear the frame); a
clean close, compaction and repair set it to the end of the file. Frames ending before
it mean acknowledged frames were cut off (a truncated file, not a crash): `CorruptFile`.

Replay applies the records in order, rebuilding the values and each resource's highest
token. `R` is an admin's fence reset (`lockd store-reset`): the resource's highest token
goes back to 0 and its keys keep their values with token 0 (a compacted log writes them
so, and a `W` record with token 0 exists only that way), so any writer's token is
accepted again. A torn tail (what a crash during an append leaves) is cut, with a warning:
nothing in it was acknowledged, because an append is fsynced before any of its writes
is answered. Any other damage, a damaged file header included, stops the store from
starting (`CorruptFile`, naming the offset and `lockd repair`): dropping an acknowledged
record could lower a resource's highest token and let a stale writer in.

Version 1 logs (a CRC per record, no chain: a bad record followed by good ones is damage
too) and version 2 logs (frames, no durable end) are read and rewritten as version 3 at
once; the old file is kept as `store.log.v1` / `.v2`. Compaction writes the live state
(one record per key, with the token of its last write, so the highest tokens survive) to
a new file and renames it over the log. `store.lock` is flock()ed while a process uses
the directory; `store.json` is written once the log exists, so a log deleted or emptied
later is noticed (the store refuses to start) instead of starting afresh with every
token lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from lockd.durable import (
    END_FIELD_SIZE,
    CorruptFile,
    FrameReader,
    Salvage,
    cut_tail,
    decode_end,
    encode_end,
    encode_frame,
    file_header,
    fsync_dir,
    header_seed,
    is_damaged_header,
    keep_copy,
    open_private,
    private_dir,
    pwrite_all,
    repair_hint,
    salvage,
    write_all,
    write_durably,
)
from lockd.resp.protocol import ProtocolError, RequestParser, encode_command

__all__ = [
    "SEED",
    "Contents",
    "Entry",
    "Record",
    "State",
    "StoreLog",
    "decode_frame",
    "encode_reset",
    "encode_write",
    "read_log",
    "repair_store_log",
]

log = logging.getLogger("lockd.store")

LOG_NAME = "store.log"
LOCK_NAME = "store.lock"
MARKER_NAME = "store.json"
HEADER = file_header(b"store", 3)
SEED = header_seed(HEADER)
FRAMES = len(HEADER) + END_FIELD_SIZE  # where the frames start, after the durable end
EMPTY_LOG = HEADER + encode_end(FRAMES)
V2_HEADER = file_header(b"store", 2)
V1_HEADER = encode_command(b"LOCKDSTORE", b"1")
_WRITE = b"W"
_RESET = b"R"
_COMPACT_FRAME = 1 << 20  # bytes of records per frame when compacting

Write = tuple[str, str, bytes, int]
Record = Write | str  # a write, or the resource of a fence reset


@dataclasses.dataclass(slots=True)
class Entry:
    """A key's value, the token of its last write, and the size of its log record."""

    value: bytes
    token: int
    size: int


@dataclasses.dataclass
class State:
    """What the log says: values by (resource, key), highest token by resource."""

    values: dict[tuple[str, str], Entry] = dataclasses.field(default_factory=dict)
    highest: dict[str, int] = dataclasses.field(default_factory=dict)
    live_bytes: int = FRAMES  # the size of a compacted log

    def apply(self, resource: str, key: str, value: bytes, token: int, size: int) -> None:
        """Apply one accepted write (`size`: its record's length)."""
        old = self.values.get((resource, key))
        self.values[(resource, key)] = Entry(value, token, size)
        self.live_bytes += size - (old.size if old else 0)
        if token > self.highest.get(resource, 0):
            self.highest[resource] = token

    def reset(self, resource: str) -> None:
        """Apply a fence reset: the resource's highest token and its keys' tokens to 0."""
        self.highest.pop(resource, None)
        for (r, _), entry in self.values.items():
            if r == resource:
                entry.token = 0

    def replay(self, record: Record, size: int) -> None:
        """Apply one record read from the log."""
        if isinstance(record, str):
            self.reset(record)
        else:
            self.apply(*record, size=size)


def encode_write(resource: str, key: str, value: bytes, token: int) -> bytes:
    """The log record of one write (framed with its batch by `StoreLog.append`)."""
    return encode_command(_WRITE, resource.encode(), key.encode(), value, b"%d" % token)


def encode_reset(resource: str) -> bytes:
    """The log record of an admin's fence reset of `resource`."""
    return encode_command(_RESET, resource.encode())


def _decode_write(args: list[bytes], min_token: int = 1) -> Write | None:
    """(resource, key, value, token) of a well-formed write record, else None."""
    if len(args) != 5 or args[0] != _WRITE:
        return None
    try:
        token = int(args[4])
        resource, key = args[1].decode(), args[2].decode()
    except ValueError:  # UnicodeDecodeError included
        return None
    return (resource, key, args[3], token) if token >= min_token else None


def _decode_record(args: list[bytes]) -> Record | None:
    """A write (token 0 only after a reset), or the resource of a reset record."""
    if len(args) == 2 and args[0] == _RESET:
        try:
            return args[1].decode()
        except UnicodeDecodeError:
            return None
    return _decode_write(args, min_token=0)


def decode_frame(payload: bytes | memoryview) -> list[tuple[Record, int]] | None:
    """The records of one frame (a write, or the resource of a fence reset) with their
    sizes, or None if it is not whole."""
    parser = RequestParser()
    parser.feed(bytes(payload))
    records: list[tuple[Record, int]] = []
    start = 0
    while start < len(payload):
        try:
            args = parser.next_command()
        except ProtocolError:
            return None
        record = None if args is None else _decode_record(args)
        if record is None:
            return None
        records.append((record, parser.offset() - start))
        start = parser.offset()
    return records


def _decode_v1(args: list[bytes]) -> Write | None:
    """A version 1 record: the write's arguments and the CRC of their encoding."""
    if len(args) != 6 or args[5] != b"%08x" % zlib.crc32(encode_command(*args[:5])):
        return None
    return _decode_write(args[:5])


def _read_v1(path: Path, data: bytes) -> tuple[list[Write], int]:
    """The writes of a version 1 log and where they end; damage other than a torn tail
    (a bad record that whole records follow) raises `CorruptFile`."""
    parser = RequestParser()
    parser.feed(data[len(V1_HEADER) :])
    writes: list[Write] = []
    good = len(V1_HEADER)
    while good < len(data):
        try:
            args = parser.next_command()
        except ProtocolError:
            args = []
        if args is None:
            break  # ends inside a record: torn
        write = _decode_v1(args)
        if write is None:
            if _v1_record_after(data, good + 1):
                raise CorruptFile(path, good, "damaged version 1 record", repair_hint(path))
            break
        writes.append(write)
        good = len(V1_HEADER) + parser.offset()
    return writes, good


def _v1_record_after(data: bytes, start: int) -> bool:
    """Whether a whole version 1 record that checks starts at or after `start`."""
    at = data.find(b"*6\r\n", start)
    while at >= 0:
        parser = RequestParser()
        parser.feed(data[at:])
        with contextlib.suppress(ProtocolError):
            args = parser.next_command()
            if args is not None and _decode_v1(args) is not None:
                return True
        at = data.find(b"*6\r\n", at + 1)
    return False


@dataclasses.dataclass
class Contents:
    """What a store log holds: its intact records (writes and fence resets, with their
    sizes) in log order, where they end, why the rest is a torn tail (None if there is no
    rest), and the chained CRC after the last frame."""

    records: list[tuple[Record, int]]
    end: int
    torn: str | None
    crc: int = SEED
    version: int = 3


def read_log(path: Path, data: bytes) -> Contents:
    """The contents of a store log's bytes (`data`, read from `path`). The one rule for
    what a log holds, shared by the store's replay and the Jepsen token-order check:
    damage other than a torn tail raises `CorruptFile`, and so do frames that end before
    the header's durable end (acknowledged frames cut off); bytes that are not a store
    log raise `ValueError`."""
    if data.startswith(V1_HEADER):
        old, good = _read_v1(path, data)
        sized: list[tuple[Record, int]] = [(w, len(encode_write(*w))) for w in old]
        return Contents(sized, good, "torn tail" if good < len(data) else None, version=1)
    if data.startswith(V2_HEADER):
        return _read_frames(path, data, len(V2_HEADER), header_seed(V2_HEADER), 2)
    if not data.startswith(HEADER):
        if is_damaged_header(data, HEADER, FRAMES) or is_damaged_header(data, V2_HEADER):
            raise CorruptFile(path, 0, "damaged file header", repair_hint(path))
        raise ValueError(f"{path} is not a lockd store log")
    durable = decode_end(data, len(HEADER))
    if durable is None:
        raise CorruptFile(path, len(HEADER), "damaged durable-end field", repair_hint(path))
    contents = _read_frames(path, data, FRAMES, SEED, 3)
    if contents.end < durable:
        raise CorruptFile(
            path,
            contents.end,
            f"the frames end before byte {durable}, which was acknowledged durable: the "
            "log was cut short (a crash tears at most the last append)",
            repair_hint(path),
        )
    return contents


def _read_frames(path: Path, data: bytes, start: int, seed: int, version: int) -> Contents:
    reader = FrameReader(data, start, seed)
    records: list[tuple[Record, int]] = []
    for offset, payload in reader:
        frame = decode_frame(payload)
        if frame is None:
            raise CorruptFile(path, offset, "unreadable records in a frame", repair_hint(path))
        records += frame
    if reader.damage is not None:
        raise CorruptFile(path, reader.end, reader.damage, repair_hint(path))
    return Contents(records, reader.end, reader.torn, reader.crc, version)


class StoreLog:
    """The log file: `open()` replays it; `append()` writes and fsyncs records (blocking:
    run it off the event loop); `compact()` rewrites it from a state."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOG_NAME
        self.size = 0
        self.fsyncs = 0
        self.compactions = 0
        self._crc = SEED
        self._fd = -1
        self._lock_fd = -1

    def open(self) -> State:
        """Lock the directory, replay the log (cutting a torn tail), open it for appends."""
        private_dir(self.directory, (LOG_NAME, LOCK_NAME, MARKER_NAME))
        self._lock_fd = open_private(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise RuntimeError(f"{self.directory} is in use by another lockd store") from None
        try:
            state, version = self._replay()
            if version < 3:
                keep_copy(self.path, f".v{version}")
                self.compact(list(state.values.items()), fresh=True)
                log.warning(
                    "store log %s: upgraded to format 3 (the old file is kept as %s.v%d)",
                    self.path,
                    LOG_NAME,
                    version,
                )
            else:
                # Not O_APPEND: the durable end is rewritten in place (pwrite).
                self._fd = open_private(self.path, os.O_WRONLY | os.O_CREAT)
                self.size = os.fstat(self._fd).st_size
                if self.size == 0:
                    pwrite_all(self._fd, EMPTY_LOG, 0)
                    self.size = FRAMES
                    self._crc = SEED
                else:  # all of it was replayed: durable from now on
                    pwrite_all(self._fd, encode_end(self.size), len(HEADER))
                os.fsync(self._fd)
            fsync_dir(self.directory)
            marker = self.directory / MARKER_NAME
            if not marker.exists():
                write_durably(marker, b'{"format": 2}\n')
        except BaseException:
            self.close()
            raise
        return state

    def _replay(self) -> tuple[State, int]:
        """The state the log holds, and its format version (below 3: to upgrade)."""
        state = State()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        if len(data) < FRAMES and (self.directory / MARKER_NAME).exists():
            raise RuntimeError(
                f"{self.path} is missing or shorter than its header, but {MARKER_NAME} says "
                "this directory held a store log: every highest token would be forgotten "
                "and stale writers accepted. Restore the log, or remove "
                f"{self.directory / MARKER_NAME} to start an empty store knowingly"
            )
        if not data:
            return state, 3
        if len(data) < FRAMES and EMPTY_LOG.startswith(data):
            self._cut(data, 0, "torn file header")  # crashed while creating the log
            return state, 3
        try:
            contents = read_log(self.path, data)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        for record, size in contents.records:
            state.replay(record, size)
        count = len(contents.records)
        if contents.version < 3:
            if contents.torn is not None:
                log.warning(
                    "store log %s: torn tail of a version %d log (%d bytes at byte %d) ignored",
                    self.path,
                    contents.version,
                    len(data) - contents.end,
                    contents.end,
                )
            return state, contents.version
        self._crc = contents.crc
        if contents.torn is not None:
            self._cut(data, contents.end, f"torn tail ({contents.torn}): kept {count} writes")
        elif count:
            log.info("store log %s: replayed %d writes", self.path, count)
        return state, 3

    def _cut(self, data: bytes, good: int, what: str) -> None:
        cut_tail("store log", self.path, data, good, what, log)

    def append(self, records: Sequence[bytes]) -> None:
        """Write `records` as one frame and fsync it: durable when this returns. The
        same fsync makes the header's durable end the end of the previous append (not
        this one: a crash may keep the header's write and tear the frame)."""
        frame, crc = encode_frame(b"".join(records), self._crc)
        pwrite_all(self._fd, frame, self.size)
        pwrite_all(self._fd, encode_end(self.size), len(HEADER))
        os.fsync(self._fd)
        self._crc = crc
        self.size += len(frame)
        self.fsyncs += 1

    def compact(
        self, entries: Iterable[tuple[tuple[str, str], Entry]], fresh: bool = False
    ) -> None:
        """Replace the log with one record per entry (fsynced, atomically renamed).

        A failure before the rename leaves the old log in use (OSError is raised); after
        a failure `usable` tells whether the log can still be appended to. `fresh`: no
        log is open yet (an upgrade).
        """
        tmp = self.path.with_name(LOG_NAME + ".compact")
        try:
            crc = _write_log(tmp, (encode_write(r, k, e.value, e.token) for (r, k), e in entries))
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.replace(tmp, self.path)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        fsync_dir(self.directory)
        self._fd = open_private(self.path, os.O_WRONLY)
        self._crc = crc
        self.size = os.fstat(self._fd).st_size
        if not fresh:
            self.compactions += 1
            log.info("store log %s compacted to %d bytes", self.path, self.size)

    @property
    def usable(self) -> bool:
        """False when a failed compaction left no open log file."""
        return self._fd >= 0

    def close(self) -> None:
        """Close the log (its durable end moved to the end: a clean stop tears nothing)
        and release the directory."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):  # a failed store: the field stays behind
                pwrite_all(self._fd, encode_end(self.size), len(HEADER))
                os.fsync(self._fd)
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1


def _write_log(path: Path, records: Iterable[bytes]) -> int:
    """Write a whole log of `records` to `path` and fsync it; returns the chain's CRC."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        crc = SEED
        out = [EMPTY_LOG]
        written = 0
        chunk: list[bytes] = []
        size = 0
        for record in records:
            chunk.append(record)
            size += len(record)
            if size >= _COMPACT_FRAME:
                frame, crc = encode_frame(b"".join(chunk), crc)
                out.append(frame)
                chunk, size = [], 0
                written += _write_out(fd, out)
        if chunk:
            frame, crc = encode_frame(b"".join(chunk), crc)
            out.append(frame)
        written += _write_out(fd, out)
        pwrite_all(fd, encode_end(written), len(HEADER))  # durable with the rest
        os.fsync(fd)
    finally:
        os.close(fd)
    return crc


def _write_out(fd: int, out: list[bytes]) -> int:
    """Write and clear `out`; how many bytes that was."""
    data = b"".join(out)
    write_all(fd, data)
    out.clear()
    return len(data)


def repair_store_log(path: Path, dry_run: bool = False) -> Salvage | None:
    """Check a store log; if it is damaged (or cut short of its durable end), write a
    repaired one that keeps every intact record and keep the damaged file as
    `store.log.broken`. Returns what was dropped, or
    None when the log needs no repair. With `dry_run` nothing is written."""
    data = path.read_bytes()
    if data.startswith(V1_HEADER):
        raise RuntimeError(f"{path} is a version 1 store log: start the store to upgrade it")
    if not data.startswith((HEADER, V2_HEADER)) and not (
        is_damaged_header(data, HEADER, FRAMES) or is_damaged_header(data, V2_HEADER)
    ):
        raise RuntimeError(f"{path} is not a lockd store log")
    start, seed = FRAMES, SEED
    if data.startswith(V2_HEADER) or (
        not data.startswith(HEADER) and decode_end(data, len(HEADER)) is None
    ):
        start, seed = len(V2_HEADER), header_seed(V2_HEADER)
    try:
        read_log(path, data)
    except CorruptFile:
        pass
    else:
        return None  # intact (a torn tail is cut at start; version 2 is upgraded there)
    result = salvage(data, start, seed, lambda p: decode_frame(p) is not None)
    if not data.startswith(HEADER):
        result.dropped.insert(0, (0, start))  # the header is rewritten, not kept
    else:
        durable = decode_end(data, len(HEADER))
        if durable is None:
            result.dropped.insert(0, (len(HEADER), END_FIELD_SIZE))
        elif durable > len(data):
            result.dropped.append((len(data), durable - len(data)))  # cut off: missing
    if not dry_run:
        keep_copy(path, ".broken")
        tmp = path.with_name(path.name + ".repair")
        _write_log(tmp, (r for payload in result.payloads for r in _records(payload)))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    return result


def _records(payload: bytes) -> Iterator[bytes]:
    for record, _ in decode_frame(payload) or []:
        yield encode_reset(record) if isinstance(record, str) else encode_write(*record)
