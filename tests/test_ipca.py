"""IPCA against its oracle, the reference package `ipca` (bkelly-lab), plus the properties the
harness relies on: normalisation, realised factors out of sample, degenerate months."""

import dataclasses

import numpy as np
import pytest

from rvrae.bench_ipca import ours_fit, peer_fit, planted_ipca_panel, total_r2
from rvrae.models.ipca import IPCA, gamma_step, instruments, moments
from rvrae.models.registry import make_model


@pytest.fixture
def peer_without_jit(monkeypatch):
    """Run the peer's numba helpers as plain Python: identical maths, no ~30 s JIT compile."""
    ipca_mod = pytest.importorskip("ipca.ipca")
    for name in dir(ipca_mod):
        fn = getattr(ipca_mod, name)
        if name.startswith("_numba_") and hasattr(fn, "py_func"):
            monkeypatch.setattr(ipca_mod, name, fn.py_func)


@pytest.mark.parametrize("K,constant", [(1, False), (3, False), (3, True)])
def test_agrees_with_reference_package(K, constant, peer_without_jit):
    panel = planted_ipca_panel(150, 60, 8, K, seed=0)
    ours, _, model = ours_fit(panel, K, constant=constant)
    peer, _ = peer_fit(panel, K, constant=constant)  # the peer gets the ones column as data
    live = panel.mask
    assert np.corrcoef(ours[live], peer[live])[0, 1] > 0.9999
    r2_ours, r2_peer = total_r2(panel, ours), total_r2(panel, peer)
    assert abs(r2_ours - r2_peer) <= 1e-4
    assert r2_ours > 0.05  # the planted signal is found (truth explains ~20 %)
    assert model.n_iter_ < model.config.max_iter  # converged, not capped


def test_normalisation_as_reference():
    panel = planted_ipca_panel(120, 48, 7, 3, seed=1)
    _, _, model = ours_fit(panel, 3)
    G, F = model.gamma_, model.factors_
    np.testing.assert_allclose(G.T @ G, np.eye(3), atol=1e-8)  # ΓᵀΓ = I
    FtF = F.T @ F
    np.testing.assert_allclose(FtF - np.diag(np.diag(FtF)), 0, atol=1e-8 * FtF.max())
    assert (np.diff(np.diag(FtF)) <= 0).all()  # ordered by second moment
    assert (F.mean(0) > 0).all()  # positive mean


def test_gamma_step_is_the_kronecker_normal_equations():
    rng = np.random.default_rng(0)
    T, C, K = 9, 4, 2
    Z = rng.standard_normal((T, 30, C))
    A, b = Z.transpose(0, 2, 1) @ Z, rng.standard_normal((T, C))
    F = rng.standard_normal((T, K))
    D = sum(np.kron(A[t], np.outer(F[t], F[t])) for t in range(T))
    rhs = sum(np.kron(b[t], F[t]) for t in range(T))
    expected = np.linalg.solve(D, rhs).reshape(C, K)
    np.testing.assert_allclose(gamma_step(F, A, b, ridge=0.0), expected, rtol=1e-10)


def test_predict_realised_factors_and_prevailing_mean():
    panel = planted_ipca_panel(100, 40, 6, 2, seed=2)
    train, valid, test = (panel.view(np.arange(a, b)) for a, b in ((0, 28), (28, 34), (34, 40)))
    calls = []
    model = make_model("ipca", {"n_factors": 2}).fit(
        train, valid, progress=lambda step, rec: calls.append((step, rec))
    )
    fc = model.predict(test)
    # f_post = (ΓᵀZᵀZΓ)⁻¹ΓᵀZᵀr_t over live stocks: a per-month least squares, checked by lstsq.
    f_all = np.stack([
        np.linalg.lstsq(
            instruments(panel.chars[t][panel.mask[t]], True) @ model.gamma_,
            panel.ret[t][panel.mask[t]].astype(np.float64), rcond=None,
        )[0]
        for t in range(40)
    ])
    np.testing.assert_allclose(fc.f_post, f_all[34:40], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fc.f_prior[0], f_all[:34].mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fc.r_hat, np.einsum("tnk,tk->tn", fc.beta, fc.f_prior), atol=1e-6)
    # progress: called once, with the in-sample MSE the fitted model really has.
    assert len(calls) == 1 and calls[0][0] == model.n_iter_
    fit = np.einsum("tnc,ck,tk->tn", instruments(panel.chars[:28], True), model.gamma_,
                    model.factors_)
    mse = ((panel.ret[:28] - fit)[panel.mask[:28]] ** 2).mean()
    assert calls[0][1]["train_loss"] == pytest.approx(mse, rel=1e-6)
    assert np.isfinite(calls[0][1]["valid_loss"])


