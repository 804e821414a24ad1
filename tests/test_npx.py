"""The torch-free numpy helpers every layer shares (rvrae.npx), against hand-computed values
and scipy, and their one-copy use by data, metrics, models and the synthetic panel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from rvrae import npx


def test_tie_average_ranks_by_hand_and_against_scipy():
    v = np.array([[3.0, 1.0, 3.0, np.inf, 2.0], [5.0, 5.0, 5.0, 5.0, 0.0]])
    np.testing.assert_array_equal(npx.tie_average_ranks(v), [[2.5, 0.0, 2.5, 4.0, 1.0], [2.5, 2.5, 2.5, 2.5, 0.0]])
    x = np.random.default_rng(0).integers(0, 6, size=(4, 30)).astype(float)
    np.testing.assert_array_equal(npx.tie_average_ranks(x) + 1, rankdata(x, axis=1))
    assert npx.tie_average_ranks(x.astype(np.float32), np.float32).dtype == np.float32


def test_prevailing_mean_by_hand():
    f = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0], [7.0, 0.0]])
    want = [[0.0, 0.0], [1.0, 10.0], [2.0, 15.0], [3.0, 30.0]]  # mean of the rows before
    np.testing.assert_array_equal(npx.prevailing_mean(f), want)
    assert npx.prevailing_mean(f).dtype == np.float32


def test_prior_spread_by_hand():
    post = np.array([[0.0, 1.0, 5.0], [2.0, 1.0, 5.0], [4.0, 1.0, 5.0]])  # stds 1.633, 0, 0
    prior = np.array([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0], [3.0, 9.0, 0.0]])  # stds 0.816, ...
    # only the first dimension's posterior moves: its prior moves half as much
    assert npx.prior_spread(prior, post) == pytest.approx(0.5)
    post[:, 2] = [1.0, 2.0, 3.0]  # the third moves now; its prior does not
    assert npx.prior_spread(prior, post) == pytest.approx((0.5 + 0.0) / 2)
    assert np.isnan(npx.prior_spread(np.ones((3, 2)), np.ones((3, 2))))  # no posterior moves


def test_prevailing_ar1_is_each_factors_least_squares_ar1_on_the_rows_before():
    rng = np.random.default_rng(0)
    f = np.zeros((60, 3))
    for t in range(1, 60):
        f[t] = 0.01 + 0.5 * f[t - 1] + 0.02 * rng.standard_normal(3)
    f[:, 2] = 0.3  # a constant factor: no slope to fit, so its prevailing mean
    got, pm = npx.prevailing_ar1(f, min_pairs=5), npx.prevailing_mean(f)
    assert got.dtype == np.float32
    for t in range(60):
        for k in range(3):
            if t - 1 >= 5 and k < 2:  # pairs (f[s-1], f[s]), s = 1..t-1
                x = np.c_[np.ones(t - 1), f[: t - 1, k]]
                a, b = np.linalg.lstsq(x, f[1:t, k], rcond=None)[0]
                assert got[t, k] == pytest.approx(a + b * f[t - 1, k], abs=1e-6), (t, k)
            else:
                assert got[t, k] == pytest.approx(pm[t, k], abs=1e-7), (t, k)
    assert np.abs(got[30:, :2] - pm[30:, :2]).max() > 1e-3  # the dynamics are used


def test_one_copy_of_each_helper():
    import rvrae.data.synthetic as synthetic
    import rvrae.models.base as base
    from rvrae.data.prep import rank_to_unit
    from rvrae.metrics import ic_series

    assert base.prevailing_mean is npx.prevailing_mean is synthetic.prevailing_mean
    # ranks: prep maps them to [-1, 1], the rank IC correlates them; both with ties averaged
    x = np.array([[[1.0], [2.0], [2.0], [4.0], [np.nan]]], dtype=np.float32)  # [T=1, N=5, C=1]
    np.testing.assert_allclose(rank_to_unit(x)[0, :, 0], [-1.0, 0.0, 0.0, 1.0, 0.0])
    r_hat = np.array([[1.0, 2.0, 2.0, 4.0] * 3])
    ret = np.array([[1.0, 3.0, 3.0, 9.0] * 3])
    assert ic_series(r_hat, ret, np.ones_like(ret, bool), rank=True, min_stocks=1)[0] == pytest.approx(1.0)


def test_ls_factors_are_each_months_least_squares_on_its_live_stocks():
    rng = np.random.default_rng(1)
    beta = rng.standard_normal((4, 30, 3))
    ret = rng.standard_normal((4, 30))
    mask = rng.random((4, 30)) < 0.8
    mask[3] = False  # an empty month: f = 0, not an error
    got = npx.ls_factors(beta.astype(np.float32), ret, mask)
    for t in range(3):
        want = np.linalg.lstsq(beta[t][mask[t]], ret[t][mask[t]], rcond=None)[0]
        np.testing.assert_allclose(got[t], want, rtol=1e-5, atol=1e-5)  # float32 betas
    np.testing.assert_array_equal(got[3], 0.0)
