"""One conformance test over every registered model (STYLE: neuralforecast's common tests):
fit/predict on a tiny panel; shapes, finiteness, no look-ahead in r_hat, determinism."""

import dataclasses

import numpy as np
import pytest

from rvrae.data.panel import Panel
from rvrae.models.base import Forecast
from rvrae.models.registry import get_spec, make_model, model_names

T, N, C = 40, 36, 5
TRAIN, VALID, TEST = np.arange(4, 28), np.arange(28, 34), np.arange(34, 40)


def tiny_panel() -> Panel:
    """A planted one-factor panel: r = (z0 * 0.5 + 0.2) * f + noise, stocks coming and going."""
    rng = np.random.default_rng(0)
    chars = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    f = 0.02 + 0.05 * rng.standard_normal(T)
    ret = (0.5 * chars[:, :, 0] + 0.2) * f[:, None] + 0.05 * rng.standard_normal((T, N))
    mask = rng.uniform(size=(T, N)) > 0.15
    chars[:, :, 2][5] = 0.0  # a characteristic missing for a whole month
    return Panel.from_arrays(chars, ret, mask, source="tiny")


def small_config(name: str) -> dict:
    """Each model's defaults, shrunk where the config has the knob: 2 epochs, small widths."""
    fields = {f.name for f in dataclasses.fields(get_spec(name).config_cls)}
    wanted = {"epochs": 2, "n_factors": 2, "hidden": 8, "hidden_size": 8, "d_model": 8,
              "n_portfolios": 8, "seq_len": 4, "mc_samples": 2, "max_iter": 20}
    return {k: v for k, v in wanted.items() if k in fields}


def fit_predict(name: str, panel: Panel, seed: int = 0) -> Forecast:
    model = make_model(name, small_config(name))
    model.fit(panel.view(TRAIN), panel.view(VALID), seed=seed, device="cpu")
    return model.predict(panel.view(TEST))


@pytest.mark.parametrize("name", model_names())
def test_model_conforms(name):
    panel = tiny_panel()
    fc = fit_predict(name, panel)
    t, k = len(TEST), fc.beta.shape[-1]
    assert np.array_equal(fc.months, TEST)
    assert fc.r_hat.shape == (t, N) and fc.beta.shape == (t, N, k)
    assert fc.f_post.shape == (t, k) and fc.f_prior.shape == (t, k)
    for a in (fc.r_hat, fc.beta, fc.f_post, fc.f_prior):
        assert np.isfinite(a).all()
    if fc.r_std is not None:
        assert fc.r_std.shape == (t, N) and (fc.r_std >= 0).all()

    # Determinism: a second fit with the same seed gives the same forecast, bit for bit.
    again = fit_predict(name, panel)
    assert np.array_equal(fc.r_hat, again.r_hat)
    assert np.array_equal(fc.f_post, again.f_post)

    # No look-ahead: changing every return of a test month, and which returns it has (half
    # the stocks' returns missing: a delisting is news of that month too), leaves that
    # month's r_hat as it was on the stocks still there (the model is fitted once; only the
    # data it predicts from changes).
    model = make_model(name, small_config(name))
    model.fit(panel.view(TRAIN), panel.view(VALID), seed=0, device="cpu")
    base = model.predict(panel.view(TEST))
    target = TEST[2]
    kept = panel.mask[target] & (np.arange(panel.N) % 2 == 0)
    shocked_mask = panel.mask.copy()
    shocked_mask[target] = kept
    shocked_ret = panel.ret.copy()
    shocked_ret[target] = np.where(kept, 0.3, 0.0)
    shocked = dataclasses.replace(panel, ret=shocked_ret, mask=shocked_mask)
    after = model.predict(shocked.view(TEST))
    assert kept.sum() >= 10 and (panel.mask[target] & ~kept).sum() >= 10
    assert np.array_equal(base.r_hat[2][kept], after.r_hat[2][kept]), "r_hat for month t used ret[t] or mask[t]"
    assert not np.array_equal(base.f_post[2], after.f_post[2]), "f_post must use ret[t]"


def test_unknown_config_key_is_a_user_error():
    from rvrae.errors import UserError

    for name in model_names():
        with pytest.raises(UserError, match="unknown config key 'nope'"):
            make_model(name, {"nope": 1})
