"""Per-trial forecasts (SPEC §6): stored beside the rows, rescored and averaged over seeds
without retraining.

Layout, partitioned like the rows (rvrae.results.store), one file per trial:

    <out>/forecasts/study=<study>/model=<model>/<trial_id>.parquet

One row per scored stock-month: every valid and test month, every stock with a return that
month (omitted stocks included: valid metrics score them, SPEC §2.3). Columns:

    cell_id   the trial's cell key hashed (rvrae.results.store.cell_id): the row's `cell_id`
    trial_id  the row's trial_id (study and model are the path's, as for the rows)
    split     "valid" | "test"
    date      the month (the panel's dates), id: the stock id as the user's panel spells it
    stock     the stock's column in the panel (rebuilds the [month, stock] arrays in the
              panel's own order, so rescoring repeats the trial's sums and tie-breaks exactly)
    omitted   the stock was left out of training (robustness, m > 0)
    ret       the realised return; r_hat, r_std (null where the model has none)
    fit_total β̂_t'f̂_post,t and fit_pred β̂_t'λ̂_t (eq. 32, 33): R²_total and R²_pred need them
float32 throughout (the model's own precision). The schema metadata holds `n_stocks`.

How a forecast travels (the choice, and why): the trainable builds the file's bytes and ships
them in its final `ray.tune.report`; the driver's Parquet sink (rvrae.study.callbacks) writes
them under --out, atomically, then drops them from the result before Tune records it. On a
cluster --out lives on the head, which every trial reaches through Tune's result channel
anyway; a trial writing a shared path itself would need that path mounted on every worker.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rvrae.errors import UserError
from rvrae.metrics import COST, TEST_METRICS, score

FORECAST_DIR = "forecasts"
REPORT_KEY = "forecast_parquet"  # the final report's key that carries a trial's file (bytes)
_FLOATS = ("ret", "r_hat", "r_std", "fit_total", "fit_pred")
# Metrics that need β̂ itself, not only its fitted values: not rescored (rows keep them).
NOT_RESCORED = ("r2_beta",)
# Dictionaries for the repetitive columns only (on float32 noise they cost 1.5 bytes a value);
# byte-stream-split floats compress a little under zstd. ~4.8 MB a trial at 5,682 stocks.
_PARQUET = dict(compression="zstd", use_dictionary=["cell_id", "trial_id", "split", "date", "id"],
                use_byte_stream_split=list(_FLOATS))  # fmt: skip


def forecast_table(panel, fc, valid_months, test_months, omitted) -> pa.Table:
    """The long table of one trial's forecast (`fc` over all months of `panel`, months
    0..T-1), without cell_id / trial_id (the driver adds them, knowing the study)."""
    from rvrae.npx import prevailing_mean

    lam = prevailing_mean(fc.f_post)  # eq. 33, as rvrae.study.trainable.evaluate scores it
    parts = {k: [] for k in ("split", "month", "stock", *_FLOATS)}
    is_omitted = np.zeros(panel.N, dtype=bool)
    is_omitted[np.asarray(omitted, dtype=np.int64)] = True
    for split, months in (("valid", valid_months), ("test", test_months)):
        months = np.asarray(months, dtype=np.int64)
        t, n = np.nonzero(panel.mask[months])  # row-major: month by month, stocks in panel order
        mo = months[t]
        parts["split"].append(np.full(len(t), split))
        parts["month"].append(mo)
        parts["stock"].append(n)
        parts["ret"].append(panel.ret[mo, n])
        parts["r_hat"].append(fc.r_hat[mo, n])
        parts["r_std"].append(None if fc.r_std is None else fc.r_std[mo, n])
        parts["fit_total"].append(np.einsum("rk,rk->r", fc.beta[mo, n], fc.f_post[mo]))
        parts["fit_pred"].append(np.einsum("rk,rk->r", fc.beta[mo, n], lam[mo]))
    month = np.concatenate(parts["month"])
    stock = np.concatenate(parts["stock"])
    cols = {
        "split": pa.array(np.concatenate(parts["split"])).dictionary_encode(),
        "date": pa.array(panel.dates[month].astype("datetime64[D]")),
        "id": pa.array(panel.ids[stock].astype(str)).dictionary_encode(),
        "stock": pa.array(stock.astype(np.int32)),
        "omitted": pa.array(is_omitted[stock]),
    }
    for k in _FLOATS:
        if k == "r_std" and fc.r_std is None:
            cols[k] = pa.nulls(len(month), pa.float32())
        else:
            cols[k] = pa.array(np.concatenate(parts[k]).astype(np.float32))
    return pa.table(cols).replace_schema_metadata({"n_stocks": str(panel.N)})


def to_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (zstd): what the trial ships to the driver."""
    buf = io.BytesIO()
    pq.write_table(table, buf, **_PARQUET)
    return buf.getvalue()


