"""The planted model's own row in a study's tables, for studies on a synthetic panel.

A study whose `--data` the driver generates (`synthetic`, `synthetic:DESIGN.json`) knows the
truth (`panel.meta["oracle"]`, rvrae.data.synthetic.Oracle). The driver scores it once, with
the trials' own code (`rvrae.study.trainable.evaluate`) on the study's own split and omitted
sets, and `rvrae table` prints it as the first row of its tables (Tables I-III, `--metrics`,
the tune study's best-trial table): each model's share of the ceiling is then read off the
table itself, not from a separate run of `rvrae data synth`.

The oracle as a forecast: β = the true betas, f_post = the true factors, r̂ = β_t E[f_t | past]
(its conditional forecast, so "Forecast R²" is the oracle's r2_forecast) and r_std its
conditional std; "Predictive R²" is β times the prevailing mean of the true factors (eq. 33,
the models' definition). Both are the oracle's `scores` of `rvrae data synth`.

Layout, beside the rows and never read as trials (the results dataset stays models only):

    <out>/oracle/study=<study>/<key>.parquet            one row per cell, below
    <out>/oracle/study=<study>/<key>.forecast.parquet   its forecast (rvrae.results.forecasts)

`<key>` hashes the study identity (`rvrae.identity.key_of`), so a folder holding several
identities keeps one oracle per identity, matched the way the tables group rows. Rows: the
identity columns, `seed` and `m`, every metric `evaluate` writes for a trial, and `omitted`
(the omitted stocks, JSON): one row for m = 0 (the oracle does not depend on the seed) and one
per (seed, m) for m > 0, each seed leaving out the same stocks as the models' trials
(`rvrae.data.panel.omit_stocks`). A tune study's trials are all (seed 0, m 0) cells
(`TUNE_CELLS`): its oracle is the one m = 0 row, its `valid_*` metrics the objective's
ceiling. `--rescore`, `--cost` and `--weighting` rescore the oracle from its stored forecast
like any trial. The files are rewritten whole (atomically) by every run of the study
(--resume with other seeds: the union of the cells), the oracle being deterministic in the
panel.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ORACLE_DIR = "oracle"
ORACLE = "oracle"  # the row key in a table (rendered "Oracle (true model)")
ORACLE_STUDIES = ("benchmark", "robustness", "tune")
TUNE_CELLS = [{"seed": 0, "m": 0}]  # the cell of every tune trial (rvrae.study.runner._tune_model)


def _stem(out_dir: str | Path, study: str, key: tuple) -> Path:
    digest = hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:16]
    return Path(out_dir) / ORACLE_DIR / f"study={study}" / digest


def oracle_forecast_path(out_dir: str | Path, study: str, key: tuple) -> Path:
    """Where the oracle's forecast of a study identity (`key`, rvrae.identity.key_of) is stored."""
    return _stem(out_dir, study, key).with_suffix(".forecast.parquet")


def oracle_forecast(oracle):
    """The oracle as a Forecast over every month of its panel (months 0..T-1). Its two ends
    of the forecast share (`rank_ic_w0` / `rank_ic_w1`): the true β times the true factors'
    prevailing mean (what its predictive R² scores), and its conditional forecast (r̂)."""
    from rvrae.models.base import Forecast
    from rvrae.npx import prevailing_mean

    at_mean = np.einsum("tnk,tk->tn", oracle.beta, prevailing_mean(oracle.factors)).astype(np.float32)
    return Forecast(months=np.arange(oracle.beta.shape[0]), r_hat=oracle.r_hat, beta=oracle.beta,
                    f_post=oracle.factors, f_prior=oracle.f_prior, r_std=oracle.r_std,
                    r_w0=at_mean, r_w1=oracle.r_hat)  # fmt: skip


