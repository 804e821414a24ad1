"""Figures from a results folder (SPEC §7, `rvrae plot`), as PNG, SVG or PDF.

* `cumulative_long_short`: cumulative decile long-short return per model, without and with
  30 bps costs: the mean over seeds of each seed's cumulative series (from the per-month
  JSON lists `ls_gross`, `ls_net`, `ls_dates` of each benchmark row, m = 0), with a band of
  ± one standard deviation over seeds.
* `rank_ic_by_m`: Rank IC on the omitted stocks against m (ticks at the m studied), mean ±
  std over seeds (robustness study).
* `tune_history`: the tune study's stored objective in trial order (integer ticks) with its
  best so far as a step line, per model.
* `learning_curves`: train and valid loss per epoch of the neural models (each row's stored
  `history`), mean ± std over seeds, one panel per model (benchmark, else robustness).
Every title names the data and the split. One figure never mixes study identities: a study
whose rows hold several asks for `--identity N` (rvrae.results.tables.select_identity).
A figure whose data is absent is skipped; nothing to plot at all is a UserError.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rvrae.errors import UserError
from rvrae.results.render import model_label
from rvrae.results.store import read_results
from rvrae.metrics import span_factor
from rvrae.results.tables import (_config_rows, identities, of_identities, ok_rows, order_rows, select_identity,
                                  studies_with_identity, tune_objective)

FORMATS = ("png", "svg", "pdf")


def _series(v) -> list | None:
    if isinstance(v, str) and v:
        try:
            out = json.loads(v)
        except json.JSONDecodeError:
            return None
        return out if isinstance(out, list) else None
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    return None


def _cumulative(rows: pd.DataFrame, col: str) -> pd.DataFrame | None:
    """[months, seeds]: each row's (seed's) cumulative per-month series, aligned on
    `ls_dates` when present."""
    parts = []
    for _, r in rows.iterrows():
        s = _series(r.get(col))
        if not s:
            continue
        dates = _series(r.get("ls_dates")) if "ls_dates" in rows.columns else None
        index = pd.to_datetime(dates) if dates and len(dates) == len(s) else pd.RangeIndex(len(s))
        parts.append(pd.Series(np.asarray(s, dtype=float), index=index).fillna(0).cumsum())
    if not parts:
        return None
    return pd.concat(parts, axis=1)


def where(rows: pd.DataFrame) -> str:
    """The data and split of the rows, for a title ("" when the rows do not say)."""
    if rows.empty:
        return ""
    first = rows.iloc[0]
    source = str(first.get("data_source") or "")
    split = str(first.get("split") or "")
    name = Path(source).name or source
    if len(name) > 48:  # a synthetic design names its fields: the table footer has them all
        name = name[:46] + "…)"
    parts = ([f"data {name}"] if source else []) + ([f"split {split}"] if split else [])
    return f" ({', '.join(parts)})" if parts else ""


def _one_identity(ok: pd.DataFrame, study: str) -> pd.DataFrame:
    """`study`'s rows, of one identity (`make_plots` has already kept that one; rows of
    several are a UserError here, for a direct caller); a grid's model
    run under several configs is one line per config, as the tables' rows are (`_config_rows`:
    two configs are never one mean). Tune's trials are its configs: one line per model."""
    rows = ok[ok["study"] == study]
    if rows.empty:
        return rows
    rows = select_identity(rows, None, one=True, what=f"a {study} figure")[0]
    return rows if study == "tune" else _config_rows(rows)


def _with_oracle(ok: pd.DataFrame, results_dir: str | Path) -> pd.DataFrame:
    """The rows plus the planted model's (rvrae.results.oracle) of the study identities the
    rows have: the figures draw it as a black dashed line, as the tables print its row."""
    from rvrae.results.oracle import read_oracle

    oracle = of_identities(read_oracle(results_dir), identities(ok))
    return pd.concat([ok, oracle.drop(columns=["omitted"])], ignore_index=True) if len(oracle) else ok


def _style(model: str) -> dict:
    from rvrae.results.oracle import ORACLE

    return {"color": "black", "ls": "--"} if model == ORACLE else {}


