"""The trainable's own checks, outside Ray (results go to a list through `report`): a trial
holding a GPU share without CUDA, and non-finite model outputs, are errors (error rows in a
study), never an "ok" row that is quietly wrong."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rvrae.identity import StudyIdentity
from rvrae.study import trainable
from rvrae.study.trainable import train_trial, trial_device

SPLIT = (3, 1, 1)


def _config(model="ipca", **kw):
    ident = StudyIdentity("fp", "tiny", SPLIT, 1)
    return {"model": model, "seed": 0, "m": 0, "hp": {}, "identity": ident, "cpus": 1, **kw}


def test_a_gpu_share_without_cuda_is_an_error():
    assert trial_device([], False) == "cpu" and trial_device([0], True) == "cuda"
    with pytest.raises(RuntimeError, match="holds GPU 0 but torch sees no CUDA.*--gpus-per-trial 0"):
        trial_device([0], False)


def test_train_trial_refuses_a_gpu_share_it_cannot_use(tiny_panel, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reports = []
    with pytest.raises(RuntimeError, match="no CUDA"):
        train_trial(_config(), tiny_panel, report=reports.append)
    assert reports == []  # nothing ran on the CPU in its place


def test_a_row_says_where_its_model_computed(tiny_panel, monkeypatch):
    import ray

    # A trial holding a GPU (Ray's view faked): IPCA's ALS runs in numpy whatever it holds.
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Ctx", (), {"get_node_id": lambda self: "n"})())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reports = []
    train_trial(_config("ipca"), tiny_panel, report=reports.append)
    assert reports[-1]["device"] == "cpu" and reports[-1]["r2_total"] == reports[-1]["r2_total"]
    from rvrae.models.registry import make_model, model_names

    # The neural models train where the trial's device is; only IPCA keeps to the CPU.
    assert [n for n in model_names() if not make_model(n).uses_device] == ["ipca"]


@pytest.mark.parametrize("field", ["beta", "f_post", "r_hat"])
def test_non_finite_outputs_are_errors(field, tiny_panel, monkeypatch):
    from rvrae.models import registry

    real = registry.make_model

    class Poisoned:
        def __init__(self, model):
            self.model = model

        def fit(self, *a, **k):
            self.model.fit(*a, **k)
            return self

        def predict(self, panel, months):
            fc = self.model.predict(panel, months)
            bad = getattr(fc, field).copy()
            bad[-1] = np.nan  # the last (test) month
            return dataclasses.replace(fc, **{field: bad})

    monkeypatch.setattr(registry, "make_model", lambda name, cfg: Poisoned(real(name, cfg)))
    reports = []
    with pytest.raises(FloatingPointError, match=f"non-finite {field}"):
        train_trial(_config(), tiny_panel, report=reports.append)
    assert not any("rank_ic" in r for r in reports)  # no metrics were reported as a result


def test_report_hook_gets_every_metric(tiny_panel):
    reports = []
    train_trial(_config(cpus=2), tiny_panel, report=reports.append)
    assert np.isfinite(reports[-1]["rank_ic"]) and reports[-1]["device"] == "cpu"
    assert reports[-1]["threads"] == 2  # the trial's CPUs, as torch ran with them
    assert trainable.RESERVED.count("hook") == 1


def test_a_row_of_restarts_names_the_kept_fit_and_every_fits_validation_score(tiny_panel):
    import json

    hp = {"restarts": 2, "epochs": 2, "n_factors": 2, "hidden": 8, "seq_len": 4, "mc_samples": 2}
    reports = []
    train_trial(_config("rvrae", hp=hp), tiny_panel, report=reports.append)
    row = reports[-1]
    scores = json.loads(row["restart_scores"])
    assert len(scores) == 2 and row["restart"] == int(np.argmax(scores))
    # the kept fit's score is the row's own validation Rank IC (m = 0: the same stocks)
    assert row["valid_rank_ic"] == pytest.approx(max(scores), abs=1e-6)
    reports = []
    train_trial(_config("rvrae", hp={**hp, "restarts": 1}), tiny_panel, report=reports.append)
    assert "restart" not in reports[-1] and "restart_scores" not in reports[-1]


@pytest.mark.parametrize("model, hp", [("ipca", {}), ("rvrae", {"epochs": 2, "n_factors": 2, "hidden": 8, "seq_len": 4,
                                                                 "mc_samples": 2})])  # fmt: skip
def test_a_robustness_forecast_never_sees_the_omitted_stocks_returns_before_the_test(tiny_panel, model, hp):
    """SPEC §2.3: the m stocks' rows leave train and valid, so no score of the trial may move
    when their returns before the test months change (the factors' history, λ̂ included)."""
    from rvrae.data.panel import omit_stocks, split_by_years

    train, _, test = split_by_years(tiny_panel, *SPLIT)
    omitted = omit_stocks(train, test, 10, 0)
    cut = np.ix_(np.arange(int(test.target_months.min())), omitted)
    ret = tiny_panel.ret.copy()
    ret[cut] = np.where(tiny_panel.mask[cut], 3.0 * ret[cut] + 0.05, 0.0)
    other = dataclasses.replace(tiny_panel, ret=ret)
    rows = []
    for panel in (tiny_panel, other):
        reports = []
        train_trial(_config(model, hp=hp, m=10), panel, report=reports.append)
        rows.append(reports[-1])
    for k in ("rank_ic", "r2_pred", "r2_forecast", "sharpe", "omitted_rank_ic", "omitted_r2_pred", "valid_rank_ic"):
        assert rows[0][k] == rows[1][k], k


def test_epochs_is_a_cap_not_a_count():
    """--epochs N caps a config's epochs (SPEC §5): it lowers a default or a --configs value
    above N and leaves one below N as it is; a model without epochs gets none."""
    from rvrae.study.trainable import model_config, resolved_config

    def cfg(model, cap, hp=None):
        ident = StudyIdentity("f", "s", (15, 3, 3), cap)
        return model_config({"model": model, "identity": ident, "hp": hp or {}})

    assert cfg("ca", 200) == {"epochs": 100}  # CA's own 100, not 200
    assert cfg("ca", 20) == {"epochs": 20}
    assert cfg("rvrae", 100, {"epochs": 20}) == {"epochs": 20}  # a tuned 20 stays 20
    assert cfg("rvrae", 8, {"epochs": 20}) == {"epochs": 8}
    assert resolved_config("rvrae", cfg("rvrae", 500))["epochs"] == 50
    assert cfg("ipca", 5) == {}
