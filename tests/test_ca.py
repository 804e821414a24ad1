"""CA0–CA3 (GKX conditional autoencoder): architecture, the reusable factor net, learning on
a planted panel, and degenerate months."""

import dataclasses

import numpy as np
import pytest
import torch

from rvrae.data.panel import Panel
from rvrae.errors import UserError
from rvrae.models.base import PanelTensors
from rvrae.models.ca import CA, CAFactorNet, CANet, Config
from rvrae.models.layers import managed_portfolios

T, N, C = 60, 120, 6


def planted_panel(seed: int = 0) -> Panel:
    """r = β(z)·f + noise with nonlinear betas of two characteristics and two factors."""
    rng = np.random.default_rng(seed)
    chars = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    beta = np.stack([1.0 + np.abs(chars[..., 0]), chars[..., 1] * chars[..., 0]], -1)  # [T,N,2]
    f = np.stack([0.01 + 0.06 * rng.standard_normal(T), 0.05 * rng.standard_normal(T)], -1)
    ret = np.einsum("tnk,tk->tn", beta, f) + 0.05 * rng.standard_normal((T, N))
    mask = rng.uniform(size=(T, N)) > 0.1
    return Panel.from_arrays(chars, ret, mask, source="planted-ca")


def splits(panel):
    return panel.view(np.arange(0, 40)), panel.view(np.arange(40, 50)), panel.view(np.arange(50, 60))


def r2(ret, fitted, mask):
    return 1 - ((ret - fitted)[mask] ** 2).sum() / (ret[mask] ** 2).sum()


@pytest.mark.parametrize("depth,widths", [(0, []), (1, [32]), (2, [32, 16]), (3, [32, 16, 8])])
def test_depth_builds_gkx_layer_sizes(depth, widths):
    net = CANet(C, Config(depth=depth, n_factors=3))
    linears = [m for m in net.beta.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip([C] + widths, widths + [3])
    )
    norms = [m.num_features for m in net.beta.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms == widths  # BatchNorm (+ ReLU) after every hidden layer
    scaled = CANet(C, Config(depth=depth, width_scale=0.5, n_factors=3))
    assert [m.out_features for m in scaled.beta.modules() if isinstance(m, torch.nn.Linear)][
        :-1
    ] == [w // 2 for w in widths]


def test_bad_depth_is_a_user_error():
    with pytest.raises(UserError, match="depth"):
        CA({"depth": 4})


def test_factor_net_is_linear_in_the_managed_portfolios():
    torch.manual_seed(0)
    z, r = torch.randn(3, 20, C), torch.randn(3, 20)
    m = (torch.rand(3, 20) > 0.2).float()
    net = CAFactorNet(C, 4, ridge=1e-4)
    f = net(z, r, m)
    assert f.shape == (3, 4)
    ones = torch.cat([torch.ones(3, 20, 1), z], -1)  # KPS/GKX's constant instrument first
    torch.testing.assert_close(f, managed_portfolios(ones, r, m, 1e-4) @ net.linear.weight.T)
    bare = CAFactorNet(C, 4, ridge=1e-4, constant=False)
    expected = managed_portfolios(z, r, m, 1e-4) @ bare.linear.weight.T
    torch.testing.assert_close(bare(z, r, m), expected)
    # Returns of dead stocks do not move the factors.
    torch.testing.assert_close(net(z, r + 10 * (1 - m), m), f)


def test_batchnorm_statistics_ignore_dead_stocks():
    net = CANet(C, Config(depth=2, n_factors=2)).train()
    z = torch.rand(2, 30, C)
    m = (torch.rand(2, 30) > 0.3).float()
    junk = z + 50.0 * (1 - m)[..., None]  # wild characteristics on dead stocks only
    a, b = net.beta(z, m), net.beta(junk, m)
    torch.testing.assert_close(a * m[..., None], b * m[..., None])


def test_learns_the_planted_model():
    panel = planted_panel()
    train, valid, test = splits(panel)
    model = CA({"n_factors": 2, "depth": 1, "epochs": 30, "lr": 3e-3}).fit(train, valid, seed=0)
    fc = model.predict(test)
    fitted = np.einsum("tnk,tk->tn", fc.beta, fc.f_post)
    months = test.target_months
    score = r2(panel.ret[months], fitted, panel.mask[months])
    assert score > 0.2  # the truth explains ~60 % here; a model that learnt nothing scores ≤ 0
    # No factor forecaster: f_prior is the prevailing mean of f_post and r_hat = β f_prior.
    np.testing.assert_allclose(fc.r_hat, np.einsum("tnk,tk->tn", fc.beta, fc.f_prior), atol=1e-6)
    hist = model.predict(panel, np.arange(50)).f_post
    np.testing.assert_allclose(fc.f_prior[0], hist.mean(0), rtol=1e-4, atol=1e-6)


def test_loss_adds_the_l1_penalty_on_weight_matrices():
    panel = planted_panel()
    batch = PanelTensors(panel, "cpu", 1).batch(np.array([3, 4]))
    model = CA({"n_factors": 2, "l1": 0.01})
    net = model.build(panel).train()
    torch.manual_seed(0)
    with_l1 = model.loss(net, batch)
    model.config = dataclasses.replace(model.config, l1=0.0)
    without = model.loss(net, batch)
    weights = sum(p.abs().sum() for p in net.parameters() if p.dim() > 1)
    torch.testing.assert_close(with_l1 - without, 0.01 * weights)


def test_degenerate_months_do_not_crash():
    panel = planted_panel(1)
    chars, mask = panel.chars.copy(), panel.mask.copy()
    chars[10, :, 2] = 0.0  # a characteristic entirely missing in one month
    chars[55, :, :] = 0.0  # a test month with no characteristics at all
    mask[12] = False
    mask[13, 1:] = False  # one live stock: BatchNorm cannot train on that month
    panel = dataclasses.replace(panel, chars=chars, mask=mask,
                                ret=np.where(mask, panel.ret, 0).astype(np.float32))
    train, valid, test = splits(panel)
    model = CA({"n_factors": 2, "depth": 2, "epochs": 2, "batch_months": 1}).fit(train, valid)
    fc = model.predict(test)
    for a in (fc.r_hat, fc.beta, fc.f_post, fc.f_prior):
        assert np.isfinite(a).all()
