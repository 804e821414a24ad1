"""Reliability (SPEC §8): a killed driver, a lost node, trials that raise or go NaN, a crash
while a results file is written, determinism, and what must never be exposed or unpickled.
Every scenario ends with the same check: every (model, seed, m) cell exactly once, nothing lost.

The driver-kill and node-loss scenarios need a Ray of their own, so they run in subprocesses
(own session, cleaned up by process group); the rest shares the session's Ray (conftest)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rvrae.results.store import METRIC_COLUMNS, read_results, result_files, write_row
from rvrae.study.runner import StudyOptions, run_study

ROOT = Path(__file__).resolve().parents[1]
SPLIT = (3, 1, 1)
FAST = {"ca": {"width_scale": 0.25}}  # a small CA1 for speed
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AIR_NEW_OUTPUT": "0"}


def _cells(df: pd.DataFrame) -> dict:
    return df.groupby(["model", "seed", "m"]).size().to_dict()


def _wait_files(out: Path, proc: subprocess.Popen, at_least: int, timeout: float) -> list[Path]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        files = result_files(out) if out.is_dir() else []
        if len(files) >= at_least or proc.poll() is not None:
            return files
        time.sleep(0.1)
    return result_files(out) if out.is_dir() else []


def _reap(proc: subprocess.Popen) -> None:
    """Kill what is left of a subprocess's session (Ray's raylet, workers) and wait."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


# ---------------------------------------------------------------- 1. driver killed, --resume


@pytest.mark.slow
def test_killed_driver_resumes_every_cell_once(ray_session, tiny_data_file, tmp_path, capsys):
    from rvrae.study.cli import main

    out = tmp_path / "res"
    configs = tmp_path / "fast.json"
    configs.write_text('{"ca": {"width_scale": 0.25}}')
    args = ["--data", str(tiny_data_file), "--models", "ipca,ca", "--seeds", "3", "--m", "50",
            "--split", "3/1/1", "--epochs", "1", "--configs", str(configs), "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "studies" / "robustness.py"), *args, "--address", "local",
         "--max-concurrent", "1"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        files = _wait_files(out, proc, 1, timeout=240)
        proc.send_signal(signal.SIGKILL)  # the driver only: Ray's reaper takes its processes down
    finally:
        _reap(proc)
    assert 1 <= len(files) < 6, f"kill missed the study: {len(files)} rows, rc={proc.returncode}"
    before = read_results(out).set_index("trial_id")[["model", "seed", "m", "finished_at", "rank_ic"]]

    rc = main("robustness", args + ["--resume"])  # in-process, on the session's Ray
    assert rc == 0, capsys.readouterr().err
    df = read_results(out)
    assert _cells(df) == {(m, s, 50): 1 for m in ("ipca", "ca") for s in range(3)}
    assert set(df["status"]) == {"ok"}, df["error"].tolist()
    after = df.set_index("trial_id")
    # Cells finished before the kill were not recomputed: same trial, same finish time.
    assert set(before.index) <= set(after.index)
    pd.testing.assert_frame_equal(before, after.loc[before.index, before.columns])
    assert not list(out.rglob(".*.tmp"))