def forecast_path(out_dir: str | Path, study: str, model: str, trial_id: str) -> Path:
    from rvrae.results.store import trial_path

    return trial_path(Path(out_dir) / FORECAST_DIR, study, model, trial_id)


def write_forecast(out_dir: str | Path, study: str, model: str, trial_id: str, data: bytes, cell_id: str) -> Path:
    """Write one trial's forecast (Parquet bytes from the trial) with its cell_id and
    trial_id columns prepended, atomically like the rows; returns the path."""
    from rvrae.results.store import atomic_write

    table = pq.read_table(pa.BufferReader(data))
    n = table.num_rows
    meta = table.schema.metadata
    table = table.add_column(0, "trial_id", pa.array([trial_id] * n).dictionary_encode())
    table = table.add_column(0, "cell_id", pa.array([cell_id] * n).dictionary_encode())
    table = table.replace_schema_metadata(meta)
    path = forecast_path(out_dir, study, model, trial_id)
    atomic_write(path, lambda fh: pq.write_table(table, fh, **_PARQUET))
    return path


def read_forecast(out_dir: str | Path, study: str, model: str, trial_id: str) -> tuple[pd.DataFrame, int] | None:
    """(one trial's forecast rows, the panel's number of stocks), or None if not stored."""
    path = forecast_path(out_dir, study, model, trial_id)
    return read_forecast_file(path) if path.is_file() else None


def read_forecast_file(path: Path) -> tuple[pd.DataFrame, int]:
    """(the forecast rows of one file, the panel's number of stocks); UserError naming an
    unreadable file."""
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise UserError(f"cannot read forecast file {str(path)!r}: {e}") from None
    n_stocks = int((table.schema.metadata or {}).get(b"n_stocks", b"0"))
    df = table.to_pandas()
    return df, max(n_stocks, int(df["stock"].max()) + 1 if len(df) else 0)


def _dense(df: pd.DataFrame, n_stocks: int) -> dict:
    """[month, stock] arrays of one split (months in date order): what rvrae.metrics takes."""
    dates = np.sort(df["date"].unique())
    t = np.searchsorted(dates, df["date"].to_numpy())
    n = df["stock"].to_numpy(np.int64)
    out = {"mask": np.zeros((len(dates), n_stocks), dtype=bool), "omitted": np.zeros((len(dates), n_stocks), dtype=bool)}
    out["mask"][t, n] = True
    out["omitted"][t, n] = df["omitted"].to_numpy(bool)
    for k in _FLOATS:
        v = df[k].to_numpy(np.float32, na_value=np.nan)
        if k == "r_std" and np.isnan(v).all():
            out[k] = None
            continue
        a = np.zeros((len(dates), n_stocks), dtype=np.float32)
        a[t, n] = v
        out[k] = a
    if "size" in df.columns:
        a = np.zeros((len(dates), n_stocks))
        a[t, n] = df["size"].to_numpy(float)
        out["size"] = a
    return out


class _Fitted:
    """What `rvrae.metrics.score` reads of a Forecast, from stored fitted values: β is
    [fit_total, fit_pred] (K = 2) with f_post = (1, 0) and λ = (0, 1), so score's own
    β'f_post and β'λ are the stored fits — one definition of every metric."""

    def __init__(self, d: dict):
        t = d["r_hat"].shape[0]
        self.r_hat, self.r_std = d["r_hat"], d["r_std"]
        self.beta = np.stack([d["fit_total"], d["fit_pred"]], axis=-1)
        self.f_post = np.tile(np.array([1.0, 0.0]), (t, 1))
        self.lam = np.tile(np.array([0.0, 1.0]), (t, 1))


