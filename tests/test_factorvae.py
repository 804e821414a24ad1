"""FactorVAE (Duan et al. 2022; SPEC §3.2): each test guards against a bug seen in public
re-implementations and fails if it is reintroduced."""

import dataclasses

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from rvrae.data.panel import Panel
from rvrae.models.base import PanelTensors
from rvrae.models.factorvae import FactorVAENet, gaussian_kl, known_before
from rvrae.models.registry import make_model

T, N, C = 40, 24, 4
TRAIN, VALID, TEST = np.arange(2, 30), np.arange(30, 35), np.arange(35, 40)
SMALL = {"seq_len": 4, "n_factors": 3, "hidden": 8, "n_portfolios": 6, "epochs": 4,
         "batch_months": 4, "lr": 5e-3}


def tiny_panel(seed: int = 0) -> Panel:
    rng = np.random.default_rng(seed)
    chars = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    f = 0.01 + 0.08 * rng.standard_normal(T)
    ret = (0.6 * chars[:, :, 0] + 0.2) * f[:, None] + 0.03 * rng.standard_normal((T, N))
    mask = rng.uniform(size=(T, N)) > 0.15
    return Panel.from_arrays(chars, ret, mask, source="tiny")


def built(seed: int = 0, **over):
    """A model with an untrained net, plus a batch of three months with their windows."""
    panel = tiny_panel()
    model = make_model("factorvae", {**SMALL, **over})
    torch.manual_seed(seed)
    net = model.build(panel)
    batch = PanelTensors(panel, "cpu", model.config.seq_len).batch(np.array([10, 11, 12]))
    return model, net, batch


def test_portfolio_softmax_normalises_over_stocks_and_skips_masked_ones():
    _, net, batch = built()
    m = batch.m.clone()
    m[:, :3] = 0.0  # stocks without a return this month
    with torch.no_grad():
        e = net.extract(batch)
        w = net.portfolio_weights(e, m)  # [B, N, M]
        assert torch.allclose(w.sum(dim=1), torch.ones(3, SMALL["n_portfolios"]), atol=1e-5)
        assert (w[m == 0] == 0).all() and (w[m > 0] > 0).all()
        # The posterior aggregates through those weights: adding c to every live stock's
        # return adds c to each portfolio return, so μ_post moves by c · W_post · 1.
        mu0, _ = net.posterior(e, batch.r, m)
        mu1, _ = net.posterior(e, batch.r + 0.05 * m, m)
        shift = 0.05 * net.post_mu.weight.sum(dim=1)
        assert torch.allclose(mu1 - mu0, shift.expand_as(mu0), atol=1e-5)
        # ... and a masked stock's return never enters it.
        junk = batch.r.clone()
        junk[:, :3] = 9.0
        assert torch.allclose(net.posterior(e, junk, m)[0], mu0)


def test_beta_portfolios_add_the_least_squares_factors_on_the_models_own_beta():
    """The option: μ_post = eq. 5 + the month's ridge least-squares factors of r − μ_α on β
    (live stocks only); the default posterior has no such term."""
    assert built()[1].post_beta is None
    _, net, batch = built(beta_portfolios=True)
    m = batch.m.clone()
    m[:, :3] = 0.0
    r = batch.r * m
    with torch.no_grad():
        e = net.extract(batch)
        mu_a, _, beta = net.decoder(e)
        net.post_mu.weight.zero_()
        net.post_mu.bias.zero_()  # leaves only the least-squares term
        mu, _ = net.posterior(e, r, m)
        junk = r.clone()
        junk[:, :3] = 9.0  # stocks without a return this month never enter
        assert torch.allclose(net.posterior(e, junk, m)[0], mu)
    for b in range(3):
        live = m[b].numpy() > 0
        X = beta[b].numpy()[live].astype(np.float64)
        y = (r[b] - mu_a[b]).numpy()[live].astype(np.float64)
        want = np.linalg.solve(X.T @ X + 1e-4 * live.sum() * np.eye(X.shape[1]), X.T @ y)
        np.testing.assert_allclose(mu[b].numpy(), want, rtol=1e-3, atol=1e-6)


def test_prediction_mean_comes_from_the_mu_heads_not_the_sigma_heads():
    model, net, batch = built()
    net.eval()
    with torch.no_grad():
        base = model.forecast(net, batch)
        for head in (net.alpha_sigma, net.prior_sigma, net.post_sigma):
            head.weight.add_(0.7)
            head.bias.add_(0.3)
        sig = model.forecast(net, batch)
        assert torch.equal(base["r_hat"], sig["r_hat"])
        assert not torch.allclose(base["r_std"], sig["r_std"])
        net.prior_mu.bias.add_(0.5)
        mu = model.forecast(net, batch)
        assert not torch.allclose(base["r_hat"], mu["r_hat"])
    # r_hat = α + β μ_prior, and α rides on a unit factor so β·f_prior reproduces it.
    assert torch.allclose(torch.einsum("bnk,bk->bn", mu["beta"], mu["f_prior"]), mu["r_hat"],
                          atol=1e-6)
    assert (mu["f_post"][:, -1] == 1).all() and (mu["r_std"] > 0).all()


