"""The store log under damage: flipped bytes, truncation, deletion, repair, upgrade.

The property that matters: after any single corruption, the store either refuses to
start or still knows every acknowledged token, so no write with a token below one it
acknowledged is accepted.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockd.durable import CorruptFile, encode_frame, header_seed
from lockd.repair import repair
from lockd.resp.protocol import encode_command
from lockd.store.fenced import FencedStore
from lockd.store.log import (
    FRAMES,
    HEADER,
    LOG_NAME,
    MARKER_NAME,
    V1_HEADER,
    V2_HEADER,
    StoreLog,
    encode_write,
    read_log,
    repair_store_log,
)
from lockd_client.store import StaleToken
from tests.store.helpers import client

RESOURCES = ("a", "b", "c")


def _record(token: int) -> bytes:
    resource = RESOURCES[token % len(RESOURCES)].encode()
    return encode_command(b"W", resource, b"k", b"value-%d" % token, b"%d" % token)


def _write_log(directory: Path, tokens: int = 50) -> dict[str, int]:
    """One append per write (tokens 1..n over three resources); returns the highest
    token acknowledged per resource."""
    log = StoreLog(directory)
    state = log.open()
    acked: dict[str, int] = {}
    try:
        for token in range(1, tokens + 1):
            resource = RESOURCES[token % len(RESOURCES)]
            record = _record(token)
            log.append([record])
            state.apply(resource, "k", b"value-%d" % token, token, len(record))
            acked[resource] = token
    finally:
        log.close()
    return acked


def _open(directory: Path) -> dict[str, int] | None:
    """The highest tokens the store starts with, or None when it refuses to start."""
    log = StoreLog(directory)
    try:
        state = log.open()
    except (CorruptFile, RuntimeError):
        return None
    finally:
        log.close()
    return state.highest


async def test_a_flipped_byte_mid_file_refuses_to_start(store_dir: Path) -> None:
    """The issue's probe: one byte of token 20's record flipped, then a restart."""
    _write_log(store_dir)
    path = store_dir / LOG_NAME
    data = bytearray(path.read_bytes())
    at = data.index(b"value-20") + 3
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile) as refused:
        StoreLog(store_dir).open()
    message = str(refused.value)
    assert str(path) in message and "lockd repair" in message
    assert refused.value.offset <= at < refused.value.offset + 100
    assert path.read_bytes() == bytes(data)  # nothing cut


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_flipped_bytes_never_lower_an_acknowledged_token(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    directory = tmp_path_factory.mktemp("store")
    acked = _write_log(directory, tokens=30)
    path = directory / LOG_NAME
    raw = bytearray(path.read_bytes())
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=3
        )
    )
    for offset, mask in flips:
        raw[offset] ^= mask
    path.write_bytes(bytes(raw))
    highest = _open(directory)
    if highest is not None:  # started: every acknowledged token is still known
        for resource, token in acked.items():
            assert highest.get(resource, 0) >= token


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, 10_000))
def test_a_cut_after_a_clean_stop_refuses_to_start(
    tmp_path_factory: pytest.TempPathFactory, cut: int
) -> None:
    """A clean close moves the header's durable end to the end of the file: any cut,
    whole frames included, is refused (it would lower acknowledged tokens)."""
    directory = tmp_path_factory.mktemp("store")
    acked = _write_log(directory, tokens=20)
    path = directory / LOG_NAME
    whole = path.read_bytes()
    cut = min(cut, len(whole))
    path.write_bytes(whole[:cut])
    highest = _open(directory)
    if cut < len(whole):
        assert highest is None
        assert path.read_bytes() == whole[:cut]  # nothing cut further
    else:
        assert highest == acked


def _crashed_log(directory: Path, tokens: int) -> tuple[bytes, list[int]]:
    """The log's bytes as a crash right after the last append leaves them (no clean
    close), and where each append's frame ends."""
    log = StoreLog(directory)
    log.open()
    ends = []
    for token in range(1, tokens + 1):
        log.append([_record(token)])
        ends.append(log.size)
    data = log.path.read_bytes()
    log.close()
    return data, ends


@pytest.mark.parametrize("frames_cut", [2, 3, 10])
async def test_whole_frames_cut_after_a_crash_refuse_to_start(
    store_dir: Path, frames_cut: int
) -> None:
    """The reviewer's probe: the last 2 of 50 frames cut. The durable end (the end of
    the append before the last) is past the cut: refused, with offset and repair hint."""
    data, ends = _crashed_log(store_dir, 50)
    path = store_dir / LOG_NAME
    cut = ends[-1 - frames_cut]
    path.write_bytes(data[:cut])
    with pytest.raises(CorruptFile) as refused:
        StoreLog(store_dir).open()
    assert refused.value.offset == cut and "cut short" in str(refused.value)
    assert f"lockd repair {path}" in str(refused.value)
    assert path.read_bytes() == data[:cut]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(into=st.integers(0, 200))
