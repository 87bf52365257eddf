"""ResetFence: the operator's way out of a resource fenced by a token no lock reaches.

One write with token 2^64-1 locks every writer out of its resource for good; an admin
(the store's admin token, the same mechanism as the gateway's ForceRelease) resets the
fence with `lockd store-reset`: logged at WARNING, fsynced in the store log, kept across
restarts and compaction. Without the credential: PERMISSION_DENIED NOT_ADMIN."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from lockd.store.fenced import FencedStore
from lockd_client import StaleToken, StoreClient, StoreError
from lockd_client.store import ReadResult
from tests.client.helpers import LockdProcess, cli
from tests.support import free_port

MAX = 2**64 - 1


def store_with_admin(directory: Path, token_file: Path) -> LockdProcess:
    port = free_port()
    args = ["store", "--listen", f"127.0.0.1:{port}", "--dir", str(directory),
            "--admin-token-file", str(token_file)]  # fmt: skip
    return LockdProcess(args, port, directory.parent / "store.log.txt")


def test_reset_fence_needs_admin_then_lets_writers_in_and_survives_restart(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("s3cret\n")
    wrong_file = tmp_path / "wrong-token"
    wrong_file.write_text("guess\n")
    proc = store_with_admin(tmp_path / "store", token_file).start()
    try:
        with StoreClient(proc.endpoint) as store:
            store.write("orders", "total", b"poisoned", token=MAX)
            with pytest.raises(StaleToken):
                store.write("orders", "total", b"12", token=5)
            # No credential, or a wrong one: PERMISSION_DENIED NOT_ADMIN, nothing changes.
            for given in ("", "guess"):
                with pytest.raises(StoreError) as denied:
                    store.reset_fence("orders", given)
                assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
                assert denied.value.reason == "NOT_ADMIN"
            no_cred = cli("store-reset", "orders", "--store", proc.endpoint)
            assert no_cred.returncode == 6, no_cred.stderr
            assert "admin credential" in no_cred.stderr
            wrong = cli(
                "store-reset", "orders", "--store", proc.endpoint,
                "--admin-token-file", str(wrong_file),
            )  # fmt: skip
            assert wrong.returncode == 6, wrong.stderr
            assert store.read("orders", "total").highest_token == MAX
            # With the admin token: reset, and a new writer gets in.
            done = cli(
                "store-reset", "orders", "--store", proc.endpoint,
                "--admin-token-file", str(token_file),
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert f"highest token {MAX} -> 0" in done.stdout
            assert store.read("orders", "total") == ReadResult(b"poisoned", 0)  # values stay
            assert store.write("orders", "total", b"12", token=5) == 5
            with pytest.raises(StaleToken):
                store.write("orders", "total", b"old", token=4)
        log = proc.output()
        assert "WARNING" in log and "fence of resource 'orders' reset by admin token" in log
        assert f"highest token {MAX} -> 0" in log
        assert "s3cret" not in log
        # The reset is in the store log: after a restart the fence is 5, not 2^64-1.
        assert proc.terminate() == 0
        proc.start()
        with StoreClient(proc.endpoint) as store:
            assert store.read("orders", "total") == ReadResult(b"12", 5)
            with pytest.raises(StaleToken):
                store.write("orders", "total", b"old", token=4)
            assert store.write("orders", "total", b"13", token=6) == 6
        # And after kill -9.
        proc.kill()
        proc.start()
        with StoreClient(proc.endpoint) as store:
            assert store.read("orders", "total") == ReadResult(b"13", 6)
    finally:
        proc.close()


async def test_reset_fence_survives_compaction(tmp_path: Path) -> None:
    """Compaction writes each key with its token: after a reset those are 0, so the
    compacted log does not bring 2^64-1 back."""
    store = FencedStore(tmp_path / "s")
    await store.open()
    await store.write("r", "a", b"x", MAX)
    await store.write("other", "b", b"y", 7)
    assert await store.reset_fence("r", "test") == MAX
    assert await store.reset_fence("r", "test") == 0
    store.log.compact(list(store.state.values.items()))
    await store.close()
    store = FencedStore(tmp_path / "s")
    await store.open()
    try:
        assert store.read("r", "a") == (b"x", 0)
        assert store.read("other", "b") == (b"y", 7)
        assert await store.write("r", "a", b"z", 1) == 1
    finally:
        await store.close()
