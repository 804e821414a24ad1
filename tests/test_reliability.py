"""Reliability (SPEC §8): a killed driver, a lost node, trials that raise or go NaN, a crash
while a results file is written, determinism, and what must never be exposed or unpickled.
Every scenario ends with the same check: every (model, seed, m) cell exactly once, nothing lost.

The driver-kill and node-loss scenarios need a Ray of their own, so they run in subprocesses
(own session, cleaned up by process group); the rest shares the session's Ray (conftest)."""

from __future__ import annotations

import io
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

from faults import Faults
from rvrae.results.store import METRIC_COLUMNS, read_results, result_files, write_row
from rvrae.study.runner import StudyOptions, run_study

ROOT = Path(__file__).resolve().parents[1]
SPLIT = (3, 1, 1)
FAST = {"ca": {"width_scale": 0.25}}  # a small CA1 for speed
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AIR_NEW_OUTPUT": "0"}
# The node-loss cluster's GCS marks a killed node dead after ~1.5 s of missed health checks
# instead of Ray's default ~15 s: the same scenario, ten seconds sooner.
FAST_HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                     "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


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
    forecasts = {f.stem for f in (out / "forecasts").rglob("*.parquet")}
    assert forecasts == set(df["trial_id"])  # one forecast per row: none left without its row


# ---------------------------------------------------------------- 2. a node lost mid-study

NODE_LOSS = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from ray.cluster_utils import Cluster
    from rvrae.data.io import load_data
    from rvrae.results.store import result_files
    from rvrae.study.runner import StudyOptions, run_study

    sys.path.insert(0, sys.argv[3])  # tests/: the test-only fault hook
    from faults import Faults

    out = Path(sys.argv[2])
    facts = out.parent / "facts.txt"  # not stdout: Ray's log monitor writes into it mid-line
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()

    def kill_worker():  # as soon as the first row is in: the worker dies mid-study
        while not (out.is_dir() and result_files(out)):
            time.sleep(0.05)
        cluster.remove_node(worker, allow_graceful=False)
        with facts.open("a") as fh:
            fh.write(f"worker removed after {len(result_files(out))} rows\\n")

    threading.Thread(target=kill_worker, daemon=True).start()
    try:
        # "slow" (test-only fault): each trial takes >= 1 s, so cells are still left when the
        # worker goes, however fast the machine runs IPCA.
        opts = StudyOptions(study="robustness", models=["ipca"], seeds=4, m=[10], split=(3, 1, 1),
                            out=out, address=cluster.address, max_failures=3,
                            hook=Faults({"ipca": "slow"}))
        run = run_study(opts, panel=load_data(sys.argv[1]))
        with facts.open("a") as fh:
            fh.write(f"rows {len(run.rows)} max_concurrent {run.max_concurrent}\\n")
    finally:
        cluster.shutdown()
    """
)


@pytest.mark.slow
def test_lost_node_study_completes_on_the_rest(tiny_data_file, tmp_path):
    out = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-c", NODE_LOSS, str(tiny_data_file), str(out), str(Path(__file__).parent)],
                            env={**ENV, **FAST_HEALTH_CHECK},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        _reap(proc)
    assert proc.returncode == 0, stderr[-3000:]
    facts = (tmp_path / "facts.txt").read_text()
    removed = re.search(r"worker removed after (\d+) rows", facts)
    assert removed and int(removed.group(1)) < 4, facts  # the node went while cells were left
    assert "max_concurrent 2" in facts, facts  # the study had planned for both nodes
    df = read_results(out)
    assert _cells(df) == {("ipca", s, 10): 1 for s in range(4)}
    assert set(df["status"]) == {"ok"}, df["error"].tolist()


# ---------------------------------------------------------------- 3. trials that raise or go NaN


def test_raising_and_nan_trials_are_error_rows_and_the_rest_completes(ray_session, tiny_panel, tmp_path, capsys):
    from rvrae.cli import main

    out = tmp_path / "res"
    # ipca: seed 0 always raises, seed 1 fails its first attempt only; ca: seed 1's loss is NaN.
    opts = StudyOptions(study="benchmark", models=["ipca", "ca"], seeds=2, m=[0], epochs=1, out=out,
                        split=SPLIT, configs=dict(FAST), max_failures=1,
                        hook=Faults({"ipca": "raise@0,flaky@1", "ca": "nan@1"}))
    run_study(opts, panel=tiny_panel)
    df = read_results(out).set_index(["model", "seed"])
    assert _cells(df.reset_index()) == {(m, s, 0): 1 for m in ("ipca", "ca") for s in range(2)}
    status = df["status"].to_dict()
    assert status == {("ipca", 0): "error", ("ipca", 1): "ok", ("ca", 0): "ok", ("ca", 1): "error"}
    assert df.loc[("ipca", 0), "error"] == "RuntimeError: injected fault: raise"
    err = df.loc[("ca", 1), "error"]
    assert err.startswith("FloatingPointError") and "loss" in err and "nan" in err.lower()
    # FailureConfig(max_failures=1): every failing trial ran twice; the flaky one passed on retry.
    assert df.loc[("ipca", 0), "num_failures"] == 2 and df.loc[("ca", 1), "num_failures"] == 2
    assert df.loc[("ipca", 1), "num_failures"] == 1 and df.loc[("ca", 0), "num_failures"] == 0
    assert np.isfinite(df.loc[("ipca", 1), "rank_ic"])
    assert df.loc[("ipca", 0), ["rank_ic", "r2_total"]].isna().all()  # an error row has no metrics

    capsys.readouterr()
    assert main(["table", str(out), "--study", "benchmark", "--format", "csv"]) == 0
    text = capsys.readouterr().out
    table = pd.read_csv(io.StringIO(text))
    n = table[table["metric"] == "r2_total"].set_index("model")["n"].to_dict()
    assert n == {"oracle": 1, "ipca": 1, "ca": 1}, text  # the ok seed of each model (and the truth: synthetic)
    assert main(["table", str(out), "--study", "benchmark", "--format", "csv", "--share"]) == 0
    shares = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index(["model", "metric"])["share_of_oracle"]
    means = table.set_index(["model", "metric"])["mean"]
    assert shares[("ipca", "r2_total")] == pytest.approx(means[("ipca", "r2_total")] / means[("oracle", "r2_total")])


# ---------------------------------------------------------------- 4. atomic results files


def _row(trial_id: str, **kw) -> dict:
    return {"study": "benchmark", "model": "ipca", "seed": 0, "m": 0, "trial_id": trial_id,
            "config": {"n_factors": 3}, "r2_total": 0.1, "r2_pred": 0.01, "rank_ic": 0.05, **kw}


CRASH_IN_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from rvrae.results.store import write_row
    out = sys.argv[1]
    row = {"study": "benchmark", "model": "ipca", "seed": 1, "m": 0, "config": {"n_factors": 3}, "r2_total": 0.1, "r2_pred": 0.01}
    write_row(out, {**row, "trial_id": "done"})
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die between temp write and rename
    write_row(out, {**row, "trial_id": "crashed"})
    """
)


