"""The one Ray Tune trainable of every study (SPEC §5): one trial = one (model, seed, m, config).

The panel arrives through the object store (`tune.with_parameters(train_trial, panel=panel)`),
loaded once per study. A trial splits it (15/3/3 years by default), omits m stocks from train
and valid (same set for every model, SPEC §2.3), fits the model with a per-epoch
`ray.tune.report`, predicts ONCE over all months on the full panel and scores the valid months
(`valid_*`, without the omitted stocks), the test months and, when m > 0, the omitted stocks in the test months
(`omitted_*`). λ of R²_pred is the prevailing mean of f_post (paper eq. 33). The final report
also carries the learning curve (`history`) and the forecast of every scored stock-month as
Parquet bytes (rvrae.results.forecasts), which the driver's sink stores beside the row.

Trial config keys (everything else is a model hyperparameter, e.g. what Optuna sampled):
    model, seed, m      the cell
    hp                  dict of model config overrides (grids, --configs)
    identity            the study's `rvrae.identity.StudyIdentity`: its split (years), its
                        epoch cap (overrides the config's epochs for neural models) and its
                        objective (epoch reports carry it as NaN: OptunaSearch reads the
                        metric from every result)
    cpus                CPUs of the trial: torch threads are set to match
    forecasts           False: ship no forecast (StudyOptions.forecasts; default True)
    hook                the one test hook (None in every real study): a picklable callable
                        `hook(train_panel, config) -> train_panel` run just before the fit.
                        Tests inject faults through it (tests/faults.py); nothing test-only
                        lives here.
    cell                grids: a dict of the keys above, the one grid-searched value
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from datetime import datetime, timezone

import numpy as np

RESERVED = ("model", "seed", "m", "hp", "identity", "cpus", "hook", "cell", "forecasts")


def flat(config: dict) -> dict:
    """Grids put (model, seed, m, hp) under one grid-searched key "cell"; lift it up."""
    return {**config, **config["cell"]} if "cell" in config else dict(config)


def model_config(config: dict) -> dict:
    """The model's config overrides of a trial: `hp`, searched keys, and the epoch cap for
    models that have epochs. Deterministic in the trial config, so it identifies the cell."""
    from rvrae.models.registry import get_spec

    config = flat(config)
    hp = dict(config.get("hp") or {})
    hp.update({k: v for k, v in config.items() if k not in RESERVED})
    cap = config["identity"].epoch_cap if "identity" in config else None
    fields = {f.name: f for f in dataclasses.fields(get_spec(config["model"]).config_cls)}
    if cap is not None and "epochs" in fields:
        # a cap: it lowers the config's epochs (its default, or a --configs value) and never
        # raises them (SPEC §5); to train longer, set `epochs` in --configs
        hp["epochs"] = min(int(cap), int(hp.get("epochs", fields["epochs"].default)))
    return hp


def resolved_config(model: str, overrides: dict) -> dict:
    """Every field of the model's config after `overrides` (defaults included): what the
    trial actually ran, part of its cell key, stored as the row's `resolved_config`."""
    from rvrae.models.base import config_from_dict
    from rvrae.models.registry import get_spec

    cfg = config_from_dict(get_spec(model).config_cls, dict(overrides), model)
    return json.loads(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _take(fc, idx: np.ndarray):
    """A Forecast restricted to rows `idx` of its months."""
    from rvrae.models.base import Forecast

    return Forecast(**{f.name: None if getattr(fc, f.name) is None else getattr(fc, f.name)[idx]
                       for f in dataclasses.fields(Forecast)})


def evaluate(panel, fc, valid_months, test_months, omitted) -> dict:
    """Every metric of SPEC §4/§6 from one all-months forecast. `fc.months` = 0..T-1. On a
    planted panel (`panel.meta["oracle"]`) also `span_r2_<k>`, k = 1..K_true: the test months'
    R² of each true factor's betas on the model's (`rvrae.metrics.span_r2`), and
    `rank_ic_span`: the Rank IC the model's betas allow (`rvrae.metrics.span_rank_ic`), and
    `rank_ic_true`: the test Rank IC of its r̂ against the true expected return instead of the
    returns (`rvrae.metrics.true_rank_ic`, the ranking without the returns' noise). A
    model with a calibrated dynamic forecast also gets `rank_ic_w0` and `rank_ic_w1`: the test
    Rank IC of its forecast at either end of the share w (`Forecast.r_w0`, `r_w1`), so a table
    shows how much of its `rank_ic` hangs on the validation months' choice of w; on a planted
    panel also `rank_ic_true_w0` / `rank_ic_true_w1`, the same two ends ranked against the
    true expected return: whether the dynamic forecast has skill, without the test years'
    factor surprises that the realised returns carry (studies/FINDINGS.md, "Ranking against
    the truth")."""
    from rvrae.metrics import (SPAN_PREFIX, SPAN_RANK_IC, TRUE_RANK_IC, long_short, rank_ic, score, span_r2,
                               span_rank_ic, true_rank_ic)
    from rvrae.models.base import prevailing_mean

    lam = prevailing_mean(fc.f_post)  # eq. 33: mean of f_post over every earlier month
    out = evaluate_valid(panel, fc, valid_months, omitted, lam)
    s = score(panel.ret[test_months], panel.mask[test_months], _take(fc, test_months), lam[test_months])
    out.update({k: float(v) for k, v in s.items()})
    out.update(evaluate_omitted(panel, fc, test_months, omitted, lam))
    m = np.asarray(test_months)
    oracle = panel.meta.get("oracle")
    if oracle is not None:  # a planted panel: how much of each true factor the betas span
        for k, v in enumerate(span_r2(fc.beta[m], oracle.beta[m], panel.mask[m]), start=1):
            out[f"{SPAN_PREFIX}{k}"] = float(v)
        out[SPAN_RANK_IC] = span_rank_ic(fc.beta[m], oracle.r_hat[m], panel.ret[m], panel.mask[m])
        out[TRUE_RANK_IC] = true_rank_ic(fc.r_hat[m], oracle.r_hat[m], panel.mask[m])
    if fc.r_w0 is not None:  # a calibrated dynamic forecast: its Rank IC at either end of w
        for key, true_key, r in (("rank_ic_w0", "rank_ic_true_w0", fc.r_w0), ("rank_ic_w1", "rank_ic_true_w1", fc.r_w1)):
            out[key] = rank_ic(r[m], panel.ret[m], panel.mask[m])
            if oracle is not None:  # and against the truth: does the dynamic forecast have skill?
                out[true_key] = true_rank_ic(r[m], oracle.r_hat[m], panel.mask[m])
    ls = long_short(fc.r_hat[m], panel.ret[m], panel.mask[m])
    out["ls_gross"] = json.dumps([float(x) for x in np.asarray(ls["gross"])])
    out["ls_net"] = json.dumps([float(x) for x in np.asarray(ls["net"])])
    out["ls_dates"] = json.dumps([str(d) for d in panel.dates[test_months]])
    return out


def evaluate_valid(panel, fc, valid_months, omitted, lam=None) -> dict:
    """The `valid_*` metrics of `evaluate`: the validation months without the omitted stocks,
    which were removed from valid (SPEC §2.3). `lam`: the prevailing mean of f_post, if
    already made."""
    from rvrae.metrics import score
    from rvrae.models.base import prevailing_mean

    lam = prevailing_mean(fc.f_post) if lam is None else lam
    mask = panel.mask[valid_months]
    if len(omitted):
        mask = mask.copy()
        mask[:, np.asarray(omitted, dtype=np.int64)] = False
    s = score(panel.ret[valid_months], mask, _take(fc, valid_months), lam[valid_months])
    return {"valid_" + k: float(v) for k, v in s.items()}


def without_history(panel, omitted, test_start: int):
    """The panel a robustness trial forecasts from: the omitted stocks' returns removed from
    every month before `test_start` (SPEC §2.3: their rows leave train and valid), so the
    factors of those months, their prevailing mean (eq. 33's λ̂) and a dynamic forecast's
    history are those of the stocks the model was fitted on. Their characteristics stay (a
    test month's β reads the stock's window), and so do their test months' returns."""
    if not len(omitted):
        return panel
    cut = np.ix_(np.arange(test_start), np.asarray(omitted, dtype=np.int64))
    mask, ret = panel.mask.copy(), panel.ret.copy()
    mask[cut], ret[cut] = False, 0.0
    return dataclasses.replace(panel, mask=mask, ret=ret)


def evaluate_omitted(panel, fc, test_months, omitted, lam=None) -> dict:
    """The `omitted_*` metrics of `evaluate`: the test months scored on the omitted stocks
    only ({} when none are omitted), on a planted panel with `omitted_rank_ic_true` (their
    Rank IC against the true expected return). `lam`: the prevailing mean of f_post, if
    already made."""
    from rvrae.metrics import TRUE_RANK_IC, score, true_rank_ic
    from rvrae.models.base import prevailing_mean

    if not len(omitted):
        return {}
    lam = prevailing_mean(fc.f_post) if lam is None else lam
    mask = np.zeros_like(panel.mask[test_months])
    mask[:, omitted] = panel.mask[test_months][:, omitted]  # omitted stocks only
    s = score(panel.ret[test_months], mask, _take(fc, test_months), lam[test_months])
    oracle = panel.meta.get("oracle")
    if oracle is not None:
        s[TRUE_RANK_IC] = true_rank_ic(fc.r_hat[test_months], oracle.r_hat[test_months], mask)
    return {"omitted_" + k: float(v) for k, v in s.items()}


def trial_device(gpu_ids: list, cuda_available: bool) -> str:
    """"cuda" for a trial that holds a GPU share, "cpu" for one that holds none. A GPU share
    without CUDA in the trial's process is an error (an error row), never a silent CPU run
    that holds a GPU it does not use and reports CPU timings as GPU ones."""
    if not gpu_ids:
        return "cpu"
    if not cuda_available:
        import torch

        raise RuntimeError(
            f"this trial holds GPU {','.join(map(str, gpu_ids))} but torch sees no CUDA device in its process "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): install a CUDA build of "
            "torch on the GPU nodes, or run with --gpus-per-trial 0"
        )
    return "cuda"


