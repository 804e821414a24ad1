"""The planted model's row in a study's tables (rvrae.results.oracle): scored by the trials'
code on the study's split and omitted sets, equal to the oracle of `rvrae data synth`, first
in Tables I-III of its own identity only, rescored like a trial."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rvrae.data.panel import omit_stocks, split_by_years
from rvrae.data.synthetic import SynthConfig, make_synthetic
from rvrae.identity import StudyIdentity
from rvrae.metrics import ic_series
from rvrae.results.oracle import ORACLE, read_oracle, write_oracle
from rvrae.results.tables import build_tables

SPLIT = (3, 1, 1)


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(SynthConfig(seed=4, n_factors=2, n_chars=5, n_stocks=80, n_months=60,
                                      shapes=("bump", "interaction"), premia=(0.006, 0.003)))  # fmt: skip


def _identity(panel, split=SPLIT):
    return StudyIdentity(panel.fingerprint(), panel.source, split, 2)


def _cells(seeds, ms):
    return [{"model": "ipca", "seed": s, "m": m} for s in seeds for m in ms]


def test_oracle_rows_are_the_oracles_scores_on_the_studys_split(synth, tmp_path):
    p = synth.panel
    path = write_oracle(tmp_path, "robustness", p, _identity(p), _cells([0, 1], [0, 20]))
    rows = read_oracle(tmp_path)
    assert path.is_file() and len(rows) == 3  # m = 0 once (no seed in it), m = 20 per seed
    assert list(zip(rows["seed"], rows["m"])) == [(0, 0), (0, 20), (1, 20)]
    train, valid, test = split_by_years(p, *SPLIT)
    o = synth.oracle
    o.rescore(p, test.target_months)  # what `rvrae data synth` prints, on this split
    for k in ("r2_total", "r2_pred", "r2_forecast", "rank_ic", "sharpe", "sharpe_net", "coverage90"):
        assert rows[k].iloc[0] == pytest.approx(o.scores[k], rel=1e-6, abs=1e-12), k
    assert rows["r2_forecast"].iloc[0] != rows["r2_pred"].iloc[0]  # two definitions, two columns
    m = test.target_months
    # the ends of a forecast share: the truth's prevailing-mean forecast (what r2_pred scores)
    # and its conditional forecast (its own Rank IC)
    lam = np.cumsum(o.factors, axis=0) / np.arange(1, len(o.factors) + 1)[:, None]  # through month t
    at_mean = np.einsum("tnk,tk->tn", o.beta[m], lam[m - 1])  # the means of the months before each
    assert rows["rank_ic_w0"].iloc[0] == pytest.approx(np.nanmean(ic_series(at_mean, p.ret[m], p.mask[m], rank=True)), rel=1e-6)
    assert rows["rank_ic_w1"].iloc[0] == rows["rank_ic"].iloc[0] != rows["rank_ic_w0"].iloc[0]
    for _, r in rows[rows["m"] == 20].iterrows():
        omitted = omit_stocks(train, test, 20, int(r["seed"]))  # the models' omitted set
        assert json.loads(r["omitted"]) == omitted.tolist()
        mask = np.zeros_like(p.mask[m])
        mask[:, omitted] = p.mask[m][:, omitted]
        want = np.nanmean(ic_series(o.r_hat[m], p.ret[m], mask, rank=True))
        assert r["omitted_rank_ic"] == pytest.approx(want, rel=1e-6)
        v = valid.target_months  # valid_*: without the omitted stocks, as the trials' (SPEC §2.3)
        kept = p.mask[v].copy()
        kept[:, omitted] = False
        assert r["valid_rank_ic"] == pytest.approx(np.nanmean(ic_series(o.r_hat[v], p.ret[v], kept, rank=True)), rel=1e-6)
        assert r["valid_rank_ic"] != rows["valid_rank_ic"].iloc[0]
    assert rows["omitted_rank_ic"].iloc[1] != rows["omitted_rank_ic"].iloc[2]


def test_a_resumed_study_keeps_every_seed_and_a_users_file_writes_none(synth, tiny_data_file, tmp_path):
    from rvrae.data.io import load_panel

    p = synth.panel
    write_oracle(tmp_path, "robustness", p, _identity(p), _cells([0, 1, 2], [20]))
    write_oracle(tmp_path, "robustness", p, _identity(p), _cells([0], [20]))  # --resume --seeds 1
    assert sorted(read_oracle(tmp_path)["seed"]) == [0, 1, 2]
    plain = load_panel(tiny_data_file)  # a synthetic panel written out and read back: no truth
    assert write_oracle(tmp_path / "file", "benchmark", plain, _identity(plain), _cells([0], [0])) is None
    assert not (tmp_path / "file").exists() and read_oracle(tmp_path / "file").empty
    assert write_oracle(tmp_path / "t", "speed", p, _identity(p), _cells([0], [0])) is None  # no table row


def _model_rows(identity, ms, value):
    cols = identity.columns()
    return pd.DataFrame([{**cols, "study": "robustness" if ms != [0] else "benchmark", "model": "ipca",
                          "seed": s, "m": m, "status": "ok", "trial_id": f"t{s}{m}", "config": "{}",
                          "r2_total": value, "r2_pred": value / 10, "r2_forecast": value / 10, "r2_beta": value,
                          "sharpe": 1.0, "sharpe_net": 0.5, "omitted_rank_ic": value, "omitted_rank_icir": value}
                         for s in (0, 1) for m in ms])  # fmt: skip


def test_the_oracle_heads_its_identitys_tables_and_is_never_best(synth, tmp_path):
    p = synth.panel
    ident = _identity(p)
    write_oracle(tmp_path, "benchmark", p, ident, _cells([0, 1], [0]))
    write_oracle(tmp_path, "robustness", p, ident, _cells([0, 1], [20]))
    oracle = read_oracle(tmp_path)
    big = 10.0  # a model "above" the oracle: the best marks stay the models'
    for study, ms in (("benchmark", [0]), ("robustness", [20])):
        tables = build_tables(_model_rows(ident, ms, big), study=study, oracle=oracle)
        assert [t.key for t in tables] == (["table1", "table2"] if study == "benchmark" else ["table3"])
        for t in tables:
            assert t.rows == [ORACLE, "ipca"] and "Oracle (true model)" in t.caption
            metric, m = t.cells[0]
            assert not t.frame.loc[ORACLE, (metric, m, "best")] and t.frame.loc["ipca", (metric, m, "best")]
    t3 = build_tables(_model_rows(ident, [20], big), study="robustness", oracle=oracle)[0]
    rob = oracle[oracle["study"] == "robustness"]
    assert t3.frame.loc[ORACLE, ("omitted_rank_ic", 20, "mean")] == pytest.approx(rob["omitted_rank_ic"].mean())
    assert t3.frame.loc[ORACLE, ("omitted_rank_ic", 20, "std")] == pytest.approx(rob["omitted_rank_ic"].std())
    t1 = build_tables(_model_rows(ident, [0], big), study="benchmark", oracle=oracle)[0]
    bench = oracle[oracle["study"] == "benchmark"].iloc[0]
    assert t1.frame.loc[ORACLE, ("r2_forecast", 0, "mean")] == pytest.approx(bench["r2_forecast"])
    assert t1.frame.loc[ORACLE, ("r2_total", 0, "n")] == 1
    # a custom table (--metrics) too; a column the oracle has no value for stays empty
    (custom,) = build_tables(_model_rows(ident, [20], big).assign(fit_seconds=1.0, span_r2_1=0.5), study="robustness",
                             metrics=["omitted_rank_ic", "fit_seconds", "span_r2_1"], oracle=oracle)  # fmt: skip
    assert custom.rows == [ORACLE, "ipca"]
    from rvrae.results.render import render_tables

    md = render_tables([custom], "markdown")
    assert "β span R², factor 1 (m=20)" in md and "| 1.000(0.000) | 2 |" in md and "0.500(0.000)" in md, md
    assert custom.frame.loc[ORACLE, ("omitted_rank_ic", 20, "mean")] == pytest.approx(rob["omitted_rank_ic"].mean())
    assert custom.frame.loc[ORACLE, ("fit_seconds", 20, "n")] == 0
    # another identity (here: another split) of the same panel gets no oracle row
    other = build_tables(_model_rows(_identity(p, (2, 1, 1)), [0], big), study="benchmark", oracle=oracle)
    assert all(t.rows == ["ipca"] for t in other)
    assert all(t.rows == ["ipca"] for t in build_tables(_model_rows(ident, [0], big), study="benchmark"))


def test_share_of_the_oracle(synth, tmp_path):
    """`rvrae table --share`: each model cell's mean over the oracle's, in R², IC and Sharpe
    columns where the oracle's is positive; in every format; nothing without an oracle row."""
    from rvrae.results.render import render_tables

    p = synth.panel
    ident = _identity(p)
    write_oracle(tmp_path, "benchmark", p, ident, _cells([0, 1], [0]))
    oracle = read_oracle(tmp_path)
    rows = _model_rows(ident, [0], 0.05).assign(coverage90=0.85)
    t1, t2 = build_tables(rows, study="benchmark", oracle=oracle, share=True)
    o = oracle.iloc[0]
    assert o["r2_total"] > 0 and o["sharpe"] > 0
    assert t1.share[("ipca", "r2_total", 0)] == pytest.approx(0.05 / o["r2_total"])
    assert t2.share[("ipca", "sharpe", 0)] == pytest.approx(1.0 / o["sharpe"])
    assert not any(r == ORACLE for r, _, _ in t1.share)  # the ceiling has no share of itself
    neg = oracle.assign(r2_pred=-0.01)  # a ceiling at or below zero: no share
    (n1, _) = build_tables(rows, study="benchmark", oracle=neg, share=True)
    assert ("ipca", "r2_pred", 0) not in n1.share and ("ipca", "r2_total", 0) in n1.share
    # a ceiling that prints as 0.00 (R² in percent: 0.004 %) reads as nothing either
    (z1, _) = build_tables(rows, study="benchmark", oracle=oracle.assign(r2_pred=4e-5), share=True)
    assert ("ipca", "r2_pred", 0) not in z1.share and ("ipca", "r2_total", 0) in z1.share
    (s1, _) = build_tables(rows, study="benchmark", oracle=oracle.assign(r2_pred=6e-5), share=True)
    assert s1.share[("ipca", "r2_pred", 0)] == pytest.approx(0.005 / 6e-5)  # prints 0.01: kept
    (custom,) = build_tables(rows, study="benchmark", metrics=["r2_total", "coverage90"], oracle=oracle, share=True)
    assert set(custom.share) == {("ipca", "r2_total", 0)}  # coverage is a target, not a score
    want = f"[{0.05 / o['r2_total']:.0%}]"
    assert want in render_tables([t1], "markdown") and want in render_tables([t1], "latex").replace(r"\%", "%")
    csv = render_tables([t1], "csv").splitlines()
    assert csv[0].endswith(",share_of_oracle")
    line = next(x for x in csv if x.startswith("benchmark,ipca,0,r2_total,"))
    assert float(line.split(",")[-1]) == pytest.approx(0.05 / o["r2_total"])
    plain = build_tables(rows, study="benchmark", oracle=oracle)  # without share=True: as before
    cells = [x for x in render_tables(plain, "markdown").splitlines() if x.startswith("| IPCA")]
    assert not any(t.share for t in plain) and len(cells) == 2 and not any("[" in x for x in cells)
    assert not any(t.share for t in build_tables(rows, study="benchmark", share=True))  # no oracle