def test_crash_while_writing_leaves_nothing_readers_pick_up(tmp_path, capsys):
    from rvrae.cli import main
    from rvrae.results.store import existing_cells

    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-c", CRASH_IN_WRITE, str(out)], env=ENV, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    folder = out / "study=benchmark" / "model=ipca"
    leftovers = sorted(p.name for p in folder.iterdir())
    assert leftovers == [".crashed.parquet.tmp", "done.parquet"]  # the crash left its temp file
    assert (folder / ".crashed.parquet.tmp").stat().st_size > 0
    # A half-written temp file from another crash: garbage bytes, also ignored.
    (folder / ".torn.parquet.tmp").write_bytes(b"PAR1\x00\x01half a file")
    assert [p.name for p in result_files(out)] == ["done.parquet"]
    assert read_results(out)["trial_id"].tolist() == ["done"]
    assert len(existing_cells(out, "benchmark")) == 1
    assert main(["table", str(out), "--format", "csv"]) == 0
    assert "error" not in capsys.readouterr().err
    # The crashed trial, written again (a resumed study), replaces its temp file cleanly.
    write_row(out, _row("crashed", seed=1))
    assert sorted(read_results(out)["trial_id"]) == ["crashed", "done"]
    assert not (folder / ".crashed.parquet.tmp").exists()


def test_write_row_leaves_no_file_when_serialisation_raises(tmp_path):
    out = tmp_path / "res"
    write_row(out, _row("good"))
    with pytest.raises(TypeError, match="float"):
        write_row(out, _row("bad", rank_ic=object()))  # not a number: the row cannot be written
    with pytest.raises(ValueError, match="did not recognize Python value type"):  # pyarrow.ArrowInvalid
        write_row(out, _row("bad2", extra=object()))  # not serialisable by Arrow
    folder = out / "study=benchmark" / "model=ipca"
    # The rename fails after the temp file was written (the target is a non-empty folder).
    (folder / "blocked.parquet" / "x").mkdir(parents=True)
    with pytest.raises(OSError):
        write_row(out, _row("blocked"))
    (folder / "blocked.parquet" / "x").rmdir()
    (folder / "blocked.parquet").rmdir()
    assert sorted(p.name for p in folder.iterdir()) == ["good.parquet"]
    assert read_results(out)["trial_id"].tolist() == ["good"]


