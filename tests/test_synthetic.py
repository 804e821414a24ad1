"""The planted synthetic panel (SPEC §2.4): determinism, calibration, CLI round trip."""

from __future__ import annotations

import numpy as np
import pytest

from rvrae.cli import main
from rvrae.data.io import load_data, load_panel
from rvrae.data.synthetic import SynthConfig, make_synthetic, read_design


@pytest.fixture(scope="module")
def default():
    return make_synthetic(SynthConfig())


def test_default_oracle_in_the_papers_regime(default):
    s = default.oracle.scores
    assert 0.15 <= s["r2_total"] <= 0.25, s
    assert 0.005 <= s["r2_pred"] <= 0.02, s  # β · the prevailing mean of the true factors
    assert 0.05 <= s["rank_ic"] <= 0.10, s
    assert np.array_equal(default.oracle.test_months, np.arange(216, 252))


def test_oracle_reports_both_predictive_r2s_under_the_models_names(default):
    """r2_pred uses the prevailing mean of the true factors (what every model's r2_pred
    uses), r2_forecast the oracle's conditional forecast (what every model's own r̂ is);
    the factor dynamics are learnable, so the second clearly beats the first."""
    from rvrae.metrics import r2, r2_pred
    from rvrae.npx import prevailing_mean

    o, p, m = default.oracle, default.panel, default.oracle.test_months
    pm = prevailing_mean(o.factors)[m]
    assert o.scores["r2_pred"] == pytest.approx(r2_pred(p.ret[m], o.beta[m], pm, p.mask[m]))
    assert o.scores["r2_forecast"] == pytest.approx(r2(p.ret[m], o.r_hat[m], p.mask[m]))
    assert o.scores["r2_forecast"] >= 1.5 * o.scores["r2_pred"], o.scores
    assert "r2_pred_prevailing" not in o.scores  # one name per definition


def test_references_score_the_true_betas_with_a_factor_forecast_from_the_past(default):
    """The oracle's references (printed next to it): the true betas with the prevailing mean
    of the true factors — whose forecast R² is then the oracle's r2_pred by definition — and
    with each true factor's AR(1) fitted on its own past; rescoring moves them with the
    oracle to other test months (the demo's split)."""
    from rvrae.data.synthetic import REFERENCES
    from rvrae.metrics import ic_series, r2
    from rvrae.npx import prevailing_ar1

    o, p, m = default.oracle, default.panel, default.oracle.test_months
    assert tuple(o.references) == tuple(REFERENCES)
    pm, ar = o.references["true β, prevailing mean"], o.references["true β, AR(1)"]
    assert pm["r2_forecast"] == pytest.approx(o.scores["r2_pred"])
    rh = np.einsum("tnk,tk->tn", o.beta[m], prevailing_ar1(o.factors)[m])
    assert ar["r2_forecast"] == pytest.approx(r2(p.ret[m], rh, p.mask[m]))
    assert ar["rank_ic"] == pytest.approx(np.nanmean(ic_series(rh, p.ret[m], p.mask[m], rank=True)))
    assert pm["r2_total"] == ar["r2_total"] == o.scores["r2_total"]  # f_post = the true f
    assert np.isnan(ar["coverage90"])  # no risk forecast
    other = make_synthetic(SynthConfig())
    other.oracle.rescore(other.panel, np.arange(180, 216))
    assert other.oracle.references["true β, AR(1)"]["rank_ic"] != ar["rank_ic"]
    assert other.oracle.scores["rank_ic"] != o.scores["rank_ic"]


def test_factor_visibility_follows_the_spike_and_the_linear_share_of_the_betas():
    """A factor's spike is N σ² mean(β²) / σ_ε²: doubling its volatility (the same draws)
    quadruples it and nothing else; a small-variance factor whose betas have no linear part
    (an interaction) is hidden, one with mostly linear betas (saturating) is visible through
    the managed portfolios, and at four times the volatility the interaction is visible too.
    The "visible β" reference zeroes exactly the hidden factors' betas."""
    from rvrae.data.synthetic import factor_visibility
    from rvrae.metrics import ic_series
    from rvrae.npx import prevailing_ar1

    base = dict(n_stocks=200, n_months=120, n_chars=8, n_factors=3, n_signal=4, seed=3,
                premia=(0.005, 0.005, 0.005), phis=(0.0, 0.0, 0.0), shapes=("bump", "saturating", "interaction"))
    small = make_synthetic(SynthConfig(vols=(0.03, 0.006, 0.004), **base))
    big = make_synthetic(SynthConfig(vols=(0.03, 0.006, 0.016), **base))
    vs, vb = small.oracle.visibility, big.oracle.visibility
    assert vb[2]["spike"] == pytest.approx(16 * vs[2]["spike"], rel=1e-4)
    assert vb[0]["spike"] == pytest.approx(vs[0]["spike"], rel=1e-6)
    assert vs[1]["linear"] > 0.8 and abs(vs[2]["linear"]) < 0.1 and vs[0]["linear"] > 0.5
    assert [v["visible"] for v in vs] == [True, True, False]
    assert [v["visible"] for v in vb] == [True, True, True]
    assert factor_visibility(small.panel, small.oracle) == vs  # default months: before the test
    o, p, m = small.oracle, small.panel, small.oracle.test_months
    rh = np.einsum("tnk,tk->tn", o.beta[m], prevailing_ar1(o.factors)[m] * [1.0, 1.0, 0.0])
    assert o.references["visible β, AR(1)"]["rank_ic"] == pytest.approx(
        np.nanmean(ic_series(rh, p.ret[m], p.mask[m], rank=True)))
    assert o.references["visible β, AR(1)"]["rank_ic"] != o.references["true β, AR(1)"]["rank_ic"]


