"""rvrae.metrics: hand-computed small cases and properties (SPEC §4)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from rvrae import metrics as M


def _panel(t=6, n=40, seed=0):
    rng = np.random.default_rng(seed)
    ret = rng.normal(0, 0.1, (t, n))
    r_hat = 0.3 * ret + rng.normal(0, 0.1, (t, n))
    mask = rng.random((t, n)) > 0.2
    return ret, r_hat, mask


def test_r2_hand_computed_and_mask_ignored():
    ret = np.array([[1.0, 2.0, np.nan]])
    fitted = np.array([[1.0, 0.0, 5.0]])
    mask = np.array([[True, True, False]])
    assert M.r2(ret, fitted, mask) == pytest.approx(1 - 4 / 5)


def test_r2_perfect_and_zero_forecast():
    ret, _, mask = _panel()
    assert M.r2(ret, ret, mask) == pytest.approx(1.0)
    assert M.r2(ret, np.zeros_like(ret), mask) == pytest.approx(0.0)


def test_r2_cross_section_is_the_part_of_r2_without_each_months_level():
    """r2 = (the level's part, by hand: Σ_t n_t (m_t² − (m_t − m̂_t)²) / Σ r²) + r2_cross_section;
    a month's constant added to r̂ moves only the level's part; masked cells are ignored."""
    ret, r_hat, mask = _panel(seed=4)
    ret = ret + 0.05  # a level for the forecast to miss or catch
    ret[~mask], r_hat[~mask] = np.nan, 1e6
    xs = M.r2_cross_section(ret, r_hat, mask)
    r, f = np.where(mask, ret, 0.0), np.where(mask, r_hat, 0.0)
    n = mask.sum(axis=1)
    m, m_hat = r.sum(axis=1) / n, f.sum(axis=1) / n
    level = float(np.sum(n * (m**2 - (m - m_hat) ** 2)) / np.sum(r * r))
    assert M.r2(ret, r_hat, mask) == pytest.approx(level + xs, abs=1e-12)
    shift = np.random.default_rng(5).normal(0, 0.2, (len(ret), 1))
    assert M.r2_cross_section(ret, r_hat + shift, mask) == pytest.approx(xs, abs=1e-12)
    assert M.r2(ret, r_hat + shift, mask) != pytest.approx(M.r2(ret, r_hat, mask), abs=1e-6)
    # a forecast of the month's level alone earns nothing in the cross-section
    assert M.r2_cross_section(ret, np.repeat(m[:, None], ret.shape[1], axis=1), mask) == pytest.approx(0.0, abs=1e-12)
    # one of the deviations exactly: the cross-section earns Σ d² / Σ r², whatever the level
    d = np.where(mask, r - m[:, None], 0.0)
    assert M.r2_cross_section(ret, d + 3.0, mask) == pytest.approx(float(np.sum(d * d) / np.sum(r * r)), abs=1e-12)


def test_r2_total_and_pred_use_beta_times_factors():
    rng = np.random.default_rng(1)
    beta = rng.normal(size=(4, 12, 3))
    f = rng.normal(size=(4, 3))
    ret = np.einsum("tnk,tk->tn", beta, f)
    mask = np.ones((4, 12), bool)
    assert M.r2_total(ret, beta, f, mask) == pytest.approx(1.0)
    lam = np.zeros((4, 3))
    assert M.r2_pred(ret, beta, lam, mask) == pytest.approx(0.0)
    lam2 = f * 0.5  # residual = half the signal -> 1 - 1/4
    assert M.r2_pred(ret, beta, lam2, mask) == pytest.approx(0.75)


def test_ranks_match_scipy_with_ties():
    x = np.array([[3.0, 1.0, 3.0, 2.0, 9.0, 1.0], [5.0, 5.0, 5.0, 0.0, 1.0, 2.0]])
    mask = np.array([[1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]], bool)
    r = M._ranks(x, mask)
    np.testing.assert_allclose(r[0, mask[0]], stats.rankdata(x[0, mask[0]]))
    np.testing.assert_allclose(r[1], stats.rankdata(x[1]))
    assert np.isnan(r[0, 4])


def test_ic_series_matches_scipy_per_month():
    ret, r_hat, mask = _panel()
    ic = M.ic_series(r_hat, ret, mask)
    ric = M.ic_series(r_hat, ret, mask, rank=True)
    for t in range(ret.shape[0]):
        m = mask[t]
        assert ic[t] == pytest.approx(stats.pearsonr(r_hat[t, m], ret[t, m])[0])
        assert ric[t] == pytest.approx(stats.spearmanr(r_hat[t, m], ret[t, m])[0])


def test_rank_ic_invariant_to_monotone_transform():
    ret, r_hat, mask = _panel()
    a = M.ic_series(r_hat, ret, mask, rank=True)
    b = M.ic_series(np.exp(5 * r_hat) - 3, ret, mask, rank=True)
    np.testing.assert_allclose(a, b)
    # Pearson IC is not rank-invariant: the property is specific to Rank IC.
    assert not np.allclose(M.ic_series(r_hat, ret, mask), M.ic_series(np.exp(5 * r_hat), ret, mask))


def test_months_with_few_stocks_skipped():
    ret, r_hat, mask = _panel(t=3, n=30)
    mask[1] = False
    mask[1, :9] = True  # 9 stocks < 10
    ic = M.ic_series(r_hat, ret, mask, rank=True)
    assert np.isnan(ic[1]) and np.isfinite(ic[[0, 2]]).all()
    mask[1, 9] = True  # 10 stocks: scored
    assert np.isfinite(M.ic_series(r_hat, ret, mask, rank=True)[1])
    ls = M.long_short(r_hat, ret, np.where(np.arange(3)[:, None] == 1, mask & (np.arange(30) < 9), mask))
    assert np.isnan(ls["gross"][1]) and np.isfinite(ls["gross"][[0, 2]]).all()


def test_a_month_whose_forecast_ranks_nothing_scores_zero_not_skipped():
    ret, r_hat, mask = _panel(t=4, n=30)
    good = ret + 0.1 * r_hat  # informative in every month
    flat = good.copy()
    flat[1:] = 0.02  # the same forecast for every stock in 3 months of 4
    for rank in (False, True):
        ic = M.ic_series(flat, ret, mask, rank=rank)
        assert ic[0] == pytest.approx(M.ic_series(good, ret, mask, rank=rank)[0]) and (ic[1:] == 0.0).all()
    assert M.rank_ic(flat, ret, mask) == pytest.approx(M.ic_series(good, ret, mask, rank=True)[0] / 4)
    few = mask.copy()
    few[1, 9:] = False  # 9 stocks: skipped as before, constant or not
    assert np.isnan(M.ic_series(flat, ret, few, rank=True)[1])


def test_icir_ddof1_ignores_nan():
    s = np.array([0.1, np.nan, 0.3, 0.2])
    assert M.icir(s) == pytest.approx(0.2 / np.std([0.1, 0.3, 0.2], ddof=1))
    assert math.isnan(M.icir(np.array([0.1, np.nan])))


def test_long_short_hand_computed_with_drift():
    n = 20
    r_hat = np.tile(np.arange(n, dtype=float), (2, 1))
    r_hat[1, 18], r_hat[1, 17] = 0.5, 18.5  # month 1: longs are 19 and 17
    ret = np.zeros((2, n))
    ret[0, 18], ret[0, 19] = 0.1, -0.1  # long leg drifts to 0.55 / 0.45
    ret[0, 0] = 0.2  # short leg drifts to 1.2/2.2, 1/2.2
    ret[1, 19], ret[1, 17], ret[1, 1] = 0.04, 0.02, -0.02
    mask = np.ones((2, n), bool)
    ls = M.long_short(r_hat, ret, mask)
    # month 0: gross = mean(0.1, -0.1) - mean(0.2, 0) = -0.1; built from cash: turnover 2
    assert ls["gross"][0] == pytest.approx(-0.1)
    assert ls["turnover"][0] == pytest.approx(2.0)
    # month 1: longs {19, 17}, shorts: stock 18 now has r_hat 0.5 -> shorts {0, 18}
    assert ls["gross"][1] == pytest.approx(0.03 - 0.0)
    long_to = abs(0 - 0.55) + abs(0.5 - 0.45) + abs(0.5 - 0)
    short_to = abs(0.5 - 1.2 / 2.2) + abs(0 - 1 / 2.2) + abs(0.5 - 0)
    assert ls["turnover"][1] == pytest.approx(long_to + short_to)


def test_costs_lower_returns_by_exactly_cost_times_turnover():
    ret, r_hat, mask = _panel(t=24, n=50)
    ls = M.long_short(r_hat, ret, mask)
    np.testing.assert_allclose(ls["gross"] - ls["net"], 0.003 * ls["turnover"], atol=1e-15)
    assert (ls["turnover"] > 0).all() and (ls["turnover"] <= 4 + 1e-12).all()
    expect = (ls["net"].mean() / ls["net"].std(ddof=1)) * math.sqrt(12)
    assert M.sharpe(ls["net"]) == pytest.approx(expect)
    assert M.sharpe(ls["net"]) < M.sharpe(ls["gross"])
    free = M.long_short(r_hat, ret, mask, cost=0.0)
    np.testing.assert_allclose(free["net"], free["gross"])


def test_constant_ranking_has_no_turnover_after_first_month_when_flat_returns():
    n = 30
    r_hat = np.tile(np.arange(n, dtype=float), (5, 1))
    ret = np.full((5, n), 0.01)  # equal returns: drift keeps equal weights
    ls = M.long_short(r_hat, ret, np.ones((5, n), bool))
    np.testing.assert_allclose(ls["turnover"], [2, 0, 0, 0, 0], atol=1e-12)


def test_sharpe_hand_computed():
    x = np.array([0.01, 0.03, -0.01, 0.02])
    assert M.sharpe(x) == pytest.approx(0.0125 / np.std(x, ddof=1) * math.sqrt(12))
    assert math.isnan(M.sharpe(np.array([0.01])))


def test_coverage_and_nll():
    rng = np.random.default_rng(0)
    ret = rng.normal(0.0, 2.0, (50, 200))
    mask = np.ones_like(ret, bool)
    mu, sd = np.zeros_like(ret), np.full_like(ret, 2.0)
    assert M.coverage(ret, mu, sd, mask) == pytest.approx(0.9, abs=0.01)
    assert M.coverage(ret, mu, sd * 0.1, mask) < 0.2
    nll = M.gaussian_nll(np.array([[1.0]]), np.array([[0.0]]), np.array([[2.0]]), np.array([[True]]))
    assert nll == pytest.approx(-stats.norm.logpdf(1.0, 0.0, 2.0))
    assert math.isnan(M.coverage(ret, mu, None, mask)) and math.isnan(M.gaussian_nll(ret, mu, None, mask))


def test_score_keys_and_values():
    rng = np.random.default_rng(3)
    t, n, k = 12, 40, 2
    beta = rng.normal(size=(t, n, k))
    f = rng.normal(size=(t, k))
    ret = np.einsum("tnk,tk->tn", beta, f) + rng.normal(0, 0.5, (t, n))
    mask = rng.random((t, n)) > 0.1
    fc = SimpleNamespace(r_hat=ret * 0.5, beta=beta, f_post=f, r_std=None)
    out = M.score(ret, mask, fc, np.zeros((t, k)))
    assert tuple(out) == M.TEST_METRICS
    assert out["r2_pred"] == pytest.approx(0.0)
    assert out["rank_ic"] == pytest.approx(1.0) and out["ic"] == pytest.approx(1.0)
    assert out["r2_total"] > 0.5
    assert math.isnan(out["coverage90"]) and math.isnan(out["nll"])
    assert out["sharpe"] > out["sharpe_net"]


def test_r2_beta_is_the_ceiling_of_any_factor_path():
    """Returns exactly β f: the β-regression explains everything; with noise it is at least
    the total R² of any factors on the same β (least squares per month), and a month whose β
    is all zero (nothing alive) does not break it."""
    from rvrae.metrics import r2_beta, r2_total

    rng = np.random.default_rng(0)
    beta = rng.normal(size=(6, 40, 3))
    f = rng.normal(size=(6, 3))
    mask = rng.uniform(size=(6, 40)) > 0.2
    ret = np.einsum("tnk,tk->tn", beta, f)
    assert r2_beta(ret, beta, mask) == pytest.approx(1.0, abs=1e-9)
    noisy = ret + rng.normal(size=ret.shape)
    other = f + 0.3 * rng.normal(size=f.shape)
    assert r2_beta(noisy, beta, mask) > r2_total(noisy, beta, other, mask)
    beta[2] = 0.0
    assert np.isfinite(r2_beta(noisy, beta, mask))
