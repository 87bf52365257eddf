"""The client library installs and works on its own, without the server package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.client.helpers import CLEAN_ENV, REPO, LockdProcess

USE_IT = """
import sys
from lockd_client import Client, LeaseLost, StoreClient  # noqa: F401
with Client([sys.argv[1]], timeout=10) as client:
    with client.lock(sys.argv[2], ttl=5, wait=5) as lease:
        lease.check()
        print(lease.token, client.describe(sys.argv[2]).held)
"""


def test_client_installs_alone(tmp_path: Path, serve: LockdProcess) -> None:
    # Install from a copy: building in place would leave build/ and *.egg-info behind.
    source = tmp_path / "src"
    shutil.copytree(
        REPO / "clients" / "python",
        source,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
    )
    venv = tmp_path / "venv"
    env = {k: v for k, v in CLEAN_ENV.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    # This interpreter's pip installs into the new environment (skips a slow ensurepip);
    # dependencies come from the package index.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install",
         "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr

    def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
        # From an empty directory: the repository must not be on sys.path.
        return subprocess.run(
            [str(python), "-c", code, *args],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
        )  # fmt: skip

    where = run("import lockd_client, os; print(os.path.dirname(lockd_client.__file__))")
    assert where.returncode == 0, where.stderr
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(venv)
    assert (installed / "py.typed").exists()
    assert (installed / "v1" / "lock_service_pb2.pyi").exists()

    server = run("import lockd")
    assert server.returncode != 0
    assert "No module named 'lockd'" in server.stderr

    used = run(USE_IT, serve.endpoint, "packaging/alone")
    assert used.returncode == 0, used.stderr
    token, held = used.stdout.split()
    assert int(token) > 0 and held == "True"