def test_degenerate_months_do_not_break_the_solves():
    panel = planted_ipca_panel(80, 30, 5, 2, seed=3)
    chars, mask = panel.chars.copy(), panel.mask.copy()
    chars[4, :, 1] = 0.0  # a characteristic entirely missing in one month
    chars[:, :, 3] = 0.0  # ... and one missing in every month (Γ step would be singular)
    mask[7] = False  # a month without a single stock
    panel = dataclasses.replace(panel, chars=chars, mask=mask,
                                ret=np.where(mask, panel.ret, 0).astype(np.float32))
    model = IPCA({"n_factors": 2}).fit(panel.view(np.arange(20)), panel.view(np.arange(20, 25)))
    fc = model.predict(panel.view(np.arange(25, 30)))
    assert np.isfinite(model.gamma_).all() and np.isfinite(fc.r_hat).all()
    assert np.abs(model.gamma_[1 + 3]).max() < 1e-6  # no loading on an all-zero characteristic
    np.testing.assert_array_equal(model.realised_factors(panel, np.array([7])), 0.0)


def test_moments_ignore_dead_stocks():
    panel = planted_ipca_panel(50, 6, 4, 1, seed=4)
    A, b, rr, n = moments(panel.chars, panel.ret + 5.0 * ~panel.mask, panel.mask)
    t = 2
    Z, r = panel.chars[t][panel.mask[t]].astype(np.float64), panel.ret[t][panel.mask[t]]
    # The Gram is accumulated in float32 (the panel's precision): agreement to float32's ~1e-7.
    np.testing.assert_allclose(A[t], Z.T @ Z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b[t], Z.T @ r, rtol=1e-5, atol=1e-6)
    assert n[t] == panel.mask[t].sum() and rr[t] == pytest.approx((r.astype(float) ** 2).sum(), rel=1e-5)


def test_moments_do_not_depend_on_the_thread_count():
    """The month chunks are shared over threads, each month one BLAS call: same bits."""
    panel = planted_ipca_panel(60, 30, 5, 2, seed=1)
    one = moments(panel.chars, panel.ret, panel.mask, True, threads=1)
    for threads in (2, 3):
        for a, b in zip(one, moments(panel.chars, panel.ret, panel.mask, True, threads=threads)):
            np.testing.assert_array_equal(a, b)


def test_squares_let_a_model_linear_in_ranks_span_a_symmetric_beta():
    """`--squares` (Panel.with_squares): a beta shaped like a bump in one characteristic is
    invisible to IPCA on the ranks (its instruments average the two tails away) and linear in
    the squared ranks. Scored against the planted truth on held-out months."""
    from rvrae.data.panel import Panel
    from rvrae.data.prep import rank_to_unit
    from rvrae.metrics import r2

    rng = np.random.default_rng(7)
    T, N, C = 120, 200, 3
    raw = rng.standard_normal((1, N, C)) + 0.3 * rng.standard_normal((T, N, C))
    z = rank_to_unit(raw).astype(np.float64)
    beta = 0.5 + 3.0 * (z[..., 0] ** 2 - 1 / 3)  # a level and a symmetric bump in characteristic 0
    f = 0.05 * rng.standard_normal(T)
    ret = beta * f[:, None] + 0.1 * rng.standard_normal((T, N))
    plain = Panel.from_arrays(z.astype(np.float32), ret, np.ones((T, N), bool), source="bump")
    test = np.arange(96, T)
    oracle = r2(ret[test], beta[test] * f[test, None], plain.mask[test])
    share = {}
    for name, panel in (("ranks", plain), ("squares", plain.with_squares())):
        fc = IPCA({"n_factors": 1}).fit(panel.view(np.arange(96)), panel.view(np.arange(0))).predict(panel.view(test))
        fitted = np.einsum("tnk,tk->tn", fc.beta, fc.f_post)
        share[name] = r2(ret[test], fitted, panel.mask[test]) / oracle
    assert share["squares"] >= 0.95, share  # the truth, up to Γ's estimation error
    assert share["ranks"] <= 0.5, share  # the level only: about a quarter of the betas' spread
