"""PNG figures from a results folder (SPEC §7, `rvrae plot`).

* `cumulative_long_short.png`: cumulative decile long-short return per model, without and
  with 30 bps costs — the mean over seeds of the per-month series the harness stores as
  JSON lists (`ls_gross`, `ls_net`, `ls_dates`) in each benchmark row (m = 0).
* `rank_ic_by_m.png`: Rank IC on the omitted stocks against m, mean ± std over seeds
  (robustness study).
* `tune_history.png`: the tune study's objective (`valid_rank_ic`) in trial order with its
  running best, per model.
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
from rvrae.results.tables import TUNE_OBJECTIVE, ok_rows, order_rows, tune_objective


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


def _mean_series(rows: pd.DataFrame, col: str) -> pd.Series | None:
    """Mean over rows (seeds) of a JSON per-month series, aligned on `ls_dates` if present."""
    parts = []
    for _, r in rows.iterrows():
        s = _series(r.get(col))
        if not s:
            continue
        dates = _series(r.get("ls_dates")) if "ls_dates" in rows.columns else None
        index = pd.to_datetime(dates) if dates and len(dates) == len(s) else pd.RangeIndex(len(s))
        parts.append(pd.Series(np.asarray(s, dtype=float), index=index))
    if not parts:
        return None
    return pd.concat(parts, axis=1).mean(axis=1)


def _plot_long_short(ok: pd.DataFrame, plt, out: Path) -> Path | None:
    if "ls_gross" not in ok.columns:
        return None
    study = "benchmark" if (ok["study"] == "benchmark").any() else None
    rows = ok[(ok["study"] == study) if study else ok["ls_gross"].notna()]
    if (rows["m"] == 0).any():
        rows = rows[rows["m"] == 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    drawn = False
    for model in order_rows(rows["model"].unique()):
        sub = rows[rows["model"] == model]
        for ax, col in zip(axes, ("ls_gross", "ls_net")):
            s = _mean_series(sub, col) if col in sub.columns else None
            if s is not None:
                ax.plot(s.index, s.fillna(0).cumsum(), label=model_label(model))
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set_title("Long-short, no costs")
    axes[1].set_title("Long-short, 30 bps costs")
    axes[0].set_ylabel("cumulative return (sum of monthly)")
    for ax in axes:
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return _save(fig, plt, out / "cumulative_long_short.png")


def _plot_rank_ic_by_m(ok: pd.DataFrame, plt, out: Path) -> Path | None:
    rows = ok[(ok["study"] == "robustness") & (ok["m"] > 0)]
    if "omitted_rank_ic" not in rows.columns or not rows["omitted_rank_ic"].notna().any():
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    g = rows.dropna(subset=["omitted_rank_ic"]).groupby(["model", "m"])["omitted_rank_ic"].agg(["mean", "std"])
    models = order_rows(g.index.get_level_values(0).unique())
    for i, model in enumerate(models):
        s = g.loc[model]
        offset = (i - (len(models) - 1) / 2) * 0.01 * max(1, np.ptp(s.index.to_numpy()))  # un-overlap bars
        ax.errorbar(s.index + offset, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3,
                    label=model_label(model))  # fmt: skip
    ax.set_xlabel("m (stocks omitted from training)")
    ax.set_ylabel("Rank IC on omitted stocks")
    ax.set_title("Robustness: mean ± std over seeds")
    ax.legend(fontsize=8)
    return _save(fig, plt, out / "rank_ic_by_m.png")


def _plot_tune_history(ok: pd.DataFrame, plt, out: Path) -> Path | None:
    rows = ok[ok["study"] == "tune"]
    objective, mode = tune_objective(rows)
    if objective not in rows.columns or not rows[objective].notna().any():
        return None
    best_so_far = np.maximum.accumulate if mode == "max" else np.minimum.accumulate
    fig, ax = plt.subplots(figsize=(7, 4))
    for model in order_rows(rows["model"].unique()):
        sub = rows[rows["model"] == model].dropna(subset=[objective])
        if "started_at" in sub.columns and (sub["started_at"] != "").all():
            sub = sub.sort_values(["started_at", "trial_id"])
        y = sub[objective].to_numpy(float)
        x = np.arange(1, len(y) + 1)
        (line,) = ax.plot(x, best_so_far(y), label=f"{model_label(model)} (best so far)")
        ax.scatter(x, y, s=12, color=line.get_color(), alpha=0.6)
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("Tuning history")
    ax.legend(fontsize=8)
    return _save(fig, plt, out / "tune_history.png")


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_plots(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write every figure the results allow into `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = ok_rows(read_results(results_dir))
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    paths = [p for p in (f(ok, plt, out) for f in (_plot_long_short, _plot_rank_ic_by_m, _plot_tune_history)) if p]
    if not paths:
        if created:
            out.rmdir()
        raise UserError(
            f"nothing to plot in {str(results_dir)!r}: no long-short series (ls_gross), robustness "
            f"omitted_rank_ic or tune {TUNE_OBJECTIVE} in successful trials"
        )
    return paths