def test_rescoring_the_oracle_from_its_stored_forecast(synth, tmp_path):
    p = synth.panel
    write_oracle(tmp_path, "robustness", p, _identity(p), _cells([0, 1], [20]))
    stored = read_oracle(tmp_path)
    same = read_oracle(tmp_path, cost=0.003)  # the 30 bps the rows carry: the same numbers
    for k in ("r2_total", "r2_pred", "r2_forecast", "rank_ic", "sharpe_net", "omitted_rank_ic", "valid_rank_ic"):
        np.testing.assert_allclose(same[k], stored[k], rtol=1e-5, err_msg=k)
    free = read_oracle(tmp_path, cost=0.0)
    np.testing.assert_allclose(free["sharpe_net"], stored["sharpe"], rtol=1e-6)
    assert (free["sharpe_net"] > stored["sharpe_net"]).all()
    # the omitted stocks' portfolios too: each row rescored on its own omitted set
    np.testing.assert_allclose(free["omitted_sharpe_net"], stored["omitted_sharpe"], rtol=1e-6)
    assert (free["omitted_sharpe_net"] != stored["omitted_sharpe_net"]).all()


def test_the_figures_draw_the_oracle_of_their_identity(synth, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rvrae.results import plots
    from rvrae.results.store import read_results, write_row

    p = synth.panel
    ident = _identity(p)
    for r in _model_rows(ident, [0], 0.1).assign(span_r2_1=0.5, span_r2_2=0.25).to_dict("records"):
        write_row(tmp_path, {**r, "ls_gross": [0.01, -0.02, 0.03], "ls_net": [0.0, -0.03, 0.02],
                             "ls_dates": ["2004-01-01", "2004-02-01", "2004-03-01"]})  # fmt: skip
    for r in _model_rows(ident, [20], 0.05).to_dict("records"):
        write_row(tmp_path, r)
    write_oracle(tmp_path, "benchmark", p, ident, _cells([0, 1], [0]))
    write_oracle(tmp_path, "robustness", p, ident, _cells([0, 1], [20]))
    write_oracle(tmp_path, "robustness", p, _identity(p, (2, 1, 1)), _cells([0], [20]))  # no rows: not drawn
    ok = plots._with_oracle(read_results(tmp_path), tmp_path)
    assert sorted(ok.loc[ok["model"] == ORACLE, "study"]) == ["benchmark", "robustness", "robustness"]
    figs = {}

    def keep(fig, name):
        figs[name] = fig
        return name

    plots._plot_long_short(ok, plt, keep)
    plots._plot_rank_ic_by_m(ok, plt, keep)
    plots._plot_beta_span(ok, plt, keep)
    from matplotlib.container import BarContainer

    # one model's bars: the oracle (1 by definition) is not drawn
    (bars,) = [c for c in figs["beta_span"].axes[0].containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars] == pytest.approx([0.5, 0.25])
    assert plots._plot_beta_span(ok.drop(columns=["span_r2_1", "span_r2_2"]), plt, keep) is None
    lines = {ln.get_label(): ln for ln in figs["cumulative_long_short"].axes[0].get_lines()}
    assert set(lines) >= {"IPCA (n = 2)", "Oracle (true model) (n = 1)"}
    assert lines["Oracle (true model) (n = 1)"].get_linestyle() == "--"
    labels = figs["rank_ic_by_m"].axes[0].get_legend_handles_labels()[1]
    assert labels == ["IPCA", "Oracle (true model)"]
    assert "…)" in figs["rank_ic_by_m"].axes[0].get_title()  # a long design name is cut, not spilled
    for f in figs.values():
        plt.close(f)


def test_span_r2_says_which_true_factor_the_betas_miss(synth):
    """Any invertible mix of the true betas spans every factor (R² 1); dropping one factor's
    column leaves that factor unexplained, its independent neighbour explained; a trial on a
    planted panel stores one span_r2 per true factor, the oracle's own reading 1."""
    from rvrae.metrics import span_r2
    from rvrae.results.oracle import oracle_forecast
    from rvrae.study.trainable import evaluate

    p, o = synth.panel, synth.oracle
    m = np.arange(36, 60)
    mix = np.einsum("tnk,kj->tnj", o.beta[m], np.array([[2.0, 1.0], [-1.0, 0.5]])) + 0.3
    np.testing.assert_allclose(span_r2(mix, o.beta[m], p.mask[m]), [1.0, 1.0], atol=1e-8)
    first_only = span_r2(o.beta[m][..., :1], o.beta[m], p.mask[m])
    assert first_only[0] == pytest.approx(1.0) and first_only[1] < 0.2, first_only
    train, valid, test = split_by_years(p, *SPLIT)
    got = evaluate(p, oracle_forecast(o), valid.target_months, test.target_months, np.zeros(0, int))
    assert [got[f"span_r2_{k}"] for k in (1, 2)] == pytest.approx([1.0, 1.0])
    assert "span_r2_3" not in got


def test_rank_ic_span_is_the_rank_ic_the_betas_allow(synth):
    """rank_ic_span: the true expected return projected on [1, β̂] each month, ranked against
    the returns. Checked against a per-month lstsq and Spearman; the oracle's own equals its
    Rank IC, and betas of one factor only reach what that factor's projection ranks at."""
    from scipy import stats

    from rvrae.metrics import span_rank_ic
    from rvrae.results.oracle import oracle_forecast
    from rvrae.study.trainable import evaluate

    p, o = synth.panel, synth.oracle
    m = np.arange(36, 60)
    beta = o.beta[m][..., :1] + 0.2 * np.random.default_rng(0).standard_normal(o.beta[m][..., :1].shape)
    want = []
    for t in m:
        live = p.mask[t]
        x = np.column_stack([np.ones(live.sum()), beta[t - 36][live]])
        fit = x @ np.linalg.lstsq(x, o.r_hat[t][live].astype(np.float64), rcond=None)[0]
        want.append(stats.spearmanr(fit, p.ret[t][live]).statistic)
    got = span_rank_ic(beta, o.r_hat[m], p.ret[m], p.mask[m])
    assert got == pytest.approx(np.mean(want), abs=1e-6)
    full = span_rank_ic(o.beta[m], o.r_hat[m], p.ret[m], p.mask[m])
    assert got != pytest.approx(full, abs=1e-3)  # a factor's betas missing: another ceiling
    train, valid, test = split_by_years(p, *SPLIT)
    res = evaluate(p, oracle_forecast(o), valid.target_months, test.target_months, np.zeros(0, int))
    assert res["rank_ic_span"] == pytest.approx(res["rank_ic"], abs=1e-6)
    import dataclasses

    noise = np.random.default_rng(1).standard_normal(o.r_hat.shape).astype(np.float32)
    other = dataclasses.replace(oracle_forecast(o), r_hat=noise)  # the truth's betas, a useless forecast
    res2 = evaluate(p, other, valid.target_months, test.target_months, np.zeros(0, int))
    assert res2["rank_ic_span"] == pytest.approx(res["rank_ic"], abs=1e-6)  # the betas' ceiling, not r̂'s
    assert res2["rank_ic"] != pytest.approx(res["rank_ic"], abs=1e-3)  # while its own Rank IC moved


def test_rank_ic_true_ranks_against_the_planted_expected_return(synth):
    """rank_ic_true: r̂ ranked against the true expected return β_t E(f_t | past) instead of the
    returns, per month, test months and omitted stocks alike (checked against scipy). The
    oracle reads 1, as does any increasing map of its r̂, whose realised Rank IC is the same."""
    import dataclasses

    from scipy import stats

    from rvrae.data.panel import omit_stocks
    from rvrae.results.oracle import oracle_forecast
    from rvrae.study.trainable import evaluate

    p, o = synth.panel, synth.oracle
    train, valid, test = split_by_years(p, *SPLIT)
    m = test.target_months
    omitted = omit_stocks(train, test, 20, 0)
    truth = oracle_forecast(o)
    res = evaluate(p, truth, valid.target_months, m, omitted)
    assert res["rank_ic_true"] == pytest.approx(1.0) and res["omitted_rank_ic_true"] == pytest.approx(1.0)
    # the two ends of a forecast share against the truth: w = 1 is the oracle's r̂ itself,
    # w = 0 (β times the true factors' prevailing mean) ranks below it
    assert res["rank_ic_true_w1"] == pytest.approx(1.0)
    want0 = [stats.spearmanr(truth.r_w0[t][p.mask[t]], o.r_hat[t][p.mask[t]]).statistic for t in m]
    assert res["rank_ic_true_w0"] == pytest.approx(np.mean(want0), abs=1e-6)
    assert res["rank_ic_true_w0"] < 0.99
    assert "rank_ic_true_w0" not in evaluate(p, dataclasses.replace(truth, r_w0=None, r_w1=None),
                                             valid.target_months, m, omitted)  # no share, no ends  # fmt: skip
    scaled = dataclasses.replace(truth, r_hat=(3.0 * o.r_hat + 0.01).astype(np.float32))
    res_s = evaluate(p, scaled, valid.target_months, m, omitted)
    assert res_s["rank_ic_true"] == pytest.approx(1.0) and res_s["rank_ic"] == pytest.approx(res["rank_ic"], abs=1e-6)
    rng = np.random.default_rng(2)
    spread = float(np.std(o.r_hat[m][p.mask[m]]))
    noisy = (o.r_hat + spread * rng.standard_normal(o.r_hat.shape)).astype(np.float32)
    got = evaluate(p, dataclasses.replace(truth, r_hat=noisy), valid.target_months, m, omitted)
    only = np.zeros(p.N, dtype=bool)
    only[omitted] = True
    for key, cols in (("rank_ic_true", np.ones(p.N, dtype=bool)), ("omitted_rank_ic_true", only)):
        want = [stats.spearmanr(noisy[t][p.mask[t] & cols], o.r_hat[t][p.mask[t] & cols]).statistic for t in m]
        assert got[key] == pytest.approx(np.mean(want), abs=1e-6), key
    assert 0.3 < got["rank_ic_true"] < 0.95  # a noisy copy of the truth: between nothing and all
    useless = dataclasses.replace(truth, r_hat=rng.standard_normal(o.r_hat.shape).astype(np.float32))
    assert abs(evaluate(p, useless, valid.target_months, m, omitted)["rank_ic_true"]) < 0.1


def test_planted_rows_get_the_truth_tables(synth, tmp_path):
    """On a planted panel the benchmark adds a "truth" table (Rank IC against returns and
    against the true expected return) and the robustness study a "truth3" table by m; the
    oracle heads both and reads 1 against the truth."""
    from rvrae.results.render import render_tables

    p = synth.panel
    ident = _identity(p)
    write_oracle(tmp_path, "benchmark", p, ident, _cells([0, 1], [0]))
    write_oracle(tmp_path, "robustness", p, ident, _cells([0, 1], [20]))
    oracle = read_oracle(tmp_path)
    bench = _model_rows(ident, [0], 0.05).assign(rank_ic=0.05, rank_ic_true=0.6, rank_ic_span=0.07)
    tables = build_tables(bench, study="benchmark", oracle=oracle, share=True)
    assert [t.key for t in tables] == ["table1", "table2", "truth"]
    truth = tables[-1]
    assert [c for c, _ in truth.cells] == ["rank_ic", "rank_ic_true", "rank_ic_span"]
    assert truth.frame.loc[ORACLE, ("rank_ic_true", 0, "mean")] == pytest.approx(1.0)
    assert truth.frame.loc["ipca", ("rank_ic_true", 0, "mean")] == pytest.approx(0.6)
    assert ("ipca", "rank_ic_true", 0) not in truth.share  # the oracle's is 1: no share to print
    assert "Rank IC vs true E[r]" in render_tables([truth], "markdown")
    import io

    from rich.console import Console

    buf = io.StringIO()
    render_tables([truth], "rich", console=Console(file=buf, width=200))
    assert "Rank IC vs true E[r]" in buf.getvalue()  # rich would read "[r]" as markup and drop it
    # a model with a dynamic forecast gets the table of its share's two ends; one without
    # (IPCA here) is no row of it
    dyn = bench.assign(model="rvrae", trial_id=bench["trial_id"] + "r", rank_ic_w0=0.04, rank_ic_w1=0.05,
                       rank_ic_true_w0=0.5, rank_ic_true_w1=0.55, forecast_weight=1.0)  # fmt: skip
    tables = build_tables(pd.concat([bench, dyn], ignore_index=True), study="benchmark", oracle=oracle)
    assert [t.key for t in tables] == ["table1", "table2", "truth", "truth_w"]
    tw = tables[-1]
    assert sorted(tw.frame.index) == sorted([ORACLE, "rvrae"])
    assert [c for c, _ in tw.cells] == ["rank_ic_w0", "rank_ic_w1", "rank_ic_true_w0", "rank_ic_true_w1", "forecast_weight"]
    assert tw.frame.loc["rvrae", ("rank_ic_true_w1", 0, "mean")] == pytest.approx(0.55)
    assert tw.frame.loc[ORACLE, ("rank_ic_true_w1", 0, "mean")] == pytest.approx(1.0)
    assert 0 < tw.frame.loc[ORACLE, ("rank_ic_true_w0", 0, "mean")] < 1
    assert "vs true E[r] at w=0" in render_tables([tw], "markdown")
    rob = _model_rows(ident, [20], 0.05).assign(omitted_rank_ic_true=0.5)
    tables = build_tables(rob, study="robustness", oracle=oracle)
    assert [t.key for t in tables] == ["table3", "truth3"]
    assert tables[1].frame.loc[ORACLE, ("omitted_rank_ic_true", 20, "mean")] == pytest.approx(1.0)
    assert [t.key for t in build_tables(_model_rows(ident, [20], 0.05), study="robustness")] == ["table3"]


def test_a_robustness_oracle_averages_the_omitted_sets_the_models_were_scored_on(synth, tmp_path):
    """Seed 1's trials all errored: the oracle row (and each share) reads over seed 0's omitted
    stocks only, the set the models' means are over, not over seeds 0 and 1."""
    p = synth.panel
    ident = _identity(p)
    write_oracle(tmp_path, "robustness", p, ident, _cells([0, 1], [20]))
    oracle = read_oracle(tmp_path)
    by_seed = oracle.set_index("seed")["omitted_rank_ic"]
    assert by_seed[0] != by_seed[1]
    rows = _model_rows(ident, [20], 0.05)
    rows.loc[rows["seed"] == 1, "status"] = "error"
    (t,) = build_tables(rows, study="robustness", oracle=oracle, share=True)
    assert t.frame.loc[ORACLE, ("omitted_rank_ic", 20, "mean")] == pytest.approx(by_seed[0])
    assert t.frame.loc[ORACLE, ("omitted_rank_ic", 20, "n")] == 1
    (both,) = build_tables(_model_rows(ident, [20], 0.05), study="robustness", oracle=oracle)
    assert both.frame.loc[ORACLE, ("omitted_rank_ic", 20, "mean")] == pytest.approx(by_seed.mean())
