"""Predictions as data (SPEC §6): every trial's forecasts and learning curve stored beside its
row, seed-ensemble rows, rescoring without training; the tune study's ASHA scheduler and its
persistent Optuna study. Tiny synthetic panel through the shared Ray instance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from rvrae.cli import main as cli
from rvrae.metrics import TEST_METRICS, long_short
from rvrae.models.base import FORECAST_SCALE_FLOOR
from rvrae.npx import bonferroni_t
from rvrae.results.forecasts import NOT_RESCORED, forecast_path, read_forecast, rescore_rows, scores, seed_ensembles
from rvrae.results.store import METRIC_COLUMNS, cell_id, read_results
from rvrae.results.tables import ENSEMBLE, build_tables
from rvrae.study.runner import StudyOptions, optuna_study_name, run_study

SPLIT = (3, 1, 1)
SMALL = {"ca": {"width_scale": 0.25},
         "factorvae": {"hidden": 8, "n_portfolios": 8, "n_factors": 2, "seq_len": 3, "forecast_test": "valid+factors"}}
# Stored float32 fitted values (β̂'f̂) against the trial's float64 products: R² agrees to
# float32 precision; every metric of r_hat / r_std / ret alone is recomputed exactly.
R2_RTOL = 1e-5


@pytest.fixture(scope="module")
def bench(ray_session, tiny_panel, tmp_path_factory):
    out = tmp_path_factory.mktemp("fc") / "res"
    run_study(StudyOptions(study="benchmark", models=["ipca", "factorvae"], seeds=2, m=[0], epochs=2, out=out,
                           split=SPLIT, configs=dict(SMALL), max_failures=0), panel=tiny_panel)  # fmt: skip
    return out, read_results(out, study="benchmark"), tiny_panel


def test_every_trial_leaves_forecasts_and_a_learning_curve(bench):
    out, df, panel = bench
    assert len(df) == 4 and set(df["status"]) == {"ok"}, df["error"].tolist()
    for r in df.to_dict("records"):
        assert r["cell_id"] == cell_id(r)  # the stored row's key, hashed again, is its cell_id
        path = forecast_path(out, "benchmark", r["model"], r["trial_id"])
        table = pq.read_table(path)
        fc = table.to_pandas()
        assert set(fc["cell_id"]) == {r["cell_id"]} and set(fc["trial_id"]) == {r["trial_id"]}
        for col in ("ret", "r_hat", "r_std", "fit_total", "fit_pred"):
            assert str(table.schema.field(col).type) == "float", col  # float32
        # every valid and test month, every stock with a return, ids and dates as the panel's
        scored = np.arange(panel.T - 24, panel.T)
        assert len(fc) == int(panel.mask[scored].sum())
        assert set(fc["split"]) == {"valid", "test"} and not fc["omitted"].any()
        assert set(fc["id"]) <= set(panel.ids)
        months = pd.to_datetime(fc["date"]).dt.to_period("M").astype(str)
        assert set(months) == {str(d) for d in panel.dates[scored]}
        assert fc["r_std"].notna().all() == (r["model"] == "factorvae")  # IPCA has no r_std
        if r["model"] == "ipca":  # no dynamic forecast, no share, no prior
            assert math.isnan(r.get("forecast_weight", math.nan))
            assert math.isnan(r.get("forecast_factor_tstat", math.nan))
            assert math.isnan(r.get("prior_spread", math.nan))
            assert math.isnan(r.get("rank_ic_w0", math.nan))  # no share w, no ends of it
        if r["model"] == "factorvae":
            # the AR(1) share the forecast used, and its validation t: w = 0 below the gate,
            # where r̂ is β̂ times the prevailing mean of f_post (fit_pred) at the forecast's
            # validation-fitted level c (forecast_scale="shrink", FactorVAE's default); above it, not
            w, t, c = r["forecast_weight"], r["forecast_tstat"], r["forecast_scale"]
            tf = r["forecast_factor_tstat"]  # the largest factor's own AR(1) t (forecast_test)
            assert 0.0 <= w <= 1.0 and FORECAST_SCALE_FLOOR <= c <= 1.0 and math.isfinite(tf)
            assert w == 0.0 or t >= 2.0 or (w == 1.0 and tf >= bonferroni_t(2)), (w, t, tf)
            at_mean = np.allclose(fc["r_hat"], c * fc["fit_pred"], atol=1e-6)
            assert at_mean == (w == 0.0), (w, t)
            # the diagnostic Rank IC at either end of w: w = 0 ranks as β̂ f̄ (fit_pred), by hand
            # from the stored table; the row's own Rank IC is that of the end its w sits at
            test = fc[fc["split"] == "test"]
            by_hand = np.mean([stats.spearmanr(g["fit_pred"], g["ret"])[0] for _, g in test.groupby("date")])
            assert r["rank_ic_w0"] == pytest.approx(by_hand, abs=1e-6)
            assert math.isfinite(r["rank_ic_w1"]) and r["rank_ic_w1"] != r["rank_ic_w0"]
            if w in (0.0, 1.0):
                assert r["rank_ic"] == pytest.approx(r[f"rank_ic_w{w:.0f}"], abs=1e-12), (w, r["rank_ic"])
            assert math.isfinite(r["prior_spread"]) and r["prior_spread"] >= 0.0  # its prior's movement
            curve = json.loads(r["history"])
            assert [c["epoch"] for c in curve] == [1, 2] and all(
                math.isfinite(c["train_loss"]) and math.isfinite(c["valid_loss"]) for c in curve)
    assert not list(Path(out).rglob(".*.tmp"))  # written atomically
    # Tune's own experiment state never holds a forecast
    assert all("r_hat" not in p.read_text() for p in (Path(out) / "_tune").rglob("experiment_state*.json"))


def test_rescoring_reproduces_every_stored_score(bench):
    out, df, _ = bench
    for r in df.to_dict("records"):
        got = scores(*read_forecast(out, "benchmark", r["model"], r["trial_id"]))
        # m = 0: no omitted_; r2_beta needs β itself (not stored): rows keep it
        assert set(got) == {p + k for p in ("valid_", "") for k in TEST_METRICS if k not in NOT_RESCORED}
        for k, v in got.items():
            tol = R2_RTOL if "r2_" in k else 1e-12
            assert v == pytest.approx(r[k], rel=tol, abs=1e-12, nan_ok=True), (r["model"], k)
    again, n = rescore_rows(out, df)
    assert n == 4
    cols = [c for c in METRIC_COLUMNS if c in df.columns and "r2_" not in c]  # r2_beta: kept as stored
    pd.testing.assert_frame_equal(again[cols], df[cols], rtol=1e-12)


def test_rescoring_at_another_cost_and_the_omitted_scores(ray_session, tiny_panel, tmp_path):
    out = tmp_path / "rob"
    run_study(StudyOptions(study="robustness", models=["ipca"], seeds=1, m=[10], out=out, split=SPLIT,
                           max_failures=0), panel=tiny_panel)  # fmt: skip
    row = read_results(out).iloc[0]
    fc, n = read_forecast(out, "robustness", "ipca", row["trial_id"])
    assert fc["omitted"].any()
    same = scores(fc, n)
    for k in ("omitted_rank_ic", "omitted_rank_icir", "sharpe_net", "valid_ic"):
        assert same[k] == pytest.approx(row[k], rel=1e-12), k
    # valid_* leave the omitted stocks out, as the fit did (SPEC §2.3): the same as scoring
    # the validation rows without them, and not the same as scoring every stock
    valid = fc[fc["split"] == "valid"]
    kept = scores(valid[~valid["omitted"]], n, parts=("valid_",))
    every = scores(valid.assign(omitted=False), n, parts=("valid_",))
    for k in ("valid_ic", "valid_rank_ic", "valid_r2_pred"):
        tol = R2_RTOL if "r2_" in k else 1e-12
        assert row[k] == pytest.approx(kept[k], rel=tol) and row[k] != pytest.approx(every[k], rel=1e-6), k
    free = scores(fc, n, cost=0.0)
    assert free["sharpe_net"] == pytest.approx(row["sharpe"], rel=1e-12)  # no cost: net = gross
    assert free["turnover"] == same["turnover"]


def test_value_weighted_long_short():
    rng = np.random.default_rng(0)
    r_hat, ret = rng.standard_normal((6, 40)), 0.05 * rng.standard_normal((6, 40))
    mask = np.ones((6, 40), bool)
    ew = long_short(r_hat, ret, mask)
    assert np.allclose(long_short(r_hat, ret, mask, size=np.full((6, 40), 7.0))["gross"], ew["gross"])
    size = np.ones((6, 40))
    top = np.argmax(r_hat, axis=1)
    size[np.arange(6), top] = 1e9  # the largest forecast's stock carries the long leg
    vw = long_short(r_hat, ret, mask, size=size)
    short = ew["gross"] - ret[np.arange(6)[:, None], np.argsort(r_hat, axis=1)[:, -4:]].mean(1)
    assert np.allclose(vw["gross"], ret[np.arange(6), top] + short, atol=1e-6)


def test_table_ensemble_rows_and_cli_rescore(bench, capsys, tmp_path):
    out, df, _ = bench
    ens = seed_ensembles(out, df)
    assert sorted(ens["model"]) == ["factorvae", "ipca"] and (ens["n"] == 2).all()
    tables = build_tables(df, ensembles=ens)
    for t in tables:
        if t.key == "truth_w":  # the forecast share's two ends are not stored: no ensemble of them
            assert not any(ENSEMBLE in r for r in t.rows) and "ipca" not in t.rows, t.title
            continue
        assert {f"{m} ({ENSEMBLE})" for m in ("ipca", "factorvae")} <= set(t.rows), t.title
        assert ENSEMBLE in t.caption
    assert "truth_w" in [t.key for t in tables]  # FactorVAE's AR(1) share, judged against the truth
    # IPCA is deterministic: its seeds agree, so the ensemble of them is the same forecast
    t1 = tables[0].frame
    assert t1.loc[f"ipca ({ENSEMBLE})", ("r2_total", 0, "mean")] == pytest.approx(t1.loc["ipca", ("r2_total", 0, "mean")])
    # on a planted panel, its ranking against the truth too (read from the oracle's stored forecast)
    truth = next(t for t in tables if t.key == "truth").frame
    got = truth.loc[f"ipca ({ENSEMBLE})", ("rank_ic_true", 0, "mean")]
    assert 0.2 < got == pytest.approx(truth.loc["ipca", ("rank_ic_true", 0, "mean")], abs=1e-6)
    assert cli(["table", str(out), "--rescore", "--cost", "10", "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "Sharpe (10 bps)" in text and "Rescored from the stored forecasts of 4 trials" in text
    assert "FactorVAE (seed ensemble)" in text
    assert cli(["table", str(out), "--weighting", "value"]) == 2
    assert "'size' column" in capsys.readouterr().err
    assert cli(["plot", str(out), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "learning_curves.png").stat().st_size > 0


def test_seed_ensembles_group_by_the_cell_key_config(bench):
    """An ensemble averages the seeds of one config: rows without `resolved_config` (older
    rows) group on `config`, and one config spelled in two key orders is one group."""
    out, df, _ = bench
    ipca = df["model"] == "ipca"
    older = df.drop(columns=["resolved_config"])
    older.loc[ipca & (older["seed"] == 1), "config"] = '{"n_factors":2}'  # another config than seed 0's
    ens = seed_ensembles(out, older)
    assert "ipca" not in set(ens["model"]) and list(ens["model"]) == ["factorvae"]
    spelled = df.copy()
    first = json.loads(spelled.loc[ipca, "resolved_config"].iloc[0])
    spelled.loc[ipca & (spelled["seed"] == 1), "resolved_config"] = json.dumps(dict(reversed(list(first.items()))))
    assert spelled.loc[ipca, "resolved_config"].nunique() == 2
    assert sorted(seed_ensembles(out, spelled)["model"]) == ["factorvae", "ipca"]


def test_tune_asha_stops_trials_and_resume_continues_the_optuna_study(ray_session, tiny_panel, tmp_path):
    import optuna
    import shutil

    out = tmp_path / "tune"
    opts = dict(study="tune", models=["ca"], samples=6, epochs=4, out=out, split=SPLIT, scheduler="asha",
                max_concurrent=2, max_failures=0)  # fmt: skip
    run_study(StudyOptions(**opts), panel=tiny_panel)
    df = read_results(out, study="tune")
    assert len(df) == 6 and set(df["status"]) <= {"ok", "stopped"}, df["error"].tolist()
    stopped = df[df["status"] == "stopped"]
    assert len(stopped) >= 1 and (stopped["epochs"] < 4).all()  # ASHA ended some before the cap
    assert (df.loc[df["status"] == "ok", "epochs"] == 4).all()
    storage = f"sqlite:///{out / 'optuna.db'}"
    name = optuna_study_name("ca", read_results(out).pipe(lambda d: _identity(d)))
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == [name]
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 6
    # Resumed where only --out survived (Tune's experiment gone): the same Optuna study grows.
    shutil.rmtree(out / "_tune")
    run_study(StudyOptions(**{**opts, "samples": 8, "resume": True}), panel=tiny_panel)
    assert len(read_results(out, study="tune")) == 8
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == [name]
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 8


def _identity(df):
    from rvrae.identity import StudyIdentity

    r = df.iloc[0]
    return StudyIdentity(data_fingerprint=r["data_fingerprint"], data_source=r["data_source"],
                         split=tuple(int(x) for x in r["split"].split("/")), epoch_cap=int(r["epoch_cap"]) or None,
                         objective=r["objective"], mode=r["mode"])  # fmt: skip
