"""The store's durable state: an append-only log of accepted writes, replayed on start.

`store.log` in the data directory holds a header record, then one record per accepted
write, framed as RESP arrays like the engine's AOF (`encode_command`):

    LOCKDSTORE 1                                   (header)
    W <resource> <key> <value> <token> <crc32>     (a write)

The CRC (8 hex digits, zlib.crc32) covers the encoded record without it. Replay applies
the records in order, rebuilding the values and each resource's highest token (the
largest token of its records). The first record that is incomplete, malformed or fails
its checksum ends the log: it and everything after it are cut off, with a warning. A
crash during an append leaves only such a torn tail, and nothing in it was acknowledged,
because an append is fsynced before any of its writes is answered.

Compaction writes the live state (one record per key, with the token of its last write,
so the highest tokens survive) to a new file and renames it over the log.
`store.lock` is flock()ed while a process uses the directory.
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

from lockd.engine.persistence import fsync_dir
from lockd.resp.protocol import ProtocolError, RequestParser, encode_command

__all__ = ["Entry", "State", "StoreLog", "encode_write", "read_writes"]

log = logging.getLogger("lockd.store")

LOG_NAME = "store.log"
LOCK_NAME = "store.lock"
HEADER = encode_command(b"LOCKDSTORE", b"1")
_WRITE = b"W"


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
    live_bytes: int = len(HEADER)  # the size of a compacted log

    def apply(self, resource: str, key: str, value: bytes, token: int, size: int) -> None:
        """Apply one accepted write (`size`: its record's length)."""
        old = self.values.get((resource, key))
        self.values[(resource, key)] = Entry(value, token, size)
        self.live_bytes += size - (old.size if old else 0)
        if token > self.highest.get(resource, 0):
            self.highest[resource] = token


def encode_write(resource: str, key: str, value: bytes, token: int) -> bytes:
    """The log record of one write."""
    args = (_WRITE, resource.encode(), key.encode(), value, b"%d" % token)
    body = encode_command(*args)
    return encode_command(*args, b"%08x" % zlib.crc32(body))


def _decode_write(args: list[bytes]) -> tuple[str, str, bytes, int] | None:
    """(resource, key, value, token) of a well-formed write record, else None."""
    if len(args) != 6 or args[0] != _WRITE:
        return None
    if args[5] != b"%08x" % zlib.crc32(encode_command(*args[:5])):
        return None
    try:
        token = int(args[4])
        resource, key = args[1].decode(), args[2].decode()
    except ValueError:  # UnicodeDecodeError included
        return None
    return (resource, key, args[3], token) if token > 0 else None


def read_writes(path: Path) -> Iterator[tuple[str, str, bytes, int]]:
    """(resource, key, value, token) of every whole write in a store log, in log order.

    Read-only (a torn tail just ends the iteration); the Jepsen harness checks the order
    in which the store accepted tokens with it."""
    data = path.read_bytes()
    if data[: len(HEADER)] != HEADER:
        raise ValueError(f"{path} is not a lockd store log")
    parser = RequestParser()
    parser.feed(data[len(HEADER) :])
    while True:
        try:
            args = parser.next_command()
        except ProtocolError:
            return
        write = None if args is None else _decode_write(args)
        if write is None:
            return
        yield write


class StoreLog:
    """The log file: `open()` replays it; `append()` writes and fsyncs records (blocking:
    run it off the event loop); `compact()` rewrites it from a state."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOG_NAME
        self.size = 0
        self.fsyncs = 0
        self.compactions = 0
        self._fd = -1
        self._lock_fd = -1

    def open(self) -> State:
        """Lock the directory, replay the log (cutting a torn tail), open it for appends."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise RuntimeError(f"{self.directory} is in use by another lockd store") from None
        try:
            state = self._replay()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.size = os.fstat(self._fd).st_size
            if self.size == 0:
                self.append([HEADER])
                self.size = len(HEADER)
            fsync_dir(self.directory)
        except BaseException:
            self.close()
            raise
        return state

    def _replay(self) -> State:
        state = State()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return state
        if data[: len(HEADER)] != HEADER[: len(data)]:
            raise RuntimeError(f"{self.path} is not a lockd store log")
        parser = RequestParser()
        parser.feed(data)
        good = 0
        count = 0
        problem = "incomplete record"
        while good < len(data):
            try:
                args = parser.next_command()
            except ProtocolError as exc:
                problem = str(exc)
                break
            if args is None:
                break
            if good > 0:
                write = _decode_write(args)
                if write is None:
                    problem = "bad record or checksum"
                    break
                state.apply(*write, size=parser.offset() - good)
                count += 1
            good = parser.offset()
        if good < len(data):
            log.warning(
                "store log %s: torn tail (%s at byte %d): kept %d writes, dropped the last "
                "%d bytes",
                self.path,
                problem,
                good,
                count,
                len(data) - good,
            )
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        elif count:
            log.info("store log %s: replayed %d writes", self.path, count)
        return state

    def append(self, records: Sequence[bytes]) -> None:
        """Write `records` and fsync them: durable when this returns."""
        data = b"".join(records)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        self.size += len(data)
        self.fsyncs += 1

    def compact(self, entries: Iterable[tuple[tuple[str, str], Entry]]) -> None:
        """Replace the log with one record per entry (fsynced, atomically renamed).

        A failure before the rename leaves the old log in use (OSError is raised); after
        a failure `usable` tells whether the log can still be appended to.
        """
        tmp = self.path.with_name(LOG_NAME + ".compact")
        try:
            with open(tmp, "wb") as f:
                f.write(HEADER)
                for (resource, key), entry in entries:
                    f.write(encode_write(resource, key, entry.value, entry.token))
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = -1
        fsync_dir(self.directory)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.size = os.fstat(self._fd).st_size
        self.compactions += 1
        log.info("store log %s compacted to %d bytes", self.path, self.size)

    @property
    def usable(self) -> bool:
        """False when a failed compaction left no open log file."""
        return self._fd >= 0

    def close(self) -> None:
        """Close the log and release the directory."""
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1
