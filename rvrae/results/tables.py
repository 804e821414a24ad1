"""Aggregate results rows into paper-style tables (SPEC §6–7). Computation only: the text
comes from rvrae.results.render.

Layouts (the paper's):
* benchmark → Table I (total and predictive R², shown in percent) and Table II (Sharpe
  without costs and with 30 bps), rows = models, mean(std) over seeds.
* robustness → Table III: Rank IC and Rank ICIR of r̂ on the omitted stocks, for each m.
* tune → one row per model: its best trial on the validation objective.
* anything else (speed, custom `--metrics`) → mean(std) of the requested (or all present)
  numeric columns, rows = models (or the study's `case` column), columns split by m.

Only rows with status == "ok" are aggregated; `n` counts the finite values of each cell.
Rows of different study identities (rvrae.identity: data, split, epoch cap, objective) are
never averaged together: each identity gets its own tables, and every table's `footer` says
what produced it. Within one identity, a model run with several resolved configs shows one
row per config, labelled by the keys that differ.
Significance: each model's cell against RVRAE's, paired over the seeds present for both
(values averaged per seed first), two-sided paired t-test (`scipy.stats.ttest_rel`),
marked when p < 0.05; not on a fit's diagnostics (`NO_BEST`: the forecast's share, its t),
which are no score to be ahead on.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from rvrae.errors import UserError
from rvrae.identity import describe, key_of
from rvrae.results.store import METRIC_COLUMNS, PROVENANCE_COLUMNS, canonical_json

MODEL_ORDER = ("ipca", "ca", "factorvae", "alstm", "transformer", "rvrae")  # the paper's
REFERENCE = "rvrae"  # significance is measured against the paper's model
ALPHA = 0.05
FIELDS = ("mean", "std", "n", "p", "sig", "best")
STUDY_ORDER = ("tune", "benchmark", "robustness", "speed")
TUNE_OBJECTIVE = "valid_rank_ic"  # the tune study's default objective (SPEC §5)
SIG_TEST = "paired t-test over seeds vs RVRAE (scipy.stats.ttest_rel, two-sided), p < 0.05"
ENSEMBLE = "seed ensemble"  # row label suffix of a model's seed-ensemble row (benchmark tables)
# Metrics a model's share of the oracle's is read on (`rvrae table --share`): higher is better
# and the oracle's value is the ceiling. Not coverage (a target, 0.9), turnover, NLL, span_r2
# or rank_ic_true (the oracle's is 1, so the value is its own share; rank_ic_true_w0/_w1 alike)
# or provenance columns.
SHARE_METRICS = ("r2_total", "r2_pred", "r2_forecast", "r2_forecast_xs", "r2_beta", "ic", "icir", "rank_ic", "rank_icir",
                 "rank_ic_span", "rank_ic_w0", "rank_ic_w1", "sharpe", "sharpe_net")  # fmt: skip


def base_metric(metric: str) -> str:
    """The metric without its valid_ / omitted_ prefix."""
    for pre in ("valid_", "omitted_"):
        if metric.startswith(pre):
            return metric[len(pre):]
    return metric


def lower_is_better(metric: str) -> bool:
    b = base_metric(metric)
    return b in ("turnover", "nll") or "seconds" in b or b.endswith(("_s", "_ms", "time", "memory", "_mb", "_gb"))


# the planted panel's ranking tables (`truth`, `truth3`)
TRUTH_CAPTION = ("Rank IC: r̂ against the realised returns (the paper's); vs true E[r]: against the planted "
                 "model's expected return β_t E(f_t | past), the same ranking judged without the returns' noise "
                 "(the oracle's is 1; on the returns, two forecasts' Rank ICs over a 36-month test differ by "
                 "noise of about 0.01, a tenth of the oracle's own Rank IC).")  # fmt: skip
SPAN_CAPTION = (" β-span: that expected return projected each month on [1, β̂], ranked against the returns "
                "(the Rank IC the model's betas allow).")
DYNAMIC_CAPTION = ("Each model with a dynamic factor forecast (its AR(1) or prior, shrunk towards the "
                   "prevailing mean by the share w its validation months chose: calibrate), scored at the two "
                   "ends of w: w=0, β̂ times the prevailing mean of its factors; w=1, the dynamic forecast in "
                   "full. Rank IC against the realised returns, and against the planted model's expected return "
                   "(vs true E[r]). The dynamic forecast has skill where vs true E[r] rises from w=0 to w=1; a "
                   "realised rise that the truth does not show is the test years' factor surprises.")  # fmt: skip
# diagnostics of a fit, not scores: never best, never starred against RVRAE's
NO_BEST = ("forecast_weight", "forecast_tstat", "forecast_factor_tstat", "forecast_scale", "prior_spread")


def best_mask(metric: str, means: pd.Series) -> pd.Series:
    """Which rows hold the column's best mean (ties all marked). Coverage: closest to 90 %;
    `NO_BEST` columns: none."""
    v = means.astype(float)
    if not np.isfinite(v).any() or base_metric(metric) in NO_BEST:
        return pd.Series(False, index=means.index)
    if base_metric(metric) == "coverage90":
        score = -(v - 0.9).abs()
    else:
        score = -v if lower_is_better(metric) else v
    return (score == score.max()) & np.isfinite(v)


@dataclass
class Table:
    """One table. `frame` rows are the row keys (models, or cases); its columns are a
    MultiIndex (metric, m, field) with field in FIELDS; `cells` lists the (metric, m) column
    groups in display order. Values are raw (R² as fractions); `scale` says how the renderer
    shows a metric (100 = percent)."""

    title: str
    caption: str
    study: str
    frame: pd.DataFrame
    cells: list[tuple[str, int]]
    by_m: bool = False  # headers say m (robustness)
    scale: dict[str, float] = field(default_factory=dict)
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # text column -> row -> text
    key: str = ""  # short id (latex label, file names)
    row_label: str = "Model"  # header of the row-key column ("Case" for speed studies)
    footer: str = ""  # what produced the rows (data, split, epochs, config source, n)
    cost_bps: float = 30.0  # the long-short cost the rows carry (`rvrae table --cost`)
    share: dict[tuple[str, str, int], float] = field(default_factory=dict)  # (row, metric, m) -> share of the oracle's mean

    @property
    def rows(self) -> list[str]:
        return list(self.frame.index)


def order_rows(keys) -> list[str]:
    keys = list(dict.fromkeys(map(str, keys)))
    known = [k for k in MODEL_ORDER if k in keys]
    return known + sorted(k for k in keys if k not in MODEL_ORDER)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    if "status" not in df.columns:
        return df
    return df[df["status"].fillna("ok") == "ok"]


def _paired_p(a: pd.Series, b: pd.Series) -> float:
    """Paired t-test p-value of two per-seed series (index = seed); NaN if < 2 pairs."""
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return math.nan
    x, y = a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)
    if np.allclose(x, y, rtol=0, atol=0):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(x, y).pvalue)


def _aggregate(ok: pd.DataFrame, row_col: str, metrics: list[str], ms: list[int], signif: bool):
    """The MultiIndex frame of a mean(std) table."""
    # Narrow before filtering; a metric whose column was dropped as all-NaN comes back as NaN
    # (n = 0) instead of a KeyError (e.g. omitted_rank_icir with one test month).
    ok = ok.reindex(columns=list(dict.fromkeys([row_col, "seed", "m", *metrics])))
    rows = order_rows(ok[row_col].unique())
    data, cells = {}, []
    for m in ms:
        sub_m = ok[ok["m"] == m]
        for metric in metrics:
            cells.append((metric, m))
            vals = sub_m[[row_col, "seed", metric]].dropna(subset=[metric])
            vals = vals[np.isfinite(vals[metric].astype(float))]
            g = vals.groupby(row_col)[metric]
            mean, std, n = g.mean(), g.std(ddof=1), g.count()
            per_seed = vals.groupby([row_col, "seed"])[metric].mean()
            tested = signif and base_metric(metric) not in NO_BEST
            ref = per_seed.loc[REFERENCE] if tested and REFERENCE in per_seed.index.get_level_values(0) else None
            p = {}
            for r in rows:
                if ref is None or r == REFERENCE or r not in per_seed.index.get_level_values(0):
                    p[r] = math.nan
                else:
                    p[r] = _paired_p(per_seed.loc[r], ref)
            col = {
                "mean": mean.reindex(rows).astype(float),
                "std": std.reindex(rows).astype(float),
                "n": n.reindex(rows).fillna(0).astype(int),
                "p": pd.Series(p).reindex(rows).astype(float),
            }
            col["sig"] = col["p"] < ALPHA
            col["best"] = best_mask(metric, col["mean"])
            for f in FIELDS:
                data[(metric, m, f)] = col[f].to_numpy()
    frame = pd.DataFrame(data, index=pd.Index(rows, name=row_col))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["metric", "m", "field"])
    return frame, cells


def _has(ok: pd.DataFrame, metric: str) -> bool:
    return metric in ok.columns and bool(np.isfinite(pd.to_numeric(ok[metric], errors="coerce")).any())


def _sig_note(ok: pd.DataFrame) -> str:
    return f" * = {SIG_TEST}." if REFERENCE in set(ok["model"]) else ""


def _mean_std_table(ok, study, metrics, title, caption, key, scale=None, row_col="model",
                    signif=True, ms=None) -> Table:  # fmt: skip
    ms = sorted(int(m) for m in ok["m"].unique()) if ms is None else ms
    frame, cells = _aggregate(ok, row_col, metrics, ms, signif)
    note = _sig_note(ok) if signif else ""
    caption = f"{caption} Mean (std) over seeds; n = seeds; best per column in bold.{note}"
    return Table(title, caption, study, frame, cells, by_m=len(ms) > 1 or ms != [0],
                 scale=scale or {}, key=key, row_label="Model" if row_col == "model" else "Case")  # fmt: skip


def _numeric_columns(ok: pd.DataFrame) -> list[str]:
    skip = (set(PROVENANCE_COLUMNS) - {"fit_seconds", "epochs"}) | {"case"}
    out = []
    for c in ok.columns:
        if c in skip or c.startswith(("hp_", "ls_")):
            continue
        if pd.api.types.is_numeric_dtype(ok[c]) and not pd.api.types.is_bool_dtype(ok[c]) and _has(ok, c):
            out.append(c)
    return out


def _check_metrics(df: pd.DataFrame, metrics: list[str]) -> None:
    """A name is unknown only if no row of the folder has it and it is not a metric the harness
    writes: one that a study lacks (omitted_* at m = 0) or has no value for is simply not shown
    there."""
    def avail() -> str:
        return ", ".join(_numeric_columns(ok_rows(df)) or METRIC_COLUMNS)

    for m in metrics:
        if m not in df.columns and m not in METRIC_COLUMNS:
            raise UserError(f"unknown metric {m!r} (available: {avail()})")
        # a key (the table's own rows and columns) or a text column is no mean(std)
        if m in ("seed", "m") or m in df.columns and m not in METRIC_COLUMNS and not (
                pd.api.types.is_numeric_dtype(df[m]) and not pd.api.types.is_bool_dtype(df[m])):
            raise UserError(f"--metrics {m!r} is not a numeric metric column (available: {avail()})")


def _benchmark(ok: pd.DataFrame) -> list[Table]:
    tables = []
    zero = ok[ok["m"] == 0] if (ok["m"] == 0).any() else ok
    if _has(zero, "r2_total") or _has(zero, "r2_pred"):
        cols = [c for c in ("r2_total", "r2_pred", "r2_forecast", "r2_forecast_xs", "r2_beta") if _has(zero, c)]
        tables.append(_mean_std_table(
            zero, "benchmark", cols, "Table I: total and predictive R²",
            "Out-of-sample total R² (eq. 32) and predictive R² (eq. 33, β̂ times the "
            "prevailing mean of f̂_post), in percent; forecast R²: the model's own r̂, and of it "
            "the part its cross-section earns (each month's mean taken out of r and r̂; the rest "
            "is the part the month's level earns); "
            "β-regression R²: each month's returns on β̂ by least squares (the ceiling of the "
            "factor path).",
            "table1", scale={c: 100.0 for c in cols},
        ))  # fmt: skip
    if _has(zero, "sharpe") or _has(zero, "sharpe_net"):
        tables.append(_mean_std_table(
            zero, "benchmark", ["sharpe", "sharpe_net"], "Table II: out-of-sample Sharpe ratio",
            "Annualised Sharpe ratio of the decile long-short portfolio, without transaction "
            "costs and with 30 bps per unit of turnover.", "table2",
        ))  # fmt: skip
    if _has(zero, "rank_ic_true"):  # a planted panel (rvrae.study.trainable.evaluate)
        cols = [c for c in ("rank_ic", "rank_ic_true", "rank_ic_span") if _has(zero, c)]
        tables.append(_mean_std_table(zero, "benchmark", cols, "Ranking against the truth (planted panel)",
                                      TRUTH_CAPTION + SPAN_CAPTION * ("rank_ic_span" in cols), "truth"))  # fmt: skip
    if _has(zero, "rank_ic_true_w0"):  # a planted panel: the models with a dynamic forecast only
        dyn = zero[np.isfinite(pd.to_numeric(zero["rank_ic_true_w0"], errors="coerce"))]
        cols = ["rank_ic_w0", "rank_ic_w1", "rank_ic_true_w0", "rank_ic_true_w1", "forecast_weight"]
        tables.append(_mean_std_table(dyn, "benchmark", [c for c in cols if _has(dyn, c)],
                                      "The dynamic forecast against the truth (planted panel)",
                                      DYNAMIC_CAPTION, "truth_w"))  # fmt: skip
    return tables


def _robustness(ok: pd.DataFrame) -> list[Table]:
    ms = sorted(int(m) for m in ok["m"].unique() if m > 0) or sorted(int(m) for m in ok["m"].unique())
    tables = [_mean_std_table(
        ok[ok["m"].isin(ms)], "robustness", ["omitted_rank_ic", "omitted_rank_icir"],
        "Table III: robustness to omitted stocks",
        "Rank IC and Rank ICIR of the forecasts on the m stocks omitted from training.",
        "table3", ms=ms,
    )]  # fmt: skip
    if _has(ok, "omitted_rank_ic_true"):  # a planted panel
        tables.append(_mean_std_table(
            ok[ok["m"].isin(ms)], "robustness", ["omitted_rank_ic", "omitted_rank_ic_true"],
            "Omitted stocks ranked against the truth (planted panel)",
            "The m omitted stocks only. " + TRUTH_CAPTION, "truth3", ms=ms,
        ))  # fmt: skip
    return tables


def tune_objective(ok: pd.DataFrame) -> tuple[str, str]:
    """(objective column, "max" | "min") of a tune study: the rows' `objective` / `mode`
    columns where the harness stored them, else SPEC §5's default (valid_rank_ic, max)."""
    def first(col: str, default: str) -> str:
        if col in ok.columns:
            vals = [v for v in ok[col].dropna().astype(str) if v]
            if vals:
                return vals[0]
        return default

    objective = first("objective", TUNE_OBJECTIVE)
    return objective, first("mode", "min" if lower_is_better(objective) else "max")