def write_oracle(out_dir: str | Path, study: str, panel, identity, cells: list[dict]) -> Path | None:
    """Score the panel's oracle on the study's split for every (seed, m) of `cells` (the
    whole grid) and write its rows and forecast; None (nothing written) when the panel has no
    oracle (a user's file) or the study is not a grid of Tables I-III."""
    from rvrae.data.panel import omit_stocks, split_by_years
    from rvrae.results.forecasts import forecast_table, to_bytes
    from rvrae.results.store import atomic_write
    from rvrae.study.trainable import evaluate, evaluate_omitted, evaluate_valid

    oracle = panel.meta.get("oracle")
    if oracle is None or study not in ORACLE_STUDIES or not cells:
        return None
    train, valid, test = split_by_years(panel, *identity.split)
    fc = oracle_forecast(oracle)
    stem = _stem(out_dir, study, identity.key())
    pairs = {(0, 0) if int(c["m"]) == 0 else (int(c["seed"]), int(c["m"])) for c in cells}
    try:  # a resumed study with fewer seeds keeps the others' rows
        old = pd.read_parquet(stem.with_suffix(".parquet"), columns=["seed", "m"])
        pairs |= {(int(s), int(m)) for s, m in zip(old["seed"], old["m"])}
    except (OSError, ValueError, KeyError, pa.ArrowException):  # none yet (or unreadable: rewritten)
        pass
    # the test months' metrics are the same in every cell: scored once; the omitted stocks'
    # and, at m > 0, the validation months' (without the omitted stocks, as a trial's) per cell
    base = evaluate(panel, fc, valid.target_months, test.target_months, np.zeros(0, dtype=np.int64))
    rows = []
    for seed, m in sorted(pairs):
        omitted = omit_stocks(train, test, m, seed)
        own = evaluate_valid(panel, fc, valid.target_months, omitted) if m else {}
        rows.append({**identity.columns(), "study": study, "model": ORACLE, "seed": seed, "m": m, "status": "ok",
                     "omitted": json.dumps([int(i) for i in omitted]), **base, **own,
                     **evaluate_omitted(panel, fc, test.target_months, omitted)})  # fmt: skip
    stem.parent.mkdir(parents=True, exist_ok=True)
    table = forecast_table(panel, fc, valid.target_months, test.target_months, np.zeros(0, dtype=np.int64))
    data = to_bytes(table)
    atomic_write(oracle_forecast_path(out_dir, study, identity.key()), lambda fh: fh.write(data))
    rows_table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    atomic_write(stem.with_suffix(".parquet"), lambda fh: pq.write_table(rows_table, fh))
    return stem.with_suffix(".parquet")


def read_oracle(out_dir: str | Path, cost: float | None = None, weighting: str = "equal") -> pd.DataFrame:
    """Every oracle row under `out_dir` (empty if none); with `cost` (a rescore: `rvrae table
    --rescore/--cost/--weighting`) their metrics recomputed from the stored forecast, each
    row's omitted stocks marked, as `rvrae.results.forecasts.rescore_rows` does for trials."""
    from rvrae.errors import UserError
    from rvrae.results.forecasts import read_forecast_file, scores

    frames = []
    for path in sorted((Path(out_dir) / ORACLE_DIR).glob("study=*/*.parquet")):
        if path.name.endswith(".forecast.parquet") or path.name.startswith("."):
            continue
        try:
            rows = pd.read_parquet(path)
        except Exception as e:
            raise UserError(f"cannot read oracle file {str(path)!r}: {e}") from None
        if cost is not None:
            fc, n_stocks = read_forecast_file(path.with_name(path.name.replace(".parquet", ".forecast.parquet")))
            rows = rows.copy()
            shared = scores(fc, n_stocks, cost=cost, weighting=weighting, parts=("valid_", ""))  # every cell's
            for i, r in rows.iterrows():
                fc["omitted"] = fc["stock"].isin(json.loads(r["omitted"]))
                parts = ("omitted_",) if int(r["m"]) == 0 else ("omitted_", "valid_")  # valid_: without them
                mine = scores(fc, n_stocks, cost=cost, weighting=weighting, parts=parts)
                for k, v in {**shared, **mine}.items():
                    rows.loc[i, k] = v
        frames.append(rows)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
