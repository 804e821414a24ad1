"""Readers and strict validation of user panels (SPEC §2.1, §8).

The one documented input is the long panel (Parquet or CSV, one row per stock-month);
the Chen-Pelger-Zhu `.npz` layout is read too. Every problem a user can fix raises
`UserError` with one line naming the file and the column, row or month.

    panel = load_panel("gkx.parquet", alignment="same_row", percent=False)
    panel = load_data("synthetic")          # the studies' --data flag
    panel = load_data("synthetic:studies/panels/C.json")   # another planted design
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from rvrae.data.panel import Panel
from rvrae.data.prep import missing_share, rank_to_unit
from rvrae.errors import UserError

ID_ALIASES = ("permno", "id", "gvkey", "ticker")
DATE_ALIASES = ("date", "DATE", "yyyymm", "eom")
RET_ALIASES = ("ret", "RET", "ret_exc_lead1m")
ALIGNMENTS = ("same_row", "lag")
CRSP_CODES = ("shrcd", "exchcd", "siccd", "shrcls", "permco")  # CRSP identifiers, not characteristics
# Returns that look like percent (monthly stock returns in decimals have a std of ~0.1-0.2 and
# rarely exceed 100 %): more than 1 % of stock-months with |ret| > 1, or a std above 1.
PERCENT_ABS_SHARE = 0.01
PERCENT_STD = 1.0
LONG_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
NPZ_MISSING = -99.99  # the CPZ missing-value code


# ---------------------------------------------------------------------------------------
# public API


def load_data(spec: str | os.PathLike, **opts) -> Panel:
    """`--data` of the studies: "synthetic" (the built-in default panel, with its oracle in
    `meta["oracle"]`), "synthetic:DESIGN.json" (another planted design,
    `rvrae.data.synthetic.read_design`) or a path to a Parquet / CSV / `.npz` panel (options as
    load_panel)."""
    if str(spec) == "synthetic" or str(spec).startswith("synthetic:"):
        from rvrae.data.synthetic import SynthConfig, make_synthetic, read_design

        if opts:
            raise UserError(f"--data {spec} takes no loader options (got {', '.join(opts)})")
        design = str(spec).partition(":")[2]
        if str(spec).startswith("synthetic:") and not design:
            raise UserError("--data synthetic:DESIGN.json needs the design file after the colon")
        return make_synthetic(SynthConfig(**(read_design(design) if design else {}))).panel
    return load_panel(spec, **opts)


def load_planted(spec: str) -> Panel:
    """`load_data(spec)` for a study that judges against the truth: the panel must be planted
    (`--data synthetic[:DESIGN.json]`, its oracle in `meta["oracle"]`), else one UserError."""
    panel = load_data(spec)
    if "oracle" not in panel.meta:
        raise UserError(f"--data {spec}: not a planted panel (no oracle to judge by)")
    return panel


def load_panel(
    path: str | os.PathLike,
    alignment: str = "same_row",
    percent: bool | None = None,
    chars: list[str] | tuple[str, ...] | None = None,
    start: str | None = None,
    end: str | None = None,
    exclude: list[str] | tuple[str, ...] | None = None,
    id_col: str | None = None,
    date_col: str | None = None,
    ret_col: str | None = None,
) -> Panel:
    """Read a long panel (Parquet / CSV) or a CPZ `.npz` into a preprocessed Panel.

    alignment: "same_row" (a row's characteristics are known before its return) or "lag"
    (characteristics are lagged one month per stock first, before the date range is cut, so
    the first kept month has the file's previous month). percent: True = returns are in
    percent and get divided by 100; False = decimal returns; None (not said) = decimal, but
    returns that look like percent (`looks_like_percent`) are refused. chars: the
    characteristic columns (default: every other numeric column; text columns are skipped
    with a notice in `meta["notices"]`). exclude: columns that are not characteristics.
    start / end: first / last month kept (YYYY-MM, YYYYMM or a date, e.g. "2000-01").
    id_col / date_col / ret_col: the column names, when the aliases do not find them.
    """
    path = Path(path)
    name = str(path)
    if alignment not in ALIGNMENTS:
        raise UserError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got {alignment!r}")
    if not path.exists():
        raise UserError(f"{name}: no such file")
    if path.is_dir():
        raise UserError(f"{name}: is a folder, expected a Parquet, CSV or .npz file")
    if path.stat().st_size == 0:
        raise UserError(f"{name}: empty file")
    suffix = path.suffix.lower()
    notices: list[str] = []
    if suffix == ".npz":
        if exclude or id_col or date_col or ret_col:
            raise UserError(f"{name}: .npz panels take --chars, not --exclude or column names")
        raw = _read_npz(path, chars)
    elif suffix in LONG_SUFFIXES:
        names = {"id": id_col, "date": date_col, "ret": ret_col}
        raw = _read_long(path, LONG_SUFFIXES[suffix], chars, exclude, names, notices)
    else:
        raise UserError(f"{name}: unsupported file type {suffix or '(none)'!r}; expected .parquet, .csv or .npz")
    x, ret, mask, dates, ids, char_names = raw
    if alignment == "lag":
        # the characteristics of month t are the stock's values of month t-1 (calendar month;
        # a stock without a row in t-1 has them missing). Before the date range is cut: the
        # first kept month takes its characteristics from the month before it.
        x = np.concatenate([np.full_like(x[:1], np.nan), x[:-1]], axis=0)
    # only the month's own stocks are ranked (SPEC §2.2): one without a return in t (after
    # the lag: delisted in t, say) must not take a place in t's ranks with other values
    x[~mask] = np.nan
    x, ret, mask, dates, ids = _restrict_months(name, x, ret, mask, dates, ids, start, end)
    if percent is None:
        why = looks_like_percent(ret[mask])
        if why:
            raise UserError(f"{name}: returns look like percent ({why}); pass --percent if they are, "
                            "--no-percent if they are decimal returns")  # fmt: skip
    if percent:
        ret = ret / np.float32(100.0)
    share = missing_share(x, mask)
    panel = Panel(
        chars=rank_to_unit(x),
        ret=np.where(mask, ret, 0.0).astype(np.float32),
        mask=mask,
        dates=dates,
        ids=ids,
        char_names=tuple(char_names),
        source=name,
        meta={"missing_share": share, "alignment": alignment, "percent": bool(percent), "notices": notices},
    )
    return panel


def looks_like_percent(r: np.ndarray) -> str:
    """Why returns `r` (the observed ones) look like percent, or "" if they do not: more
    than PERCENT_ABS_SHARE of them with |r| > 1 (a 100 % monthly move), or a std above
    PERCENT_STD. Decimal monthly stock returns have a std of ~0.1-0.2."""
    if r.size == 0:
        return ""
    share = float(np.mean(np.abs(r) > 1.0))
    std = float(np.std(r))
    if share > PERCENT_ABS_SHARE:
        return f"{share:.1%} of |ret| > 1"
    if std > PERCENT_STD:
        return f"std {std:.3g}"
    return ""


def write_long(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a long panel as Parquet or CSV (by suffix), atomically: a temporary file in the
    same folder, then a rename, so a failure leaves no output."""
    path = Path(path)
    kind = LONG_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: output must end in .parquet, .pq or .csv")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{path}: folder {folder} does not exist")
    if path.is_dir():
        raise UserError(f"{path}: is a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"{path}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    try:
        if kind == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a folder that forbids writing: one line, nothing left
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def panel_summary(panel: Panel) -> dict:
    """What the loader sees, for `rvrae data info` (keys are stable: the renderer uses them)."""
    per_month = panel.mask.sum(axis=1)
    live = per_month[per_month > 0] if per_month.any() else per_month
    return {
        "source": panel.source,
        "months": int(panel.T),
        "first_month": str(panel.dates[0]) if panel.T else "",
        "last_month": str(panel.dates[-1]) if panel.T else "",
        "stocks": int(panel.mask.any(axis=0).sum()),
        "stock_months": int(panel.mask.sum()),
        "stocks_per_month_min": int(live.min()) if live.size else 0,
        "stocks_per_month_median": float(np.median(live)) if live.size else 0.0,
        "stocks_per_month_max": int(live.max()) if live.size else 0,
        "characteristics": int(panel.C),
        "char_names": list(panel.char_names),
        "missing_share": float(panel.meta.get("missing_share", float("nan"))),
        **_return_stats(panel.ret[panel.mask]),
    }


def _return_stats(r: np.ndarray) -> dict:
    """Return statistics of `data info`: scale and tails (percent returns show at a glance)."""
    if r.size == 0:
        return {}
    q = np.quantile(r, [0.01, 0.5, 0.99])
    return {
        "ret_mean": float(r.mean()), "ret_std": float(r.std()), "ret_min": float(r.min()),
        "ret_p1_median_p99": [f"{v:.4g}" for v in q], "ret_max": float(r.max()),
        "ret_abs_over_1_share": float(np.mean(np.abs(r) > 1.0)),
    }


# ---------------------------------------------------------------------------------------
# long panels


def _pick(name: str, columns: list[str], aliases: tuple[str, ...], what: str, given: str | None = None) -> str:
    if given is not None:  # --id-col / --date-col / --ret-col
        if given not in columns:
            raise UserError(f"{name}: {what} column {given!r} not found")
        return given
    for a in aliases:  # exact spelling first, then case-insensitive
        if a in columns:
            return a
    lower = {c.lower(): c for c in columns}
    for a in aliases:
        if a.lower() in lower:
            return lower[a.lower()]
    sep = next((c for c in (";", "\t", "|") if len(columns) == 1 and c in str(columns[0])), None)
    hint = f"; the file looks {sep!r}-separated: write it comma-separated" if sep else ""
    raise UserError(
        f"{name}: no {what} column (expected one of {', '.join(aliases)}; "
        f"found {', '.join(map(str, columns[:12]))}{', ...' if len(columns) > 12 else ''}){hint}"
    )


class _Columns:
    """Column access without materialising the whole file as float64 at once."""

    def __init__(self, path: Path, kind: str, id_col: str | None = None):
        name = str(path)
        self.table = self.frame = None
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                self.table = pq.read_table(path)
                self.names = list(self.table.column_names)
                self.n = self.table.num_rows
            else:
                # the header as written (pandas renames a repeated name: x1, x1.1); empty
                # cells are pandas' "Unnamed: k"
                raw = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].dropna()
                if raw.duplicated().any():
                    raise UserError(f"{name}: column {raw[raw.duplicated()].iloc[0]!r} appears twice")
                # a stock id column is read as written: a gvkey 001004 keeps its zeros, as it
                # does from Parquet (`_read_long` turns plain numbers back into numbers)
                aliases = {a.lower() for a in ID_ALIASES}
                ids = {c for c in raw if c == id_col or c.lower() in aliases}
                self.frame = pd.read_csv(path, low_memory=False, dtype={c: str for c in ids})
                self.names = [str(c) for c in self.frame.columns]
                self.frame.columns = self.names
                self.n = len(self.frame)
        except pd.errors.EmptyDataError:
            raise UserError(f"{name}: empty file (no header, no rows)") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise UserError(f"{name}: not a readable CSV file ({_first_line(e)})") from None
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError on non-Parquet bytes
            if kind == "parquet":
                raise UserError(f"{name}: not a readable Parquet file ({_first_line(e)})") from None
            raise
        if len(set(self.names)) != len(self.names):
            dup = next(c for c in self.names if self.names.count(c) > 1)
            raise UserError(f"{name}: column {dup!r} appears twice")

    def get(self, col: str) -> pd.Series:
        if self.table is not None:
            return self.table.column(col).to_pandas()
        return self.frame[col]

    def drop(self, col: str) -> None:
        """Free a column once it is copied into the dense arrays (keeps peak memory low)."""
        if self.table is not None:
            self.table = self.table.drop_columns([col])
        else:
            del self.frame[col]


def _read_long(path: Path, kind: str, chars, exclude=None, given=None, notices=None) -> tuple:
    name = str(path)
    given = given or {}
    notices = [] if notices is None else notices
    cols = _Columns(path, kind, given.get("id"))
    if cols.n == 0:
        raise UserError(f"{name}: empty file (header only, no rows)")
    id_col = _pick(name, cols.names, ID_ALIASES, "stock id", given.get("id"))
    date_col = _pick(name, cols.names, DATE_ALIASES, "date", given.get("date"))
    ret_col = _pick(name, cols.names, RET_ALIASES, "return", given.get("ret"))
    # the alias columns not chosen are not characteristics either (e.g. both permno and
    # gvkey, or CRSP's TICKER beside PERMNO): matched case-insensitively, as the aliases are
    aliases = {a.lower() for a in ID_ALIASES + DATE_ALIASES + RET_ALIASES}
    reserved = {id_col, date_col, ret_col} | {c for c in cols.names if c.lower() in aliases}
    absent = [c for c in exclude or () if c not in cols.names]
    if absent:
        raise UserError(f"{name}: --exclude column {absent[0]!r} not found")
    reserved |= set(exclude or ())
    if chars is None:
        char_names = [c for c in cols.names if c not in reserved]
        # a row index written with the data (pandas' to_csv / to_parquet of a filtered frame)
        # or a column with no name: not a characteristic
        index = [c for c in char_names if re.fullmatch(r"Unnamed: \d+|__index_level_\d+__", c)]
        if index:
            notices.append(f"{len(index)} index or unnamed column(s) skipped, not characteristics: {', '.join(index)}")
            char_names = [c for c in char_names if c not in index]
        empty = [c for c in char_names if cols.get(c).isna().all()]
        if empty:
            notices.append(f"{len(empty)} column(s) without a value skipped: {', '.join(empty)}")
            char_names = [c for c in char_names if c not in empty]
        text = [c for c in char_names if _is_text(cols.get(c))]
        if text:
            notices.append(f"{len(text)} text column(s) skipped, not characteristics: {', '.join(text)}")
            char_names = [c for c in char_names if c not in text]
        codes = [c for c in char_names if c.lower() in CRSP_CODES]
        if codes:
            notices.append(f"{', '.join(codes)} look like CRSP codes but are used as characteristics; "
                           f"--exclude {','.join(codes)} drops them")  # fmt: skip
    else:
        char_names = list(chars)
        absent = [c for c in char_names if c not in cols.names]
        if absent:
            raise UserError(f"{name}: characteristic column {absent[0]!r} not found")
        clash = [c for c in char_names if c in (id_col, date_col, ret_col)]
        if clash:
            raise UserError(f"{name}: column {clash[0]!r} cannot be both a characteristic and the id/date/return")
    if not char_names:
        raise UserError(f"{name}: no characteristic columns besides {id_col}, {date_col}, {ret_col}")

    # ids: union of stocks, sorted (numbers numerically, then as strings)
    ids_raw = cols.get(id_col)
    if ids_raw.isna().any():
        raise UserError(f"{name}: column {id_col!r} is empty at row {_first_row(ids_raw.isna())}")
    if kind == "csv":  # read as text (`_Columns`): plain numbers (PERMNO) sorted as numbers
        ids_raw = ids_raw.str.strip()
        if ids_raw.str.fullmatch(r"0|[1-9]\d{0,17}").all():
            ids_raw = ids_raw.astype(np.int64)
    stock, uniq_ids = pd.factorize(ids_raw, sort=True)
    ids = np.asarray([str(i) for i in uniq_ids])
    if len(set(ids)) != len(ids):  # e.g. 1 and "1" in one object column
        raise UserError(f"{name}: column {id_col!r} mixes ids that print alike (e.g. 1 and '1')")
    cols.drop(id_col)

    month = _parse_months(name, date_col, cols.get(date_col))  # [n] int64 months since 1970-01
    cols.drop(date_col)
    m0 = int(month.min())
    t_idx = month - m0
    T = int(t_idx.max()) + 1
    N = len(ids)
    dates = (np.arange(T) + m0).astype("datetime64[M]")

    key = stock.astype(np.int64) * T + t_idx
    if len(np.unique(key)) != len(key):
        dup = pd.Series(key).duplicated().to_numpy()
        r = int(np.flatnonzero(dup)[0])
        raise UserError(
            f"{name}: duplicate ({id_col}, month) = ({ids[stock[r]]}, {dates[t_idx[r]]}) at row {_row(r)}"
        )

    r = _numeric(name, ret_col, cols.get(ret_col), what="return")
    bad = ~np.isfinite(r)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind_ = "NaN" if np.isnan(r[i]) else "inf"
        hint = "; drop the rows without a return first (a JKP file's last month has none)" if kind_ == "NaN" else ""
        raise UserError(
            f"{name}: {kind_} in return column {ret_col!r} at row {_row(i)} "
            f"({ids[stock[i]]}, {dates[t_idx[i]]}); {int(bad.sum())} bad value(s) in all{hint}"
        )
    cols.drop(ret_col)
    ret = np.zeros((T, N), dtype=np.float32)
    ret[t_idx, stock] = r
    mask = np.zeros((T, N), dtype=bool)
    mask[t_idx, stock] = True

    x = np.full((T, N, len(char_names)), np.nan, dtype=np.float32)
    for j, c in enumerate(char_names):
        v = _numeric(name, c, cols.get(c), what="characteristic", dtype=np.float64)
        if np.isinf(v).any():
            i = int(np.flatnonzero(np.isinf(v))[0])
            raise UserError(f"{name}: inf in characteristic {c!r} at row {_row(i)}")
        x[t_idx, stock, j] = _order_exact_float32(v)
        cols.drop(c)
    return x, ret, mask, dates, ids, char_names


def _is_text(s: pd.Series) -> bool:
    """A text column (e.g. CRSP's TICKER, COMNAM): fewer than half its non-empty values are
    numbers. A mostly numeric column with a few bad cells stays, and its first bad cell is an
    error naming the row (`_numeric`)."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return False
    present = s.dropna()
    if present.empty:
        return False
    return bool(pd.to_numeric(present, errors="coerce").notna().mean() < 0.5)


def _numeric(name: str, col: str, s: pd.Series, what: str, dtype=np.float32) -> np.ndarray:
    """A column as `dtype`; a value that is not a number is an error naming the row."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=dtype, na_value=np.nan)
    v = pd.to_numeric(s, errors="coerce")
    bad = v.isna().to_numpy() & s.notna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        hint = "; --exclude it if it is not a characteristic" if what == "characteristic" else ""
        raise UserError(
            f"{name}: {what} column {col!r} is not numeric (row {_row(i)}: {str(s.iloc[i])[:40]!r}){hint}"
        )
    return v.to_numpy(dtype=dtype, na_value=np.nan)


def _order_exact_float32(v: np.ndarray) -> np.ndarray:
    """A float64 characteristic as float32 that keeps its order: the cast itself where it
    merges no two distinct values, else each value's dense rank over the column (exact in
    float32 up to 2**24 distinct values). Only the order matters (the loader ranks each
    month's cross-section); a market cap in dollars, ~1e10, has steps of 1e3 in float32,
    which would tie stocks that differ by less."""
    fin = np.isfinite(v)
    u = np.unique(v[fin])  # sorted, distinct
    with np.errstate(over="ignore"):  # beyond float32's range: inf, caught below
        f32, u32 = v.astype(np.float32), u.astype(np.float32)
    if len(u) > 2**24 or (np.isfinite(u32).all() and (np.diff(u32) > 0).all()):
        return f32
    out = np.full(v.shape, np.nan, dtype=np.float32)
    out[fin] = np.searchsorted(u, v[fin]).astype(np.float32)
    return out


def _parse_months(name: str, col: str, s: pd.Series) -> np.ndarray:
    """Dates -> int64 months since 1970-01. Accepts dates / datetimes, 'YYYY-MM', 'YYYY-MM-DD',
    YYYYMM and YYYYMMDD (int or str). Each distinct value is parsed once."""
    if s.isna().any():
        raise UserError(f"{name}: column {col!r} is empty at row {_first_row(s.isna())}")
    codes, uniq = pd.factorize(s)
    u = pd.Series(uniq)
    if pd.api.types.is_datetime64_any_dtype(u):
        parsed = pd.to_datetime(u)
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):  # the month as written, not in UTC
            parsed = parsed.dt.tz_localize(None)
    else:
        parsed = _parse_date_values(u)
        if parsed is None or parsed.isna().any():
            bad_val = uniq[int(np.flatnonzero(parsed.isna())[0])] if parsed is not None else uniq[0]
            i = int(np.flatnonzero(np.asarray(s == bad_val))[0]) if parsed is not None else 0
            raise UserError(
                f"{name}: unparseable date {str(bad_val)[:40]!r} in column {col!r} at row {_row(i)} "
                f"(expected a date, YYYY-MM, YYYYMM or YYYYMMDD)"
            )
    m = parsed.to_numpy().astype("datetime64[M]").astype(np.int64)
    return m[codes]