def test_a_crash_tears_only_the_last_append(
    tmp_path_factory: pytest.TempPathFactory, into: int
) -> None:
    """Whatever a crash leaves of the last append (nothing, part, all) starts, with every
    earlier append; a torn frame is cut with a warning."""
    directory = tmp_path_factory.mktemp("store")
    data, ends = _crashed_log(directory, 20)
    cut = min(ends[-2] + into, ends[-1])
    (directory / LOG_NAME).write_bytes(data[:cut])
    highest = _open(directory)
    assert highest is not None
    for token in range(1, 20):
        assert highest[RESOURCES[token % len(RESOURCES)]] >= token
    if cut == ends[-1]:
        assert highest[RESOURCES[20 % len(RESOURCES)]] == 20


async def test_a_cut_log_is_repaired_knowingly(store_dir: Path) -> None:
    data, ends = _crashed_log(store_dir, 50)
    path = store_dir / LOG_NAME
    path.write_bytes(data[: ends[-3]])
    result = repair(path)
    assert result.written and f"{ends[-2] - ends[-3]} bytes at byte {ends[-3]}" in result.summary
    assert (store_dir / (LOG_NAME + ".broken")).read_bytes() == data[: ends[-3]]
    highest = _open(store_dir)
    assert highest is not None and max(highest.values()) == 48  # the loss is the repair's


async def test_a_version_2_log_is_upgraded_and_kept(store_dir: Path) -> None:
    store_dir.mkdir()
    crc = header_seed(V2_HEADER)
    frames = []
    for token in (1, 2, 3):
        frame, crc = encode_frame(encode_write("r", "k", b"v%d" % token, token), crc)
        frames.append(frame)
    old = V2_HEADER + b"".join(frames) + frames[0][:9]  # with a torn tail
    (store_dir / LOG_NAME).write_bytes(old)
    assert _open(store_dir) == {"r": 3}
    assert (store_dir / LOG_NAME).read_bytes().startswith(HEADER)
    assert (store_dir / (LOG_NAME + ".v2")).read_bytes() == old
    assert _open(store_dir) == {"r": 3}


async def test_a_deleted_log_refuses_to_start(store_dir: Path) -> None:
    _write_log(store_dir)
    (store_dir / LOG_NAME).unlink()
    with pytest.raises(RuntimeError, match="missing"):
        StoreLog(store_dir).open()
    (store_dir / LOG_NAME).write_bytes(b"")
    with pytest.raises(RuntimeError, match=MARKER_NAME):
        StoreLog(store_dir).open()