def scores(df: pd.DataFrame, n_stocks: int, cost: float = COST, weighting: str = "equal",
           parts: tuple[str, ...] = ("valid_", "", "omitted_")) -> dict[str, float]:
    """Every metric of a results row (valid_*, test, omitted_*) from one trial's forecast rows,
    as rvrae.study.trainable.evaluate computes them (but NOT_RESCORED); `cost` per unit of
    turnover and the long-short `weighting` ("value": legs weighted by a `size` column) may
    differ from 30 bps equal-weighted. `parts`: which of the prefixes "valid_", "" (test) and
    "omitted_" to score (all by default)."""
    if weighting not in ("equal", "value"):
        raise UserError(f"--weighting must be equal or value, got {weighting!r}")
    if weighting == "value" and "size" not in df.columns:
        raise UserError("value weighting needs a 'size' column (market equity) in the stored forecasts; "
                        "these have none (the panel carries no size variable): use --weighting equal")  # fmt: skip
    out: dict[str, float] = {}
    for prefix, split, only_omitted in (("valid_", "valid", False), ("", "test", False), ("omitted_", "test", True)):
        if prefix not in parts:
            continue
        sub = df[df["split"] == split]
        if only_omitted and not sub["omitted"].any():
            continue
        d = _dense(sub, n_stocks)
        if only_omitted:
            mask = d["mask"] & d["omitted"]
        elif split == "valid":  # the omitted stocks were removed from valid (SPEC §2.3)
            mask = d["mask"] & ~d["omitted"]
        else:
            mask = d["mask"]
        fc = _Fitted(d)
        size = d.get("size") if weighting == "value" else None
        s = score(d["ret"], mask, fc, fc.lam, cost=cost, size=size)
        out.update({prefix + k: float(v) for k, v in s.items() if k not in NOT_RESCORED})
    return out


def rescore_rows(out_dir: str | Path, df: pd.DataFrame, cost: float = COST, weighting: str = "equal") -> tuple[pd.DataFrame, int]:
    """The rows with every metric recomputed from their stored forecasts (rows without one,
    e.g. error rows or rows older than the forecasts, keep their stored values); returns
    (rows, how many were rescored)."""
    df = df.copy()
    done = 0
    for i, r in df.iterrows():
        if r.get("status", "ok") != "ok":
            continue
        got = read_forecast(out_dir, r["study"], r["model"], r["trial_id"])
        if got is None:
            continue
        for k, v in scores(*got, cost=cost, weighting=weighting).items():
            df.loc[i, k] = v
        done += 1
    return df, done


