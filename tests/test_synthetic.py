"""The planted synthetic panel (SPEC §2.4): determinism, calibration, CLI round trip."""

from __future__ import annotations

import numpy as np
import pytest

from rvrae.cli import main
from rvrae.data.io import load_data, load_panel
from rvrae.data.synthetic import SynthConfig, make_synthetic


@pytest.fixture(scope="module")
def default():
    return make_synthetic(SynthConfig())


def test_default_oracle_in_the_papers_regime(default):
    s = default.oracle.scores
    assert 0.15 <= s["r2_total"] <= 0.25, s
    assert 0.005 <= s["r2_pred"] <= 0.02, s
    assert 0.05 <= s["rank_ic"] <= 0.10, s
    assert np.array_equal(default.oracle.test_months, np.arange(216, 252))


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
    assert (resid[1:3] > 0.3).all(), resid  # the priced factors: interaction and bump shapes
    assert (resid > 0.05).all(), resid  # even the saturating / threshold shapes are not linear


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
