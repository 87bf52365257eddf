"""One engine node: keyspace, lock functions, persistence, delayed restart, pub/sub.

The engine is single-threaded and synchronous: its host (the RESP server or the embedded
gateway) calls `execute()` or the typed lock functions, then `commit()` before sending
replies, and `cron()` every 100 ms. Nothing here opens sockets or sleeps.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lockd import __version__
from lockd.core.messages import EVENTS_CHANNEL, NodeEvent, encode_event
from lockd.core.quorum import restart_delay_ms
from lockd.durable import CorruptFile, DiskFaults, errno_name, private_dir
from lockd.engine.clock import Clock, WallClock
from lockd.engine.commands import dispatch, info_text
from lockd.engine.keyspace import Keyspace
from lockd.engine.persistence import (
    AOF_NAME,
    DATA_FILES,
    NODE_NAME,
    RESERVATION_NAME,
    SHUTDOWN_NAME,
    AppendOnlyFile,
    FenceReservation,
    FsyncJob,
    FsyncPolicy,
    clock_epoch,
    fence_floor_hint,
    read_json,
    read_reservation,
    write_json_durably,
    write_reservation,
)
from lockd.resp.replies import CommandError, Reply

__all__ = [
    "EVENTS_CHANNEL",
    "RELEASE_CHANNEL",
    "Engine",
    "EngineConfig",
    "glob_match",
    "meta_key_of",
]

log = logging.getLogger("lockd.engine")

RELEASE_CHANNEL = b"lockd:released"
"""Pub/sub channel on which `lockd_release` publishes the released lock key."""

MAX_TOKEN = 2**53 - 1  # the Lua library computes in doubles; stay exact in both
FENCE_PREFIX = b"fence:"
NODE_FORMAT = 2  # node.json of a directory whose reservation is created with it
RESERVATION_RETRY_S = 1.0
FENCE_COLLECT_BUDGET = 2000  # idle counters folded per cron run at most
LOCK_KEY_PREFIX = b"lock:"
LIST_PREFIX = b"lock:{"
LIST_CACHE = 8  # sorted key snapshots kept for `lockd_list` iterations in progress


def meta_key_of(lock_key: bytes) -> bytes | None:
    """The key of a lock's owner record: `meta:X` for lock key `lock:X` (the same hash
    tag), None for keys outside the lock key format, which have no record."""
    if lock_key.startswith(LOCK_KEY_PREFIX):
        return b"meta:" + lock_key[len(LOCK_KEY_PREFIX) :]
    return None


def fence_key_of(lock_key: bytes) -> bytes:
    """The fencing counter key `fence:X` of lock key `lock:X` (for `lockd_list` and
    `lockd_peek`, which are given lock keys only)."""
    if not lock_key.startswith(LOCK_KEY_PREFIX):
        raise CommandError("ERR lockd: lock keys must start with 'lock:'")
    return FENCE_PREFIX + lock_key[len(LOCK_KEY_PREFIX) :]


Subscriber = Callable[[bytes, bytes], None]
PatternSubscriber = Callable[[bytes, bytes, bytes], None]
"""Called with (pattern, channel, message) for a message on a channel the pattern matches."""


def glob_match(pattern: bytes, string: bytes) -> bool:
    """Whether `string` matches Redis's glob `pattern` (PSUBSCRIBE, KEYS): `*`, `?`,
    `[abc]`, `[^a-z]`, and `\\` escaping the next byte; a port of Redis's
    `stringmatchlen`, so edge cases (an unclosed `[`, a reversed range) agree."""
    return _glob(pattern, 0, string, 0, [False])


def _glob(p: bytes, i: int, s: bytes, j: int, give_up: list[bool]) -> bool:
    plen, slen = len(p), len(s)
    while i < plen and j < slen:
        c = p[i]
        if c == 0x2A:  # *
            while i + 1 < plen and p[i + 1] == 0x2A:
                i += 1
            if i + 1 == plen:
                return True
            while j < slen:
                if _glob(p, i + 1, s, j, give_up):
                    return True
                if give_up[0]:
                    return False
                j += 1
            give_up[0] = True  # no later start can match either
            return False
        if c == 0x3F:  # ?
            j += 1
        elif c == 0x5B:  # [
            i += 1
            negate = i < plen and p[i] == 0x5E
            if negate:
                i += 1
            match = False
            while True:
                if i < plen and p[i] == 0x5C and plen - i >= 2:
                    i += 1
                    match |= p[i] == s[j]
                elif i < plen and p[i] == 0x5D:
                    break
                elif i >= plen:
                    i -= 1
                    break
                elif plen - i >= 3 and p[i + 1] == 0x2D:
                    lo, hi = sorted((p[i], p[i + 2]))
                    match |= lo <= s[j] <= hi
                    i += 2
                else:
                    match |= p[i] == s[j]
                i += 1
            if match == negate:
                return False
            j += 1
        else:
            if c == 0x5C and plen - i >= 2:
                i += 1
            if p[i] != s[j]:
                return False
            j += 1
        i += 1
        if j == slen:
            while i < plen and p[i] == 0x2A:
                i += 1
            break
    return i == plen and j == slen


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Settings of one engine node. `dir=None` keeps everything in memory."""

    dir: Path | None = None
    appendfsync: FsyncPolicy = FsyncPolicy.EVERYSEC
    max_ttl_ms: int = 60_000
    maxmemory: int = 0
    fence_block: int = 1024
    rewrite_min_size: int = 1 << 20
    hold_until_fsync: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    password: str | None = dataclasses.field(default=None, repr=False)
    """Clients must AUTH (or HELLO ... AUTH default <password>) first, as with Redis's
    requirepass; None accepts every connection."""
    tls_cert: Path | None = None
    """PEM certificate chain: serve RESP over TLS (with `tls_key`)."""
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """PEM CA bundle: require client certificates signed by it (mutual TLS)."""
    # UNSAFE switches. Each breaks one guarantee on purpose so that the simulator
    # (`lockd sim --unsafe`) and the harness can show their checkers catch it; never
    # set them on a node that guards anything.
    unsafe_no_restart_delay: bool = False
    """UNSAFE: grant at once after an unclean stop, though locks may have been forgotten."""
    unsafe_volatile_fence: bool = False
    """UNSAFE: fencing counters in memory only (no reservation, not journalled)."""
    unsafe_single_phase_token: bool = False
    """UNSAFE: `lockd_acquire` increments the counter itself (the one-phase token scheme
    that reverses under changing majorities); pairs with the core's flag of that name."""
    clock_control: bool = False
    """TEST ONLY: accept LOCKD.CLOCK (the Jepsen harness's clock faults)."""
    unsafe_wall_clock: bool = False
    """UNSAFE: measure TTLs on the wall clock, so a clock step expires locks early."""
    fence_idle_ms: int = 60_000
    """A fencing counter unchanged this long is folded into the node's floor and its key
    deleted (0: never), so memory stays bounded however many lock names come and go."""
    disk_faults: bool = False
    """TEST ONLY: accept LOCKD.DISK (the Jepsen harness's disk faults)."""