def test_a_model_linear_in_ranks_stays_clearly_below_the_oracle(default):
    """IPCA (betas linear in the ranked characteristics) on the default 15/3/3 split."""
    from rvrae.data.panel import split_by_years
    from rvrae.metrics import r2_total
    from rvrae.models.registry import make_model

    train, valid, test = split_by_years(default.panel)
    fc = make_model("ipca", {}).fit(train, valid).predict(test)
    m = test.target_months
    share = r2_total(default.panel.ret[m], fc.beta, fc.f_post, default.panel.mask[m]) / default.oracle.scores["r2_total"]
    assert 0.5 <= share <= 0.85, share


def test_default_panel_shape(default):
    p, cfg = default.panel, default.config
    assert p.T == 252 and p.C == cfg.n_chars
    assert (p.mask.sum(axis=1) == cfg.n_stocks).all()  # exactly n_stocks alive per month
    assert p.N > 1.5 * cfg.n_stocks  # entry and exit
    assert 0.03 < p.meta["missing_share"] < 0.07
    assert p.meta["oracle"] is default.oracle
    o = default.oracle
    K = cfg.n_factors
    assert o.beta.shape == (p.T, p.N, K) and o.factors.shape == (p.T, K)
    # the oracle forecast is beta_t . E[f_t | past]
    np.testing.assert_allclose(o.r_hat, np.einsum("tnk,tk->tn", o.beta, o.f_prior), atol=1e-5)
    # the frame is the panel a user would load
    assert len(default.frame) == p.mask.sum()
    assert list(default.frame.columns[:3]) == ["permno", "date", "ret"]


