"""ALSTM and Transformer (beta nets of a CA-style factor model, SPEC §3.2) and the shared
per-stock helper: fit/predict shapes, no look-ahead, determinism, learning a planted panel."""

import dataclasses

import numpy as np
import pytest
import torch

from rvrae.data.panel import Panel
from rvrae.models.alstm import ALSTMBetaNet
from rvrae.models.charbeta import over_stocks
from rvrae.models.registry import make_model

T, N, C = 48, 30, 4
TRAIN, VALID, TEST = np.arange(2, 34), np.arange(34, 40), np.arange(40, 48)
SMALL = {"seq_len": 4, "n_factors": 1, "epochs": 8, "patience": 8, "lr": 1e-2, "batch_months": 4}
WIDTH = {"alstm": {"hidden": 8}, "transformer": {"d_model": 8, "ff_dim": 16}}


def planted_panel(seed: int = 0) -> Panel:
    """r = (0.8 z0 + 0.3) f_t + small noise: one factor, beta linear in a characteristic."""
    rng = np.random.default_rng(seed)
    chars = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    f = 0.02 + 0.1 * rng.standard_normal(T)
    ret = (0.8 * chars[:, :, 0] + 0.3) * f[:, None] + 0.02 * rng.standard_normal((T, N))
    mask = rng.uniform(size=(T, N)) > 0.1
    chars[np.arange(T) < 3, :5] = 0.0  # a few stocks not listed yet (all-zero windows)
    mask[np.arange(T) < 3, :5] = False
    return Panel.from_arrays(chars, ret, mask, source="planted")


def fitted(name: str, panel: Panel, seed: int = 0, **over):
    model = make_model(name, {**SMALL, **WIDTH[name], **over})
    return model.fit(panel.view(TRAIN), panel.view(VALID), seed=seed, device="cpu")


def r2_total(panel: Panel, fc) -> float:
    r, m = panel.ret[fc.months], panel.mask[fc.months]
    fit = np.einsum("tnk,tk->tn", fc.beta, fc.f_post)
    return 1.0 - float(((r - fit) ** 2 * m).sum() / ((r**2) * m).sum())


@pytest.mark.parametrize("name", ["alstm", "transformer"])
def test_fit_predict_learns_without_look_ahead(name):
    panel = planted_panel()
    model = fitted(name, panel)
    fc = model.predict(panel.view(TEST))
    assert fc.r_hat.shape == (len(TEST), N) and fc.beta.shape == (len(TEST), N, 1)
    assert fc.f_post.shape == (len(TEST), 1) and fc.f_prior.shape == (len(TEST), 1)
    assert fc.r_std is None
    assert all(np.isfinite(a).all() for a in (fc.r_hat, fc.beta, fc.f_post, fc.f_prior))
    # No factor forecaster: r_hat is β times the prevailing mean of f_post (SPEC §3).
    assert np.allclose(fc.r_hat, np.einsum("tnk,tk->tn", fc.beta, fc.f_prior), atol=1e-6)
    assert r2_total(panel, fc) > 0.5  # the planted factor explains ~85 % of the variance
    # Predicting every month at once (the study's call) gives the same test-month numbers.
    every = model.predict(panel)
    assert np.allclose(every.r_hat[TEST], fc.r_hat, atol=1e-6)
    assert np.allclose(every.f_prior[TEST], fc.f_prior, atol=1e-6)

    # r_hat of month t does not move when ret[t] (and mask[t]) change; f_post does.
    t = 3
    shocked_ret, shocked_mask = panel.ret.copy(), panel.mask.copy()
    shocked_ret[TEST[t]] = np.where(panel.mask[TEST[t]], -0.4, 0.0)
    shocked_mask[TEST[t], :3] = False
    shocked = dataclasses.replace(panel, ret=shocked_ret, mask=shocked_mask)
    after = model.predict(shocked.view(TEST))
    assert np.array_equal(fc.r_hat[t], after.r_hat[t])
    assert np.array_equal(fc.beta[t], after.beta[t])
    assert not np.allclose(fc.f_post[t], after.f_post[t])


@pytest.mark.parametrize("name", ["alstm", "transformer"])
def test_same_seed_same_numbers_other_seed_other_numbers(name):
    panel = planted_panel()
    cfg = {"epochs": 3, "dropout": 0.2}
    a = fitted(name, panel, seed=1, **cfg).predict(panel.view(TEST))
    b = fitted(name, panel, seed=1, **cfg).predict(panel.view(TEST))
    c = fitted(name, panel, seed=2, **cfg).predict(panel.view(TEST))
    assert np.array_equal(a.r_hat, b.r_hat) and np.array_equal(a.f_post, b.f_post)
    assert not np.array_equal(a.beta, c.beta)


def test_over_stocks_skips_dead_rows_and_chunks_without_changing_numbers():
    torch.manual_seed(0)
    net = ALSTMBetaNet(n_chars=3, hidden=6, layers=2, dropout=0.0, n_factors=2).eval()
    x = torch.randn(2, 5, 7, 3)  # [B, L, N, C]
    x[0, :, 2] = 0.0  # a stock with no data in its window
    x[1, :, [0, 5]] = 0.0
    rows = x.permute(0, 2, 1, 3).reshape(14, 5, 3)
    seen = []  # rows per forward call: the dead ones must not be run (only the one zero row)
    net.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        want = net(rows).reshape(2, 7, 2)
        seen.clear()
        got = over_stocks(net, x)
        assert sorted(seen) == [1, 11], seen  # the zero window once, then the 11 live rows
        seen.clear()
        chunked = over_stocks(net, x, eval_rows=3)
        assert sorted(seen) == [1, 2, 3, 3, 3], seen  # 11 live rows in chunks of ≤ 3
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(chunked, want, atol=1e-6)
    # with gradients: the same numbers, and gradients reach the net through every live row
    out = over_stocks(net, x)
    out.sum().backward()
    assert torch.allclose(out.detach(), want, atol=1e-6)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_config_validation_and_space():
    import optuna

    from rvrae.errors import UserError
    from rvrae.models import alstm, transformer

    with pytest.raises(UserError, match="divisible"):
        make_model("transformer", {"d_model": 9})
    with pytest.raises(UserError, match="dropout"):
        make_model("alstm", {"dropout": 1.5})
    for mod in (alstm, transformer):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = study.ask()
        mod.space(trial)
        model = make_model(mod.MODEL.name, trial.params)  # every searched name is a field
        assert {"n_factors", "dropout", "lr"} <= set(trial.params)
        assert model.config.lr == trial.params["lr"]
