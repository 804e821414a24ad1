"""Test-only fault injection, reaching the production trainable through its one hook
(`StudyOptions(hook=...)` -> trial config key "hook", called as `hook(train_panel, config)`
just before the fit; see rvrae.study.trainable).

    StudyOptions(..., hook=Faults({"ipca": "raise@0,flaky@1", "ca": "nan@1"}))

Kinds: "raise" fails the trial outright; "nan" poisons the training returns, so a neural
model's loss turns NaN (FloatingPointError in rvrae.train) and any other model's forecast
does; "flaky" fails the trial's first attempt only (a marker in its trial dir), so Tune's
retry (FailureConfig) succeeds; "slow" holds the trial for a second, so a fault scenario (a
node removed mid-study) is sure to find trials still to run. "KIND@SEED" applies to that seed
only; several comma-separated specs: the first that applies wins.

Ray workers cannot import this folder, so the module is pickled by value.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import ray.cloudpickle

KINDS = ("raise", "nan", "flaky", "slow")


def fault_of(spec: str | None, seed: int) -> str | None:
    """The fault kind a trial of `seed` gets from a spec ("KIND", "KIND@SEED", comma-separated)."""
    for part in (spec or "").split(","):
        kind, at, only = part.partition("@")
        if kind and (not at or int(only) == seed):
            return kind
    return None


@dataclasses.dataclass(frozen=True)
class Faults:
    by_model: dict  # model -> spec

    def __post_init__(self):
        for spec in self.by_model.values():
            for part in spec.split(","):
                assert part.partition("@")[0] in KINDS, f"unknown fault {part!r}"

    def __call__(self, train, config):
        kind = fault_of(self.by_model.get(config["model"]), int(config["seed"]))
        if kind == "raise":
            raise RuntimeError("injected fault: raise")
        if kind == "flaky":
            from ray import tune

            marker = os.path.join(tune.get_context().get_trial_dir(), ".flaky_fault_seen")
            if not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError("injected fault: flaky (first attempt)")
        if kind == "nan":
            return dataclasses.replace(train, ret=np.full_like(train.ret, np.nan))
        if kind == "slow":
            time.sleep(1.0)
        return train


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