class Engine:
    """A Redis-like node holding locks and fencing counters (see DESIGN §3)."""

    def __init__(self, config: EngineConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or EngineConfig()
        self.clock = clock or (WallClock() if self.config.unsafe_wall_clock else Clock())
        self.run_id = secrets.token_hex(20)
        self.started_ms = self.clock.now_ms()
        self._started_wall = time.time()
        self.keyspace = Keyspace(self.clock, self.config.maxmemory, self._journal)
        self._subscribers: dict[bytes, set[Subscriber]] = {}
        self._patterns: dict[bytes, set[PatternSubscriber]] = {}
        self._list_snapshots: dict[bytes, list[bytes]] = {}
        self.restart_until_ms = self.started_ms
        self.restart_reason = "fresh data directory"
        self.fence_floor = 0
        self.wall_offset_ms = 0.0
        """Wall-clock steps (LOCKD.CLOCK) on a monotonic-clock node: recorded, no effect on TTLs."""
        self.aof: AppendOnlyFile | None = None
        self.reservation: FenceReservation | None = None
        self.faults = DiskFaults()
        """Disk fault injection (TEST ONLY; armed by tests or LOCKD.DISK)."""
        self.refusing = False
        """True while a disk error stands: writes are refused (MISCONF)."""
        self._settle_now = self.config.appendfsync is FsyncPolicy.ALWAYS
        self._reservation_retry_at = 0.0
        self._fence_changed: dict[bytes, int] = {}  # fence key -> last change, oldest first
        self.fences_collected = 0
        self._epoch = clock_epoch().encode()
        self.closed = False
        if self.config.dir is not None:
            self._open(self.config.dir)

    # -- lifecycle -----------------------------------------------------------------------

    def _open(self, directory: Path) -> None:
        private_dir(directory, DATA_FILES)
        node_file = directory / NODE_NAME
        node = read_json(node_file)
        if node is None and node_file.exists():
            raise RuntimeError(
                f"{node_file} is unreadable; it records the longest TTL this node ever "
                "granted, which its restart delay needs. Restore it, or remove it and start "
                "with --max-ttl at least as long as any this node ever ran with"
            )
        aof_path = directory / AOF_NAME
        marker_file = directory / SHUTDOWN_NAME
        marker = read_json(marker_file)
        volatile = self.config.unsafe_volatile_fence
        reserve_path = directory / RESERVATION_NAME
        found = None if volatile else read_reservation(reserve_path)
        used = (
            node is not None
            or marker_file.exists()
            or (aof_path.exists() and aof_path.stat().st_size > 0)
        )
        fresh = not used and found is None
        legacy_missing = False  # a version 1 directory without a reservation file
        if not volatile and found is None and used:
            if node is None or "format" in node:
                raise CorruptFile(
                    reserve_path,
                    0,
                    "fencing reservation missing from a directory that was used (it has "
                    f"{', '.join(n for n in DATA_FILES if (directory / n).exists())})",
                    fence_floor_hint(reserve_path),
                )
            legacy_missing = True
        if found is not None and found[1] and node is not None and "format" in node:
            # node.json is rewritten in format 2 only after the reservation was: a version
            # 1 reservation here is damage (one that parses as a smaller number, say).
            raise CorruptFile(
                reserve_path,
                0,
                "version 1 fencing reservation in a directory already upgraded to format 2",
                fence_floor_hint(reserve_path),
            )
        # The longest TTL this node has ever been allowed to grant: lowering --max-ttl
        # across an unclean stop must not shorten the delay below what was granted.
        max_ttl_ever = max(self.config.max_ttl_ms, int((node or {}).get("max_ttl_ms", 0)))
        if not volatile and (fresh or (found is not None and found[1])):
            write_reservation(reserve_path, found[0] if found else 0, self.faults)
        if node is None or node.get("max_ttl_ms") != max_ttl_ever or "format" not in node:
            write_json_durably(
                node_file,
                {
                    "created": (node or {}).get("created", time.time()),
                    "format": NODE_FORMAT,
                    "lockd": __version__,
                    "max_ttl_ms": max_ttl_ever,
                },
                self.faults,
            )
        if marker_file.exists():
            marker_file.unlink()
        reserved = found[0] if found else 0
        if not volatile:
            self.reservation = FenceReservation(
                reserve_path, self.config.fence_block, reserved, self.faults, self._disk_changed
            )
        self.aof = AppendOnlyFile(
            aof_path,
            self.config.appendfsync,
            self.config.hold_until_fsync,
            self.faults,
            self._disk_changed,
        )
        count = self.recover(
            fresh=fresh,
            marker=marker,
            max_ttl_ever_ms=max_ttl_ever,
            fence_reserved=reserved,
            records=self.aof.load(),
        )
        if not volatile:
            self._check_counters(reserve_path, reserved, legacy_missing)
        if self.aof.legacy:
            self.aof.upgrade(self.keyspace.snapshot(self._epoch))
        self.aof.open()
        self.aof.commit()
        log.info(
            "engine %s: %d AOF records, %d keys, fence floor %d, restart delay %d ms (%s)",
            directory,
            count,
            len(self.keyspace),
            self.fence_floor,
            self.restart_delay_remaining_ms(),
            self.restart_reason,
        )

    def _check_counters(self, path: Path, reserved: int, missing: bool) -> None:
        """Every counter the AOF holds must be at or below the reservation; a version 1
        directory without one gets it now, unless the AOF shows counters were used."""
        highest = max((_counter_value(v) for _, v in self._fences()), default=0)
        if missing:
            if highest:
                raise CorruptFile(
                    path,
                    0,
                    "fencing reservation missing, though the AOF holds fencing counters",
                    fence_floor_hint(path),
                )
            log.warning("%s: created (a directory from before lockd wrote one at once)", path)
            write_reservation(path, 0, self.faults)
        elif highest > reserved:
            raise CorruptFile(
                path,
                0,
                f"fencing reservation {reserved} is below counter {highest} of the AOF",
                fence_floor_hint(path),
            )

    def _fences(self) -> Iterable[tuple[bytes, bytes | int]]:
        return self.keyspace.items_with_prefix(FENCE_PREFIX)

    def recover(
        self,
        *,
        fresh: bool,
        marker: dict[str, Any] | None,
        max_ttl_ever_ms: int,
        fence_reserved: int,
        records: Iterable[list[bytes]],
    ) -> int:
        """Start from durable state: the delayed restart the last stop calls for (none
        when `fresh`; `marker` is a clean shutdown's `shutdown_marker()`), the fence floor,
        the journal replayed, then this boot's EPOCH record journalled. `_open` reads
        these from the data directory; the simulator passes its simulated disk's.
        Returns how many records were replayed."""
        if marker is None and not fresh:
            self._delay(restart_delay_ms(max_ttl_ever_ms), "unclean stop")
        elif marker is not None:
            self.restart_reason = "clean shutdown with no live locks"
            left = int(marker.get("longest_lock_ms", 0))
            if marker.get("epoch") == self._epoch.decode():
                left -= self.started_ms - int(marker.get("at_ms", self.started_ms))
            self._delay(left, "clean shutdown with live locks")
        self.fence_floor = 0 if self.config.unsafe_volatile_fence else fence_reserved
        count = self.keyspace.replay(iter(records), self._epoch)
        # Replayed counters are at or below the floor: collect them at the first chance.
        born = self.clock.now_ms() - self.config.fence_idle_ms
        self._fence_changed = dict.fromkeys((k for k, _ in self._fences()), born)
        epoch = self._epoch
        self.keyspace.journal(b"*2\r\n$5\r\nEPOCH\r\n$%d\r\n%b\r\n" % (len(epoch), epoch), True)
        return count

    def _delay(self, ms: int, reason: str) -> None:
        if ms > 0 and not self.config.unsafe_no_restart_delay:
            self.restart_until_ms = self.started_ms + ms
            self.restart_reason = reason

    def close(self) -> None:
        """Clean shutdown: flush and fsync, then record how long the live locks last. A
        flush that fails leaves no marker: the next start treats the stop as unclean."""
        if self.closed:
            return
        self.closed = True
        if self.aof is None or self.config.dir is None:
            return
        if self.aof.needs_rewrite and not self.aof.rewriting:
            self.rewrite_aof()  # closing waits for it
        if not self.aof.close():
            return
        try:
            write_json_durably(self.config.dir / SHUTDOWN_NAME, self.shutdown_marker())
        except OSError as exc:
            log.error(
                "engine %s: no clean-shutdown marker (%s): the next start delays acquisitions",
                self.config.dir,
                errno_name(exc),
            )

    def shutdown_marker(self) -> dict[str, Any]:
        """What a clean shutdown records for the next start: how long its live locks (and
        any restart delay still running) last, on which clock epoch."""
        longest = max(self.keyspace.longest_ttl_ms(), self.restart_delay_remaining_ms())
        return {
            "epoch": self._epoch.decode(),
            "at_ms": self.clock.now_ms(),
            "longest_lock_ms": longest,
        }

    def commit(self) -> bool:
        """Make queued mutations as durable as the fsync policy promises; call before
        replying. False when writes that needed an fsync are not durable: answer them
        with `misconf()`, not success."""
        return self.aof is None or self.aof.commit()

    def commit_write(self) -> bool | FsyncJob:
        """The first half of `commit()` (group commit, `lockd.engine.group`): a bool is
        the commit's result; a job is an fsync to run off the event loop, whose outcome
        goes to `commit_synced()`."""
        return True if self.aof is None else self.aof.commit_write()

    def commit_synced(self, error: OSError | None) -> bool:
        """The second half of `commit()`: the fsync job raised `error` (or nothing)."""
        assert self.aof is not None
        return self.aof.commit_synced(error)

    @property
    def commit_pending(self) -> bool:
        """True when `commit()` has records to write: worth batching replies first."""
        return self.aof is not None and self.aof.write_pending

    @property
    def disk_error(self) -> str | None:
        """Why this node refuses writes (a failed AOF or reservation write), else None."""
        if self.aof is not None and self.aof.error is not None:
            return self.aof.error
        if self.reservation is not None and self.reservation.error is not None:
            return self.reservation.error
        return None

    def misconf(self) -> CommandError:
        """The error for a write refused (or not made durable) after a disk failure."""
        return CommandError(
            f"MISCONF Errors writing to disk: {self.disk_error or 'a write was not durable'}; "
            "this node refuses writes until its disk accepts them again"
        )

    def check_writable(self) -> None:
        """Raise `misconf()` while a disk error stands (Redis's MISCONF)."""
        if self.refusing:
            raise self.misconf()

    def _reservation_failed(self) -> bool:
        return self.reservation is not None and self.reservation.error is not None

    @property
    def settle_calls(self) -> bool:
        """Whether the typed lock functions fsync their own writes under `always` before
        returning (for hosts that count their answers at once). Hosts that group-commit
        (the RESP server, the embedded gateway under `always`: `lockd.engine.group`) turn
        this off and hold every answer until the commit that covers it."""
        return self._settle_now

    @settle_calls.setter
    def settle_calls(self, value: bool) -> None:
        self._settle_now = value and self.config.appendfsync is FsyncPolicy.ALWAYS

    def _disk_changed(self) -> None:
        self.refusing = self.disk_error is not None

    def _settle(self) -> None:
        """Under `always`, fsync the writes of the call just made (see `settle_calls`)."""
        aof = self.aof
        if aof is not None and aof.sync_pending and not aof.commit():
            raise self.misconf()

    def cron(self) -> None:
        """Periodic duties (every 100 ms): active expiry, fsync, retries after disk
        errors, background rewrite, collection of idle fencing counters."""
        self.keyspace.active_expire_cycle()
        aof = self.aof
        if aof is None:
            return
        if self._reservation_failed() and time.monotonic() >= self._reservation_retry_at:
            assert self.reservation is not None
            self._reservation_retry_at = time.monotonic() + RESERVATION_RETRY_S
            self.reservation.retry()
        aof.tick()
        if aof.needs_rewrite and not aof.rewriting and aof.retry_due:
            self.rewrite_aof()  # after a failed fsync, only memory is trustworthy
        if self.disk_error is None:
            self.collect_fences()
        if aof.rewrite_due(self.config.rewrite_min_size):
            self.rewrite_aof()

    def rewrite_aof(self) -> bool:
        """Start a background AOF rewrite; False if one is already running or no AOF."""
        if self.aof is None or self.aof.rewriting:
            return False
        self.aof.start_rewrite(self.keyspace.snapshot(self._epoch))
        return True

    def _journal(self, record: bytes, durable: bool) -> None:
        if self.aof is not None:
            self.aof.append(record, durable)

    @property
    def fence_counters(self) -> int:
        """Fencing counters tracked for collection (about how many keys they hold)."""
        return len(self._fence_changed)

    def collect_fences(self, budget: int = FENCE_COLLECT_BUDGET) -> int:
        """Fold counters idle for `fence_idle_ms` into the fence floor and delete their
        keys. The floor only rises and every counter reads at least the floor, so no
        name's counter ever goes back; the floor is at most the reservation, which is
        the floor after a restart. Returns how many were collected."""
        idle = self.config.fence_idle_ms
        changed = self._fence_changed
        if not idle or not changed:
            return 0
        cutoff = self.clock.now_ms() - idle
        ks = self.keyspace
        done = 0
        for key, born in list(itertools.islice(changed.items(), budget)):
            if born > cutoff:
                break
            del changed[key]
            value = ks.get(key)
            if value is not None:
                self.fence_floor = max(self.fence_floor, _counter_value(value))
                ks.remove(key, durable=False)
                done += 1
        self.fences_collected += done
        return done

    def _check_restart_delay(self, what: str) -> None:
        """RESTARTDELAY while this node is in its delayed restart. Acquisitions wait for
        every lock it may have forgotten to expire; so do lock reads, since its journal
        may also have brought back a lock that was released and superseded before the
        crash (what it reports until then is not evidence)."""
        if self.restart_until_ms > self.started_ms:
            left = self.restart_delay_remaining_ms()
            if left > 0:
                raise CommandError(
                    f"RESTARTDELAY {left} ms left: this node restarted after an "
                    f"{self.restart_reason} and refuses {what} until every lock it "
                    "may have forgotten has expired"
                )

    def restart_delay_remaining_ms(self) -> int:
        """Milliseconds until this node accepts acquisitions and lock reads again (0: now)."""
        return max(0, self.restart_until_ms - self.clock.now_ms())

    # -- lock functions ------------------------------------------------------------------

    def _check_ttl(self, ttl: bytes, function: str) -> int:
        ms = _positive(ttl)
        if ms is None:
            raise CommandError(f"ERR {function}: ttl must be a positive integer of milliseconds")
        if ms > self.config.max_ttl_ms:
            raise CommandError(
                f"ERR {function}: ttl {ms} ms is above this node's max-ttl "
                f"{self.config.max_ttl_ms} ms"
            )
        return ms

    def counter(self, fence_key: bytes) -> int:
        """The fencing counter stored at `fence_key`, never below the restart floor."""
        value = self.keyspace.get(fence_key)
        if value is None:
            return self.fence_floor
        parsed = _positive(value) if isinstance(value, bytes) else value
        # The Lua library computes in doubles: refuse what it could not represent exactly.
        if parsed is None or not 0 < parsed <= MAX_TOKEN:
            raise CommandError("ERR lockd: fencing counter is not an integer in [1, 2^53)")
        return parsed if parsed > self.fence_floor else self.fence_floor

    def _string(self, key: bytes) -> bytes | None:
        """The live value of `key` as Redis's GET shows it (INCR stores ints)."""
        value = self.keyspace.get(key)
        return value if value is None or isinstance(value, bytes) else b"%d" % value

    def lock_acquire(
        self, lock_key: bytes, fence_key: bytes, lease: bytes, ttl: bytes, meta: bytes | None = None
    ) -> tuple[int, int]:
        """SET NX PX (or refresh if `lease` already holds it): [acquired 1/0, counter].

        With `meta`, the lock's owner record (`meta_key_of`) is written too, with the same
        deadline; a fresh lock without `meta` removes any stale record."""
        if self.refusing:
            raise self.misconf()
        ms = self._check_ttl(ttl, "lockd_acquire")
        meta_key = meta_key_of(lock_key)
        if meta is not None and meta_key is None:
            raise CommandError("ERR lockd_acquire: an owner record needs a lock key 'lock:...'")
        self._check_restart_delay("acquisitions")
        counter = self.counter(fence_key)
        ks = self.keyspace
        current = self._string(lock_key)
        deadline = self.clock.now_ms() + ms
        if current is None:
            ks.check_new_key(lock_key, len(lease))
            if meta is not None and meta_key is not None:
                ks.check_new_key(meta_key, len(meta))
            ks.set(lock_key, lease, deadline)
            if meta_key is not None:
                if meta is not None:
                    ks.set(meta_key, meta, deadline)
                else:
                    ks.delete(meta_key)
        elif current == lease:
            if meta is not None and meta_key is not None:
                ks.check_new_key(meta_key, len(meta))
            self._extend_held(lock_key, meta_key, counter, ms, meta)
        else:
            return 0, counter
        if self.config.unsafe_single_phase_token:
            counter += 1
            self._set_counter(fence_key, counter)
        if self._settle_now:
            self._settle()
        return 1, counter

    def lock_release(self, lock_key: bytes, lease: bytes) -> int:
        """Compare-and-delete (with the owner record): 1 if `lease` held the lock and it is
        now released."""
        if self.refusing:
            raise self.misconf()
        if self._string(lock_key) != lease:
            return 0
        self._remove_lock(lock_key)
        return 1

    def _remove_lock(self, lock_key: bytes, kind: bytes = b"R") -> None:
        """Delete a live lock key and its owner record, settle (under `always`), and
        publish the release (on `lockd:released`, and as event `kind` for watchers)."""
        if self._events_wanted() and lock_key.startswith(LOCK_KEY_PREFIX):
            with contextlib.suppress(CommandError):  # a damaged counter: no event (as Lua)
                counter = self.counter(fence_key_of(lock_key))
                self._publish_event(kind, lock_key, counter, -2, b"")
        self.keyspace.remove(lock_key)
        meta_key = meta_key_of(lock_key)
        if meta_key is not None:
            self.keyspace.delete(meta_key)
        if self._settle_now:
            self._settle()
        self.publish(RELEASE_CHANNEL, lock_key)

    def lock_force_release(self, lock_key: bytes) -> tuple[int, int]:
        """Delete the lock whatever lease holds it (admin release): [released 1/0, counter]."""
        if self.refusing:
            raise self.misconf()
        counter = self.counter(fence_key_of(lock_key))
        if self.keyspace.get(lock_key) is None:
            return 0, counter
        self._remove_lock(lock_key, b"F")
        return 1, counter

    def lock_extend(
        self, lock_key: bytes, lease: bytes, ttl: bytes, meta: bytes | None = None
    ) -> int:
        """Compare-and-PEXPIRE (the owner record too): 1 if `lease` holds the lock, whose
        TTL is now `ttl`. With `meta`, the owner record is replaced (same deadline), and
        a changed record is published as a `U` lock event (an election's Proclaim)."""
        if self.refusing:
            raise self.misconf()
        ms = self._check_ttl(ttl, "lockd_extend")
        meta_key = meta_key_of(lock_key)
        if meta is not None and meta_key is None:
            raise CommandError("ERR lockd_extend: an owner record needs a lock key 'lock:...'")
        if self._string(lock_key) != lease:
            return 0
        counter = 0
        if meta is not None and meta_key is not None:
            counter = self.counter(fence_key_of(lock_key))
            self.keyspace.check_new_key(meta_key, len(meta))
        self._extend_held(lock_key, meta_key, counter, ms, meta)
        if self._settle_now:
            self._settle()
        return 1

    def _extend_held(
        self, lock_key: bytes, meta_key: bytes | None, counter: int, ms: int, meta: bytes | None
    ) -> None:
        """Give a held lock `ms` more, with its owner record: replaced by `meta` when one
        is given (a changed record is published as a `U` lock event), else kept and
        extended. (Room for `meta` is checked by the caller, before any change.)"""
        ks = self.keyspace
        deadline = self.clock.now_ms() + ms
        ks.set_deadline(lock_key, deadline)
        if meta is not None and meta_key is not None:
            before = self._string(meta_key)
            ks.set(meta_key, meta, deadline)
            if before != meta and self._events_wanted():
                self._publish_event(b"U", lock_key, counter, ms, meta)
        elif meta_key is not None and ks.get(meta_key) is not None:
            ks.set_deadline(meta_key, deadline)

    def pttl(self, key: bytes) -> int:
        """Milliseconds `key` has left, as Redis's PTTL: -2 absent, -1 no expiry."""
        if self.keyspace.get(key) is None:
            return -2
        deadline = self.keyspace.deadline(key)
        return -1 if deadline is None else max(0, deadline - self.clock.now_ms())

    def lock_describe(self, lock_key: bytes, fence_key: bytes) -> tuple[int, int]:
        """[PTTL of the lock (-2 when not held), fencing counter (never below the floor)]."""
        self._check_restart_delay("lock reads")
        counter = self.counter(fence_key)
        return self.pttl(lock_key), counter

    def lock_peek(self, lock_key: bytes) -> list[Reply]:
        """[PTTL (-2 when not held), fencing counter, owner record or None] of one lock."""
        self._check_restart_delay("lock reads")
        fence_key = fence_key_of(lock_key)
        meta_key = meta_key_of(lock_key)
        counter = self.counter(fence_key)
        pttl = self.pttl(lock_key)
        meta = self._string(meta_key) if meta_key is not None and pttl != -2 else None
        return [pttl, counter, meta]

    def lock_list(self, cursor: bytes, prefix: bytes, count: bytes) -> list[Reply]:
        """One page of the held locks whose names start with `prefix`, SCAN-style:
        [next cursor ("0" when done), [[name, pttl, counter, owner record or None], ...]],
        looking at up to `count` keys. Cursors start at "0".

        Keys are visited in byte order from a sorted snapshot taken when an iteration
        starts (O(keys) once), then O(count) per page; a lock present for the whole
        iteration is returned, as SCAN promises."""
        n = _positive(count)
        if n is None:
            raise CommandError("ERR lockd_list: count must be a positive integer")
        self._check_restart_delay("lock reads")
        match = LIST_PREFIX + prefix
        snapshots = self._list_snapshots
        if cursor == b"0" or match not in snapshots:
            if cursor != b"0" and not cursor.startswith(b"@"):
                raise CommandError("ERR lockd_list: invalid cursor")
            snapshots.pop(match, None)
            if len(snapshots) >= LIST_CACHE:
                del snapshots[next(iter(snapshots))]
            snapshots[match] = sorted(self.keyspace.keys_with_prefix(match))
        elif not cursor.startswith(b"@"):
            raise CommandError("ERR lockd_list: invalid cursor")
        keys = snapshots[match]
        start = 0 if cursor == b"0" else bisect.bisect_right(keys, cursor[1:])
        page = keys[start : start + n]
        entries: list[Reply] = []
        for key in page:
            if key.endswith(b"}") and self.keyspace.get(key) is not None:
                entries.append([key[len(LIST_PREFIX) : -1], *self.lock_peek(key)])
        done = start + n >= len(keys)
        if done:
            del snapshots[match]
        return [b"0" if done else b"@" + page[-1], entries]

    def fence_advance(self, fence_key: bytes, token: bytes) -> tuple[int, int]:
        """Counter := T only if counter < T: [accepted 1/0, counter after]."""
        if self.refusing:
            raise self.misconf()
        target = _positive(token)
        if target is None or target > MAX_TOKEN:
            raise CommandError("ERR lockd_fence_advance: token must be an integer in [1, 2^53)")
        current = self.counter(fence_key)
        if current >= target:
            return 0, current
        self._set_counter(fence_key, target)
        if self._events_wanted() and fence_key.startswith(FENCE_PREFIX):
            lock_key = LOCK_KEY_PREFIX + fence_key[len(FENCE_PREFIX) :]
            meta_key = meta_key_of(lock_key)
            record = self._string(meta_key) if meta_key is not None else None
            self._publish_event(b"A", lock_key, target, self.pttl(lock_key), record or b"")
        return 1, target

    def _events_wanted(self) -> bool:
        """Whether anyone may receive `lockd:events` (as in Redis, a publish nobody
        receives does nothing observable, so the engine skips building it)."""
        return EVENTS_CHANNEL in self._subscribers or bool(self._patterns)

    def _publish_event(
        self, kind: bytes, lock_key: bytes, counter: int, pttl_ms: int, record: bytes
    ) -> None:
        """Publish a lock event for watchers (`NodeEvent`) on `lockd:events`."""
        lease = self._string(lock_key)
        digest = hashlib.sha1(lease).hexdigest().encode() if lease is not None else b""
        event = NodeEvent(kind, counter, pttl_ms, digest, lock_key, record)
        self.publish(EVENTS_CHANNEL, encode_event(event))

    def _set_counter(self, fence_key: bytes, value: int) -> None:
        ks = self.keyspace
        ks.check_new_key(fence_key, 8)
        if self.config.unsafe_volatile_fence:
            journal, ks.journal = ks.journal, _unjournalled
            try:
                ks.set(fence_key, value, None, durable=False)
            finally:
                ks.journal = journal
            return
        if self.reservation is not None:
            try:
                self.reservation.cover(value)
            except OSError:
                raise self.misconf() from None
        # No fsync needed even under `always`: the reservation already covers the value.
        ks.set(fence_key, value, None, durable=False)
        # Idle means unchanged: move the counter to the young end of the collection order.
        changed = self._fence_changed
        changed.pop(fence_key, None)
        changed[fence_key] = self.clock.now_ms()

    # -- pub/sub -------------------------------------------------------------------------

    def subscribe(self, channel: bytes, subscriber: Subscriber) -> None:
        """Call `subscriber(channel, message)` for every message published on `channel`."""
        self._subscribers.setdefault(channel, set()).add(subscriber)

    def unsubscribe(self, channel: bytes, subscriber: Subscriber) -> None:
        """Stop delivering `channel` to `subscriber`."""
        subs = self._subscribers.get(channel)
        if subs is not None:
            subs.discard(subscriber)
            if not subs:
                del self._subscribers[channel]

    def psubscribe(self, pattern: bytes, subscriber: PatternSubscriber) -> None:
        """Call `subscriber(pattern, channel, message)` for every message published on a
        channel matching the glob `pattern` (`glob_match`)."""
        self._patterns.setdefault(pattern, set()).add(subscriber)

    def punsubscribe(self, pattern: bytes, subscriber: PatternSubscriber) -> None:
        """Stop delivering `pattern`'s channels to `subscriber`."""
        subs = self._patterns.get(pattern)
        if subs is not None:
            subs.discard(subscriber)
            if not subs:
                del self._patterns[pattern]

    def publish(self, channel: bytes, message: bytes) -> int:
        """Deliver `message` to the channel's subscribers and to those of every matching
        pattern; how many received it (as Redis counts: one per subscription)."""
        subs = self._subscribers.get(channel)
        count = 0
        if subs:
            for subscriber in list(subs):
                subscriber(channel, message)
            count = len(subs)
        if self._patterns:
            for pattern, psubs in list(self._patterns.items()):
                if glob_match(pattern, channel):
                    for psubscriber in list(psubs):
                        psubscriber(pattern, channel, message)
                    count += len(psubs)
        return count

    # -- commands ------------------------------------------------------------------------

    def execute(self, args: list[bytes]) -> Reply:
        """Run one command (name first) and return its reply; errors are returned too."""
        return dispatch(self, args)

    def info(self, section: str = "default") -> str:
        """The INFO text for `section` (default, all, server, persistence, ...)."""
        return info_text(self, section)

    @property
    def uptime_s(self) -> int:
        """Seconds since this engine started."""
        return int(time.time() - self._started_wall)

    @property
    def pid(self) -> int:
        """The process id (for INFO)."""
        return os.getpid()


def _unjournalled(record: bytes, durable: bool) -> None:
    """The journal of `unsafe_volatile_fence` counters: nowhere."""


def _counter_value(value: bytes | int) -> int:
    """A stored counter as an integer (0 when it is not one)."""
    if isinstance(value, int):
        return value
    return int(value) if value.isdigit() else 0


def _positive(raw: bytes) -> int | None:
    """A strictly positive decimal integer without sign, spaces or leading zeros."""
    if not raw or len(raw) > 18 or not raw.isdigit() or raw[0] == 0x30:
        return None
    return int(raw)
