"""The systemd units in deploy/systemd: ``systemd-analyze verify`` finds nothing to say about
them, and ``systemd-analyze security`` rates both services' exposure at most 2.0 (of 10).

``verify`` runs against a root of our own: the machine's unit library (for the targets the
units name) and a stand-in /opt/rpcbalancer/bin/rpcbalancer (verify checks that ExecStart is
executable inside the root). It exits 0 on an unknown key, only printing a warning, so any
output at all fails the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rpcbalancer.config import load

from ..conftest import ROOT, require_tool

UNITS = ROOT / "deploy" / "systemd"
SERVICES = ("rpcbalancer.service", "rpcbalancer-canary.service")
ALL = (*SERVICES, "rpcbalancer-canary.timer")


def system_root(tmp_path: Path, units: Path = UNITS) -> Path:
    """A file system root holding the machine's unit library, our units and the programs
    they run."""
    root = tmp_path / "root"
    library = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(library, root / "usr/lib/systemd/system", symlinks=True)
    for name in ("opt/rpcbalancer/bin/rpcbalancer", "bin/kill"):  # (what the units run)
        program = root / name
        program.parent.mkdir(parents=True)
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in ALL:
        shutil.copy(units / unit, root / "etc/systemd/system" / unit)
    return root


def verify(analyze: str, root: Path, unit: str) -> tuple[int, str]:
    done = subprocess.run(
        [analyze, "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


@pytest.mark.parametrize("unit", ALL)
def test_units_verify_without_a_word(unit: str, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    assert verify(analyze, system_root(tmp_path), unit) == (0, "")


def test_verify_speaks_up_on_a_misspelt_key(tmp_path: Path) -> None:
    """The control for the test above: a typo gives output (and, by itself, exit code 0)."""
    analyze = require_tool("systemd-analyze")
    broken = tmp_path / "units"
    shutil.copytree(UNITS, broken)
    unit = broken / "rpcbalancer.service"
    unit.write_text(unit.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    _, said = verify(analyze, system_root(tmp_path, broken), "rpcbalancer.service")
    assert "ProtectClok" in said


@pytest.mark.parametrize("unit", SERVICES)
def test_services_expose_little(unit: str) -> None:
    analyze = require_tool("systemd-analyze")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNITS / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


def test_the_example_config_loads() -> None:
    cfg = load(UNITS / "config.yaml", env={})
    assert cfg.store == "sqlite:////var/lib/rpcbalancer/health.db"
    assert cfg.canary == "external"  # the timer probes
