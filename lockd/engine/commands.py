"""The command table: argument parsing and Redis-compatible replies and error texts.

Handlers take the engine and the full argument list (command name first). Pub/sub
subscription commands live in the RESP server, since they change the connection's mode.
"""

from __future__ import annotations

import errno
import fnmatch
import hmac
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from lockd import __version__
from lockd.engine.clock import WallClock
from lockd.resp.replies import (
    NOT_INTEGER,
    OK,
    OVERFLOW,
    PONG,
    SYNTAX,
    CommandError,
    Reply,
    Status,
)

if TYPE_CHECKING:
    from lockd.engine.engine import Engine

__all__ = ["COMMANDS", "dispatch", "info_text", "parse_int"]

Handler = Callable[["Engine", list[bytes]], Reply]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def parse_int(raw: bytes) -> int | None:
    """Redis's string2ll: optional '-', digits, no leading zeros or '+', within int64."""
    if not raw or len(raw) > 20:
        return None
    digits = raw[1:] if raw[0] == 0x2D else raw
    if not digits.isdigit() or (digits[0] == 0x30 and (len(digits) > 1 or raw[0] == 0x2D)):
        return None
    value = int(raw)
    return value if INT64_MIN <= value <= INT64_MAX else None


def _int_arg(raw: bytes) -> int:
    value = parse_int(raw)
    if value is None:
        raise CommandError(NOT_INTEGER)
    return value


def cmd_ping(engine: Engine, args: list[bytes]) -> Reply:
    if len(args) > 2:  # arity -1 in the command table, but Redis takes at most one message
        raise CommandError("ERR wrong number of arguments for 'ping' command")
    return PONG if len(args) == 1 else args[1]


def cmd_echo(engine: Engine, args: list[bytes]) -> Reply:
    return args[1]


def cmd_get(engine: Engine, args: list[bytes]) -> Reply:
    value = engine.keyspace.get(args[1])
    return value if value is None or isinstance(value, bytes) else b"%d" % value


def cmd_set(engine: Engine, args: list[bytes]) -> Reply:
    key, value = args[1], args[2]
    nx = xx = get = keepttl = False
    unit_opt: bytes | None = None  # EX or PX; repeating the same one is allowed, last wins
    expire = b""
    i = 3
    while i < len(args):
        opt = args[i].upper()
        has_next = i + 1 < len(args)
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            get = True
        elif opt == b"KEEPTTL" and unit_opt is None:
            keepttl = True
        elif opt in (b"EX", b"PX") and has_next and unit_opt in (None, opt) and not keepttl:
            unit_opt, expire = opt, args[i + 1]
            i += 1
        else:
            raise CommandError(SYNTAX)
        i += 1
    # As in Redis, the expire time is validated only once every option parsed.
    ttl_ms: int | None = None
    if unit_opt is not None:
        amount = _int_arg(expire)
        unit = 1000 if unit_opt == b"EX" else 1
        if amount <= 0 or amount > (INT64_MAX - engine.clock.now_ms()) // unit:
            raise CommandError("ERR invalid expire time in 'set' command")
        ttl_ms = amount * unit
    ks = engine.keyspace
    old = ks.get(key)
    reply: Reply = OK
    if get:
        reply = old if old is None or isinstance(old, bytes) else b"%d" % old
    if (nx and old is not None) or (xx and old is None):
        return reply if get else None
    if old is None:
        ks.check_new_key(key, len(value))
    if ttl_ms is not None:
        deadline: int | None = engine.clock.now_ms() + ttl_ms
    elif keepttl:
        deadline = ks.deadline(key)
    else:
        deadline = None
    ks.set(key, value, deadline)
    return reply


def cmd_del(engine: Engine, args: list[bytes]) -> Reply:
    return sum(engine.keyspace.delete(key) for key in args[1:])


def cmd_exists(engine: Engine, args: list[bytes]) -> Reply:
    return sum(engine.keyspace.get(key) is not None for key in args[1:])


