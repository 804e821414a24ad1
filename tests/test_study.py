"""The study harness end to end on a tiny synthetic panel through the shared Ray instance:
grids, resume, Optuna tuning, error rows, resources and bad input (SPEC §5, §6, §8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faults import Faults
from rvrae.errors import UserError
from rvrae.results.oracle import ORACLE, read_oracle
from rvrae.results.store import read_results, result_files
from rvrae.results.tables import build_tables
from rvrae.study.cli import main
from rvrae.study.runner import StudyOptions, load_configs, plan_resources, run_study

SPLIT = (3, 1, 1)
FAST = {"ca": {"width_scale": 0.25}}  # a small CA1 for speed


def _opts(out, study="robustness", **kw):
    base = dict(study=study, models=["ipca", "ca"], seeds=2, m=[10], epochs=1, out=Path(out),
                split=SPLIT, configs=dict(FAST), max_failures=0)
    base.update(kw)
    return StudyOptions(**base)


def test_robustness_grid_rows_and_resume(ray_session, tiny_panel, tmp_path):
    out = tmp_path / "res"
    run = run_study(_opts(out), panel=tiny_panel)
    df = read_results(out, study="robustness")
    assert len(run.rows) == 4 and len(df) == 4
    assert set(df["status"]) == {"ok"}, df["error"].tolist()
    assert df.groupby(["model", "m"]).size().to_dict() == {("ca", 10): 2, ("ipca", 10): 2}
    for col in ("rank_ic", "valid_rank_ic", "omitted_rank_ic", "r2_total", "fit_seconds"):
        assert np.isfinite(df[col].astype(float)).all(), col
    assert (df["data_fingerprint"] == tiny_panel.fingerprint()).all()
    assert (df["device"] == "cpu").all() and (df["node_id"].str.len() > 0).all()
    assert (df["threads"] == 1).all()  # stored: digits depend on the thread count
    assert (df["hp_epochs"].dropna() == 1).all()  # the --epochs cap reached the neural model
    gross = json.loads(df["ls_gross"].iloc[0])
    assert len(gross) == 12 == len(json.loads(df["ls_dates"].iloc[0]))
    ipca = df[df["model"] == "ipca"].set_index("seed")
    assert ipca.loc[0, "rank_ic"] != ipca.loc[1, "rank_ic"]  # seeds omit different stocks
    # Same seed, same data, CPU -> the same numbers: a second study into another folder.
    twin = read_results(run_study(_opts(tmp_path / "twin"), panel=tiny_panel).out, study="robustness")
    metrics = ["rank_ic", "r2_total", "r2_pred", "omitted_rank_ic", "sharpe", "ls_gross"]
    key = ["model", "seed"]
    pd.testing.assert_frame_equal(df.sort_values(key)[key + metrics].reset_index(drop=True),
                                  twin.sort_values(key)[key + metrics].reset_index(drop=True), check_exact=True)

    files = set(result_files(out, "robustness"))
    again = run_study(_opts(out, resume=True), panel=tiny_panel)  # grids resume from the store
    assert again.skipped == 4 and again.rows == []
    assert set(result_files(out, "robustness")) == files
    # Without Tune's experiment the results store decides: every cell is there, nothing runs.
    import shutil

    shutil.rmtree(out / "_tune")
    third = run_study(_opts(out, resume=True), panel=tiny_panel)
    assert third.skipped == 4 and third.rows == []
    assert len(read_results(out, study="robustness")) == 4
    with pytest.raises(UserError, match="--resume"):  # re-running without --resume would duplicate
        run_study(_opts(out), panel=tiny_panel)


def test_faults_become_error_rows(ray_session, tiny_panel, tmp_path):
    out = tmp_path / "res"
    opts = _opts(out, study="benchmark", m=[0], seeds=1, hook=Faults({"ipca": "raise", "ca": "nan"}))
    run_study(opts, panel=tiny_panel)
    df = read_results(out).set_index("model")
    assert set(df["status"]) == {"error"}
    assert "injected fault" in df.loc["ipca", "error"]
    assert "FloatingPointError" in df.loc["ca", "error"]  # the NaN loss of the training loop
    assert df.loc["ca", "seed"] == 0 and df.loc["ca", "finished_at"]
    # a plain --resume keeps an error row (a result too); --retry-errors runs those cells again
    assert run_study(_opts(out, study="benchmark", m=[0], seeds=1, resume=True), panel=tiny_panel).rows == []
    with pytest.raises(UserError, match="--retry-errors goes with --resume"):
        run_study(_opts(out, study="benchmark", m=[0], seeds=1, retry_errors=True), panel=tiny_panel)
    again = run_study(_opts(out, study="benchmark", m=[0], seeds=1, resume=True, retry_errors=True), panel=tiny_panel)
    assert len(again.rows) == 2
    df = read_results(out)
    assert len(df) == 2 and set(df["status"]) == {"ok"}  # each cell once, now ok


def test_tune_records_varying_trials_and_best_configs(ray_session, tiny_panel, tmp_path):
    out = tmp_path / "res"
    run_study(_opts(out, study="tune", models=["ipca"], m=[0], seeds=1, samples=4), panel=tiny_panel)
    df = read_results(out, study="tune")
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    assert df["hp_n_factors"].nunique() >= 2  # Optuna sampled different K
    best = json.loads((out / "best_configs.json").read_text())
    top = df.loc[df["valid_rank_ic"].idxmax()]
    assert best["ipca"]["n_factors"] == int(top["hp_n_factors"])
    assert load_configs(out / "best_configs.json", ["ipca"]) == best  # what --configs reads
    # a planted panel: the oracle heads the best-trial table, with its validation ceiling too
    oracle = read_oracle(out)
    assert list(oracle["study"]) == ["tune"] and (oracle["seed"].tolist(), oracle["m"].tolist()) == ([0], [0])
    (t,) = build_tables(df, study="tune", oracle=oracle, share=True)
    assert t.rows[0] == ORACLE and t.rows[1:] == ["ipca"]
    o = oracle.iloc[0]
    assert t.frame.loc[ORACLE, ("valid_rank_ic", 0, "mean")] == pytest.approx(o["valid_rank_ic"])
    assert t.share[("ipca", "rank_ic", 0)] == pytest.approx(top["rank_ic"] / o["rank_ic"])


def test_cli_runs_a_grid_from_a_file(ray_session, tiny_data_file, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main("robustness", ["--data", str(tiny_data_file), "--models", "ipca", "--seeds", "2",
                             "--m", "10,20", "--split", "3/1/1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    df = read_results(out)
    assert sorted(df["m"].tolist()) == [10, 10, 20, 20] and set(df["status"]) == {"ok"}
    assert (out / "_logs" / "robustness.log").exists()


def test_resources_from_the_cluster():
    opts = _opts("/tmp/unused")
    assert plan_resources(opts, {"CPU": 2.0}) == (1.0, 0.0, 2)
    assert plan_resources(opts, {"CPU": 16.0, "GPU": 2.0}) == (1.0, 0.25, 8)
    with pytest.raises(UserError, match="no GPU"):
        plan_resources(_opts("/tmp/unused", gpus_per_trial=0.5), {"CPU": 8.0})
    assert plan_resources(_opts("/tmp/unused", max_concurrent=1), {"CPU": 8.0})[2] == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--models", "nope"], "unknown model"),
        (["--m", "50,abc"], "--m"),
        (["--m", "-5"], "--m"),
        (["--m", "500"], "m = 500"),  # the tiny panel has 76 eligible stocks
        (["--configs", "BADJSON"], "not valid JSON"),
        (["--configs", "BADKEY"], "unknown config key"),
        (["--data", "MISSINGFILE"], "no such file"),
        (["--seeds", "0"], "--seeds"),
        (["--split", "3/1"], "--split"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(args, needle, tiny_data_file, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "key.json").write_text(json.dumps({"ipca": {"no_such_key": 1}}))
    subs = {"BADJSON": str(tmp_path / "bad.json"), "BADKEY": str(tmp_path / "key.json"),
            "MISSINGFILE": str(tmp_path / "missing.parquet")}
    args = [subs.get(a, a) for a in args]
    if "--data" not in args:
        args += ["--data", str(tiny_data_file)]
    out = tmp_path / "out"
    base = ["--models", "ipca", "--split", "3/1/1", "--out", str(out)]
    rc = main("robustness", base + args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unwritable_out_and_gpus_on_a_cpu_cluster(ray_session, tiny_data_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    common = ["--data", str(tiny_data_file), "--models", "ipca", "--split", "3/1/1", "--m", "10"]
    assert main("robustness", common + ["--out", str(blocker / "sub")]) == 2
    assert "--out" in capsys.readouterr().err
    out = tmp_path / "gpu"
    assert main("robustness", common + ["--out", str(out), "--gpus-per-trial", "1"]) == 2
    assert "no GPU" in capsys.readouterr().err and not out.exists()


def test_tune_resumes_from_the_store_with_new_proposals(ray_session, tiny_panel, tmp_path):
    """A tune study resumes as grids do, from the rows: Tune's own experiment state (still on
    disk here) is not restored, so --resume with more --samples runs the missing trials, and
    the sampler's seed moves on, so TPE's start-up trials are not the recorded configs again.
    Re-running without --resume is refused, as for a grid."""
    out = tmp_path / "res"
    opts = dict(study="tune", models=["ipca"], m=[0], seeds=1)
    run_study(_opts(out, samples=3, **opts), panel=tiny_panel)
    before = read_results(out, study="tune")
    assert (out / "_tune").exists() and len(before) == 3
    with pytest.raises(UserError, match="--resume"):
        run_study(_opts(out, samples=3, **opts), panel=tiny_panel)
    more = run_study(_opts(out, samples=6, resume=True, **opts), panel=tiny_panel)
    assert len(more.rows) == 3
    df = read_results(out, study="tune")
    assert len(df) == 6 and len(set(df["trial_id"])) == 6
    new = df[~df["trial_id"].isin(before["trial_id"])]["config"]
    assert sorted(new) != sorted(before["config"])  # seed 0 again proposed these three
    assert len(run_study(_opts(out, samples=6, resume=True, **opts), panel=tiny_panel).rows) == 0


def test_a_stopped_study_says_so_and_resume_finishes_it(ray_session, tiny_panel, tmp_path):
    """Ctrl-C: Tune catches the first SIGINT and returns as if done. The study must not then
    report success: it raises Interrupted (the CLI's exit 130) with the rows so far kept, and
    --resume runs exactly the rest."""
    import os
    import signal
    import threading
    import time

    from rvrae.errors import Interrupted
    from rvrae.results.store import result_files

    out = tmp_path / "res"
    opts = dict(study="benchmark", models=["ipca"], m=[0], seeds=8, max_concurrent=1)

    def interrupt_after_first_row():
        deadline = time.monotonic() + 120
        while not (out.exists() and list(result_files(out, "benchmark"))) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_first_row, daemon=True).start()
    with pytest.raises(Interrupted, match=r"benchmark: stopped with \d of 8 trials recorded"):
        run_study(_opts(out, **opts), panel=tiny_panel)
    kept = len(read_results(out, study="benchmark"))
    assert 1 <= kept < 8
    rest = run_study(_opts(out, resume=True, **opts), panel=tiny_panel)
    assert rest.skipped == kept and len(rest.rows) == 8 - kept
    df = read_results(out, study="benchmark")
    assert sorted(df["seed"]) == list(range(8))  # each cell once


def test_storage_and_retries_are_checked_before_anything_starts(tmp_path):
    from rvrae.study.runner import validate

    (tmp_path / "t").mkdir()
    for text in ("{bad", "[1]", '{"ipca": 3}'):  # merged into at the end of a search: refused first
        (tmp_path / "t" / "best_configs.json").write_text(text)
        with pytest.raises(UserError, match="best_configs.json"):
            validate(_opts(tmp_path / "t", study="tune", models=["ipca"], m=[0], seeds=1, samples=2))
    for storage in ("s3:/bucket/x", "s3://", "s3:// bucket"):
        with pytest.raises(UserError, match="--storage"):
            validate(_opts(tmp_path / "o", storage=storage))
    validate(_opts(tmp_path / "o", storage="s3://bucket/x"))
    validate(_opts(tmp_path / "o", storage="relative/state"))
    with pytest.raises(UserError, match="--max-failures must be >= 0"):
        validate(_opts(tmp_path / "o", max_failures=-1))
    assert not (tmp_path / "o").exists()


def test_best_configs_say_when_a_model_has_no_new_best(tmp_path):
    from rich.console import Console

    from rvrae.identity import StudyIdentity
    from rvrae.results.store import write_row
    from rvrae.study.runner import write_best_configs

    ident = StudyIdentity("f", "s", (3, 1, 1), 1, objective="valid_rank_ic", mode="max")
    (tmp_path / "best_configs.json").write_text('{"ca": {"lr": 0.01}}')
    write_row(tmp_path, dict(study="tune", model="ipca", trial_id="a", config={"n_factors": 2}, valid_rank_ic=0.1,
                             **ident.columns()))  # fmt: skip
    write_row(tmp_path, dict(study="tune", model="ca", trial_id="b", config={"lr": 0.1}, status="error",
                             error="boom", **ident.columns()))  # fmt: skip
    console = Console(record=True, width=200)
    write_best_configs(tmp_path, ["ipca", "ca"], ident, console)
    assert json.loads((tmp_path / "best_configs.json").read_text()) == {"ca": {"lr": 0.01}, "ipca": {"n_factors": 2}}
    assert "no ok ca trial of this study has valid_rank_ic; best_configs.json keeps its earlier entry" in console.export_text()