async def test_repair_keeps_intact_records_and_the_damaged_file(store_dir: Path) -> None:
    acked = _write_log(store_dir)
    path = store_dir / LOG_NAME
    data = bytearray(path.read_bytes())
    data[data.index(b"value-20") + 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert repair_store_log(path, dry_run=True) is not None
    assert path.read_bytes() == bytes(data)  # a dry run writes nothing
    result = repair_store_log(path)
    assert result is not None and len(result.dropped) == 1
    assert (store_dir / (LOG_NAME + ".broken")).read_bytes() == bytes(data)
    assert repair_store_log(path) is None  # now intact
    highest = _open(store_dir)
    assert highest == acked  # token 20 was not the highest of its resource
    async with client(store_dir) as (_, c):
        with pytest.raises(StaleToken):
            await c.write("a", "k", b"stale", token=acked["a"] - 1)


def _writes_of(data: bytes) -> list[tuple[tuple[str, str, bytes, int], int]]:
    contents = read_log(Path(LOG_NAME), data)
    assert contents.torn is None
    return [(r, size) for r, size in contents.records if not isinstance(r, str)]


def _writes(path: Path) -> list[tuple[tuple[str, str, bytes, int], int]]:
    return _writes_of(path.read_bytes())


def _flip_header(directory: Path, flips: list[tuple[int, int]]) -> bytes:
    """Flip bytes of the log's file header (line and durable end); returns the damaged
    bytes."""
    path = directory / LOG_NAME
    raw = bytearray(path.read_bytes())
    for offset, mask in flips:
        raw[offset] ^= mask
    path.write_bytes(bytes(raw))
    return bytes(raw)


async def test_a_damaged_header_is_located_and_repaired(store_dir: Path) -> None:
    from click.testing import CliRunner

    from lockd.cli import main

    acked = _write_log(store_dir)
    path = store_dir / LOG_NAME
    damaged = _flip_header(store_dir, [(7, 0x01)])  # "LOCKD store" -> "LOCKD rtore"
    with pytest.raises(CorruptFile) as refused:
        StoreLog(store_dir).open()
    message = str(refused.value)
    assert refused.value.offset == 0 and "damaged file header" in message
    assert str(path) in message and f"lockd repair {path}" in message
    assert path.read_bytes() == damaged  # nothing cut
    fixed = CliRunner().invoke(main, ["repair", str(path)])
    assert fixed.exit_code == 0, fixed.output
    assert "kept 50 intact frames" in fixed.output and ".broken" in fixed.output
    assert (store_dir / (LOG_NAME + ".broken")).read_bytes() == damaged
    assert _writes(path) == _writes_of(HEADER + damaged[len(HEADER) :])  # every record kept
    assert _open(store_dir) == acked
    async with client(store_dir) as (_, c):
        with pytest.raises(StaleToken):
            await c.write("a", "k", b"stale", token=acked["a"] - 1)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, FRAMES - 1), st.integers(1, 255)), min_size=1, max_size=3
    )
)
def test_any_flipped_header_bytes_refuse_and_repair_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, flips: list[tuple[int, int]]
) -> None:
    directory = tmp_path_factory.mktemp("store")
    acked = _write_log(directory, tokens=20)
    path = directory / LOG_NAME
    whole = path.read_bytes()
    damaged = _flip_header(directory, flips)
    if damaged[:FRAMES] == whole[:FRAMES]:  # the flips cancelled out
        return
    with pytest.raises(CorruptFile) as refused:
        StoreLog(directory).open()
    # The header line (byte 0) or its durable-end field (the byte after it).
    assert refused.value.offset in (0, len(HEADER)) and "lockd repair" in str(refused.value)
    assert repair(path).written
    assert _writes(path) == _writes_of(whole)  # a correct header and every record
    assert _open(directory) == acked


def test_repair_refuses_a_file_that_is_not_a_store_log(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    path.write_bytes(b"some other program's data, nothing framed in it\n")
    with pytest.raises(RuntimeError, match="not a lockd store log"):
        repair_store_log(path)
    assert path.read_bytes() == b"some other program's data, nothing framed in it\n"


async def test_a_version_1_log_is_upgraded_and_kept(store_dir: Path) -> None:
    store_dir.mkdir()
    records = [V1_HEADER]
    for token in (1, 2, 3):
        args = (b"W", b"r", b"k%d" % token, b"v%d" % token, b"%d" % token)
        records.append(encode_command(*args, b"%08x" % zlib.crc32(encode_command(*args))))
    old = b"".join(records) + records[-1][:-5]  # with a torn tail
    (store_dir / LOG_NAME).write_bytes(old)
    store = FencedStore(store_dir)
    await store.open()
    try:
        assert store.read("r", "k3") == (b"v3", 3)
        await store.write("r", "k4", b"v4", 4)
    finally:
        await store.close()
    assert (store_dir / LOG_NAME).read_bytes().startswith(HEADER)
    assert (store_dir / (LOG_NAME + ".v1")).read_bytes() == old
    assert _open(store_dir) == {"r": 4}


async def test_a_damaged_version_1_record_refuses_to_start(store_dir: Path) -> None:
    store_dir.mkdir()
    records = [V1_HEADER]
    for token in (1, 2, 3):
        args = (b"W", b"r", b"k", b"v%d" % token, b"%d" % token)
        records.append(encode_command(*args, b"%08x" % zlib.crc32(encode_command(*args))))
    records[2] = records[2].replace(b"v2", b"v9")
    (store_dir / LOG_NAME).write_bytes(b"".join(records))
    with pytest.raises(CorruptFile, match="version 1"):
        StoreLog(store_dir).open()


async def test_files_and_directory_are_private(store_dir: Path) -> None:
    async with client(store_dir) as (_, c):
        await c.write("r", "k", b"v", token=1)
    assert store_dir.stat().st_mode & 0o777 == 0o700
    for name in (LOG_NAME, MARKER_NAME, "store.lock"):
        assert (store_dir / name).stat().st_mode & 0o777 == 0o600, name


async def test_an_existing_store_directory_is_tightened(store_dir: Path) -> None:
    _write_log(store_dir, tokens=2)
    os.chmod(store_dir, 0o755)
    os.chmod(store_dir / LOG_NAME, 0o644)
    _open(store_dir)
    assert store_dir.stat().st_mode & 0o777 == 0o700
    assert (store_dir / LOG_NAME).stat().st_mode & 0o777 == 0o600