def cmd_pexpire(engine: Engine, args: list[bytes]) -> Reply:
    return _expire(engine, args, 1, "pexpire")


def cmd_expire(engine: Engine, args: list[bytes]) -> Reply:
    return _expire(engine, args, 1000, "expire")


def _expire(engine: Engine, args: list[bytes], unit: int, name: str) -> Reply:
    key = args[1]
    flags = {a.upper() for a in args[3:]}
    for arg in args[3:]:
        if arg.upper() not in (b"NX", b"XX", b"GT", b"LT"):
            raise CommandError(f"ERR Unsupported option {_show(arg)}")
    if b"NX" in flags and len(flags) > 1:
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"GT" in flags and b"LT" in flags:
        raise CommandError("ERR GT and LT options at the same time are not compatible")
    amount = _int_arg(args[2])  # parsed after the options, as Redis does
    now = engine.clock.now_ms()
    # Redis's overflow checks: the unit conversion (C division truncates toward zero),
    # then adding the base time. Large negative amounts are fine: they delete the key.
    if not -(-INT64_MIN // unit) <= amount <= INT64_MAX // unit or amount * unit > INT64_MAX - now:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    ks = engine.keyspace
    if ks.get(key) is None:
        return 0
    deadline = now + amount * unit
    current = ks.deadline(key)
    if b"NX" in flags and current is not None:
        return 0
    if b"XX" in flags and current is None:
        return 0
    # A key without a TTL counts as an infinite TTL for GT and LT (Redis's rule).
    if b"GT" in flags and (current is None or deadline <= current):
        return 0
    if b"LT" in flags and current is not None and deadline >= current:
        return 0
    if deadline <= now:
        ks.delete(key)
    else:
        ks.set_deadline(key, deadline)
    return 1


def cmd_pttl(engine: Engine, args: list[bytes]) -> Reply:
    return engine.pttl(args[1])


def cmd_ttl(engine: Engine, args: list[bytes]) -> Reply:
    ms = engine.pttl(args[1])
    return ms if ms < 0 else (ms + 500) // 1000


def cmd_persist(engine: Engine, args: list[bytes]) -> Reply:
    ks = engine.keyspace
    if ks.get(args[1]) is None or ks.deadline(args[1]) is None:
        return 0
    ks.set_deadline(args[1], None)
    return 1


def cmd_incr(engine: Engine, args: list[bytes]) -> Reply:
    ks = engine.keyspace
    key = args[1]
    old = ks.get(key)
    if old is None:
        ks.check_new_key(key, 8)
        value = 0
    elif isinstance(old, int):
        value = old
    else:
        parsed = parse_int(old)
        if parsed is None:
            raise CommandError(NOT_INTEGER)
        value = parsed
    if value == INT64_MAX:
        raise CommandError(OVERFLOW)
    ks.set(key, value + 1, ks.deadline(key))
    return value + 1


def cmd_dbsize(engine: Engine, args: list[bytes]) -> Reply:
    return len(engine.keyspace)


def cmd_publish(engine: Engine, args: list[bytes]) -> Reply:
    return engine.publish(args[1], args[2])


def cmd_select(engine: Engine, args: list[bytes]) -> Reply:
    index = _int_arg(args[1])
    if index != 0:
        raise CommandError("ERR DB index is out of range")
    return OK


def cmd_info(engine: Engine, args: list[bytes]) -> Reply:
    section = args[1].decode(errors="replace").lower() if len(args) > 1 else "default"
    return info_text(engine, section).encode()


def cmd_config(engine: Engine, args: list[bytes]) -> Reply:
    sub = args[1].lower()
    if sub == b"get":
        if len(args) < 3:
            raise CommandError("ERR wrong number of arguments for 'config|get' command")
        patterns = [p.decode(errors="replace").lower() for p in args[2:]]
        return {
            name.encode(): value.encode()
            for name, value in config_values(engine).items()
            if any(fnmatch.fnmatchcase(name, p) for p in patterns)
        }
    if sub == b"set":
        name = args[2].decode(errors="replace") if len(args) > 2 else ""
        raise CommandError(
            f"ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
            " (lockd nodes are configured by command-line flags)"
        )
    if sub == b"resetstat":
        return OK
    if sub == b"rewrite":
        raise CommandError("ERR The server is running without a config file")
    raise CommandError(f"ERR unknown subcommand '{_show(args[1])}'. Try CONFIG HELP.")


def config_values(engine: Engine) -> dict[str, str]:
    """The settings CONFIG GET reports (a Redis-compatible subset plus lockd's own)."""
    c = engine.config
    return {
        "port": str(c.port),
        "dir": str(c.dir or ""),
        "appendonly": "yes" if engine.aof is not None else "no",
        "appendfsync": str(c.appendfsync),
        "save": "",
        "maxmemory": str(c.maxmemory),
        "maxmemory-policy": "noeviction",
        "databases": "1",
        "lockd-max-ttl": str(c.max_ttl_ms),
        "lockd-fence-block": str(c.fence_block),
    }


def cmd_fcall(engine: Engine, args: list[bytes]) -> Reply:
    name = args[1].lower()  # Redis looks function names up case-insensitively
    function = FUNCTIONS.get(name)
    if function is None:
        raise CommandError("ERR Function not found")
    numkeys = parse_int(args[2])
    if numkeys is None:
        raise CommandError("ERR Bad number of keys provided")
    if numkeys < 0:
        raise CommandError("ERR Number of keys can't be negative")
    if numkeys > len(args) - 3:
        raise CommandError("ERR Number of keys can't be greater than number of args")
    keys_range, args_range, call = function
    keys, argv = args[3 : 3 + numkeys], args[3 + numkeys :]
    if not (_within(len(keys), keys_range) and _within(len(argv), args_range)):
        raise CommandError(
            f"ERR {name.decode()} takes {_count(keys_range)} keys and {_count(args_range)} "
            f"arguments, got {len(keys)} and {len(argv)}"
        )
    return call(engine, keys, argv)


def cmd_hello(engine: Engine, args: list[bytes]) -> Reply:
    """HELLO [2|3 [AUTH user pass] [SETNAME name]]: the connection switches protocol (and
    authenticates) in the server; this is the reply."""
    if len(args) > 1:
        version = parse_int(args[1])
        if version is None:
            raise CommandError("ERR Protocol version is not an integer or out of range")
        if version not in (2, 3):
            raise CommandError("NOPROTO unsupported protocol version")
        options = args[2:]
        while options:
            option = options[0].lower()
            if option == b"auth" and len(options) >= 3:
                check_password(engine, options[1], options[2])
                options = options[3:]
            elif option == b"setname" and len(options) >= 2:
                options = options[2:]
            else:
                raise CommandError(f"ERR Syntax error in HELLO option '{_show(options[0])}'")
    return {
        b"server": b"lockd", b"version": __version__.encode(),
        b"proto": parse_int(args[1]) if len(args) > 1 else 2,
        b"id": 0, b"mode": b"standalone", b"role": b"master", b"modules": [],
    }  # fmt: skip


def check_password(engine: Engine, user: bytes, password: bytes) -> None:
    """Raise Redis's errors unless `user`/`password` is the configured default user's."""
    expected = engine.config.password
    if expected is None:
        raise CommandError(
            "ERR AUTH <password> called without any password configured for the default "
            "user. Are you sure your configuration is correct?"
        )
    if user != b"default" or not hmac.compare_digest(password, expected.encode()):
        raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")


def cmd_auth(engine: Engine, args: list[bytes]) -> Reply:
    """AUTH [user] password (the server marks the connection authenticated on +OK)."""
    if len(args) not in (2, 3):
        raise CommandError("ERR syntax error")
    user, password = (b"default", args[1]) if len(args) == 2 else (args[1], args[2])
    check_password(engine, user, password)
    return OK


def cmd_client(engine: Engine, args: list[bytes]) -> Reply:
    sub = args[1].lower()
    if sub in (b"setname", b"setinfo"):
        return OK
    if sub == b"getname":
        return None
    if sub == b"id":
        return 0
    raise CommandError(f"ERR unknown subcommand '{_show(args[1])}'. Try CLIENT HELP.")


def cmd_command(engine: Engine, args: list[bytes]) -> Reply:
    if len(args) > 1 and args[1].lower() == b"count":
        return len(COMMANDS)
    return []  # no command docs: redis-cli falls back to plain input


def cmd_bgrewriteaof(engine: Engine, args: list[bytes]) -> Reply:
    if engine.aof is None:
        raise CommandError("ERR this node runs without an append-only file")
    if not engine.rewrite_aof():
        return Status("Background append only file rewriting already in progress")
    return Status("Background append only file rewriting started")


def _float_arg(raw: bytes) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise CommandError("ERR value is not a valid float") from None
    if not math.isfinite(value):
        raise CommandError("ERR value is not a valid float")
    return value


def cmd_lockd_clock(engine: Engine, args: list[bytes]) -> Reply:
    """LOCKD.CLOCK GET | RATE r | JUMP ms | OFFSET ms: clock faults for the Jepsen harness.

    JUMP and OFFSET step the node's *wall* clock, as `date -s` would: on the monotonic
    clock (the default) TTLs do not move; with --unsafe-wall-clock every deadline does.
    RATE makes the clock the TTLs are measured on drift (1.0 = true time). GET replies
    [now ms, wall offset ms, rate, "monotonic" | "wall"]."""
    if not engine.config.clock_control:
        raise CommandError(
            "ERR LOCKD.CLOCK is disabled: it injects clock faults for tests; start the "
            "engine with --enable-clock-control to allow it"
        )
    sub = args[1].upper()
    clock = engine.clock
    wall = isinstance(clock, WallClock)
    if sub == b"GET" and len(args) == 2:
        offset = clock.offset_ms if wall else engine.wall_offset_ms
        source = b"wall" if wall else b"monotonic"
        return [clock.now_ms(), repr(offset).encode(), repr(clock.rate).encode(), source]
    if len(args) != 3 or sub not in (b"RATE", b"JUMP", b"OFFSET"):
        raise CommandError("ERR syntax: LOCKD.CLOCK GET | RATE <r> | JUMP <ms> | OFFSET <ms>")
    value = _float_arg(args[2])
    if sub == b"RATE":
        try:
            clock.set_rate(value)
        except ValueError as exc:
            raise CommandError(f"ERR {exc}") from None
        return OK
    current = clock.offset_ms if wall else engine.wall_offset_ms
    step = value if sub == b"JUMP" else value - current
    if wall:
        clock.jump(step)
    else:
        engine.wall_offset_ms = current + step
    return OK


def cmd_lockd_disk(engine: Engine, args: list[bytes]) -> Reply:
    """LOCKD.DISK FAIL <errno name> [op ...] | HEAL | GET: disk faults for the Jepsen
    harness. FAIL makes the node's AOF and reservation writes (or only the named
    operations: open, write, fsync, truncate, rename) fail with that errno, as a full
    disk (ENOSPC), a dying one (EIO) or an immutable file (EPERM) would."""
    if not engine.config.disk_faults:
        raise CommandError(
            "ERR LOCKD.DISK is disabled: it injects disk faults for tests; start the "
            "engine with --enable-disk-faults to allow it"
        )
    sub = args[1].upper()
    faults = engine.faults
    if sub == b"GET" and len(args) == 2:
        code = faults.errno
        name = errno.errorcode.get(code, "") if code else ""
        return [name.encode(), (engine.disk_error or "").encode()]
    if sub == b"HEAL" and len(args) == 2:
        faults.heal()
        return OK
    if sub == b"FAIL" and len(args) >= 3:
        code = getattr(errno, args[2].decode(errors="replace").upper(), None)
        if not isinstance(code, int):
            raise CommandError(f"ERR unknown errno name '{_show(args[2])}'")
        ops = [a.decode(errors="replace").lower() for a in args[3:]] or None
        try:
            faults.fail(code, ops)
        except ValueError as exc:
            raise CommandError(f"ERR {exc}") from None
        return OK
    raise CommandError("ERR syntax: LOCKD.DISK FAIL <errno> [op ...] | HEAL | GET")


Arity = tuple[int, int | None]
"""(least, most) keys or arguments a function takes; most None: no upper bound."""


def _within(n: int, arity: Arity) -> bool:
    return arity[0] <= n and (arity[1] is None or n <= arity[1])


def _count(arity: Arity) -> str:
    """How the arity error names an arity: "2", "2 or 3", "1 or more" (as the Lua library)."""
    least, most = arity
    if most is None:
        return f"{least} or more"
    return str(least) if least == most else f"{least} or {most}"


FUNCTIONS: dict[bytes, tuple[Arity, Arity, Callable[[Engine, list[bytes], list[bytes]], Reply]]] = {
    b"lockd_acquire": (
        (2, 2),
        (2, 3),
        lambda e, k, a: list(e.lock_acquire(k[0], k[1], a[0], a[1], a[2] if len(a) > 2 else None)),
    ),
    b"lockd_release": ((1, 1), (1, 1), lambda e, k, a: e.lock_release(k[0], a[0])),
    b"lockd_extend": (
        (1, 1),
        (2, 3),
        lambda e, k, a: e.lock_extend(k[0], a[0], a[1], a[2] if len(a) > 2 else None),
    ),
    b"lockd_fence_advance": ((1, 1), (1, 1), lambda e, k, a: list(e.fence_advance(k[0], a[0]))),
    b"lockd_describe": ((2, 2), (0, 0), lambda e, k, a: list(e.lock_describe(k[0], k[1]))),
    b"lockd_force_release": ((1, 1), (0, 0), lambda e, k, a: list(e.lock_force_release(k[0]))),
    b"lockd_peek": ((1, None), (0, 0), lambda e, k, a: [e.lock_peek(key) for key in k]),
    b"lockd_list": ((0, 0), (3, 3), lambda e, k, a: e.lock_list(a[0], a[1], a[2])),
}
"""Native versions of the Lua library's functions: (keys, arguments, implementation)."""

# name -> (handler, arity); arity as in Redis: exact if positive, minimum if negative.
COMMANDS: dict[bytes, tuple[Handler, int]] = {
    b"ping": (cmd_ping, -1),
    b"echo": (cmd_echo, 2),
    b"get": (cmd_get, 2),
    b"set": (cmd_set, -3),
    b"del": (cmd_del, -2),
    b"exists": (cmd_exists, -2),
    b"pexpire": (cmd_pexpire, -3),
    b"expire": (cmd_expire, -3),
    b"pttl": (cmd_pttl, 2),
    b"ttl": (cmd_ttl, 2),
    b"persist": (cmd_persist, 2),
    b"incr": (cmd_incr, 2),
    b"dbsize": (cmd_dbsize, 1),
    b"publish": (cmd_publish, 3),
    b"select": (cmd_select, 2),
    b"info": (cmd_info, -1),
    b"config": (cmd_config, -2),
    b"fcall": (cmd_fcall, -3),
    b"hello": (cmd_hello, -1),
    b"auth": (cmd_auth, -2),
    b"client": (cmd_client, -2),
    b"command": (cmd_command, -1),
    b"bgrewriteaof": (cmd_bgrewriteaof, 1),
    b"lockd.clock": (cmd_lockd_clock, -2),
    b"lockd.disk": (cmd_lockd_disk, -2),
}

WRITE_COMMANDS = frozenset(
    {b"set", b"del", b"pexpire", b"expire", b"persist", b"incr", b"fcall", b"bgrewriteaof"}
)
"""Commands refused after a disk error (PING too, as in Redis, so health checks see it)."""


def _show(arg: bytes) -> str:
    return arg.decode(errors="replace")


def dispatch(engine: Engine, args: list[bytes]) -> Reply:
    """Run one command; errors come back as `CommandError` values, not exceptions."""
    name = args[0].lower()
    entry = COMMANDS.get(name)
    if entry is None:
        # Redis shows the arguments until their quoted text reaches 128 bytes in total.
        shown = b""
        for arg in args[1:]:
            if len(shown) >= 128:
                break
            shown += b"'%b' " % arg[: 128 - len(shown)]
        return CommandError(
            f"ERR unknown command '{_show(args[0][:128])}', "
            f"with args beginning with: {_show(shown)}"
        )
    handler, arity = entry
    if (arity > 0 and len(args) != arity) or len(args) < -arity:
        return CommandError(f"ERR wrong number of arguments for '{_show(name)}' command")
    if (name in WRITE_COMMANDS or name == b"ping") and engine.disk_error is not None:
        return engine.misconf()
    try:
        return handler(engine, args)
    except CommandError as exc:
        return exc


def info_text(engine: Engine, section: str) -> str:
    """INFO output: server, clients, memory, persistence, stats, keyspace and lockd."""
    c = engine.config
    ks = engine.keyspace
    aof = engine.aof
    sections: dict[str, dict[str, object]] = {
        "server": {
            "redis_version": "7.0.0",
            "lockd_version": __version__,
            "redis_mode": "standalone",
            "process_id": engine.pid,
            "run_id": engine.run_id,
            "tcp_port": c.port,
            "uptime_in_seconds": engine.uptime_s,
            "uptime_in_days": engine.uptime_s // 86400,
        },
        "memory": {
            "used_memory": ks.used_memory,
            "maxmemory": c.maxmemory,
            "maxmemory_policy": "noeviction",
        },
        "persistence": {
            "loading": 0,
            "aof_enabled": int(aof is not None),
            "aof_rewrite_in_progress": int(aof is not None and aof.rewriting),
            "aof_rewrites": aof.rewrites if aof else 0,
            "aof_last_bgrewrite_status": "ok" if aof is None or aof.last_rewrite_ok else "err",
            "aof_current_size": aof.size if aof else 0,
            "aof_base_size": aof.base_size if aof else 0,
            "aof_fsyncs": aof.fsyncs if aof else 0,
            "aof_last_write_status": "ok" if aof is None or aof.error is None else "err",
            "aof_rewrite_failures": aof.rewrite_failures if aof else 0,
            "appendfsync": str(c.appendfsync),
        },
        "stats": {"expired_keys": ks.expired_keys},
        "keyspace": (
            {"db0": f"keys={len(ks)},expires={ks.volatile_count},avg_ttl=0"} if len(ks) else {}
        ),
        "lockd": {
            "run_id": engine.run_id,
            "uptime_in_seconds": engine.uptime_s,
            "restart_delay_remaining_ms": engine.restart_delay_remaining_ms(),
            "restart_delay_reason": engine.restart_reason,
            "max_ttl_ms": c.max_ttl_ms,
            "fence_floor": engine.fence_floor,
            "fence_reserved": engine.reservation.reserved if engine.reservation else 0,
            "fence_reservation_writes": engine.reservation.writes if engine.reservation else 0,
            "fence_counters": engine.fence_counters,
            "fence_counters_collected": engine.fences_collected,
            "writable": int(engine.disk_error is None),
            "disk_error": engine.disk_error or "",
            "clock_rate": engine.clock.rate,
            "clock_offset_ms": engine.clock.offset_ms,
        },
    }
    if section in ("default", "all", "everything"):
        chosen = list(sections)
    else:
        chosen = [section] if section in sections else []
    out = []
    for name in chosen:
        lines = [f"# {name.capitalize()}"]
        lines += [f"{k}:{v}" for k, v in sections[name].items()]
        out.append("\r\n".join(lines))
    return "\r\n\r\n".join(out) + ("\r\n" if out else "")
