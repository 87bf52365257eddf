"""RESP reply values, shared by the engine (which returns them) and the encoder.

Commands return plain Python values: `int`, `bytes` (bulk string), `None` (nil),
`Status` (simple string such as OK), `list` (array), `dict` (map), `Push`, or a
`CommandError` (error reply).
"""

from __future__ import annotations

__all__ = ["OK", "PONG", "CommandError", "Push", "Reply", "Status"]


class Status(str):
    """A RESP simple string (`+OK`)."""

    __slots__ = ()


class CommandError(Exception):
    """An error reply; `str(self)` is the full text, code first (`ERR syntax error`)."""

    @property
    def code(self) -> str:
        """The leading error code, e.g. `ERR`, `WRONGTYPE`, `OOM`, `RESTARTDELAY`."""
        return str(self).split(" ", 1)[0]


class Push(list["Reply"]):
    """An out-of-band message (pub/sub): a RESP3 push, a plain array in RESP2."""


Reply = int | bytes | None | Status | CommandError | list["Reply"] | dict[bytes, "Reply"]
"""A reply; a dict is a RESP3 map (a flat array of pairs in RESP2)."""

OK = Status("OK")
PONG = Status("PONG")

# Redis's error texts, so clients written for Redis understand ours.
SYNTAX = "ERR syntax error"
NOT_INTEGER = "ERR value is not an integer or out of range"
OVERFLOW = "ERR increment or decrement would overflow"
OOM = "OOM command not allowed when used memory > 'maxmemory'."
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