# ---------------------------------------------------------------- 6. determinism


def test_same_seeds_same_metrics(ray_session, tiny_panel, tmp_path):
    frames = []
    for run in ("a", "b"):
        opts = StudyOptions(study="robustness", models=["ipca", "ca"], seeds=1, m=[10], epochs=1,
                            out=tmp_path / run, split=SPLIT, configs=dict(FAST), max_failures=0)
        run_study(opts, panel=tiny_panel)
        frames.append(read_results(tmp_path / run).set_index(["model", "seed", "m"]).sort_index())
    a, b = frames
    assert len(a) == 2 and set(a["status"]) == {"ok"}, a["error"].tolist()
    cols = [c for c in a.columns if c in METRIC_COLUMNS or c.startswith("ls_")] + ["config", "epochs"]
    assert len([c for c in cols if c in METRIC_COLUMNS]) == len(METRIC_COLUMNS)
    assert a[list(METRIC_COLUMNS)].notna().any().sum() >= 20  # real numbers are compared, not NaN
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)


# ---------------------------------------------------------------- 7. security


def _unsafe_loads(text: str) -> list[str]:
    """`torch.load(...)` calls without weights_only=True (the call's text up to its `)`)."""
    calls = [text[m.start(): text.find(")", m.start()) + 1] for m in re.finditer(r"torch\.load\(", text)]
    return [c for c in calls if not re.search(r"weights_only\s*=\s*True", c)]


def _unpicklers(text: str) -> list[str]:
    """Calls that unpickle a file: pickle / cloudpickle loads, torch.load without
    weights_only=True, np.load with allow_pickle=True."""
    found = [c for c in _unsafe_loads(text)]
    found += re.findall(r"\b(?:pickle|cloudpickle)\.loads?\(", text)
    found += re.findall(r"np\.load\([^)]*allow_pickle\s*=\s*True", text)
    return found


def test_nothing_unpickles_user_files():
    """SPEC §8: a user's data file is never unpickled. The package's one unpickling call reads
    Tune's own error file of this run (rvrae/study/callbacks.py); a new one must be reviewed."""
    assert _unpicklers("torch.load(path, map_location='cpu')\ntorch.load(p, weights_only=True)") == [
        "torch.load(path, map_location='cpu')"
    ]
    assert _unpicklers("np.load(f, allow_pickle=True)") and not _unpicklers("np.load(f, allow_pickle=False)")
    found = {str(p.relative_to(ROOT)): _unpicklers(p.read_text()) for p in (ROOT / "rvrae").rglob("*.py")}
    assert {k: v for k, v in found.items() if v} == {"rvrae/study/callbacks.py": ["cloudpickle.load("]}
    # the user-file reader: np.load with allow_pickle=False (the CPZ .npz)
    assert "np.load(path, allow_pickle=False)" in (ROOT / "rvrae" / "data" / "io.py").read_text()


def test_ray_is_started_without_a_public_dashboard():
    from rvrae.study.runner import ray_init_kwargs

    for verbose in (False, True):
        local = ray_init_kwargs(None, verbose)
        assert local == ray_init_kwargs("local", verbose)
        assert local["address"] == "local"  # a private instance of its own, never an attach by accident
        assert local.get("include_dashboard") is False or local.get("dashboard_host") == "127.0.0.1"
        attach = ray_init_kwargs("auto", verbose)
        assert attach["address"] == "auto" and "dashboard_host" not in attach
        for kw in (local, attach, ray_init_kwargs("10.0.0.5:6379", verbose)):
            assert "0.0.0.0" not in repr(kw)
    # connect() uses these kwargs: its source calls ray.init only with them.
    import inspect

    from rvrae.study import runner

    calls = re.findall(r"ray\.init\(([^)]*)\)", inspect.getsource(runner.connect))
    assert calls and all(c.startswith("**ray_init_kwargs(") for c in calls), calls


def test_cluster_yaml_holds_no_credentials():
    text = (ROOT / "cluster" / "cluster.yaml").read_text()
    patterns = [
        r"aws_access_key_id", r"aws_secret_access_key", r"aws_session_token", r"\bsecret\b\s*:",
        r"\btoken\b\s*:", r"password\s*:", r"AKIA[0-9A-Z]{16}", r"ASIA[0-9A-Z]{16}",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"[A-Za-z0-9/+]{40}",  # a secret access key's shape
    ]
    found = [p for p in patterns if re.search(p, text, flags=re.IGNORECASE if p[0] != "A" else 0)]
    assert not found, found
