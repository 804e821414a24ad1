"""Model name -> class, config dataclass and Optuna search space (SPEC §3, §5).

Each model module defines its model class (`MODEL`), its config dataclass (`Config`, with
commented defaults) and `space(trial)`: a module-level Optuna define-by-run function (it must
pickle for `Tuner.restore`) whose parameter names are config fields. Modules are imported on
first use so that `rvrae data ...` does not pay for torch models it never builds.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from rvrae.errors import UserError

MODEL_MODULES = {
    "rvrae": "rvrae.models.rvrae",
    "ipca": "rvrae.models.ipca",
    "ca": "rvrae.models.ca",
    "factorvae": "rvrae.models.factorvae",
    "alstm": "rvrae.models.alstm",
    "transformer": "rvrae.models.transformer",
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type
    config_cls: type
    space: Callable[[Any], dict | None]  # optuna define-by-run


def model_names() -> list[str]:
    return list(MODEL_MODULES)


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_MODULES:
        raise UserError(f"unknown model {name!r} (known: {', '.join(MODEL_MODULES)})")
    mod = importlib.import_module(MODEL_MODULES[name])
    return ModelSpec(name=name, cls=mod.MODEL, config_cls=mod.Config, space=mod.space)


def make_model(name: str, config: dict | Any | None = None):
    """Build a model from its name and a config dict or dataclass (unknown keys raise)."""
    return get_spec(name).cls(config)


def parse_models(text: str) -> list[str]:
    """`a,b` or `all` -> validated model names, in registry order for `all`."""
    if text.strip() == "all":
        return model_names()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--models is empty (give names like rvrae,ipca or 'all')")
    for n in names:
        if n not in MODEL_MODULES:
            raise UserError(f"unknown model {n!r} (known: {', '.join(MODEL_MODULES)})")
    return names
