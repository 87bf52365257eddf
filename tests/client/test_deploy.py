"""The systemd units in deploy/systemd: systemd accepts them, and every flag they pass
exists on the command they run."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))


def exec_start(unit: Path) -> list[str]:
    (line,) = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    lockd = Path(sys.executable).with_name("lockd")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/usr/local/bin/lockd", str(lockd)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert unit.name not in result.stderr, result.stderr  # no warning about this unit


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_flags_exist(unit: Path) -> None:
    argv = exec_start(unit)
    assert argv[0] == "/usr/local/bin/lockd"
    command = argv[1]
    help_text = subprocess.run(
        [sys.executable, "-m", "lockd", command, "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    flags = [a for a in argv[2:] if a.startswith("--")]
    assert flags
    for flag in flags:
        assert flag in help_text, f"{unit.name}: lockd {command} has no {flag}"