def _parse_date_values(u: pd.Series) -> pd.Series | None:
    if pd.api.types.is_float_dtype(u):
        if not np.all(np.mod(u.to_numpy(), 1) == 0):
            return pd.Series(pd.NaT, index=u.index)
        u = u.astype(np.int64)
    if pd.api.types.is_integer_dtype(u):
        v = u.to_numpy(dtype=np.int64)
        digits = np.where(v >= 10_000_000, 8, np.where(v >= 100_000, 6, 0))
        txt = u.astype(str)
        out = pd.Series(pd.NaT, index=u.index, dtype="datetime64[ns]")
        for d, fmt in ((6, "%Y%m"), (8, "%Y%m%d")):
            sel = (digits == d) & (v < 10**d)
            out[sel] = pd.to_datetime(txt[sel], format=fmt, errors="coerce")
        return out
    txt = u.astype(str).str.strip()
    out = pd.Series(pd.NaT, index=u.index, dtype="datetime64[ns]")
    # digits only: YYYYMM or YYYYMMDD by their length ("%Y%m%d" alone would read "199912" as
    # 1999-01-02: strptime takes one digit for the month and one for the day)
    for d, fmt in ((6, "%Y%m"), (8, "%Y%m%d")):
        sel = txt.str.fullmatch(rf"\d{{{d}}}")
        out[sel] = pd.to_datetime(txt[sel], format=fmt, errors="coerce")
    digits = txt.str.fullmatch(r"\d+")
    for fmt in ("%Y-%m-%d", "%Y-%m", "%Y/%m/%d", "%Y/%m"):
        todo = out.isna() & ~digits
        if not todo.any():
            break
        out[todo] = pd.to_datetime(txt[todo], format=fmt, errors="coerce")
    todo = out.isna() & ~digits  # digits of another length are not a date
    if todo.any():  # anything else pandas understands ("2000-01-31 00:00:00", "Jan 2000")
        for i in np.flatnonzero(todo.to_numpy()):
            try:
                ts = pd.Timestamp(txt.iloc[i])
                out.iloc[i] = ts.tz_localize(None) if ts.tzinfo is not None else ts  # as written
            except (ValueError, TypeError, OverflowError):
                pass
    return out