def _tune(ok: pd.DataFrame) -> list[Table]:
    """Per model, its best trial on the objective; n = completed trials."""
    objective, mode = tune_objective(ok)
    if not _has(ok, objective):
        return []
    # the objective first, once (rows of an older study may have tuned on a test column)
    shown = list(dict.fromkeys([objective] + [c for c in ("rank_ic", "r2_total", "r2_pred") if _has(ok, c)]))
    ok = ok[["model", *shown, *(c for c in ("config",) if c in ok.columns), *(c for c in ok.columns if c.startswith("hp_"))]]
    rows = order_rows(ok["model"].unique())
    data, best_cfg = {}, {}
    for metric in shown:
        mean, n = {}, {}
        for r in rows:
            sub = ok[ok["model"] == r].dropna(subset=[objective])
            if len(sub):
                obj = sub[objective].astype(float)
                top = sub.loc[obj.idxmax() if mode == "max" else obj.idxmin()]
                mean[r] = float(top[metric])
                # what the trial was given (the searched keys and --configs), not every field of
                # its resolved config (hp_* hold those: 33 for RVRAE); the epoch cap is the study's
                if isinstance(top.get("config"), str) and top["config"]:
                    shown_cfg = {k: canonical_json(v) if isinstance(v, (dict, list)) else v  # as hp_* holds it
                                 for k, v in json.loads(top["config"]).items() if k != "epochs"}
                else:  # rows without a config column: their hp_* columns
                    shown_cfg = {c[3:]: top[c] for c in sub.columns if c.startswith("hp_") and pd.notna(top[c])}
                best_cfg[r] = ", ".join(f"{k}={_short(shown_cfg[k])}" for k in sorted(shown_cfg))
            n[r] = int(len(ok[ok["model"] == r]))
        col = pd.DataFrame({"mean": pd.Series(mean, dtype=float).reindex(rows)})
        col["std"], col["n"], col["p"], col["sig"] = math.nan, pd.Series(n).reindex(rows), math.nan, False
        col["best"] = best_mask(metric, col["mean"])
        for f in FIELDS:
            data[(metric, 0, f)] = col[f].to_numpy()
    frame = pd.DataFrame(data, index=pd.Index(rows, name="model"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["metric", "m", "field"])
    caption = (f"Best trial per model on the objective {objective} ({mode}imised) and its "
               "test metrics; n = completed trials.")  # fmt: skip
    scale = {c: 100.0 for c in shown if base_metric(c).startswith("r2")}
    return [Table("Tuning: best trial per model", caption, "tune", frame, [(c, 0) for c in shown],
                  scale=scale, extra={"best config": best_cfg}, key="tune")]  # fmt: skip


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _generic(ok: pd.DataFrame, study: str, metrics: list[str] | None) -> list[Table]:
    metrics = metrics or [c for c in METRIC_COLUMNS if _has(ok, c)] or _numeric_columns(ok)
    if not metrics:
        return []
    row_col = "model"
    if "case" in ok.columns and ok["case"].notna().any():
        ok = ok.copy()
        case = ok["case"].astype(str)
        ok["row"] = case if ok["model"].nunique() == 1 else ok["model"].astype(str) + ":" + case
        row_col = "row"
    scale = {c: 100.0 for c in metrics if base_metric(c).startswith("r2")}
    title = f"{study}: " + ", ".join(metrics) if len(metrics) <= 4 else f"{study}: {len(metrics)} metrics"
    caption = f"Study {study!r}" + ("; R² in percent." if scale else ".")
    return [_mean_std_table(ok, study, metrics, title, caption, study,
                            scale=scale, row_col=row_col, signif=row_col == "model")]  # fmt: skip


def identity_groups(df: pd.DataFrame) -> list[pd.DataFrame]:
    """The rows split by study identity (rvrae.identity.key_of), in a stable order (by key).
    Numbered from 1 in messages and in `rvrae table --identity N`."""
    if df.empty:
        return []
    keys = pd.Series([key_of(r) for r in df.to_dict("records")], index=df.index)
    return [df[keys.map(lambda k, want=k: k == want)] for k in sorted(set(keys))]


def describe_groups(groups: list[pd.DataFrame]) -> str:
    return "; ".join(f"[{i}] {describe(g.iloc[0])} ({len(g)} row{'' if len(g) == 1 else 's'})" for i, g in enumerate(groups, 1))


def select_identity(df: pd.DataFrame, identity: int | None, one: bool = False, what: str = "") -> list[pd.DataFrame]:
    """The identity groups to show: all of them, or only number `identity`. `one`: the caller
    can show a single group only (csv, plots): several without a choice is a UserError.
    Identities are numbered within a study (each study's rows: `studies_with_identity`)."""
    groups = identity_groups(df)
    if identity is not None:
        if not 1 <= identity <= len(groups):
            where = f"the {df['study'].iloc[0]} rows hold" if "study" in df.columns and df["study"].nunique() == 1 else "the results hold"
            n = f"{len(groups)} identit{'y' if len(groups) == 1 else 'ies'}"
            raise UserError(f"--identity {identity}: {where} {n}: {describe_groups(groups)}")
        return [groups[identity - 1]]
    if one and len(groups) > 1:
        raise UserError(f"the results hold rows of {len(groups)} study identities, which {what} must not mix; "
                        f"choose one with --identity N: {describe_groups(groups)}")  # fmt: skip
    return groups


def studies_with_identity(df: pd.DataFrame, studies: list[str], identity: int | None) -> list[str]:
    """The studies to show for `--identity N` over several studies: those whose rows hold an
    identity N (numbered within each study); all of them without N, or when none holds it
    (then `select_identity` says what each holds)."""
    if identity is None:
        return studies
    have = [s for s in studies if len(identity_groups(df[df["study"] == s])) >= identity]
    return have or studies


def one_identity_per_study(df: pd.DataFrame, what: str) -> None:
    """UserError unless each study of `df` holds one identity (`what`: e.g. "csv")."""
    for s in _order_studies(df["study"].unique()):
        select_identity(df[df["study"] == s], None, one=True, what=f"{what} ({s})")


def footer(rows: pd.DataFrame) -> str:
    """What produced a group of rows, printed under its tables."""
    text = f"Produced by: {describe(rows.iloc[0])}; n = {len(rows)} trials"
    if "code_version" in rows.columns:
        versions = sorted({str(v) for v in rows["code_version"].dropna() if str(v)})
        if len(versions) > 1:
            text += f"; code versions {', '.join(versions)} (mixed)"
        elif versions:
            text += f"; code {versions[0]}"
    return text + "."


def _config_rows(ok: pd.DataFrame) -> pd.DataFrame:
    """A model run under several resolved configs becomes one row per config, labelled
    `model (key=value, ...)` with the keys that differ: two configs are never one mean. A
    row's config is its cell key's (`store.cell_key`: the resolved config, else `config`), per
    row, as seed ensembles group them; the oracle's row (no config) is left as it is."""
    from rvrae.results.oracle import ORACLE
    from rvrae.results.store import config_key

    if "resolved_config" not in ok.columns and "config" not in ok.columns:
        return ok
    ok = ok.copy()
    cfg = pd.Series([config_key(r) for r in ok.to_dict("records")], index=ok.index)
    for model in ok["model"].unique():
        if model == ORACLE:
            continue
        at = ok["model"] == model
        distinct = sorted(cfg[at].unique())
        if len(distinct) < 2:
            continue
        parsed = {c: json.loads(c) if c else {} for c in distinct}
        keys = sorted({k for d in parsed.values() for k in d})
        differ = [k for k in keys if len({canonical_json(d.get(k)) for d in parsed.values()}) > 1]
        labels = {c: f"{model} (" + ", ".join(f"{k}={_short(parsed[c].get(k))}" for k in differ) + ")" for c in distinct}
        ok.loc[at, "model"] = cfg[at].map(labels)
    return ok


def identities(rows: pd.DataFrame) -> set[tuple]:
    """The (study, identity key) pairs of some rows."""
    return {(str(r["study"]), key_of(r)) for r in rows.to_dict("records")}


def of_identities(frame: pd.DataFrame | None, pairs: set[tuple]) -> pd.DataFrame:
    """The rows of `frame` (seed-ensemble rows, the oracle's: rows kept beside the trials)
    whose (study, identity key) is one of `pairs`; empty when `frame` is None or empty."""
    if frame is None or frame.empty:
        return pd.DataFrame()
    return frame[[(str(r["study"]), key_of(r)) in pairs for r in frame.to_dict("records")]]


def _label_ensembles(ok: pd.DataFrame, ens: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and ensemble rows labelled together by `_config_rows`, so an ensemble row names
    the same config as its seeds' row."""
    if ens.empty:
        return _config_rows(ok), ens
    labelled = _config_rows(pd.concat([ok, ens], ignore_index=True))
    ok, ens = ok.copy(), ens.copy()
    ok["model"] = labelled["model"].iloc[: len(ok)].to_numpy()
    ens["model"] = labelled["model"].iloc[len(ok):].to_numpy()
    return ok, ens


def _add_ensemble_rows(t: Table, ens: pd.DataFrame) -> None:
    """Below each model's mean(std) row, `<model> (seed ensemble)`: the metric of the mean
    forecast over its n seeds (one value; no std, no test). Best marks are recomputed over
    all rows."""
    frame = t.frame
    add = {}
    for e in ens.to_dict("records"):
        if e["model"] not in frame.index:
            continue
        vals = {}
        for metric, m in t.cells:
            v = float(e.get(metric, math.nan)) if m == 0 else math.nan
            ok = math.isfinite(v)
            vals.update({(metric, m, "mean"): v, (metric, m, "std"): math.nan, (metric, m, "n"): int(e["n"]) if ok else 0,
                         (metric, m, "p"): math.nan, (metric, m, "sig"): False, (metric, m, "best"): False})  # fmt: skip
        add[e["model"]] = vals
    if not add:
        return
    extra = pd.DataFrame.from_dict({f"{k} ({ENSEMBLE})": v for k, v in add.items()}, orient="index")
    extra.columns = pd.MultiIndex.from_tuples(extra.columns, names=frame.columns.names)
    order = [r for base in frame.index for r in (base, f"{base} ({ENSEMBLE})") if r in frame.index or base in add]
    frame = pd.concat([frame, extra[frame.columns]]).loc[order]
    frame.index.name = t.frame.index.name
    for metric, m in t.cells:
        frame[(metric, m, "best")] = best_mask(metric, frame[(metric, m, "mean")]).to_numpy()
        frame[(metric, m, "n")] = frame[(metric, m, "n")].astype(int)
    t.frame = frame
    t.caption += (f" Rows '({ENSEMBLE})': scored once on the mean forecast over the model's n seeds "
                  "(from the stored forecasts), beside the mean(std) over seeds.")  # fmt: skip


def _add_oracle_row(t: Table, orows: pd.DataFrame) -> None:
    """The planted model's row at the top of a paper table: mean(std) over seeds where its
    cells differ by seed (Table III's omitted sets), one value otherwise. The models' best
    marks stay theirs: the oracle is the ceiling, not a competitor."""
    from rvrae.results.oracle import ORACLE

    ms = list(dict.fromkeys(m for _, m in t.cells))
    sub = orows[orows["m"].isin(ms)]
    if sub.empty:
        return
    metrics = list(dict.fromkeys(metric for metric, _ in t.cells))
    frame, _ = _aggregate(sub.assign(model=ORACLE), "model", metrics, ms, signif=False)
    frame = frame.reindex(columns=t.frame.columns)
    for metric, m in t.cells:
        frame[(metric, m, "best")] = False
        frame[(metric, m, "sig")] = False
    out = pd.concat([frame, t.frame])
    for metric, m in t.cells:
        out[(metric, m, "n")] = out[(metric, m, "n")].fillna(0).astype(int)
        out[(metric, m, "best")] = out[(metric, m, "best")].astype(bool)
        out[(metric, m, "sig")] = out[(metric, m, "sig")].astype(bool)
    out.index.name = t.frame.index.name
    t.frame = out
    t.caption += (" Row 'Oracle (true model)': the planted model of this synthetic panel, scored "
                  "the same way on the same test months and omitted stocks (true β; f_post = the "
                  "true factors, so predictive R² uses their prevailing mean; forecast R² and the "
                  "portfolios use its conditional forecast β_t E(f_t | past)): the ceiling to read "
                  "each model's share against, never marked best.")  # fmt: skip


def add_oracle_share(t: Table) -> None:
    """Each model row's mean as a share of the oracle row's mean in the same column
    (`Table.share`), for `SHARE_METRICS` where the oracle's mean is positive as printed: a
    share of a negative or zero ceiling reads as nothing, and neither does one of a ceiling
    that prints as 0.00 (an oracle predictive R² of 0.004 % made a model's −0.47 % read
    "−11291 %"). The table must hold the oracle's row."""
    from rvrae.results.oracle import ORACLE
    from rvrae.results.render import fmt_number  # here: render imports this module

    if ORACLE not in t.frame.index:
        return
    for metric, m in t.cells:
        if base_metric(metric) not in SHARE_METRICS:
            continue
        ceiling = float(t.frame.loc[ORACLE, (metric, m, "mean")])
        if not math.isfinite(ceiling) or float(fmt_number(metric, ceiling, t.scale.get(metric, 1.0))) <= 0:
            continue  # the ceiling as the table prints it: 0.00 is no ceiling
        for r in t.rows:
            v = float(t.frame.loc[r, (metric, m, "mean")])
            if r != ORACLE and math.isfinite(v):
                t.share[(r, metric, m)] = v / ceiling
    if t.share:
        t.caption += (" Percent in brackets: the row's mean as a share of the oracle's in that column "
                      "(R², IC and Sharpe columns, where the oracle's is positive as printed).")  # fmt: skip


def build_tables(df: pd.DataFrame, study: str | None = None, metrics: list[str] | None = None,
                 identity: int | None = None, ensembles: pd.DataFrame | None = None,
                 note: str = "", cost_bps: float = 30.0, oracle: pd.DataFrame | None = None,
                 share: bool = False) -> list[Table]:  # fmt: skip
    """Tables for one study or every study present, one set per study identity (or only
    identity number `identity`); `metrics` asks for a custom table (mean(std) of those
    columns, by model and m) instead of the paper layouts. `ensembles`: seed-ensemble rows
    (rvrae.results.forecasts.seed_ensembles) shown in the benchmark's Tables I and II;
    `oracle`: the planted model's rows (rvrae.results.oracle.read_oracle), the first row of
    every benchmark and robustness table of the identity they belong to; `share`: each row's
    cells also give their share of the oracle's (`add_oracle_share`). `note` (e.g. what rescoring changed) ends
    every caption; `cost_bps` is the cost the rows carry."""
    if study is not None:
        df = df[df["study"] == study]
    studies = _order_studies(df["study"].unique())
    if not studies:
        raise UserError(f"no results for study {study!r}")
    if metrics:
        _check_metrics(df, metrics)
    studies = studies_with_identity(df, studies, identity)
    tables, failed = [], []
    for s in studies:
        groups = select_identity(df[df["study"] == s], identity)
        for i, rows in enumerate(groups, 1):
            ok = ok_rows(rows)
            ok = ok.loc[:, ok.notna().any()]  # columns of other studies (all NaN here) go
            if ok.empty:
                failed.append(s)
                continue
            group = {(s, key_of(rows.iloc[0]))}  # this study and identity
            ens = of_identities(ensembles, group) if s == "benchmark" and not metrics else pd.DataFrame()
            if s != "tune":
                ok, ens = _label_ensembles(ok, ens)
            new = _study_tables(ok, s, metrics)
            orows = of_identities(oracle, group)
            if not orows.empty and (orows["m"] > 0).any():
                # omitted sets differ by (seed, m): the oracle over the ones some model has a
                # result for, not one whose trials all errored (its share then reads against
                # the same stocks the models were scored on)
                have = set(zip(ok["seed"].astype(int), ok["m"].astype(int)))
                keep = [m == 0 or (int(sd), int(m)) in have for sd, m in zip(orows["seed"], orows["m"])]
                orows = orows[keep]
            for t in new:
                if not ens.empty and t.key in ("table1", "table2", "truth"):
                    _add_ensemble_rows(t, ens)
                if not orows.empty:  # paper tables and custom (--metrics) tables alike
                    _add_oracle_row(t, orows)
                    if share:
                        add_oracle_share(t)
                t.cost_bps = cost_bps
                if cost_bps != 30.0:
                    t.caption = t.caption.replace("30 bps", f"{cost_bps:g} bps")
                t.caption += f" {note}" if note else ""
                t.footer = footer(ok)
                if len(groups) > 1:
                    t.title += f" [identity {i} of {len(groups)}]"
                    t.key += f"-{i}"
            tables += new
    if not tables and metrics and len(failed) < len(studies):
        raise UserError(f"no successful trial has a value for {', '.join(metrics)}")
    if not tables:
        errs = df.loc[df.get("status", pd.Series(dtype=str)) == "error", "error"]
        hint = f"; first error: {errs.iloc[0]}" if len(errs) else ""
        raise UserError(f"no successful trials to tabulate in {', '.join(failed or studies)}{hint}")
    return tables


def _study_tables(ok: pd.DataFrame, s: str, metrics: list[str] | None) -> list[Table]:
    if metrics:
        here = [m for m in metrics if m in ok.columns]  # the study's columns with a value
        return _generic(ok, s, here) if here else []
    if s == "benchmark":
        return _benchmark(ok) or _generic(ok, s, None)
    if s == "robustness":
        return _robustness(ok) if _has(ok, "omitted_rank_ic") else _generic(ok, s, None)
    if s == "tune":
        return _tune(ok) or _generic(ok, s, None)
    return _generic(ok, s, None)


def _order_studies(names) -> list[str]:
    names = [str(s) for s in names]
    return [s for s in STUDY_ORDER if s in names] + sorted(s for s in names if s not in STUDY_ORDER)