def _plot_long_short(ok: pd.DataFrame, plt, save) -> Path | None:
    if "ls_gross" not in ok.columns:
        return None
    rows = _one_identity(ok, "benchmark")
    if rows.empty:
        return None
    if (rows["m"] == 0).any():
        rows = rows[rows["m"] == 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    drawn = False
    for model in order_rows(rows["model"].unique()):
        sub = rows[rows["model"] == model]
        for ax, col in zip(axes, ("ls_gross", "ls_net")):
            cum = _cumulative(sub, col) if col in sub.columns else None
            if cum is None:
                continue
            mean = cum.mean(axis=1)
            (line,) = ax.plot(mean.index, mean, label=f"{model_label(model)} (n = {cum.shape[1]})", **_style(model))
            if cum.shape[1] > 1:  # spread over seeds: ± one std of the cumulative return
                sd = cum.std(axis=1, ddof=1)
                ax.fill_between(mean.index, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, lw=0)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set_title("Long-short, no costs" + where(rows))
    axes[1].set_title("Long-short, 30 bps costs")
    axes[0].set_ylabel("cumulative return (sum of monthly); band: ± 1 std over seeds")
    for ax in axes:
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return save(fig, "cumulative_long_short")


def _plot_rank_ic_by_m(ok: pd.DataFrame, plt, save) -> Path | None:
    rows = _one_identity(ok, "robustness")
    rows = rows[rows["m"] > 0] if len(rows) else rows
    if "omitted_rank_ic" not in rows.columns or not rows["omitted_rank_ic"].notna().any():
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    g = rows.dropna(subset=["omitted_rank_ic"]).groupby(["model", "m"])["omitted_rank_ic"].agg(["mean", "std"])
    models = order_rows(g.index.get_level_values(0).unique())
    for i, model in enumerate(models):
        s = g.loc[model]
        offset = (i - (len(models) - 1) / 2) * 0.01 * max(1, np.ptp(s.index.to_numpy()))  # un-overlap bars
        ax.errorbar(s.index + offset, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3,
                    label=model_label(model), **_style(model))  # fmt: skip
    ax.set_xticks(sorted(int(m) for m in g.index.get_level_values(1).unique()))  # the m studied
    ax.set_xlabel("m (stocks omitted from training)")
    ax.set_ylabel("Rank IC on omitted stocks")
    ax.set_title("Robustness: mean ± std over seeds" + where(rows))
    ax.legend(fontsize=8)
    return save(fig, "rank_ic_by_m")


def _plot_beta_span(ok: pd.DataFrame, plt, save) -> Path | None:
    """On a planted panel: how much of each true factor's betas each model's betas span
    (`span_r2_<k>`, rvrae.metrics.span_r2), mean ± std over the benchmark's seeds, one group of
    bars per true factor."""
    from rvrae.results.oracle import ORACLE

    rows = _one_identity(ok, "benchmark")
    cols = sorted((c for c in rows.columns if span_factor(c)), key=lambda c: int(span_factor(c)))
    if not cols:
        return None
    rows = rows[(rows["model"] != ORACLE) & (rows["m"] == 0)].dropna(subset=cols, how="all")
    if rows.empty:
        return None
    models = order_rows(rows["model"].unique())
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols) * max(1, len(models)) / 3, 4))
    width = 0.8 / len(models)
    x = np.arange(len(cols))
    for i, model in enumerate(models):
        v = rows.loc[rows["model"] == model, cols].astype(float)
        ax.bar(x + (i - (len(models) - 1) / 2) * width, v.mean(), width, yerr=v.std(ddof=1).fillna(0),
               capsize=2, label=model_label(model))  # fmt: skip
    ax.set_xticks(x, [f"factor {span_factor(c)}" for c in cols])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("R² of the true betas on the model's β")
    ax.set_title("Which true factor the betas span (test months)" + where(rows), fontsize=9, wrap=True)
    ax.legend(fontsize=8)
    return save(fig, "beta_span")


def _plot_tune_history(ok: pd.DataFrame, plt, save) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    rows = _one_identity(ok, "tune")
    if rows.empty:
        return None
    objective, mode = tune_objective(rows)
    if objective not in rows.columns or not rows[objective].notna().any():
        return None
    best_so_far = np.maximum.accumulate if mode == "max" else np.minimum.accumulate
    from rvrae.results.oracle import ORACLE

    fig, ax = plt.subplots(figsize=(7, 4))
    for model in order_rows(rows["model"].unique()):
        sub = rows[rows["model"] == model].dropna(subset=[objective])
        if model == ORACLE:  # the planted model's score on the same months: a level, not trials
            if len(sub):
                ax.axhline(float(sub[objective].iloc[0]), label=model_label(model), lw=1, **_style(model))
            continue
        if "started_at" in sub.columns and (sub["started_at"] != "").all():
            sub = sub.sort_values(["started_at", "trial_id"])
        y = sub[objective].to_numpy(float)
        x = np.arange(1, len(y) + 1)
        # the best so far holds until a better trial: a step, not a line between trials
        (line,) = ax.step(x, best_so_far(y), where="post", label=f"{model_label(model)} (best so far)")
        ax.scatter(x, y, s=12, color=line.get_color(), alpha=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective} ({mode})")
    ax.set_title("Tuning history" + where(rows))
    ax.legend(fontsize=8)
    return save(fig, "tune_history")