def test_kl_is_posterior_to_prior():
    # The closed form against torch, on a case where the two directions differ.
    mq, sq = torch.tensor([0.3, -1.0]), torch.tensor([0.2, 1.5])
    mp, sp = torch.tensor([0.0, 0.5]), torch.tensor([1.0, 0.4])
    fwd = kl_divergence(Normal(mq, sq), Normal(mp, sp))
    assert torch.allclose(gaussian_kl(mq, sq, mp, sp), fwd, atol=1e-6)
    assert not torch.allclose(fwd, kl_divergence(Normal(mp, sp), Normal(mq, sq)), atol=1e-2)

    # The training loss: loss(γ=2) − loss(γ=0) = 2 · KL(posterior ‖ prior), the same direction
    # (eq. 13 as printed: KL per month).
    model, net, batch = built(gamma=2.0, kl_scale="per_month")
    with torch.no_grad():
        e = net.extract(batch)
        q = net.posterior(e, batch.r, batch.m)
        p = net.prior(e, known_before(batch))
        kl_qp = kl_divergence(Normal(*q), Normal(*p)).sum(-1).mean()
        kl_pq = kl_divergence(Normal(*p), Normal(*q)).sum(-1).mean()
        with_kl = model.loss(net, batch)
        model.config.gamma = 0.0
        nll_only = model.loss(net, batch)
    assert torch.allclose(with_kl - nll_only, 2 * kl_qp, rtol=1e-4)
    assert not torch.allclose(kl_qp, kl_pq, rtol=1e-2)
    # The default scales each month's KL by its live stocks (the month's ELBO per stock).
    model.config.gamma, model.config.kl_scale = 2.0, "per_stock"
    with torch.no_grad():
        per_stock = model.loss(net, batch) - nll_only
    kl_month = kl_divergence(Normal(*q), Normal(*p)).sum(-1)
    assert torch.allclose(per_stock, 2 * (kl_month / batch.m.sum(1)).mean(), rtol=1e-4)

    # The reconstruction term is the Gaussian NLL of r_t under the eq. 9 decoder from z_post.
    with torch.no_grad():
        mean, std = net.returns(*net.decoder(e), *q)
        lp = Normal(mean, std).log_prob(batch.r) + 0.5 * np.log(2 * np.pi)
        want = -((lp * batch.m).sum(1) / batch.m.sum(1)).mean()
    assert torch.allclose(nll_only, want, rtol=1e-5)


def test_forecast_uses_the_prior_only_fit_is_deterministic():
    panel = tiny_panel()
    model = make_model("factorvae", SMALL)
    model.fit(panel.view(TRAIN), panel.view(VALID), seed=3, device="cpu")
    fc = model.predict(panel.view(TEST))
    K = SMALL["n_factors"] + 1  # + the unit factor carrying α
    assert fc.beta.shape == (len(TEST), N, K) and fc.f_prior.shape == (len(TEST), K)
    assert fc.r_std.shape == (len(TEST), N) and np.isfinite(fc.r_std).all()

    t = 2
    ret, mask = panel.ret.copy(), panel.mask.copy()
    ret[TEST[t]] = np.where(mask[TEST[t]], 0.5, 0.0)
    mask[TEST[t], :4] = False
    after = model.predict(dataclasses.replace(panel, ret=ret, mask=mask).view(TEST))
    assert np.array_equal(fc.r_hat[t], after.r_hat[t]) and np.array_equal(fc.r_std[t], after.r_std[t])
    assert not np.allclose(fc.f_post[t], after.f_post[t])

    again = make_model("factorvae", SMALL).fit(panel.view(TRAIN), panel.view(VALID), seed=3)
    assert np.array_equal(again.predict(panel.view(TEST)).r_hat, fc.r_hat)


def test_space_names_are_config_fields():
    import optuna

    from rvrae.models import factorvae

    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    factorvae.space(trial)
    model = make_model("factorvae", trial.params)
    assert {"n_factors", "gamma", "hidden", "lr"} == set(trial.params)
    assert model.config.gamma == trial.params["gamma"]


def test_a_months_prior_pools_the_same_stocks_alone_or_in_a_batch():
    """The prior's pool for month t must not depend on which months share its batch: a stock
    with characteristics but no return in t's window (an omitted stock in a robustness trial,
    whose earlier returns are removed) joined t's pool when a later month of a 12-month
    prediction batch gave it a return, but never in the one-month training batches."""
    panel = tiny_panel()
    model = make_model("factorvae", SMALL)
    model.fit(panel.view(TRAIN), panel.view(VALID), seed=3, device="cpu")
    t, j, L = TEST[0], 5, SMALL["seq_len"]
    mask = panel.mask.copy()
    mask[t - L + 1 : t + 1, j] = False  # no return in t's window; returns after t kept
    mask[t + 1 : t + 4, j] = True
    q = dataclasses.replace(panel, mask=mask, ret=np.where(mask, panel.ret, 0).astype(np.float32))
    tensors = PanelTensors(q, "cpu", SMALL["seq_len"])
    prior = [model._run(tensors, months)["z_prior"][0] for months in (np.array([t]), np.arange(t, t + 5))]
    assert np.abs(prior[0] - prior[1]).max() < 1e-6  # the prior's mean (1.8e-3 apart before)
    alone = model.predict(q.view(np.array([t])))
    batched = model.predict(q.view(np.arange(t, t + 5)))
    # nor on whether a stock has a return at t itself (known after the forecast): j's only
    # return in t's window is at t, and the prior is the same with it or without it
    only_t = mask.copy()
    only_t[t, j] = True
    p_t = dataclasses.replace(panel, mask=only_t, ret=np.where(only_t, panel.ret, 0).astype(np.float32))
    with_t = model._run(PanelTensors(p_t, "cpu", SMALL["seq_len"]), np.array([t]))["z_prior"][0]
    assert np.abs(with_t - prior[0]).max() < 1e-6
    live = q.mask[t]  # the scored stocks (j has no return at t: no forecast to compare)
    np.testing.assert_allclose(alone.r_std[0][live], batched.r_std[0][live], rtol=1e-6)
    np.testing.assert_allclose(alone.r_hat[0][live], batched.r_hat[0][live], rtol=1e-6, atol=1e-9)
