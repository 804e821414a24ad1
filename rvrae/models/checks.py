"""The config checks every model's `Config.__post_init__` runs (one copy): sizes at least 1,
rates in [0, 1), options from a fixed set. Each raises UserError naming the model and key."""

from __future__ import annotations

from typing import Any, Iterable

from rvrae.errors import UserError

FORECASTS = ("mean", "ar1")  # every neural model's factor forecast (NeuralConfig.forecast)
FORECASTS_WITH_PRIOR = ("ar1", "shrunk", "prior", "mean")  # RVRAE, FactorVAE: their prior too
PREMIA = ("factors", "ls")  # NeuralConfig.premia, checked for every neural model
FORECAST_GATES = ("tstat", "shrink")  # NeuralConfig.forecast_gate, likewise
FORECAST_SCALES = ("none", "valid", "shrink")  # NeuralConfig.forecast_scale, likewise
FORECAST_TESTS = ("valid", "valid+factors")  # NeuralConfig.forecast_test, likewise


def check_config(model: str, cfg: Any, at_least_1: Iterable[str] = (), unit: Iterable[str] = (),
                 choices: dict[str, Iterable] | None = None) -> None:  # fmt: skip
    """`at_least_1`: integer sizes (>= 1); `unit`: rates in [0, 1) (dropout); `choices`: key
    -> allowed values (a neural config's `premia`, `forecast_gate`, `forecast_test` and `forecast_scale`
    always)."""
    if hasattr(cfg, "restarts"):  # every neural config (NeuralConfig.restarts)
        at_least_1 = (*at_least_1, "restarts")
    if getattr(cfg, "restart_tstat", 0.0) < 0:  # every neural config (NeuralConfig.restart_tstat)
        raise UserError(f"{model}: restart_tstat must be >= 0, got {cfg.restart_tstat}")
    # every trained model's loop settings, where its config has them: a zero window, epoch cap
    # or batch is an IndexError deep in a fit, a negative KL weight a loss that runs to NaN
    at_least_1 = (*at_least_1, *(k for k in ("epochs", "patience", "batch_months", "seq_len")
                                 if hasattr(cfg, k) and k not in at_least_1))  # fmt: skip
    for key in ("lr",):
        if hasattr(cfg, key) and not getattr(cfg, key) > 0:
            raise UserError(f"{model}: {key} must be > 0, got {getattr(cfg, key)}")
    for key in ("kl_weight", "weight_decay"):
        if hasattr(cfg, key) and not getattr(cfg, key) >= 0:
            raise UserError(f"{model}: {key} must be >= 0, got {getattr(cfg, key)}")
    for key in at_least_1:
        if getattr(cfg, key) < 1:
            raise UserError(f"{model}: {key} must be >= 1, got {getattr(cfg, key)}")
    for key in unit:
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise UserError(f"{model}: {key} must be in [0, 1), got {getattr(cfg, key)}")
    choices = dict(choices or {})
    if hasattr(cfg, "premia"):
        choices.setdefault("premia", PREMIA)
        choices.setdefault("forecast_gate", FORECAST_GATES)
        choices.setdefault("forecast_scale", FORECAST_SCALES)
        choices.setdefault("forecast_test", FORECAST_TESTS)
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"{model}: {key} must be one of {tuple(allowed)}, got {getattr(cfg, key)!r}")
