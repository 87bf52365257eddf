"""Storage that fails stop: checksummed frames, the torn-tail rule, durable writes.

The engine's AOF and the store's log share one file layout (etcd's WAL and Redis's AOF
loader are the models):

    LOCKD <kind> 2\\n                         (file header)
    <length u32> <crc u32> <check u32> <payload>   (a frame), repeated

(The store's log, version 3, adds a durable end after the header line: `encode_end`,
`decode_end`; see `lockd.store.log`.) A frame holds whatever one append wrote (one or
more RESP records). `crc` is the CRC32 of the payload chained over the previous frame's
(the first is chained over the file header's CRC), so a flipped, dropped, duplicated or
reordered frame is detected; `check` mixes the other two header words, so a flipped
length is detected before it is trusted. Reading stops at the first frame that does not
check. What follows it is a *torn tail* (cut, with a log line) only when it is what an
interrupted append leaves: the file ends inside the frame, or the frame runs into zeros
from a sector boundary to the end of the file, and no whole frame follows. Anything else
is damage: `CorruptFile`, naming the file, the offset and the repair command; nothing is
cut. `salvage` keeps every frame that still checks, for `lockd repair`, which writes a
new file and keeps the damaged one as `<name>.broken`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno as errno_codes
import logging
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "END_FIELD_SIZE",
    "FILE_MODE",
    "HEADER_FLIPS",
    "CorruptFile",
    "DiskFaults",
    "FrameReader",
    "Salvage",
    "cut_tail",
    "decode_end",
    "encode_end",
    "encode_frame",
    "fdatasync",
    "file_header",
    "fsync_dir",
    "header_seed",
    "is_damaged_header",
    "private_dir",
    "pwrite_all",
    "salvage",
    "write_all",
    "write_durably",
]

log = logging.getLogger("lockd.durable")

FILE_MODE = 0o600
DIR_MODE = 0o700
FORMAT_VERSION = 2
SECTOR = 512
FRAME = struct.Struct("<III")  # payload length, chained payload CRC32, header check
FRAME_OVERHEAD = 12
_MIN_ZERO_TAIL = 8  # a zeroed tail shorter than this may be flipped bytes, not a torn sector


class CorruptFile(RuntimeError):
    """A data file is damaged somewhere other than a torn tail: refuse to use it."""

    def __init__(self, path: Path, offset: int, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem} at byte {offset}; {fix}")
        self.path = path
        self.offset = offset
        self.problem = problem


def repair_hint(path: Path) -> str:
    """What to run to repair a damaged framed file."""
    return (
        f"nothing was changed. Run `lockd repair {path}` to write a repaired copy that keeps "
        f"every intact record (the damaged file is kept as {path.name}.broken)"
    )


def file_header(kind: bytes, version: int = FORMAT_VERSION) -> bytes:
    """The first line of a framed file."""
    return b"LOCKD %b %d\n" % (kind, version)


def header_seed(header: bytes) -> int:
    """The CRC the first frame is chained over."""
    return zlib.crc32(header)


HEADER_FLIPS = 3  # differing bytes up to which a file's first line is a damaged header


def is_damaged_header(data: bytes, header: bytes, frames_at: int | None = None) -> bool:
    """Whether `data`, which does not start with `header`, is a framed file whose header
    is damaged rather than some other file: a whole frame that checks starts where the
    frames do (`frames_at`, default: where the header ends), or the first line differs
    from `header` in at most `HEADER_FLIPS` bytes.
    (The first frame is chained over the CRC of the correct header, not of the bytes
    found, so the frames still check.)"""
    n = len(header)
    if len(data) < n:
        return False
    at = n if frames_at is None else frames_at
    found = _frame_at(data, at) if len(data) >= at else None
    if found is not None and at + FRAME_OVERHEAD + found[0] <= len(data):
        return True
    return sum(a != b for a, b in zip(data[:n], header, strict=True)) <= HEADER_FLIPS


_END = struct.Struct("<QI")  # a durable end and its CRC32
END_FIELD_SIZE = _END.size
_END_SEED = 0x6C6F636B  # keeps an all-zero field from checking


def encode_end(end: int) -> bytes:
    """A header's durable-end field: the byte up to which the file was durable."""
    return _END.pack(end, zlib.crc32(struct.pack("<Q", end), _END_SEED))


def decode_end(data: bytes | memoryview, at: int) -> int | None:
    """The durable end stored at `at`, or None when the field is missing or damaged."""
    if len(data) - at < END_FIELD_SIZE:
        return None
    end, crc = _END.unpack_from(data, at)
    return int(end) if crc == zlib.crc32(struct.pack("<Q", end), _END_SEED) else None


def _head_check(length: int, crc: int) -> int:
    """The check word of a frame header: any change to one of its three words (a flipped
    length above all) makes it fail; all zeros fails too."""
    return ((length * 0x9E3779B1) ^ crc ^ 0xA5A5A5A5) & 0xFFFFFFFF


