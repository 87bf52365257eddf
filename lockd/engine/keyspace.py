"""The in-memory keyspace: string values, monotonic deadlines, lazy and active expiry.

Values are `bytes`, or `int` for integers written by INCR and the fencing functions
(Redis's integer encoding). Deadlines are engine-clock milliseconds. Every mutation is
handed to `journal` as an AOF record; expiry is not journalled, because replay drops keys
whose deadline has passed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from lockd.engine.clock import Clock
from lockd.resp.protocol import encode_command
from lockd.resp.replies import OOM, CommandError
from lockd.units import MS

__all__ = ["Journal", "Keyspace", "Value"]

Value = bytes | int
Journal = Callable[[bytes, bool], None]

# Estimated bytes a key costs beyond its key and value bytes (dict slot, object headers);
# a volatile key also holds a deadline. Used for `used_memory` and the maxmemory cap.
KEY_OVERHEAD = 120
VOLATILE_OVERHEAD = 72

SAMPLE_SIZE = 20  # keys sampled per active-expiry round (Redis: 20)
POOL_MAX_AGE_MS = 1000  # how long a sampling pool of volatile keys is reused


def _size(value: Value) -> int:
    return len(value) if isinstance(value, bytes) else 8


def _noop_journal(record: bytes, durable: bool) -> None:
    pass


# Hand-rolled encodings of the hot AOF records (same bytes as encode_command, faster).
def _set_record(key: bytes, raw: bytes) -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(raw), raw)


def _set_pxat_record(key: bytes, raw: bytes, deadline: int) -> bytes:
    at = b"%d" % deadline
    return b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nPXAT\r\n$%d\r\n%b\r\n" % (
        len(key), key, len(raw), raw, len(at), at,
    )  # fmt: skip


def _pexpireat_record(key: bytes, deadline: int) -> bytes:
    at = b"%d" % deadline
    return b"*3\r\n$9\r\nPEXPIREAT\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(at), at)


def _del_record(key: bytes) -> bytes:
    return b"*2\r\n$3\r\nDEL\r\n$%d\r\n%b\r\n" % (len(key), key)


class Keyspace:
    """One database of string keys with TTLs, measured on an injectable clock."""

    def __init__(self, clock: Clock, maxmemory: int = 0, journal: Journal | None = None) -> None:
        self.clock = clock
        self.maxmemory = maxmemory
        self.journal: Journal = journal or _noop_journal
        self._data: dict[bytes, Value] = {}
        self._expires: dict[bytes, int] = {}
        self.used_memory = 0
        self.expired_keys = 0
        self._pool: list[bytes] = []
        self._pool_born = -POOL_MAX_AGE_MS

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: bytes) -> bool:
        """Whether `key` is stored (expired or not)."""
        return key in self._data

    def items_with_prefix(self, prefix: bytes) -> list[tuple[bytes, Value]]:
        """Every stored (key, value) whose key starts with `prefix` (a full scan)."""
        return [(k, v) for k, v in self._data.items() if k.startswith(prefix)]

    @property
    def volatile_count(self) -> int:
        """Keys with a deadline (expired ones not yet reclaimed included)."""
        return len(self._expires)

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: bytes) -> Value | None:
        """The live value of `key`, expiring it first if its deadline passed."""
        value = self._data.get(key)
        if value is None:
            return None
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= self.clock.now_ms():
            self._remove(key)
            self.expired_keys += 1
            return None
        return value

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        """Every stored key starting with `prefix` (expired ones not yet reclaimed too)."""
        return [key for key in self._data if key.startswith(prefix)]

    def deadline(self, key: bytes) -> int | None:
        """The deadline of a key (call `get` first to skip expired keys)."""
        return self._expires.get(key)

    def longest_ttl_ms(self) -> int:
        """The largest remaining TTL of any live key, 0 when none has one."""
        now = self.clock.now_ms()
        return max((d - now for d in self._expires.values()), default=0) if self._expires else 0

    # -- writes --------------------------------------------------------------------------

    def check_new_key(self, key: bytes, value_size: int) -> None:
        """Raise OOM when creating `key` would go over the memory cap (nothing is evicted)."""
        if (
            self.maxmemory
            and self.used_memory + len(key) + value_size + KEY_OVERHEAD > self.maxmemory
            and key not in self._data
        ):
            raise CommandError(OOM)

    def set(self, key: bytes, value: Value, deadline: int | None, durable: bool = True) -> bool:
        """Store `value`; `deadline` None makes the key persistent. True if the key is new."""
        data = self._data
        old = data.get(key)
        if old is None:
            self.used_memory += len(key) + _size(value) + KEY_OVERHEAD
        else:
            self.used_memory += _size(value) - _size(old)
        data[key] = value
        raw = value if isinstance(value, bytes) else b"%d" % value
        if deadline is None:
            if self._expires.pop(key, None) is not None:
                self.used_memory -= VOLATILE_OVERHEAD
            self.journal(_set_record(key, raw), durable)
        else:
            if self._expires.get(key) is None:
                self.used_memory += VOLATILE_OVERHEAD
            self._expires[key] = deadline
            self.journal(_set_pxat_record(key, raw, deadline), durable)
        return old is None

    def set_deadline(self, key: bytes, deadline: int | None) -> None:
        """Change the deadline of an existing key (None removes it)."""
        if deadline is None:
            if self._expires.pop(key, None) is not None:
                self.used_memory -= VOLATILE_OVERHEAD
                self.journal(encode_command(b"PERSIST", key), True)
            return
        if self._expires.get(key) is None:
            self.used_memory += VOLATILE_OVERHEAD
        self._expires[key] = deadline
        self.journal(_pexpireat_record(key, deadline), True)

    def delete(self, key: bytes) -> bool:
        """Remove a key if it is live; True if it was."""
        if self.get(key) is None:
            return False
        self.remove(key)
        return True

    def remove(self, key: bytes, durable: bool = True) -> None:
        """Remove a key that `get` just returned live."""
        self._remove(key)
        self.journal(_del_record(key), durable)

    def _remove(self, key: bytes) -> None:
        value = self._data.pop(key)
        self.used_memory -= len(key) + _size(value) + KEY_OVERHEAD
        if self._expires.pop(key, None) is not None:
            self.used_memory -= VOLATILE_OVERHEAD

    # -- active expiry -------------------------------------------------------------------

    def active_expire_cycle(self, budget_ms: float = 25.0) -> int:
        """Redis's active expiry: sample keys with a TTL, delete the expired ones, and
        repeat while more than a quarter of a sample had expired, within `budget_ms`.

        Samples come from a pool of volatile keys rebuilt at most once a second, so
        writes pay nothing for it. Returns the number of keys expired.
        """
        if not self._expires:
            return 0
        now = self.clock.now_ms()
        # Rebuild a stale pool, and one from the future (the clock was stepped back).
        if not self._pool or not 0 <= now - self._pool_born < POOL_MAX_AGE_MS:
            self._pool = list(self._expires)
            self._pool_born = now
        pool = self._pool
        expires = self._expires
        stop = self.clock.now_ns() + int(budget_ms * MS)
        removed = 0
        while pool:
            expired = 0
            sampled = min(SAMPLE_SIZE, len(pool))
            for _ in range(sampled):
                i = random.randrange(len(pool))
                key = pool[i]
                deadline = expires.get(key)
                if deadline is None or deadline <= now:
                    pool[i] = pool[-1]
                    pool.pop()
                    if deadline is not None:
                        self._remove(key)
                        expired += 1
                    if not pool:
                        break
            removed += expired
            if expired * 4 <= sampled or self.clock.now_ns() >= stop:
                break
        self.expired_keys += removed
        return removed

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self, epoch: bytes) -> Iterator[bytes]:
        """AOF records recreating the current contents (copied now, encoded lazily)."""
        data = dict(self._data)
        expires = dict(self._expires)
        now = self.clock.now_ms()

        def records() -> Iterator[bytes]:
            yield encode_command(b"EPOCH", epoch)
            for key, value in data.items():
                raw = value if isinstance(value, bytes) else b"%d" % value
                deadline = expires.get(key)
                if deadline is None:
                    yield _set_record(key, raw)
                elif deadline > now:
                    yield _set_pxat_record(key, raw, deadline)

        return records()

    def replay(self, records: Iterator[list[bytes]], epoch: bytes) -> int:
        """Apply AOF records; deadlines from another clock epoch are treated as passed.

        Within the epoch, a key is kept while replaying even if its deadline has passed
        (a later PEXPIREAT or PERSIST may have extended it: a renewed lock) and expired
        keys are dropped at the end, as Redis does while loading.
        """
        journal, self.journal = self.journal, _noop_journal
        same_epoch = False
        count = 0
        now = self.clock.now_ms()
        try:
            for rec in records:
                count += 1
                op = rec[0]
                if op == b"SET" and len(rec) == 3:
                    self.set(rec[1], rec[2], None)
                elif op == b"SET" and len(rec) == 5 and rec[3] == b"PXAT":
                    if same_epoch:
                        self.set(rec[1], rec[2], int(rec[4]))
                    elif rec[1] in self._data:
                        self._remove(rec[1])
                elif op == b"PEXPIREAT" and len(rec) == 3:
                    if rec[1] in self._data:
                        if same_epoch:
                            self.set_deadline(rec[1], int(rec[2]))
                        else:
                            self._remove(rec[1])
                elif op == b"PERSIST" and len(rec) == 2:
                    self.set_deadline(rec[1], None)
                elif op == b"DEL" and len(rec) == 2:
                    if rec[1] in self._data:
                        self._remove(rec[1])
                elif op == b"EPOCH" and len(rec) == 2:
                    same_epoch = rec[1] == epoch
                else:
                    raise RuntimeError(f"AOF record {count} is not understood: {rec[:3]!r}")
            for key in [k for k, deadline in self._expires.items() if deadline <= now]:
                self._remove(key)
        finally:
            self.journal = journal
        return count
