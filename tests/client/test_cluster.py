"""`lockd cluster`: five `lockd engine` processes and a gateway, from one command."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.client.helpers import CLEAN_ENV, lockd_cmd
from tests.support import free_port, wait_for_port


def test_cluster_runs_the_production_shape_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    first = free_port()
    while any(not _free(first + i) for i in range(5)):
        first = free_port()
    proc = subprocess.Popen(
        lockd_cmd("cluster", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path),
                  "--engine-port", str(first), "--max-ttl", "5s"),
        env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        ep = ("--endpoint", f"127.0.0.1:{port}")
        status = subprocess.run(
            lockd_cmd("status", "--json", *ep), env=CLEAN_ENV, capture_output=True, text=True
        )
        assert status.returncode == 0, status.stderr
        cluster = json.loads(status.stdout)
        assert [n["mode"] for n in cluster["nodes"]] == ["lockd_engine"] * 5
        assert {n["address"] for n in cluster["nodes"]} == {
            f"redis://127.0.0.1:{first + i}" for i in range(5)
        }
        assert all(n["reachable"] for n in cluster["nodes"])
        got = subprocess.run(
            lockd_cmd("acquire", "try/it", "--ttl", "2s", "--json", *ep),
            env=CLEAN_ENV, capture_output=True, text=True,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["token"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    # Every engine stopped cleanly (a clean-shutdown marker each) and released its port.
    for i in range(5):
        assert (tmp_path / f"engine-{i}" / "shutdown.json").is_file(), out
    deadline = time.monotonic() + 5
    while not all(_free(first + i) for i in range(5)):
        assert time.monotonic() < deadline, "an engine still listens"
        time.sleep(0.05)


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
