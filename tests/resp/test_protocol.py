"""Unit tests of the sans-I/O RESP parser and encoder (lockd/resp/protocol.py).

Expected inline splits and error texts were checked against redis-server 7.0 over a raw
socket; where lockd deliberately differs from Redis the test says so.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from lockd.resp.protocol import (
    ARG_OVERHEAD,
    DEFAULT_MAX_BULK,
    INCOMPLETE,
    MAX_INLINE,
    MAX_MULTIBULK,
    MAX_REPLY_DEPTH,
    ProtocolError,
    ReplyParser,
    RequestParser,
    encode,
    encode_command,
)
from lockd.resp.replies import OK, PONG, CommandError, Push, Status


def parse(data: bytes, max_bulk: int = DEFAULT_MAX_BULK) -> list[list[bytes]]:
    """Every command in `data`, fed at once."""
    return parse_chunks([data], max_bulk)


def parse_chunks(chunks: list[bytes], max_bulk: int = DEFAULT_MAX_BULK) -> list[list[bytes]]:
    """Every command in `chunks`, fed one by one, draining after each."""
    parser = RequestParser(max_bulk)
    out: list[list[bytes]] = []
    for chunk in chunks:
        parser.feed(chunk)
        while (cmd := parser.next_command()) is not None:
            out.append(cmd)
    return out


def protocol_error(data: bytes, max_bulk: int = DEFAULT_MAX_BULK) -> str:
    """The ProtocolError text `data` raises (fed at once)."""
    with pytest.raises(ProtocolError) as info:
        parse(data, max_bulk)
    return str(info.value)


# -- arrays ------------------------------------------------------------------------------


def test_array_of_bulk_strings() -> None:
    assert parse(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n") == [[b"SET", b"k", b"value"]]


def test_bulk_strings_are_binary_safe() -> None:
    payload = bytes(range(256)) + b"\r\n*1\r\n$4\r\n"
    data = encode_command(b"SET", b"k\r\n", payload, b"")
    assert parse(data) == [[b"SET", b"k\r\n", payload, b""]]


def test_array_of_one_empty_bulk() -> None:
    assert parse(b"*1\r\n$0\r\n\r\n") == [[b""]]


def test_many_arguments() -> None:
    args = [b"%d" % i for i in range(5000)]
    assert parse(encode_command(*args)) == [args]


def test_incomplete_array_waits_for_more() -> None:
    parser = RequestParser()
    parser.feed(b"*2\r\n$4\r\nECHO\r\n$5\r\nhel")
    assert parser.next_command() is None
    assert parser.next_command() is None
    parser.feed(b"lo\r\n")
    assert parser.next_command() == [b"ECHO", b"hello"]
    assert parser.next_command() is None


def test_bulk_waits_for_its_crlf() -> None:
    parser = RequestParser()
    parser.feed(b"*1\r\n$4\r\nPING")
    assert parser.next_command() is None
    parser.feed(b"\r")
    assert parser.next_command() is None
    parser.feed(b"\n")
    assert parser.next_command() == [b"PING"]


@pytest.mark.parametrize("count", [b"0", b"-1", b"-5"])
def test_empty_or_negative_multibulk_is_skipped(count: bytes) -> None:
    # Redis: `ll <= 0` means no command, and the connection goes on.
    data = b"*" + count + b"\r\n*1\r\n$4\r\nPING\r\n"
    assert parse(data) == [[b"PING"]]


def test_only_skipped_frames_yield_nothing() -> None:
    parser = RequestParser()
    parser.feed(b"*0\r\n\r\n*-1\r\n\n   \r\n")
    assert parser.next_command() is None
    assert parser.buffered() == 0
    assert parser.offset() == len(b"*0\r\n\r\n*-1\r\n\n   \r\n")


def test_max_multibulk_count_is_accepted() -> None:
    parser = RequestParser()
    parser.feed(b"*%d\r\n$1\r\na\r\n" % MAX_MULTIBULK)
    assert parser.next_command() is None  # waiting for the other arguments


def test_bulk_of_exactly_max_bulk_is_accepted() -> None:
    assert parse(b"*1\r\n$10\r\n0123456789\r\n", max_bulk=10) == [[b"0123456789"]]


# -- inline commands ---------------------------------------------------------------------

# (line, arguments); every row was checked against redis-server 7.0 (sdssplitargs).
INLINE_CASES = [
    (b"PING", [b"PING"]),
    (b"set key value", [b"set", b"key", b"value"]),
    (b"  set \t key   value  ", [b"set", b"key", b"value"]),
    (b"", []),
    (b"   \t ", []),
    (b'set k "hello world"', [b"set", b"k", b"hello world"]),
    (b"set k 'hello world'", [b"set", b"k", b"hello world"]),
    (b'echo ""', [b"echo", b""]),
    (b"echo ''", [b"echo", b""]),
    (b'echo "a\\nb\\r\\t\\b\\a"', [b"echo", b"a\nb\r\t\b\x07"]),
    (b'echo "a\\x41\\x7a\\xff"', [b"echo", b"aAz\xff"]),
    (b'echo "\\x4"', [b"echo", b"x4"]),  # not two hex digits: a plain escaped 'x'
    (b'echo "\\xZZ"', [b"echo", b"xZZ"]),
    (b'echo "a\\"b"', [b"echo", b'a"b']),
    (b'echo "a\\\\b"', [b"echo", b"a\\b"]),
    (b'echo "a\\qb"', [b"echo", b"aqb"]),  # unknown escape: the character itself
    (b"echo 'a\\'b'", [b"echo", b"a'b"]),
    (b"echo 'a\\nb'", [b"echo", b"a\\nb"]),  # no escapes inside single quotes
    (b"echo 'a\"b'", [b"echo", b'a"b']),
    (b'echo "a\'b"', [b"echo", b"a'b"]),
    (b'echo a"b c"', [b"echo", b"ab c"]),  # a quote may start inside a word
    (b'echo "a"\x0b', [b"echo", b"a"]),  # closing quote followed by a blank (\v)
    (b"echo a\x0bb", [b"echo", b"a\x0bb"]),  # \v and \f do not end a word ...
    (b"echo a\x0cb", [b"echo", b"a\x0cb"]),
    (b"\x0b\x0cecho ab", [b"echo", b"ab"]),  # ... but are skipped between words
    (b"echo \xc3\xa9\xff", [b"echo", b"\xc3\xa9\xff"]),
]


@pytest.mark.parametrize(("line", "expected"), INLINE_CASES)
def test_inline_command_like_sdssplitargs(line: bytes, expected: list[bytes]) -> None:
    commands = parse(line + b"\r\nPING\r\n")
    assert commands == ([expected] if expected else []) + [[b"PING"]]


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r\r\n"])
def test_inline_line_endings(ending: bytes) -> None:
    assert parse(b"echo hi" + ending + b"echo 'x y'" + ending) == [
        [b"echo", b"hi"],
        [b"echo", b"x y"],
    ]


def test_inline_waits_for_newline() -> None:
    parser = RequestParser()
    parser.feed(b"set k 'v")
    assert parser.next_command() is None
    parser.feed(b"'\r")
    assert parser.next_command() is None
    parser.feed(b"\n")
    assert parser.next_command() == [b"set", b"k", b"v"]


def test_inline_of_exactly_max_inline_bytes_waits() -> None:
    parser = RequestParser()
    parser.feed(b"a" * MAX_INLINE)
    assert parser.next_command() is None
    parser.feed(b"\n")
    assert parser.next_command() == [b"a" * MAX_INLINE]


# -- streams: pipelining and arbitrary chunking ------------------------------------------

STREAM = (
    b"*1\r\n$4\r\nPING\r\n"
    b"set k 'a b'\r\n"
    b"*0\r\n"
    b"\r\n"
    b"*3\r\n$3\r\nSET\r\n$2\r\nk2\r\n$6\r\nv\r\n\x00\xff!\r\n"
    b"*-1\r\n"
    b'echo "\\x41\\n"\n'
    b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"
    b"   \n"
    b"*1\r\n$4\r\nQUIT\r\n"
)
STREAM_COMMANDS = [
    [b"PING"],
    [b"set", b"k", b"a b"],
    [b"SET", b"k2", b"v\r\n\x00\xff!"],
    [b"echo", b"A\n"],
    [b"ECHO", b""],
    [b"QUIT"],
]


def test_pipelined_commands_in_one_feed() -> None:
    assert parse(STREAM) == STREAM_COMMANDS


def test_pipelined_commands_one_byte_at_a_time() -> None:
    assert parse_chunks([STREAM[i : i + 1] for i in range(len(STREAM))]) == STREAM_COMMANDS


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_stream_split_at_every_byte_boundary(split: int) -> None:
    assert parse_chunks([STREAM[:split], STREAM[split:]]) == STREAM_COMMANDS


def test_stream_split_at_every_pair_of_boundaries() -> None:
    for i in range(1, len(STREAM)):
        for j in range(i, len(STREAM)):
            chunks = [STREAM[:i], STREAM[i:j], STREAM[j:]]
            assert parse_chunks(chunks) == STREAM_COMMANDS, (i, j)


def test_offset_counts_consumed_bytes_across_feeds() -> None:
    first = encode_command(b"SET", b"k", b"v")
    second = b"PING\r\n"
    parser = RequestParser()
    parser.feed(first + second[:2])
    assert parser.next_command() == [b"SET", b"k", b"v"]
    assert parser.offset() == len(first)
    assert parser.next_command() is None
    parser.feed(second[2:])
    assert parser.next_command() == [b"PING"]
    assert parser.offset() == len(first) + len(second)
    parser.feed(first)
    assert parser.next_command() == [b"SET", b"k", b"v"]
    assert parser.offset() == 2 * len(first) + len(second)


def test_buffered_counts_unconsumed_bytes_and_partial_arguments() -> None:
    parser = RequestParser()
    assert parser.buffered() == 0
    parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n01234")
    assert parser.next_command() is None
    # "SET" and "k" are parsed and held (each with its object overhead); "$10\r\n01234"
    # is still raw.
    assert parser.buffered() == (3 + ARG_OVERHEAD) + (1 + ARG_OVERHEAD) + len(b"$10\r\n01234")
    parser.feed(b"56789\r\nPI")
    assert parser.next_command() == [b"SET", b"k", b"0123456789"]
    assert parser.buffered() == 2
    assert parser.next_command() is None
    parser.feed(b"NG\r\n")
    assert parser.next_command() == [b"PING"]
    assert parser.buffered() == 0


def test_memory_stays_bounded_when_every_feed_ends_mid_command() -> None:
    # A pipelining client whose reads never end on a command boundary: the consumed
    # bytes must still be released (they used to pile up for the connection's lifetime).
    cmd = encode_command(b"SET", b"key", b"value")
    parser = RequestParser()
    parser.feed(cmd[:10])
    chunk = cmd[10:] + cmd[:10]
    count = 0
    tracemalloc.start()
    try:
        for _ in range(5_000):
            parser.feed(chunk)
            while parser.next_command() is not None:
                count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 5_000
    assert 0 < parser.buffered() <= 10  # the residue (minus its parsed array header)
    assert peak < 64 * 1024, f"parser kept {peak} bytes for a {len(cmd)}-byte residue"


def test_slowly_received_huge_array_costs_linear_time() -> None:
    # A server calls buffered() after every read; with a 200k-argument array arriving in
    # 1 KiB reads, that must not rescan every argument parsed so far (quadratic).
    n = 200_000
    data = b"*%d\r\n" % n + b"$1\r\na\r\n" * n

    def parse_in(chunk: int) -> float:
        parser = RequestParser()
        start = time.perf_counter()
        got = None
        for i in range(0, len(data), chunk):
            parser.feed(data[i : i + chunk])
            got = parser.next_command()
            parser.buffered()
        assert got is not None and len(got) == n
        return time.perf_counter() - start

    bound = 5 * parse_in(len(data)) + 0.5  # quadratic: more than 10 times slower
    assert min(parse_in(1024), parse_in(1024)) < bound  # best of two: load spikes happen


# -- protocol errors ---------------------------------------------------------------------

ERR = "ERR Protocol error: "


@pytest.mark.parametrize(
    "count",
    [
        *(b"abc", b"", b"+1", b" 1", b"1 ", b"01", b"-0", b"1_0", b"1.0", b"0x1", b"\xd9\xa1"),
        *(b"%d" % (MAX_MULTIBULK + 1), b"2147483648", b"9223372036854775808"),
    ],
)
def test_invalid_multibulk_length(count: bytes) -> None:
    assert protocol_error(b"*" + count + b"\r\n") == ERR + "invalid multibulk length"


@pytest.mark.parametrize(
    "length",
    [b"abc", b"", b"-1", b"-5", b"+4", b" 4", b"04", b"4_", b"-0", b"9223372036854775808"],
)
def test_invalid_bulk_length(length: bytes) -> None:
    data = b"*1\r\n$" + length + b"\r\nPING\r\n"
    assert protocol_error(data) == ERR + "invalid bulk length"


def test_bulk_over_max_bulk_is_an_invalid_bulk_length() -> None:
    assert protocol_error(b"*1\r\n$11\r\n", max_bulk=10) == ERR + "invalid bulk length"
    data = b"*1\r\n$%d\r\n" % (DEFAULT_MAX_BULK + 1)
    assert protocol_error(data) == ERR + "invalid bulk length"


def test_bulk_over_max_bulk_fails_before_its_data_arrives() -> None:
    parser = RequestParser(max_bulk=1000)
    parser.feed(b"*2\r\n$3\r\nGET\r\n$1001\r\n")
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parser.next_command()


@pytest.mark.parametrize(("byte", "shown"), [(b"x", "x"), (b":", ":"), (b"*", "*"), (b" ", " ")])
def test_expected_dollar(byte: bytes, shown: str) -> None:
    data = b"*2\r\n$4\r\nECHO\r\n" + byte + b"1\r\na\r\n"
    assert protocol_error(data) == ERR + f"expected '$', got '{shown}'"


@pytest.mark.parametrize("byte", [b"\x00", b"\x01", b"\r", b"\x7f", b"\xff"])
def test_expected_dollar_hides_unprintable_bytes(byte: bytes) -> None:
    # Redis echoes the raw byte; lockd shows '?' so the error line stays clean text.
    assert protocol_error(b"*1\r\n" + byte + b"4\r\n") == ERR + "expected '$', got '?'"


def test_too_big_mbulk_count_string() -> None:
    parser = RequestParser()
    parser.feed(b"*" + b"1" * (MAX_INLINE - 1))
    assert parser.next_command() is None  # not too big yet: might still end in CRLF
    parser.feed(b"11")
    with pytest.raises(ProtocolError) as info:
        parser.next_command()
    assert str(info.value) == ERR + "too big mbulk count string"


def test_too_big_bulk_count_string() -> None:
    data = b"*1\r\n$" + b"1" * (MAX_INLINE + 1)
    assert protocol_error(data) == ERR + "too big bulk count string"


def test_too_big_inline_request() -> None:
    assert protocol_error(b"a" * (MAX_INLINE + 1)) == ERR + "too big inline request"


def test_too_big_inline_request_across_feeds() -> None:
    parser = RequestParser()
    for _ in range(MAX_INLINE // 1000):
        parser.feed(b"x" * 1000)
        assert parser.next_command() is None
    parser.feed(b"x" * 1000)
    with pytest.raises(ProtocolError, match="too big inline request"):
        parser.next_command()


@pytest.mark.parametrize(
    "line",
    [
        b'echo "abc',
        b"echo 'abc",
        b'echo "a"b',
        b"echo 'a'b",
        b'echo "abc\\"',
        b"echo 'abc\\'",
        b'echo "abc\\',
        b'"',
        b"'",
        b'echo a"b c"d',
    ],
)
def test_unbalanced_quotes(line: bytes) -> None:
    assert protocol_error(line + b"\r\n") == ERR + "unbalanced quotes in request"


@pytest.mark.parametrize("tail", [b"xx", b"\rx", b"x\n", b"\n\r"])
def test_bulk_not_terminated_by_crlf(tail: bytes) -> None:
    # Redis 7.0 silently skips the two bytes after a bulk; lockd refuses the frame.
    data = b"*1\r\n$4\r\nPING" + tail + b"*1\r\n$4\r\nPING\r\n"
    assert protocol_error(data) == ERR + "bulk string not terminated by CRLF"


def test_commands_before_a_bad_frame_are_returned_first() -> None:
    parser = RequestParser()
    parser.feed(b"PING\r\n*1\r\n$4\r\nECHO\r\n*x\r\n")
    assert parser.next_command() == [b"PING"]
    assert parser.next_command() == [b"ECHO"]
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        parser.next_command()


def test_protocol_error_is_an_exception_not_a_command_error() -> None:
    assert not issubclass(ProtocolError, CommandError)


# -- encoder -----------------------------------------------------------------------------


@pytest.mark.parametrize("resp3", [False, True])
def test_encode_scalars(resp3: bool) -> None:
    assert encode(b"hello", resp3) == b"$5\r\nhello\r\n"
    assert encode(b"", resp3) == b"$0\r\n\r\n"
    assert encode(b"a\r\nb", resp3) == b"$4\r\na\r\nb\r\n"
    assert encode(0, resp3) == b":0\r\n"
    assert encode(-42, resp3) == b":-42\r\n"
    assert encode(2**63 - 1, resp3) == b":9223372036854775807\r\n"
    assert encode(True, resp3) == b":1\r\n"
    assert encode(False, resp3) == b":0\r\n"
    assert encode(OK, resp3) == b"+OK\r\n"
    assert encode(PONG, resp3) == b"+PONG\r\n"
    assert encode(Status("Background saving started"), resp3) == b"+Background saving started\r\n"


def test_encode_nil() -> None:
    assert encode(None) == b"$-1\r\n"
    assert encode(None, resp3=False) == b"$-1\r\n"
    assert encode(None, resp3=True) == b"_\r\n"
    assert encode([None, b"x"], resp3=False) == b"*2\r\n$-1\r\n$1\r\nx\r\n"
    assert encode([None, b"x"], resp3=True) == b"*2\r\n_\r\n$1\r\nx\r\n"


@pytest.mark.parametrize("resp3", [False, True])
def test_encode_arrays(resp3: bool) -> None:
    assert encode([], resp3) == b"*0\r\n"
    assert encode([1, b"a", [2, [b""]]], resp3) == (
        b"*3\r\n:1\r\n$1\r\na\r\n*2\r\n:2\r\n*1\r\n$0\r\n\r\n"
    )


def test_encode_map() -> None:
    reply = {b"proto": 3, b"modules": [], b"name": None}
    assert encode(reply, resp3=False) == (
        b"*6\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n$4\r\nname\r\n$-1\r\n"
    )
    assert encode(reply, resp3=True) == (
        b"%3\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n$4\r\nname\r\n_\r\n"
    )
    assert encode({}, resp3=False) == b"*0\r\n"
    assert encode({}, resp3=True) == b"%0\r\n"


def test_encode_push() -> None:
    message = Push([b"message", b"lockd:released", b"lock:{a}"])
    body = b"$7\r\nmessage\r\n$14\r\nlockd:released\r\n$8\r\nlock:{a}\r\n"
    assert encode(message, resp3=False) == b"*3\r\n" + body
    assert encode(message, resp3=True) == b">3\r\n" + body
    unsubscribed = Push([b"unsubscribe", None, 0])
    assert encode(unsubscribed, resp3=False) == b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
    assert encode(unsubscribed, resp3=True) == b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"


@pytest.mark.parametrize("resp3", [False, True])
def test_encode_errors(resp3: bool) -> None:
    assert encode(CommandError("ERR syntax error"), resp3) == b"-ERR syntax error\r\n"
    assert encode(CommandError("OOM no\r\nroom\r"), resp3) == b"-OOM no  room \r\n"
    assert encode(CommandError("ERR bad \xe9"), resp3) == b"-ERR bad \xc3\xa9\r\n"
    assert encode([CommandError("ERR in\narray")], resp3) == b"*1\r\n-ERR in array\r\n"


def test_encode_status_sanitises_cr_lf() -> None:
    assert encode(Status("a\r\nb")) == b"+a  b\r\n"


def test_encode_command_round_trips() -> None:
    args = [b"SET", b"k\r\n", b"", bytes(range(256))]
    data = encode_command(*args)
    assert data.startswith(b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n$256\r\n")
    assert parse(data * 3) == [args] * 3


# -- replies (the gateway's node transport reads them) -----------------------------------


def replies(*chunks: bytes) -> list[object]:
    """Every reply in `chunks`, fed one by one, draining after each."""
    parser = ReplyParser()
    out: list[object] = []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not INCOMPLETE:
            out.append(reply)
    assert parser.buffered() == 0
    return out


RESP2_REPLIES: list[tuple[bytes, object]] = [
    (b":1\r\n", 1),
    (b":-42\r\n", -42),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"+OK\r\n", OK),
    (b"*0\r\n", []),
    (b"*2\r\n:1\r\n:7\r\n", [1, 7]),  # lockd_acquire / lockd_fence_advance
    (b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n", [b"message", b"c", b"hi"]),
    (b"*2\r\n*1\r\n$1\r\na\r\n$-1\r\n", [[b"a"], None]),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # binary-safe
]

RESP3_REPLIES: list[tuple[bytes, object]] = [
    (b"_\r\n", None),
    (b"#t\r\n", 1),
    (b"#f\r\n", 0),
    (b",3.25\r\n", b"3.25"),
    (b"(12345678901234567890\r\n", 12345678901234567890),
    (b"=8\r\ntxt:abcd\r\n", b"abcd"),
    (b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n*1\r\n:2\r\n", {b"a": 1, b"b": [2]}),
    (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
    (b"|1\r\n+ttl\r\n:3\r\n:9\r\n", 9),  # the attribute is skipped
]


@pytest.mark.parametrize(("data", "value"), RESP2_REPLIES + RESP3_REPLIES)
def test_reply_values(data: bytes, value: object) -> None:
    assert replies(data) == [value]
    # Byte by byte, a reply is returned only once whole.
    assert replies(*(data[i : i + 1] for i in range(len(data)))) == [value]


def test_reply_types_are_the_shared_reply_values() -> None:
    status, error, blob_error, push = replies(
        b"+QUEUED\r\n", b"-RESTARTDELAY 120 ms left\r\n", b"!9\r\nERR boom!\r\n",
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
    )  # fmt: skip
    assert isinstance(status, Status) and status == "QUEUED"
    assert isinstance(error, CommandError) and error.code == "RESTARTDELAY"
    assert isinstance(blob_error, CommandError) and str(blob_error) == "ERR boom!"
    assert isinstance(push, Push) and push == [b"message", b"c", b"m"]


def test_pipelined_replies_in_one_chunk_come_in_order() -> None:
    data = b"".join(d for d, _ in RESP2_REPLIES) * 50
    assert replies(data) == [v for _, v in RESP2_REPLIES] * 50


def test_encoded_replies_parse_back() -> None:
    values = [1, b"x", None, OK, PONG, [1, [b"a", None]], CommandError("ERR nope")]
    for resp3 in (False, True):
        got = replies(b"".join(encode(v, resp3) for v in values))
        assert [str(g) if isinstance(g, CommandError) else g for g in got] == [
            str(v) if isinstance(v, CommandError) else v for v in values
        ]
    assert replies(encode({b"k": 1, b"j": b"v"}, resp3=True)) == [{b"k": 1, b"j": b"v"}]


@pytest.mark.parametrize(
    "data",
    [
        b"?1\r\n",  # unknown type
        b":12x\r\n",  # not an integer
        b"$3\r\nabcde\r\n",  # bulk longer than declared
        b"*1\r\n" * (MAX_REPLY_DEPTH + 2) + b":1\r\n",  # nested too deep
    ],
)
def test_bytes_that_are_not_replies_raise(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        replies(data)


def test_a_bulk_reply_beyond_the_limit_raises_before_it_is_buffered() -> None:
    parser = ReplyParser(max_bulk=10)
    parser.feed(b"$11\r\n")
    with pytest.raises(ProtocolError):
        parser.next_reply()