def check_finite(name: str, fc, months: np.ndarray, live: np.ndarray) -> None:
    """Every output the metrics use must be finite on the scored stock-months: a NaN β or
    f_post would otherwise give an "ok" row whose metrics the tables silently drop."""
    parts = {"r_hat": fc.r_hat[months][live], "beta": fc.beta[months][live], "f_post": fc.f_post[months],
             "f_prior": fc.f_prior[months]}  # fmt: skip
    if fc.r_std is not None:
        parts["r_std"] = fc.r_std[months][live]
    bad = [k for k, v in parts.items() if not np.isfinite(v).all()]
    if bad:
        raise FloatingPointError(f"{name} produced non-finite {', '.join(bad)} on the scored months")


def train_trial(config: dict, panel, report=None) -> None:
    """The trainable. Reports per epoch (train_loss, valid_loss), then every metric once, to
    `report` (default `ray.tune.report`; callers outside Tune, such as the speed study's
    in-process reference and the tests, pass their own)."""
    import ray
    import torch

    from rvrae.data.panel import omit_stocks, split_by_years
    from rvrae.models.registry import make_model
    from rvrae.train import seed_everything

    config = flat(config)
    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    # Called outside Ray (the speed study's in-process reference), ask Ray nothing: its
    # queries would start a local instance.
    in_ray = ray.is_initialized()
    if report is None:
        from ray.tune import report
    device = trial_device(ray.get_gpu_ids() if in_ray else [], torch.cuda.is_available())
    seed, m = int(config["seed"]), int(config["m"])
    meta = {
        "started_at": now_iso(), "device": device, "hostname": socket.gethostname(),
        # torch's threads: a reduction split over another number of threads sums in another
        # order, so the same seed on the same CPU gives other digits at another thread count
        "threads": torch.get_num_threads(),
        "node_id": ray.get_runtime_context().get_node_id() if in_ray else "", "pid": os.getpid(),
    }
    identity = config["identity"]
    objective = identity.objective
    seed_everything(seed)
    train, valid, test = split_by_years(panel, *identity.split)
    omitted = omit_stocks(train, test, m, seed)  # depends on (seed, m, panel) only
    train = train.view(train.target_months, drop=omitted)
    valid = valid.view(valid.target_months, drop=omitted)
    if config.get("hook") is not None:  # tests only (fault injection): see the module docstring
        train = config["hook"](train, config)
    model = make_model(config["model"], model_config(config))
    if not getattr(model, "uses_device", True):
        meta["device"] = "cpu"  # the row says where the model computed, not what the trial held

    epochs = [0]

    def progress(epoch: int, record: dict) -> None:
        epochs[0] = epoch
        # every loss the fit records (train_loss, valid_loss, any other a model adds): an
        # early-stopping scheduler may watch any of them
        rep = {k: float(v) for k, v in record.items() if k != "epoch"}
        if objective:
            rep[objective] = float("nan")  # not known before the end of the fit
        report({**rep, **meta, "epochs": epoch})

    t0 = time.perf_counter()
    model.fit(train, valid, seed=seed, device=device, progress=progress)
    fit_seconds = time.perf_counter() - t0
    # once, over all months, on the full panel less the omitted stocks' returns before the test
    # months: removed from train and valid, they must not reach the factors' history either
    fc = model.predict(without_history(panel, omitted, int(test.target_months.min())), np.arange(panel.T))
    scored = np.concatenate([valid.target_months, test.target_months])
    live = panel.mask[scored]
    check_finite(config["model"], fc, scored, live)
    metrics = evaluate(panel, fc, valid.target_months, test.target_months, omitted)
    history = getattr(model, "history_", None)
    final = {
        **metrics, **meta,
        "epochs": len(history) if history is not None else epochs[0],
        "fit_seconds": fit_seconds, "finished_at": now_iso(),
    }
    if getattr(model, "forecast_weight_", None) is not None:
        # The share of the dynamic forecast the validation months allowed and its t-statistic
        # (`NeuralFactorModel.calibrate`): a t near `forecast_tstat` says the forecast sits on
        # the gate's edge (studies/FINDINGS.md, "How much of the AR(1) forecast").
        final["forecast_weight"] = float(model.forecast_weight_)
        final["forecast_tstat"] = float(model.forecast_tstat_)
    if getattr(model, "forecast_factor_tstat_", None) is not None:
        # the largest of the factors' own AR(1) t-statistics (`forecast_test="valid+factors"`)
        final["forecast_factor_tstat"] = float(model.forecast_factor_tstat_)
    if getattr(model, "forecast_scale_", None) is not None:  # its level c (`forecast_scale`)
        final["forecast_scale"] = float(model.forecast_scale_)
    if getattr(model, "restart_scores_", None) is not None:
        # `restarts` > 1: the kept fit (0 = the trial's seed) and every fit's validation Rank
        # IC, the score it was kept on (`NeuralFactorModel.fit`); `epochs` is the kept fit's
        final["restart"] = int(model.restart_)
        final["restart_scores"] = json.dumps(model.restart_scores_)
    if getattr(model, "prior_spread_", None) is not None:
        # A learned prior's month-to-month movement against the posterior's, on the validation
        # months (`rvrae.npx.prior_spread`): 0 says the prior forecasts the same every month
        # (RVRAE's under its default weight decay: studies/FINDINGS.md, "The prior under
        # weight decay").
        final["prior_spread"] = float(model.prior_spread_)
    if history:
        # The learning curve goes into the row; valid_loss into every result, as an early-
        # stopping scheduler (ASHA) that reads it per epoch expects of the last one too.
        final["history"] = json.dumps([{k: int(v) if k == "epoch" else float(v) for k, v in r.items()} for r in history])
        final["valid_loss"] = float(history[-1]["valid_loss"])
    if config.get("forecasts", True):
        from rvrae.results.forecasts import REPORT_KEY, forecast_table, to_bytes

        # The driver's Parquet sink writes these bytes under --out (rvrae.results.forecasts).
        table = forecast_table(panel, fc, valid.target_months, test.target_months, omitted)
        final[REPORT_KEY] = to_bytes(table)
    report(final)


def warm_worker() -> None:
    """Ray's `worker_process_setup_hook`: import torch and the models, and take one Adam step,
    when a worker process starts — in the background while the driver loads the panel —
    rather than inside the first trial (torch's first optimizer step imports torch._dynamo:
    seconds in a cold process; scipy.stats, which the metrics import, another second)."""
    import torch

    import rvrae.metrics  # noqa: F401
    import rvrae.models.registry  # noqa: F401
    import rvrae.results.forecasts  # noqa: F401
    import rvrae.train  # noqa: F401

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p])
    p.sum().backward()
    opt.step()