def _mean_forecast(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The seeds' forecasts averaged per (split, date, stock); r_std of the equal mixture
    (mean of r_std² plus the spread of the r_hat over seeds)."""
    key = ["split", "date", "stock"]
    cat = pd.concat(frames, ignore_index=True)
    cat["r_hat2"] = cat["r_hat"].astype(float) ** 2
    cat["r_var"] = cat["r_std"].astype(float) ** 2
    g = cat.groupby(key, observed=True, sort=True)
    mean = g[["ret", "r_hat", "fit_total", "fit_pred", "r_hat2", "r_var"]].mean()
    mean["omitted"] = g["omitted"].any()
    var = (mean.pop("r_var") + mean.pop("r_hat2") - mean["r_hat"] ** 2).clip(lower=0)
    mean["r_std"] = np.sqrt(var)
    return mean.reset_index()


def _oracle_test_r_hat(out_dir, study: str, key: tuple) -> pd.DataFrame | None:
    """The oracle's test-month r̂ (`r_true`, by split/date/stock) of the study identity `key`
    (rvrae.identity.key_of), from its stored forecast (rvrae.results.oracle); None where there
    is none (a user's panel)."""
    from rvrae.results.oracle import oracle_forecast_path

    path = oracle_forecast_path(out_dir, study, key)
    if not path.is_file():
        return None
    truth, _ = read_forecast_file(path)
    return truth.loc[truth["split"] == "test", ["split", "date", "stock", "r_hat"]].rename(columns={"r_hat": "r_true"})


def _true_rank_ic(true_r: pd.DataFrame, mean: pd.DataFrame, n_stocks: int) -> float:
    """`rank_ic_true` of a seed ensemble's mean forecast: its test months ranked against the
    oracle's r̂ (`_oracle_test_r_hat`), the true expected return."""
    from rvrae.metrics import true_rank_ic

    test = mean[mean["split"] == "test"].merge(true_r, on=["split", "date", "stock"], how="inner")
    d = _dense(test.assign(ret=test["r_true"]), n_stocks)  # the truth in the returns' place
    return true_rank_ic(d["r_hat"], d["ret"], d["mask"])


def seed_ensembles(out_dir: str | Path, df: pd.DataFrame, cost: float = COST, weighting: str = "equal",
                   study: str = "benchmark") -> pd.DataFrame:  # fmt: skip
    """One row per (model, m = 0, resolved config, study identity) of `study` with ≥ 2 stored
    forecasts: every metric scored on the mean forecast over its seeds (Gu–Kelly–Xiu average
    their networks over seeds), `n` = seeds averaged, `ensemble` = True. Only m = 0: with
    m > 0 every seed omits other stocks. Empty when no forecasts are stored."""
    from rvrae.identity import KEY_COLUMNS, key_of
    from rvrae.results.store import config_key
    from rvrae.results.tables import ok_rows

    ok = ok_rows(df)
    ok = ok[(ok["study"] == study) & (ok["m"] == 0)] if "m" in ok.columns else ok.iloc[0:0]
    rows, truths = [], {}
    if ok.empty or "cell_id" not in ok.columns:
        return pd.DataFrame()
    # the cell key without the seed (store.cell_key's config: the resolved one, else `config`,
    # canonical JSON, as the tables split rows by config); code version and data path are
    # recorded, not keyed (rvrae.identity)
    group_cols = ["study", "model", "resolved_config", *[c for c in KEY_COLUMNS if c in ok.columns]]
    ok = ok.assign(_config_key=[config_key(r) for r in ok.to_dict("records")])
    by = ["study", "model", "_config_key", *[c for c in KEY_COLUMNS if c in ok.columns]]
    for _, g in ok.groupby(by, sort=False, dropna=False):
        frames, n_stocks = [], 0
        for _, r in g.iterrows():
            got = read_forecast(out_dir, r["study"], r["model"], r["trial_id"])
            if got is not None:
                frames.append(got[0])
                n_stocks = max(n_stocks, got[1])
        if len(frames) < 2:
            continue
        first = g.iloc[0].to_dict()
        row = {k: first[k] for k in ("study", "model", "m", "config", *group_cols, "data_source") if k in first}
        mean = _mean_forecast(frames)
        row.update(scores(mean, n_stocks, cost=cost, weighting=weighting))
        ident = key_of(first)
        if ident not in truths:  # one oracle per identity, read once for all its models
            truths[ident] = _oracle_test_r_hat(out_dir, study, ident)
        if truths[ident] is not None:
            row["rank_ic_true"] = _true_rank_ic(truths[ident], mean, n_stocks)
        row.update({"n": len(frames), "ensemble": True, "status": "ok", "seed": -1})
        rows.append(row)
    return pd.DataFrame(rows)


def storage_cost(n_stocks: int = 5682, months: int = 72, alive: float = 0.55, r_std: bool = True,
                 seed: int = 0) -> tuple[int, float]:  # fmt: skip
    """(bytes of one trial's forecast file, seconds to build, serialise and write it) at
    `n_stocks` (paper scale: 5,682 stocks, 3 valid + 3 test years, ~55 % of the stocks with a
    return each month), through the same code as a trial on a random forecast: the figures in
    the README. The seconds are the work a trial and the sink add for storing forecasts."""
    import tempfile
    import time

    from rvrae.data.panel import Panel
    from rvrae.models.base import Forecast

    rng = np.random.default_rng(seed)
    T, K, f32 = months, 5, np.float32
    mask = rng.uniform(size=(T, n_stocks)) < alive
    panel = Panel.from_arrays(np.zeros((T, n_stocks, 1), f32), (0.1 * rng.standard_normal((T, n_stocks))).astype(f32), mask)
    fc = Forecast(months=np.arange(T), r_hat=(0.01 * rng.standard_normal((T, n_stocks))).astype(f32),
                  beta=rng.standard_normal((T, n_stocks, K)).astype(f32), f_post=rng.standard_normal((T, K)).astype(f32),
                  f_prior=np.zeros((T, K), f32), r_std=np.abs(rng.standard_normal((T, n_stocks))).astype(f32) if r_std else None)  # fmt: skip
    half = T // 2
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = to_bytes(forecast_table(panel, fc, np.arange(half), np.arange(half, T), np.zeros(0, np.int64)))
        path = write_forecast(tmp, "benchmark", "rvrae", "t0", data, "0" * 16)
        return path.stat().st_size, time.perf_counter() - t0