def _restrict_months(name, x, ret, mask, dates, ids, start, end):
    """The months from `start` to `end` (either None: open), in any format the date column
    takes (YYYYMM too), and the stocks that have a row in them; `ids` cut to match."""
    if start is None and end is None:
        return x, ret, mask, dates, ids
    lo, hi = 0, len(dates)
    for label, value in (("start", start), ("end", end)):
        if value is None:
            continue
        v = pd.Series([value]) if isinstance(value, (int, np.integer)) else pd.Series([str(value)], dtype=object)
        parsed = _parse_date_values(v)
        if parsed is None or parsed.isna().any():
            raise UserError(f"{name}: cannot parse {label} month {value!r} (expected YYYY-MM, YYYYMM or a date)")
        mth = parsed.to_numpy().astype("datetime64[M]")[0]
        if label == "start":
            lo = int(np.searchsorted(dates, mth, side="left"))
        else:
            hi = int(np.searchsorted(dates, mth, side="right"))
    if hi <= lo or not mask[lo:hi].any():
        raise UserError(f"{name}: no rows between start={start} and end={end}")
    keep = mask[lo:hi].any(axis=0)
    if not keep.all():  # drop stocks that never appear in the range (keep the union tight)
        return x[lo:hi][:, keep], ret[lo:hi][:, keep], mask[lo:hi][:, keep], dates[lo:hi], ids[keep]
    return x[lo:hi], ret[lo:hi], mask[lo:hi], dates[lo:hi], ids