def test_betas_are_nonlinear_in_the_characteristics(default):
    """A linear fit of the true betas on the ranked chars leaves a clear residual."""
    p, o = default.panel, default.oracle
    m = p.mask
    X = np.concatenate([p.chars[m], np.ones((m.sum(), 1), np.float32)], axis=1)
    y = o.beta[m]  # [rows, K]
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = ((y - X @ coef) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    # the market's bump and the priced interaction have no linear part at all; the sines of
    # the variance factors keep ~40 % outside it; even the saturating shape is not linear
    assert resid[0] > 0.9 and resid[2] > 0.9, resid
    assert (resid[3:] > 0.3).all(), resid
    assert resid[1] > 0.02, resid


def test_deterministic_by_seed():
    cfg = SynthConfig(seed=7, n_stocks=30, n_months=40, n_chars=5)
    a, b = make_synthetic(cfg), make_synthetic(cfg)
    c = make_synthetic(SynthConfig(seed=8, n_stocks=30, n_months=40, n_chars=5))
    assert a.panel.fingerprint() == b.panel.fingerprint() != c.panel.fingerprint()
    assert a.frame.equals(b.frame)
    assert a.oracle.scores == b.oracle.scores


def test_synth_then_check_through_the_cli(tmp_path, capsys):
    out = tmp_path / "p.parquet"
    assert main(["data", "synth", "--out", str(out), "--stocks", "25", "--months", "30", "--chars", "4"]) == 0
    assert out.exists()
    assert main(["data", "check", str(out)]) == 0
    out_text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "30 months" in out_text and "4 characteristics" in out_text
    # the file holds the generated panel exactly
    mine = make_synthetic(SynthConfig(seed=0, n_stocks=25, n_months=30, n_chars=4)).panel
    back = load_panel(out)
    np.testing.assert_array_equal(back.mask, mine.mask)
    np.testing.assert_allclose(back.ret, mine.ret, rtol=1e-6)
    np.testing.assert_allclose(back.chars, mine.chars, atol=1e-6)
    assert list(tmp_path.iterdir()) == [out]  # no temporary files left behind


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--out", "{tmp}/p.txt"], "must end in"),
        (["--out", "{tmp}/missing/p.parquet"], "does not exist"),
        (["--out", "{tmp}/p.parquet", "--stocks", "0"], "n_stocks"),
    ],
)
def test_synth_bad_out_writes_nothing(tmp_path, capsys, args, needle):
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["data", "synth", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert list(tmp_path.rglob("*")) == []


def test_load_data_synthetic_is_the_default_panel(default):
    p = load_data("synthetic")
    assert p.fingerprint() == default.panel.fingerprint()
    assert "oracle" in p.meta


def test_synth_from_a_design_file_with_flags_on_top(tmp_path):
    design = tmp_path / "k2.json"
    design.write_text('{"seed": 5, "n_factors": 2, "n_chars": 4, "n_stocks": 40, "n_months": 30,'
                      ' "shapes": ["interaction", "bump"], "premia": [0.004, 0], "vols": [0.03, 0.01],'
                      ' "phis": [0.4, 0], "idio_vol": 0.05}')
    out = tmp_path / "p.parquet"
    assert main(["data", "synth", "--design", str(design), "--out", str(out), "--months", "36"]) == 0
    mine = make_synthetic(SynthConfig(seed=5, n_factors=2, n_chars=4, n_stocks=40, n_months=36,
                                      shapes=("interaction", "bump"), premia=(0.004, 0.0),
                                      vols=(0.03, 0.01), phis=(0.4, 0.0), idio_vol=0.05)).panel
    back = load_panel(out)
    assert back.T == 36  # the flag overrides the file's 30 months
    np.testing.assert_array_equal(back.mask, mine.mask)
    np.testing.assert_allclose(back.ret, mine.ret, rtol=1e-6)
    assert make_synthetic(SynthConfig(seed=0, n_stocks=40, n_months=36, n_chars=4)).panel.fingerprint() \
        != mine.fingerprint()  # the design's fields reached the generator


@pytest.mark.parametrize("name", ["A", "B", "C", "D"])
def test_the_readmes_unseen_panels_are_shipped_designs(name):
    from pathlib import Path

    cfg = SynthConfig(**read_design(Path(__file__).parents[1] / "studies" / "panels" / f"{name}.json"))
    assert len(cfg.shapes) == len(cfg.premia) == len(cfg.vols) == len(cfg.phis) == cfg.n_factors


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[1, 2]", "a design is a JSON object"),
        ('{"n_factor": 2}', "unknown field 'n_factor'"),
        ('{"premia": [0.1, "x"]}', "field 'premia' must be a list of float"),
        ('{"seed": 1.5}', "field 'seed' must be int"),
        ('{"n_stocks": true}', "field 'n_stocks' must be int"),
        ('{"shapes": ["blob"]}', "invalid shapes"),
        ('{"noise_rho": [0.5, 0.9, 0.99]}', "invalid noise_rho"),
        ('{"start": "the year 2000"}', "invalid start"),
        ('{"seed": -3}', "invalid seed"),
        ('{"start": "1500-01"}', "invalid start"),  # beyond datetime64[ns]: dates overflowed
        ('{"start": "2262-01", "n_months": 24}', "invalid start"),
        ('{"premia": [NaN]}', "invalid premia"),
        ('{"market_beta_spread": Infinity}', "invalid market_beta_spread"),
        ("{bad", "not JSON (line 1"),
    ],
)
def test_bad_design_file_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, text, needle):
    design = tmp_path / "design.json"
    design.write_text(text)
    assert main(["data", "synth", "--design", str(design), "--out", str(tmp_path / "p.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(design) in err and needle in err, err
    assert list(tmp_path.iterdir()) == [design]


def test_load_data_takes_a_design_and_names_it(tmp_path):
    design = tmp_path / "k2.json"
    design.write_text('{"seed": 3, "n_factors": 2, "n_chars": 4, "n_stocks": 30, "n_months": 40, "idio_vol": 0.05}')
    panel = load_data(f"synthetic:{design}")
    mine = make_synthetic(SynthConfig(seed=3, n_factors=2, n_chars=4, n_stocks=30, n_months=40, idio_vol=0.05))
    assert panel.fingerprint() == mine.panel.fingerprint() and "oracle" in panel.meta
    # the tables' "Produced by" names the design's fields, not only its size
    assert panel.source == "synthetic(seed=3, n_stocks=30, n_months=40, n_chars=4, n_factors=2, idio_vol=0.05)"
    assert load_data("synthetic").source == "synthetic(seed=0, n_stocks=300, n_months=252, n_chars=20)"


@pytest.mark.parametrize(
    "spec, opts, needle",
    [
        ("synthetic:", {}, "needs the design file"),
        ("synthetic:{tmp}/missing.json", {}, "missing.json: design file does not exist"),
        ("synthetic:{tmp}/d.json", {"percent": True}, "takes no loader options"),
    ],
)
def test_load_data_bad_design_spec(tmp_path, spec, opts, needle):
    from rvrae.errors import UserError

    (tmp_path / "d.json").write_text('{"n_stocks": 30}')
    with pytest.raises(UserError, match=needle):
        load_data(spec.format(tmp=tmp_path), **opts)
