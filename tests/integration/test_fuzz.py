"""The fuzz targets (fuzz/targets.py): every seed and past finding replayed, then a short
coverage-guided run of each with atheris (bounded in runs). Long runs: fuzz/run.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT

FUZZ = ROOT / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402 - fuzz/ is not a package

RUNS = {"jsonrpc_parse": 20000, "config_load": 3000, "lambda_event": 1500}


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_corpus_and_findings_replay(target: str) -> None:
    seeds = sorted((FUZZ / "corpus" / target).iterdir())
    assert seeds
    for seed in seeds:
        targets.TARGETS[target](seed.read_bytes())


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("target", sorted(RUNS))
def test_short_fuzzing_run_finds_nothing(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), target, "--runs", str(RUNS[target])],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