# ---------------------------------------------------------------------------------------
# Chen-Pelger-Zhu .npz


def _read_npz(path: Path, chars) -> tuple:
    name = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle a user file (SPEC §8)
            missing = [k for k in ("data", "date") if k not in z.files]
            if missing:
                raise UserError(f"{name}: .npz has no {missing[0]!r} array (found {', '.join(z.files) or 'none'})")
            data = np.asarray(z["data"])
            date = np.asarray(z["date"])
            permno = np.asarray(z["permno"]) if "permno" in z.files else None
            variable = np.asarray(z["variable"]) if "variable" in z.files else None
    except UserError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise UserError(f"{name}: corrupt or unreadable .npz ({_first_line(e)})") from None
    if data.ndim != 3 or data.shape[2] < 2:
        raise UserError(f"{name}: .npz 'data' must be [T, N, 1+C] (return first), got shape {data.shape}")
    T, N, P = data.shape
    if not np.issubdtype(data.dtype, np.number):
        raise UserError(f"{name}: .npz 'data' is not numeric ({data.dtype})")
    if date.shape != (T,):
        raise UserError(f"{name}: .npz 'date' has shape {date.shape}, expected ({T},)")
    if permno is not None and permno.shape != (N,):
        raise UserError(f"{name}: .npz 'permno' has shape {permno.shape}, expected ({N},)")
    names = [f"c{j}" for j in range(P - 1)]
    if variable is not None:
        v = [str(s) for s in variable.reshape(-1)]
        if len(v) == P:
            names = v[1:]
        elif len(v) == P - 1:
            names = v
        else:
            raise UserError(f"{name}: .npz 'variable' has {len(v)} names for {P - 1} characteristics")
    month = _parse_months(name, "date", pd.Series(date))
    order = np.argsort(month, kind="stable")
    if len(np.unique(month)) != T:
        raise UserError(f"{name}: .npz 'date' repeats a month")
    if not (np.diff(month[order]) == 1).all():  # keep the calendar dense, as the long reader
        full = np.arange(month.min(), month.max() + 1)
    else:
        full = month[order]
    pos = np.searchsorted(full, month)
    Tf = len(full)
    with np.errstate(over="ignore"):  # a float64 beyond float32's range: handled below
        raw = data.astype(np.float32, copy=False)
    miss = np.isclose(raw, NPZ_MISSING) | np.isnan(raw)
    r = raw[..., 0]
    if np.isinf(r[~miss[..., 0]]).any():
        t = int(np.flatnonzero(np.isinf(r).any(axis=1))[0])
        raise UserError(f"{name}: inf in the return (data[..., 0]) in month {full[pos[t]].astype('datetime64[M]')}")
    ret = np.zeros((Tf, N), dtype=np.float32)
    mask = np.zeros((Tf, N), dtype=bool)
    mask[pos] = ~miss[..., 0]
    ret[pos] = np.where(miss[..., 0], 0.0, r)
    x = np.full((Tf, N, P - 1), np.nan, dtype=np.float32)
    # inf in the file's own dtype (a float64 beyond float32's range is a value, kept in order below)
    if np.isinf(np.where(miss[..., 1:], 0.0, data[..., 1:])).any():
        raise UserError(f"{name}: inf in the characteristics of the .npz 'data'")
    if data.dtype == np.float32:
        x[pos] = np.where(miss[..., 1:], np.nan, raw[..., 1:])
    else:  # a wider dtype: cast each characteristic keeping its order, as the long reader
        for p in range(1, P):  # does (ranks follow; the cast must not tie distinct values)
            x[pos, :, p - 1] = _order_exact_float32(np.where(miss[..., p], np.nan, data[..., p].astype(np.float64)))
    ids = np.asarray([str(p) for p in permno]) if permno is not None else np.asarray([str(i) for i in range(N)])
    if chars is not None:
        absent = [c for c in chars if c not in names]
        if absent:
            raise UserError(f"{name}: characteristic {absent[0]!r} not in the .npz 'variable'")
        sel = [names.index(c) for c in chars]
        x, names = x[..., sel], list(chars)
    return x, ret, mask, full.astype("datetime64[M]"), ids, names


# ---------------------------------------------------------------------------------------
# helpers


def _row(i: int) -> int:
    """Rows are reported 1-based over the data rows (a CSV's header is not a row)."""
    return int(i) + 1


def _first_row(flags: pd.Series) -> int:
    return _row(int(np.flatnonzero(flags.to_numpy())[0]))


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:160]
