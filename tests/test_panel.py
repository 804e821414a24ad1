"""Preprocessing, splits and the robustness omission (SPEC §2.2-2.3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from rvrae.cli import main
from rvrae.data.io import write_long
from rvrae.data.panel import eligible_for_omission, omit_stocks, split_by_years
from rvrae.data.prep import rank_to_unit
from rvrae.data.synthetic import SynthConfig, make_synthetic
from rvrae.errors import UserError


@pytest.fixture(scope="module")
def panel():
    # 21 years, so the paper's 15/3/3 split applies; few stocks and chars keep it fast
    return make_synthetic(SynthConfig(seed=3, n_stocks=60, n_months=252, n_chars=4)).panel


def test_rank_matches_scipy_with_ties_and_missing():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=(5, 40, 3)).astype(np.float32)  # many ties
    x[rng.random(x.shape) < 0.2] = np.nan
    x[2, :, 1] = np.nan  # a characteristic missing for the whole month
    x[3, :, 2] = np.nan
    x[3, 7, 2] = 4.0  # a single observed value
    u = rank_to_unit(x)
    assert u.dtype == np.float32 and np.all(np.abs(u) <= 1)
    for t in range(5):
        for c in range(3):
            ok = ~np.isnan(x[t, :, c])
            if ok.sum() > 1:
                r = rankdata(x[t, ok, c])  # average ranks for ties
                np.testing.assert_allclose(u[t, ok, c], 2 * (r - 1) / (ok.sum() - 1) - 1, atol=1e-6)
            assert (u[t, ~ok, c] == 0).all()
    assert (u[2, :, 1] == 0).all() and (u[3, :, 2] == 0).all()
    v = rank_to_unit(rng.normal(size=(2, 9, 1)))  # no ties: exactly -1, -0.75, ..., 1
    np.testing.assert_allclose(np.sort(v[1, :, 0]), np.linspace(-1, 1, 9), atol=1e-6)


def test_panel_chars_are_ranks(panel):
    assert panel.chars.dtype == np.float32 and np.abs(panel.chars).max() <= 1
    assert (panel.chars[~panel.mask] == 0).all()  # absent stocks carry nothing
    assert (panel.ret[~panel.mask] == 0).all()


def test_whole_month_missing_char_is_zero_through_the_loader(tmp_path):
    synth = make_synthetic(SynthConfig(seed=0, n_stocks=20, n_months=6, n_chars=2))
    f = synth.frame.copy()
    f.loc[f.date == f.date.min(), "c2"] = np.nan
    p = tmp_path / "p.parquet"
    write_long(f, p)
    from rvrae.data.io import load_panel

    pan = load_panel(p)
    assert (pan.chars[0, :, 1] == 0).all()
    assert np.abs(pan.chars[0, pan.mask[0], 0]).max() == 1


def test_split_is_chronological_15_3_3(panel):
    tr, va, te = split_by_years(panel)
    assert len(tr.months) == 180 and len(va.months) == 36 and len(te.months) == 36
    assert tr.months.max() < va.months.min() and va.months.max() < te.months.min()
    assert te.months.max() == panel.T - 1
    assert np.all(np.diff(np.concatenate([tr.months, va.months, te.months])) == 1)
    assert str(te.dates[te.months[0]]) == "2018-01"  # 2000-01 + 18 years
    assert tr.chars is panel.chars  # views share the arrays


def test_omission_is_deterministic_nested_and_model_free(panel):
    tr, va, te = split_by_years(panel)
    eligible = eligible_for_omission(tr, te)
    a = omit_stocks(tr, te, 20, seed=5)
    assert np.array_equal(a, omit_stocks(tr, te, 20, seed=5))  # only (seed, m, panel) matter
    assert not np.array_equal(a, omit_stocks(tr, te, 20, seed=6))
    assert set(a) <= set(eligible) and len(set(a)) == 20
    b = omit_stocks(tr, te, 35, seed=5)
    assert set(a) <= set(b)  # nested in m
    assert len(omit_stocks(tr, te, 0, seed=5)) == 0
    view = tr.view(tr.months, drop=a)
    assert not view.mask[:, a].any() and panel.mask[:, a].any()
    assert te.mask[:, a].any()  # the test view still has them


def test_default_panel_can_omit_150(panel):
    synth = make_synthetic(SynthConfig())
    tr, va, te = split_by_years(synth.panel)
    assert len(eligible_for_omission(tr, te)) - 150 >= 50


def test_too_few_months_and_too_many_omitted(panel, tmp_path, capsys):
    short = make_synthetic(SynthConfig(seed=0, n_stocks=20, n_months=100, n_chars=2)).panel
    with pytest.raises(UserError, match="split needs 252"):
        split_by_years(short)
    tr, va, te = split_by_years(panel)
    n = len(eligible_for_omission(tr, te))
    with pytest.raises(UserError, match=f"only {n} stocks"):
        omit_stocks(tr, te, n + 1, seed=0)


def test_squares_are_each_months_centred_squared_ranks(panel):
    import dataclasses

    chars = panel.chars.copy()
    chars[5, :, 2] = 0.0  # a characteristic missing for every stock in one month
    plain = dataclasses.replace(panel, chars=chars)
    sq = plain.with_squares()
    C = panel.C
    assert sq.chars.shape == (panel.T, panel.N, 2 * C) and sq.chars.dtype == np.float32
    np.testing.assert_array_equal(sq.chars[..., :C], chars)
    assert sq.char_names == panel.char_names + tuple(f"{c}^2" for c in panel.char_names)
    for t in (0, 5, 100, 251):
        live = panel.mask[t]
        u2 = chars[t][live].astype(np.float64) ** 2
        np.testing.assert_allclose(sq.chars[t][live, C:], u2 - u2.mean(0), atol=1e-6)
        assert (sq.chars[t][~live, C:] == 0).all()  # absent stocks carry nothing, as their ranks
    assert (sq.chars[5, :, C + 2] == 0).all()  # SPEC §2.2: all missing is all 0, squares too
    # what produced it is on record: another source, another fingerprint, the truth kept
    assert sq.source == f"{panel.source} +squares" and sq.fingerprint() != plain.fingerprint()
    assert sq.meta["oracle"] is panel.meta["oracle"] and sq.months is None
    with pytest.raises(UserError, match="already has its squared ranks"):
        sq.with_squares()