def encode_frame(payload: bytes, prev: int) -> tuple[bytes, int]:
    """One frame holding `payload`, chained over `prev`; returns (frame, its crc). (The
    AOF's commit inlines this: keep the two in step.)"""
    crc = zlib.crc32(payload, prev)
    n = len(payload)
    return FRAME.pack(n, crc, ((n * 0x9E3779B1) ^ crc ^ 0xA5A5A5A5) & 0xFFFFFFFF) + payload, crc


def _frame_at(data: bytes | memoryview, p: int) -> tuple[int, int] | None:
    """(payload length, stored crc) when a frame header that checks starts at `p`."""
    if len(data) - p < FRAME_OVERHEAD:
        return None
    length, crc, check = FRAME.unpack_from(data, p)
    if check != _head_check(length, crc):
        return None
    return length, crc


def _whole_frame_after(data: bytes | memoryview, start: int) -> int | None:
    """The offset of the first whole frame with a header that checks, at or after `start`."""
    n = len(data)
    for q in range(start, n - FRAME_OVERHEAD + 1):
        found = _frame_at(data, q)
        if found is not None and q + FRAME_OVERHEAD + found[0] <= n:
            return q
    return None


def _torn(data: bytes | memoryview, p: int) -> str | None:
    """Why the bytes from `p` (where the first bad frame starts) to the end are a torn
    append, or None when they are damage."""
    n = len(data)
    if _whole_frame_after(data, p + 1) is not None:
        return None  # intact frames follow: this is damage in the middle of the file
    if n - p < FRAME_OVERHEAD:
        return f"incomplete frame header ({n - p} bytes)"
    head = _frame_at(data, p)
    if head is not None and p + FRAME_OVERHEAD + head[0] > n:
        return f"the file ends inside a {head[0]}-byte frame"
    if not any(data[p:]):
        return f"{n - p} zero bytes"
    # An unwritten sector reads as zeros: the frame runs into zeros from a sector
    # boundary to the end of the file (etcd's torn-entry rule).
    end = p + FRAME_OVERHEAD + (head[0] if head is not None else 0)
    s = (p // SECTOR + 1) * SECTOR
    while s < min(end, n):
        if n - s >= _MIN_ZERO_TAIL and not any(data[s:]):
            return f"a frame cut by {n - s} zero bytes from byte {s}"
        s += SECTOR
    return None


class FrameReader:
    """Iterate over the frames of a file's bytes, from `start` (after the file header).

    After the iteration: `end` is where the last good frame ends and `crc` its chained
    CRC; `torn` says why the rest is a torn tail, `damage` why it is not (one of them
    is set when `end` is before the end of the data).
    """

    def __init__(self, data: bytes | memoryview, start: int, seed: int) -> None:
        self.data = data
        self.end = start
        self.crc = seed
        self.frames = 0
        self.torn: str | None = None
        self.damage: str | None = None

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        data = memoryview(self.data)
        n = len(data)
        p = self.end
        crc = self.crc
        while p < n:
            head = _frame_at(data, p)
            if head is None:
                problem = "frame header checksum mismatch"
                break
            length, stored = head
            end = p + FRAME_OVERHEAD + length
            if end > n:
                problem = "incomplete frame"
                break
            payload = data[p + FRAME_OVERHEAD : end]
            if zlib.crc32(payload, crc) != stored:
                problem = "frame checksum mismatch"
                break
            yield p, payload
            crc = stored
            p = end
            self.end, self.crc = p, crc
            self.frames += 1
        else:
            return
        self.torn = _torn(data, p)
        if self.torn is None:
            self.damage = problem


@dataclasses.dataclass
class Salvage:
    """What `salvage` kept and dropped."""

    payloads: list[bytes]
    dropped: list[tuple[int, int]]  # (offset, length) of each damaged byte range

    @property
    def dropped_bytes(self) -> int:
        """How many bytes were dropped in all."""
        return sum(length for _, length in self.dropped)


def salvage(data: bytes, start: int, seed: int, valid: Callable[[bytes], bool]) -> Salvage:
    """Every frame that still checks, skipping damage (for repair).

    A frame whose header checks but whose payload does not is dropped alone; after a
    damaged header, reading resumes at the next frame whose header checks, whose chain
    cannot be verified, so its payload must also pass `valid`.
    """
    mv = memoryview(data)
    n = len(data)
    p, crc, chained = start, seed, True
    kept: list[bytes] = []
    dropped: list[tuple[int, int]] = []
    while p < n:
        head = _frame_at(mv, p)
        if head is not None and p + FRAME_OVERHEAD + head[0] <= n:
            length, stored = head
            end = p + FRAME_OVERHEAD + length
            payload = bytes(mv[p + FRAME_OVERHEAD : end])
            good = zlib.crc32(payload, crc) == stored if chained else valid(payload)
            if good:
                kept.append(payload)
            else:
                dropped.append((p, end - p))
            p, crc, chained = end, stored, True
            continue
        q = _whole_frame_after(mv, p + 1)
        stop = n if q is None else q
        dropped.append((p, stop - p))
        p, chained = stop, False
    return Salvage(kept, dropped)


# -- writing ------------------------------------------------------------------------------


class DiskFaults:
    """TEST ONLY fault injection: while armed, the chosen disk operations of the files
    that share this object fail with `errno` (as a full disk, an I/O error or an
    immutable file would). Never armed unless a test or `--enable-disk-faults` asks."""

    OPERATIONS = frozenset({"open", "write", "fsync", "truncate", "rename"})

    def __init__(self) -> None:
        self.errno: int | None = None
        self.operations: frozenset[str] = self.OPERATIONS

    @property
    def armed(self) -> bool:
        """True while operations fail."""
        return self.errno is not None

    def fail(self, code: int, operations: Iterable[str] | None = None) -> None:
        """Make `operations` (default: all) fail with errno `code` from now on."""
        ops = self.OPERATIONS if operations is None else frozenset(operations)
        if not ops <= self.OPERATIONS:
            raise ValueError(f"unknown disk operations: {sorted(ops - self.OPERATIONS)}")
        self.operations = ops
        self.errno = code

    def heal(self) -> None:
        """Let every operation succeed again."""
        self.errno = None

    def check(self, operation: str) -> None:
        """Raise the armed error if `operation` is to fail."""
        code = self.errno
        if code is not None and operation in self.operations:
            raise OSError(code, f"{os.strerror(code)} (injected)")


NO_FAULTS = DiskFaults()


def errno_name(exc: OSError) -> str:
    """`ENOSPC: No space left on device` for an OSError."""
    code = exc.errno
    name = errno_codes.errorcode.get(code, str(code)) if code is not None else "error"
    return f"{name}: {exc.strerror or exc}"


def write_all(fd: int, data: bytes, faults: DiskFaults = NO_FAULTS) -> None:
    """Write all of `data` (os.write may write less)."""
    if faults.errno is not None:
        faults.check("write")
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of `data` at `offset` (the fd must not be O_APPEND: Linux appends then)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def fsync(fd: int, faults: DiskFaults = NO_FAULTS) -> None:
    """fsync, with fault injection."""
    if faults.armed:
        faults.check("fsync")
    os.fsync(fd)


def fdatasync(fd: int, faults: DiskFaults = NO_FAULTS) -> None:
    """fdatasync (the data and the size, not the times: what an append-only log needs;
    Redis and etcd sync their logs this way), with fault injection (as "fsync")."""
    if faults.armed:
        faults.check("fsync")
    os.fdatasync(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private(path: Path, flags: int, faults: DiskFaults = NO_FAULTS) -> int:
    """os.open with mode 0600, tightening an existing file that is more open."""
    if faults.armed:
        faults.check("open")
    fd = os.open(path, flags, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_durably(path: Path, data: bytes, faults: DiskFaults = NO_FAULTS) -> None:
    """Atomically replace `path` with `data` (mode 0600): temp file, fsync, rename, fsync
    the directory. On failure the old file is untouched and the temp file removed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, faults)
        try:
            write_all(fd, data, faults)
            fsync(fd, faults)
        finally:
            os.close(fd)
        if faults.armed:
            faults.check("rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def keep_copy(path: Path, suffix: str) -> Path:
    """Hard-link `path` as `<path><suffix>` (replacing an older copy): the original bytes
    survive a later rename over `path`."""
    copy = path.with_name(path.name + suffix)
    with contextlib.suppress(FileNotFoundError):
        copy.unlink()
    os.link(path, copy)
    return copy


def private_dir(directory: Path, owned: Iterable[str]) -> None:
    """Create `directory` 0700 if missing. When it exists and is lockd's (empty, or
    holding one of the `owned` files), tighten it to 0700 and those files to 0600."""
    try:
        directory.mkdir(mode=DIR_MODE, parents=True)
        return
    except FileExistsError:
        pass
    names = list(owned)
    present = [directory / n for n in names if (directory / n).exists()]
    mode = directory.stat().st_mode
    if mode & 0o077 and (present or not any(directory.iterdir())):
        os.chmod(directory, stat.S_IMODE(mode) & ~0o077)
        log.info("%s: removed group and other access (lockd data is private)", directory)
    for path in present:
        if path.stat().st_mode & 0o077:
            os.chmod(path, FILE_MODE)


def cut_tail(
    kind: str, path: Path, data: bytes, good: int, what: str, logger: logging.Logger
) -> None:
    """Cut a torn tail: truncate `path` (the `kind` of file, whose bytes are `data`) to
    `good` bytes and fsync, with one warning on `logger` naming what was cut and where."""
    logger.warning(
        "%s %s: %s, cut the last %d bytes at byte %d", kind, path, what, len(data) - good, good
    )
    with open(path, "r+b") as f:
        f.truncate(good)
        os.fsync(f.fileno())