def _curves(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """loss kind -> [epoch, seeds] from each row's stored learning curve (`history`)."""
    out: dict[str, list] = {"train_loss": [], "valid_loss": []}
    for v in rows["history"]:
        h = _series(v)
        if not h or len(h) < 2:  # IPCA's one ALS record is no curve
            continue
        df = pd.DataFrame(h).set_index("epoch")
        for k in out:
            out[k].append(df[k].astype(float))
    return {k: pd.concat(v, axis=1) for k, v in out.items() if v}


def _plot_learning_curves(ok: pd.DataFrame, plt, save) -> Path | None:
    """Train and valid loss per epoch, one panel per neural model: the mean over seeds with a
    band of ± one std (seeds that stopped early leave the mean at their last epoch)."""
    from matplotlib.ticker import MaxNLocator

    if "history" not in ok.columns:
        return None
    for study in ("benchmark", "robustness"):
        rows = _one_identity(ok, study)
        rows = rows[rows["history"].fillna("").astype(str).str.len() > 2] if not rows.empty else rows
        if not rows.empty:
            break
    else:
        return None
    m = int(rows["m"].min())  # each m trains on other stocks: one m's seeds per band
    rows = rows[rows["m"] == m]
    curves = {m: _curves(rows[rows["model"] == m]) for m in order_rows(rows["model"].unique())}
    models = [m for m, c in curves.items() if c]
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for kind, curve in curves[model].items():
            mean, sd = curve.mean(axis=1), curve.std(axis=1, ddof=1).fillna(0)
            (line,) = ax.plot(mean.index, mean, label=kind.replace("_", " "))
            ax.fill_between(mean.index, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(model_label(model), fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("loss (mean ± std over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Learning curves, {study}" + (f", m = {m}" if m else "") + where(rows), fontsize=9, wrap=True)
    return save(fig, "learning_curves")


def make_plots(results_dir: str | Path, out_dir: str | Path, fmt: str = "png", identity: int | None = None,
               study: str | None = None) -> list[Path]:  # fmt: skip
    """Write every figure the results allow into `out_dir` as `fmt` (png, svg or pdf);
    returns their paths. `identity`: which study identity to draw where a study has several
    (numbered within each study; a study without an identity N is left out; checked for every
    study before anything is written). `study`: that study's figures only."""
    if fmt not in FORMATS:
        raise UserError(f"unknown figure format {fmt!r} (known: {', '.join(FORMATS)})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_results(results_dir, study)
    # Identities are numbered over every row, error rows included, as `rvrae table` numbers
    # them: --identity N names the same data in both commands. The chosen one per study:
    present = [s for s in ("benchmark", "robustness", "tune") if (rows["study"] == s).any()]
    kept = studies_with_identity(rows, present, identity)
    # several identities without a choice: UserError now
    groups = [select_identity(rows[rows["study"] == s], identity, one=True, what=f"a {s} figure")[0] for s in kept]
    ok = _with_oracle(ok_rows(pd.concat(groups) if groups else rows.iloc[0:0]), results_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    created = [p for p in (out, *out.parents) if not p.exists()]  # what a failure must remove
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {str(out)!r}: cannot create the folder ({e.strerror or e})") from None
    written: list[Path] = []

    def save(fig, name: str) -> Path:
        path = out / f"{name}.{fmt}"
        fig.tight_layout()
        written.append(path)
        fig.savefig(path, dpi=120, format=fmt)
        plt.close(fig)
        return path

    def undo() -> None:
        for p in written:
            p.unlink(missing_ok=True)
        for p in created:  # deepest first
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()

    figures = (_plot_long_short, _plot_rank_ic_by_m, _plot_beta_span, _plot_tune_history, _plot_learning_curves)
    try:
        paths = [p for p in (f(ok, plt, save) for f in figures) if p]
    except OSError as e:
        undo()
        raise UserError(f"--out {str(out)!r}: cannot write a figure ({e.strerror or e})") from None
    if not paths:
        undo()
        raise UserError(
            f"nothing to plot in {str(results_dir)!r}: no long-short series (ls_gross), robustness "
            "omitted_rank_ic or tune objective in successful trials"
        )
    return paths
