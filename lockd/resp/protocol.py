"""Sans-I/O RESP codec: request parser and reply encoder (servers), reply parser and
command encoder (clients).

The same request parser reads client requests and replays the engine's append-only file,
so there is one definition of a well-formed command; the gateway's node transport reads
replies (RESP2 and RESP3) with `ReplyParser`. Limits follow Redis's defaults where they
matter for safety: a frame that breaks them raises `ProtocolError`, whose text is what
Redis sends (`ERR Protocol error: ...`) before closing the connection.
"""

from __future__ import annotations

from lockd.resp.replies import CommandError, Push, Reply, Status

__all__ = [
    "INCOMPLETE",
    "Incomplete",
    "ProtocolError",
    "ReplyParser",
    "RequestParser",
    "encode",
    "encode_command",
]

MAX_MULTIBULK = 1024 * 1024
MAX_INLINE = 64 * 1024
ARG_OVERHEAD = 48
"""What one parsed argument costs beyond its bytes (a bytes object and a list slot), so
a half-received array of a million empty arguments counts as the ~50 MB it holds."""
DEFAULT_MAX_BULK = 512 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent bytes that are not RESP; the connection must be closed."""


class RequestParser:
    """Incremental parser of commands (arrays of bulk strings, or inline commands).

    Feed bytes with `feed()`, then call `next_command()` until it returns None. A partly
    received array keeps its parsed arguments, so slow peers cost linear time.
    """

    __slots__ = ("_args", "_args_size", "_base", "_buf", "_max_bulk", "_pending", "_pos")

    def __init__(self, max_bulk: int = DEFAULT_MAX_BULK) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._base = 0  # bytes dropped from the front of _buf so far
        self._max_bulk = max_bulk
        self._args: list[bytes] = []
        self._args_size = 0  # total length of _args
        self._pending = 0  # bulk strings still expected in the current array

    def feed(self, data: bytes) -> None:
        """Append received bytes (dropping the consumed ones first, so memory stays bounded)."""
        self._compact()
        self._buf += data

    def buffered(self) -> int:
        """Memory held for commands not yet complete: bytes received and not consumed, plus
        the arguments of a half-received array (for query-buffer limits)."""
        return len(self._buf) - self._pos + self._args_size

    def offset(self) -> int:
        """Bytes consumed since the first feed (while no command is half parsed)."""
        return self._base + self._pos

    def next_command(self) -> list[bytes] | None:
        """The next complete command, or None if more bytes are needed."""
        while True:
            buf = self._buf
            pos = self._pos
            if self._pending == 0:
                if pos >= len(buf):
                    self._compact()
                    return None
                if buf[pos] != 0x2A:  # '*'
                    cmd = self._inline()
                    if cmd is None:
                        return None
                    if not cmd:
                        continue
                    return cmd
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > MAX_INLINE:
                        raise ProtocolError("ERR Protocol error: too big mbulk count string")
                    return None
                count = _parse_int(buf, pos + 1, end)
                if count is None or count > MAX_MULTIBULK:
                    raise ProtocolError("ERR Protocol error: invalid multibulk length")
                self._pos = end + 2
                if count <= 0:
                    continue
                self._pending = count
                self._args = []
                self._args_size = 0
            if not self._bulks():
                return None
            args = self._args
            self._args = []
            self._args_size = 0
            return args

    def _bulks(self) -> bool:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        args = self._args
        while self._pending:
            if pos >= n:
                break
            if buf[pos] != 0x24:  # '$'
                got = chr(buf[pos]) if 32 <= buf[pos] < 127 else "?"
                raise ProtocolError(f"ERR Protocol error: expected '$', got '{got}'")
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if n - pos > MAX_INLINE:
                    raise ProtocolError("ERR Protocol error: too big bulk count string")
                break
            size = _parse_int(buf, pos + 1, end)
            if size is None or size < 0 or size > self._max_bulk:
                raise ProtocolError("ERR Protocol error: invalid bulk length")
            start = end + 2
            if n < start + size + 2:
                break
            if buf[start + size : start + size + 2] != b"\r\n":
                raise ProtocolError("ERR Protocol error: bulk string not terminated by CRLF")
            args.append(bytes(buf[start : start + size]))
            self._args_size += size + ARG_OVERHEAD
            pos = start + size + 2
            self._pending -= 1
        self._pos = pos
        return self._pending == 0

    def _inline(self) -> list[bytes] | None:
        buf = self._buf
        end = buf.find(b"\n", self._pos)
        if end < 0:
            if len(buf) - self._pos > MAX_INLINE:
                raise ProtocolError("ERR Protocol error: too big inline request")
            return None
        line = bytes(buf[self._pos : end]).rstrip(b"\r")
        self._pos = end + 1
        return split_inline(line)

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]  # O(1) for a bytearray's front
            self._base += self._pos
            self._pos = 0


def _parse_int(buf: bytearray, start: int, end: int) -> int | None:
    """Redis's string2ll: "0", or an optional '-' and digits without a leading zero (int64)."""
    text = bytes(buf[start:end])
    if text == b"0":
        return 0
    digits = text[1:] if text.startswith(b"-") else text
    if not digits.isdigit() or digits[0] == 0x30 or len(digits) > 19:
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command like Redis's sdssplitargs (quotes and escapes)."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\x0b\x0c":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("ERR Protocol error: unbalanced quotes in request")
                break
            c = line[i]
            if quote == 0x22:  # inside "..."
                if c == 0x5C and i + 3 < n and line[i + 1] == 0x78 and _is_hex(line[i + 2 : i + 4]):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 0x22:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\x0b\x0c":
                        raise ProtocolError("ERR Protocol error: unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 0x27:  # inside '...'
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    cur.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\x0b\x0c":
                        raise ProtocolError("ERR Protocol error: unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    cur.append(c)
            elif c in b" \t\r\n":  # unlike the blanks skipped above, not \v or \f
                break
            elif c in (0x22, 0x27):
                quote = c
            else:
                cur.append(c)
            i += 1
        args.append(bytes(cur))


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(ch in b"0123456789abcdefABCDEF" for ch in two)


_OK = b"+OK\r\n"
_NIL2 = b"$-1\r\n"
_NIL3 = b"_\r\n"


def encode(reply: Reply, resp3: bool = False) -> bytes:
    """RESP2 (or RESP3) bytes for one reply value."""
    if isinstance(reply, bytes):
        return b"$%d\r\n%b\r\n" % (len(reply), reply)
    if reply is None:
        return _NIL3 if resp3 else _NIL2
    if isinstance(reply, bool):
        return b":1\r\n" if reply else b":0\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, Status):
        return _OK if reply == "OK" else b"+%b\r\n" % _line(reply)
    if isinstance(reply, CommandError):
        return b"-%b\r\n" % _line(str(reply))
    if isinstance(reply, dict):
        head = b"%%%d\r\n" % len(reply) if resp3 else b"*%d\r\n" % (2 * len(reply))
        return head + b"".join(encode(k, resp3) + encode(v, resp3) for k, v in reply.items())
    kind = b">" if resp3 and isinstance(reply, Push) else b"*"
    return b"%b%d\r\n" % (kind, len(reply)) + b"".join(encode(item, resp3) for item in reply)


def encode_command(*args: bytes) -> bytes:
    """A command as a RESP array of bulk strings (what clients send; what the AOF holds)."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def _line(text: str) -> bytes:
    # Simple strings and errors cannot hold CR or LF.
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


# -- replies (what a client reads) ---------------------------------------------------------


class Incomplete:
    """The type of `INCOMPLETE`: no whole reply is buffered yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE = Incomplete()
"""`ReplyParser.next_reply()` when more bytes are needed (None is a valid reply: nil)."""

MAX_REPLY_DEPTH = 64


class ReplyParser:
    """Incremental parser of server replies, RESP2 and RESP3.

    Values are those of `lockd.resp.replies`: `int`, `bytes`, `None`, `Status`,
    `CommandError` (an error reply is a value, not raised), `list`, `dict` and `Push`
    (RESP3 `>`). RESP3 booleans become 1/0, big numbers `int`, doubles their text as
    `bytes`, sets lists; attributes are skipped. A reply that is not whole yet is parsed
    again from its start on the next call, which is cheap for the short replies of lock
    calls; `max_bulk` bounds what one bulk string may claim.
    """

    __slots__ = ("_buf", "_max_bulk", "_pos")

    def __init__(self, max_bulk: int = DEFAULT_MAX_BULK) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_bulk = max_bulk

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self._buf) - self._pos

    def next_reply(self) -> Reply | Incomplete:
        """The next whole reply, or `INCOMPLETE`. Raises `ProtocolError` on bytes that are
        not RESP (the connection cannot be trusted after that)."""
        if self._pos >= len(self._buf):
            return INCOMPLETE
        parsed = self._value(self._pos, 0)
        if parsed is None:
            return INCOMPLETE
        value, self._pos = parsed
        return value

    def _line(self, pos: int) -> tuple[bytes, int] | None:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            if len(self._buf) - pos > MAX_INLINE:
                raise ProtocolError("Protocol error: reply line too long")
            return None
        return bytes(self._buf[pos + 1 : end]), end + 2

    def _value(self, pos: int, depth: int) -> tuple[Reply, int] | None:
        """(value, position after it) of the reply at `pos`, or None if incomplete."""
        if depth > MAX_REPLY_DEPTH:
            raise ProtocolError("Protocol error: replies nested too deep")
        if pos >= len(self._buf):
            return None
        kind = self._buf[pos]
        line = self._line(pos)
        if line is None:
            return None
        text, pos = line
        if kind == 0x3A or kind == 0x28:  # ':' integer, '(' big number
            return _int(text), pos
        if kind == 0x24 or kind == 0x21 or kind == 0x3D:  # '$' bulk, '!' blob error, '=' verbatim
            size = _int(text)
            if size < 0:
                return None, pos
            if size > self._max_bulk:
                raise ProtocolError(f"Protocol error: bulk reply of {size} bytes")
            if len(self._buf) < pos + size + 2:
                return None
            data = bytes(self._buf[pos : pos + size])
            if self._buf[pos + size : pos + size + 2] != b"\r\n":
                raise ProtocolError("Protocol error: bulk reply not terminated by CRLF")
            pos += size + 2
            if kind == 0x21:
                return CommandError(data.decode("utf-8", "replace")), pos
            return (data[4:] if kind == 0x3D else data), pos
        if kind == 0x2B:  # '+'
            return Status(text.decode("utf-8", "replace")), pos
        if kind == 0x2D:  # '-'
            return CommandError(text.decode("utf-8", "replace")), pos
        if kind == 0x2A or kind == 0x7E or kind == 0x3E:  # '*' array, '~' set, '>' push
            count = _int(text)
            if count < 0:
                return None, pos
            items: list[Reply] = Push() if kind == 0x3E else []
            for _ in range(count):
                parsed = self._value(pos, depth + 1)
                if parsed is None:
                    return None
                item, pos = parsed
                items.append(item)
            return items, pos
        if kind == 0x25 or kind == 0x7C:  # '%' map, '|' attribute (skipped)
            mapping: dict[bytes, Reply] = {}
            for _ in range(_int(text)):
                key = self._value(pos, depth + 1)
                if key is None:
                    return None
                value = self._value(key[1], depth + 1)
                if value is None:
                    return None
                k = key[0]
                mapping[k if isinstance(k, bytes) else str(k).encode()] = value[0]
                pos = value[1]
            if kind == 0x7C:
                return self._value(pos, depth)
            return mapping, pos
        if kind == 0x5F:  # '_' null
            return None, pos
        if kind == 0x23:  # '#' boolean
            return int(text == b"t"), pos
        if kind == 0x2C:  # ',' double, kept as its text
            return text, pos
        shown = chr(kind) if 32 <= kind < 127 else f"\\x{kind:02x}"
        raise ProtocolError(f"Protocol error: unknown reply type {shown!r}")


def _int(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"Protocol error: {text[:32]!r} is not an integer") from None
