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


def normalized(distribution: str) -> str:
    """A distribution name as PEP 503 compares them."""
    import re

    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_server_wheel_carries_a_working_cli_and_declares_its_imports(
    tmp_path: Path, serve: LockdProcess
) -> None:
    """`pip install .` alone gives a working `lockd`: the wheel holds the client library
    the CLI uses, and declares a distribution for every third-party module lockd imports."""
    import ast
    import importlib.metadata
    import re
    import zipfile

    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "var", "build", "*.egg-info", "__pycache__"),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("lockd-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [
            normalized(re.split(r"[ ;<>=!~\[]", line.removeprefix("Requires-Dist: "))[0])
            for line in zf.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ") and "extra ==" not in line
        ]
    for part in ("lockd/cli/__init__.py", "lockd_client/aio.py", "lockd/engine/lua/lockd.lua"):
        assert (unpacked / part).exists(), part

    # Every third-party top-level module imported anywhere in lockd or lockd_client, but
    # the developer's code generator (`make proto`, which installs the dev extra).
    imported: set[str] = set()
    for path in [*unpacked.glob("lockd/**/*.py"), *unpacked.glob("lockd_client/**/*.py")]:
        if path == unpacked / "lockd" / "protogen.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"lockd", "lockd_client"}
    providers = importlib.metadata.packages_distributions()
    for module in sorted(third_party):
        dists = {normalized(d) for d in providers.get(module, [])}
        assert dists & set(requires), f"{module} (from {dists}) is not a declared dependency"

    # The CLI runs from the unpacked wheel, not from this checkout.
    env = dict(CLEAN_ENV, PYTHONPATH=str(unpacked))
    code = "import lockd, lockd_client; print(lockd.__file__, lockd_client.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(unpacked) for p in where.stdout.split())
    status = subprocess.run(
        [sys.executable, "-m", "lockd", "status", "--endpoint", serve.endpoint],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "quorum 3 of 5: available" in status.stdout
