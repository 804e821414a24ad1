"""Readers and strict validation (SPEC §2.1, §8), mostly through the CLI in-process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rvrae.cli import main
from rvrae.data.io import load_data, load_panel, panel_summary, write_long
from rvrae.data.synthetic import SynthConfig, make_synthetic
from rvrae.errors import UserError


@pytest.fixture(scope="module")
def small():
    return make_synthetic(SynthConfig(seed=1, n_stocks=40, n_months=24, n_chars=3))


def _frame(n_ids=4, n_months=3):
    ids = np.repeat(np.arange(1, n_ids + 1), n_months)
    months = np.tile(np.arange(n_months), n_ids)
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "permno": ids,
            "date": [f"2001-{m + 1:02d}" for m in months],
            "ret": rng.normal(0, 0.1, len(ids)),
            "size": rng.normal(size=len(ids)),
            "bm": rng.normal(size=len(ids)),
        }
    )


def _check(path, capsys, *names):
    rc = main(["data", "check", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    for n in names:
        assert n in err, err
    return err


# ---- bad input: one line, exit 2 ---------------------------------------------------------


@pytest.mark.parametrize(
    "edit, names",
    [
        (lambda d: d.drop(columns="permno"), ["stock id", "permno"]),
        (lambda d: d.drop(columns="date"), ["date column"]),
        (lambda d: d.drop(columns="ret"), ["return column", "ret"]),
        (lambda d: pd.concat([d, d.iloc[[2]]]), ["duplicate", "(1, 2001-03)"]),
        (lambda d: d.assign(bm=["x"] + list(d.bm[1:])), ["'bm'", "not numeric", "row 1"]),
        (lambda d: d.assign(ret=[np.inf] + list(d.ret[1:])), ["inf", "'ret'", "row 1"]),
        (lambda d: d.assign(ret=list(d.ret[:5]) + [np.nan] + list(d.ret[6:])), ["NaN", "'ret'", "row 6"]),
        (lambda d: d.assign(date=list(d.date[:3]) + ["not-a-date"] + list(d.date[4:])), ["unparseable date", "'not-a-date'", "row 4"]),
        (lambda d: d.iloc[:0], ["empty file"]),
    ],
    ids=["no-id", "no-date", "no-ret", "duplicate", "non-numeric", "inf-ret", "nan-ret", "bad-date", "header-only"],
)
def test_bad_csv(tmp_path, capsys, edit, names):
    p = tmp_path / "panel.csv"
    edit(_frame()).to_csv(p, index=False)
    err = _check(p, capsys, *names)
    assert str(p) in err


def test_empty_file(tmp_path, capsys):
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    _check(p, capsys, "empty file")


def test_not_parquet_or_csv(tmp_path, capsys):
    p = tmp_path / "panel.txt"
    p.write_text("permno,date,ret\n1,2000-01,0.1\n")
    _check(p, capsys, "unsupported file type", ".txt")
    g = tmp_path / "garbage.parquet"
    g.write_bytes(b"\x00\x01garbage bytes, not parquet" * 10)
    _check(g, capsys, "not a readable Parquet file")


def test_corrupt_npz(tmp_path, capsys):
    p = tmp_path / "cpz.npz"
    p.write_bytes(b"PK\x03\x04 this is not a zip archive")
    _check(p, capsys, "corrupt", ".npz")
    q = tmp_path / "nodata.npz"
    np.savez(q, date=np.arange(3))
    _check(q, capsys, "no 'data' array")


def test_parquet_errors_name_the_column(tmp_path, capsys):
    p = tmp_path / "p.parquet"
    _frame().rename(columns={"ret": "returns"}).to_parquet(p)
    _check(p, capsys, "no return column", "returns")


def test_missing_file(tmp_path, capsys):
    _check(tmp_path / "nope.csv", capsys, "no such file")


# ---- readers --------------------------------------------------------------------------------


def test_aliases_and_date_formats(tmp_path):
    base = _frame()
    ref = None
    variants = {
        "yyyymm": lambda d: d.rename(columns={"permno": "gvkey", "date": "yyyymm", "ret": "RET"}).assign(
            yyyymm=[int(s.replace("-", "")) for s in d.date]
        ),
        "yyyymmdd": lambda d: d.rename(columns={"permno": "id", "date": "eom", "ret": "ret_exc_lead1m"}).assign(
            eom=[int(s.replace("-", "") + "28") for s in d.date]
        ),
        "date": lambda d: d.rename(columns={"permno": "ticker", "date": "DATE"}).assign(
            DATE=pd.to_datetime(d.date) + pd.offsets.MonthEnd(0), ticker=[f"T{i}" for i in d.permno]
        ),
        "yyyy-mm": lambda d: d,
    }
    for name, edit in variants.items():
        for suffix in (".csv", ".parquet"):
            p = tmp_path / f"{name}{suffix}"
            write_long(edit(base), p)
            pan = load_panel(p)
            assert pan.dates[0] == np.datetime64("2001-01") and pan.T == 3 and pan.N == 4, name
            assert pan.char_names == ("size", "bm"), name
            assert pan.source == str(p)
            if ref is None:
                ref = pan
            np.testing.assert_allclose(pan.ret, ref.ret, rtol=1e-6)
            np.testing.assert_array_equal(pan.chars, ref.chars)
            assert pan.mask.all()


def test_lag_percent_chars_and_range(tmp_path):
    d = _frame(n_ids=5, n_months=4)
    p = tmp_path / "p.csv"
    write_long(d, p)
    same = load_panel(p)
    lag = load_panel(p, alignment="lag")
    # lag: month t sees the stock's characteristics of month t-1; month 0 sees none (zeros)
    np.testing.assert_array_equal(lag.chars[1:], same.chars[:-1])
    assert (lag.chars[0] == 0).all()
    np.testing.assert_allclose(load_panel(p, percent=True).ret, same.ret / 100, rtol=1e-6)
    only = load_panel(p, chars=["bm"], start="2001-02", end="2001-03")
    assert only.char_names == ("bm",) and only.T == 2 and only.dates[0] == np.datetime64("2001-02")
    np.testing.assert_array_equal(only.chars[..., 0], same.chars[1:3, :, 1])
    with pytest.raises(Exception, match="alignment"):
        load_panel(p, alignment="sideways")


def test_npz_round_trip(tmp_path, small):
    """The CPZ layout carries the same panel as the long file."""
    long = tmp_path / "s.parquet"
    write_long(small.frame, long)
    ref = load_panel(long)
    raw = np.full((ref.T, ref.N, 1 + ref.C), -99.99, dtype=np.float64)
    f = small.frame
    t = ((f.date.values.astype("datetime64[M]") - ref.dates[0]).astype(int))
    n = np.searchsorted(ref.ids, f.permno.astype(str).values)
    raw[t, n, 0] = f.ret.values
    vals = f[list(ref.char_names)].to_numpy()
    raw[t, n, 1:] = np.where(np.isnan(vals), -99.99, vals)
    npz = tmp_path / "cpz.npz"
    np.savez(
        npz,
        data=raw,
        date=np.asarray([int(str(d).replace("-", "") + "15") for d in ref.dates]),
        permno=ref.ids.astype(np.int64),
        variable=np.asarray(["RET", *ref.char_names]),
    )
    got = load_panel(npz)
    np.testing.assert_array_equal(got.mask, ref.mask)
    np.testing.assert_allclose(got.ret, ref.ret, rtol=1e-6)
    np.testing.assert_allclose(got.chars, ref.chars, atol=1e-6)
    assert got.char_names == ref.char_names and list(got.ids) == list(ref.ids)


def test_summary_and_load_data(tmp_path, small):
    p = tmp_path / "s.csv"
    write_long(small.frame, p)
    pan = load_data(str(p))
    s = panel_summary(pan)
    assert s["months"] == 24 and s["characteristics"] == 3
    assert s["stocks_per_month_min"] == s["stocks_per_month_max"] == 40
    assert s["stocks"] == pan.N > 40  # entry and exit: the union is larger
    want = small.frame[list(pan.char_names)].isna().to_numpy().mean()
    assert s["missing_share"] == pytest.approx(want)
    assert main(["data", "info", str(p)]) == 0


def test_write_long_is_atomic(tmp_path):
    d = _frame()
    with pytest.raises(UserError, match="must end in .parquet, .pq or .csv"):
        write_long(d, tmp_path / "p.txt")
    bad = d.assign(size=[object()] * len(d))  # pyarrow cannot write this
    with pytest.raises(ValueError, match="Could not convert"):  # pyarrow.ArrowInvalid
        write_long(bad, tmp_path / "p.parquet")
    assert list(tmp_path.iterdir()) == []


# ---- the loader's options: percent, CRSP-shaped files, lag before the range, column names --


def test_percent_returns_are_refused_unless_the_user_says(tmp_path, capsys):
    d = _frame(n_ids=20, n_months=6)
    p = tmp_path / "pct.csv"
    write_long(d.assign(ret=d["ret"] * 100), p)
    err = _check(p, capsys, "look like percent", "--percent", "--no-percent")
    assert "std" in err or "|ret| > 1" in err
    decimal = load_panel(write_long(d, tmp_path / "dec.csv"))
    np.testing.assert_allclose(load_panel(p, percent=True).ret, decimal.ret, rtol=1e-5)
    assert load_panel(p, percent=False).ret.std() > 1  # the user said decimal: taken as given
    assert main(["data", "check", str(p), "--percent"]) == 0
    assert main(["data", "info", str(p), "--percent"]) == 0
    out = capsys.readouterr().out
    assert "ret std" in out and "ret abs over 1 share" in out


def test_crsp_shaped_file_ticker_text_and_codes(tmp_path, capsys):
    d = _frame(n_ids=4, n_months=3).rename(columns={"permno": "PERMNO", "ret": "RET"})
    d["TICKER"] = [f"T{i}" for i in d["PERMNO"]]  # an id alias, any case: not a characteristic
    d["COMNAM"] = "ACME CORP"  # text: skipped with a notice
    d["SHRCD"], d["EXCHCD"] = 10, 1
    p = tmp_path / "crsp.parquet"
    write_long(d, p)
    pan = load_panel(p)
    assert pan.char_names == ("size", "bm", "SHRCD", "EXCHCD")
    notes = " ".join(pan.meta["notices"])
    assert "COMNAM" in notes and "--exclude SHRCD,EXCHCD" in notes and "TICKER" not in notes
    assert load_panel(p, exclude=["SHRCD", "EXCHCD"]).char_names == ("size", "bm")
    assert main(["data", "check", str(p), "--exclude", "SHRCD,EXCHCD"]) == 0
    assert "COMNAM" in capsys.readouterr().err
    with pytest.raises(UserError, match="--exclude column 'NOPE' not found"):
        load_panel(p, exclude=["NOPE"])
    with pytest.raises(UserError, match="'COMNAM' is not numeric.*--exclude"):
        load_panel(p, chars=["bm", "COMNAM"])


def test_lag_is_applied_before_the_date_range(tmp_path):
    d = _frame(n_ids=5, n_months=4)
    p = write_long(d, tmp_path / "p.csv")
    full = load_panel(p, alignment="lag")
    cut = load_panel(p, alignment="lag", start="2001-02")
    # the first kept month (2001-02) has the file's 2001-01 characteristics, not none
    np.testing.assert_array_equal(cut.chars, full.chars[1:])
    assert (cut.chars[0] != 0).any()


def test_column_names_are_given(tmp_path):
    d = _frame(n_ids=4, n_months=3).rename(columns={"permno": "stock", "date": "month", "ret": "xret"})
    p = write_long(d, tmp_path / "named.csv")
    with pytest.raises(UserError, match="no stock id column"):
        load_panel(p)
    pan = load_panel(p, id_col="stock", date_col="month", ret_col="xret")
    assert pan.char_names == ("size", "bm") and pan.T == 3
    with pytest.raises(UserError, match="return column 'nope' not found"):
        load_panel(p, id_col="stock", date_col="month", ret_col="nope")


def test_study_scripts_take_the_loader_options(tiny_data_file, tmp_path):
    from rvrae.study.cli import options

    opts = options("benchmark", ["--data", str(tiny_data_file), "--models", "ipca", "--no-percent",
                                 "--exclude", "a,b", "--start", "1990-01", "--alignment", "lag",
                                 "--ret-col", "ret", "--out", str(tmp_path / "o")])  # fmt: skip
    assert opts.load == {"percent": False, "exclude": ["a", "b"], "start": "1990-01", "alignment": "lag",
                         "ret_col": "ret"}  # fmt: skip
    with pytest.raises(UserError, match="synthetic takes no loader options"):
        load_data("synthetic", percent=True)


# ---- files as researchers write them (each case once read wrongly, silently) --------------


def test_yyyymm_strings_keep_their_month(tmp_path):
    d = _frame(n_ids=3, n_months=12)
    d["date"] = [s.replace("-", "") for s in d.date]  # "200101" .. "200112" as text
    p = write_long(d, tmp_path / "p.parquet")
    pan = load_panel(p)
    assert pan.T == 12 and list(pan.dates) == list(np.arange("2001-01", "2002-01", dtype="datetime64[M]"))
    d["date"] = [s + "30" if s[-2:] != "02" else s + "28" for s in d.date]  # YYYYMMDD text
    assert list(load_panel(write_long(d, tmp_path / "q.parquet")).dates) == list(pan.dates)


def test_a_date_range_keeps_each_stocks_own_id_and_takes_yyyymm(tmp_path):
    d = _frame(n_ids=4, n_months=4)
    d = d[~((d.permno == 1) & (d.date >= "2001-03"))]  # stock 1 leaves after 2001-02
    p = write_long(d, tmp_path / "p.csv")
    for start in ("2001-03", "200103", 200103):
        cut = load_panel(p, start=start)
        assert cut.dates[0] == np.datetime64("2001-03") and list(cut.ids) == ["2", "3", "4"], start
        for j, i in enumerate(cut.ids):  # each id's returns are its own rows'
            mine = d[(d.permno == int(i)) & (d.date >= "2001-03")].ret.to_numpy()
            np.testing.assert_allclose(cut.ret[:, j], mine, rtol=1e-6)
    with pytest.raises(UserError, match="start month"):
        load_panel(p, start="2001-13")


def test_lagged_characteristics_rank_only_the_months_own_stocks(tmp_path):
    d = _frame(n_ids=4, n_months=3)
    d = d[~((d.permno == 1) & (d.date == "2001-03"))]  # stock 1 has no row in 2001-03
    lag = load_panel(write_long(d, tmp_path / "p.csv"), alignment="lag")
    present = lag.mask[2]
    assert list(present) == [False, True, True, True]
    for c in range(2):  # three stocks ranked among themselves: -1, 0, 1
        assert sorted(lag.chars[2, present, c]) == [-1.0, 0.0, 1.0] and lag.chars[2, 0, c] == 0.0


def test_large_characteristics_keep_their_order(tmp_path):
    d = _frame(n_ids=5, n_months=2)
    d["me"] = 1e10 + 100.0 * (d.permno - 1)  # a market cap in dollars: float32 steps are 1,024
    pan = load_panel(write_long(d, tmp_path / "p.csv"))
    me = pan.chars[..., pan.char_names.index("me")]
    for t in range(2):  # five distinct values, five distinct ranks, in order
        assert list(me[t]) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    # the CPZ .npz layout in float64 too: its characteristics keep their order through the cast
    raw = np.full((2, 5, 2), -99.99)
    raw[:, :, 0] = 0.01
    raw[:, :, 1] = 1e10 + 100.0 * np.arange(5)
    npz = tmp_path / "p.npz"
    np.savez(npz, data=raw, date=np.asarray([20010115, 20010215]), permno=np.arange(1, 6), variable=np.asarray(["RET", "me"]))
    me = load_panel(npz).chars[..., 0]
    for t in range(2):
        assert list(me[t]) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    raw[:, :, 1] = 1e300 * np.arange(1, 6)  # finite in float64, inf in float32: still a value
    np.savez(npz, data=raw, date=np.asarray([20010115, 20010215]), permno=np.arange(1, 6), variable=np.asarray(["RET", "me"]))
    assert list(load_panel(npz).chars[0, :, 0]) == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_a_repeated_csv_column_is_refused(tmp_path, capsys):
    p = tmp_path / "p.csv"
    p.write_text("permno,date,ret,bm,bm\n1,2001-01,0.01,1,2\n2,2001-01,0.02,3,4\n")
    _check(p, capsys, "'bm'", "appears twice", str(p))


def test_an_index_written_with_the_data_is_not_a_characteristic(tmp_path):
    d = _frame()
    p = tmp_path / "p.csv"
    d.to_csv(p)  # the index too, as "Unnamed: 0"
    pan = load_panel(p)
    assert pan.char_names == ("size", "bm") and "Unnamed: 0" in " ".join(pan.meta["notices"])
    q = tmp_path / "p.parquet"
    d[d.permno > 1].to_parquet(q)  # a filtered frame keeps its index as __index_level_0__
    assert load_panel(q).char_names == ("size", "bm")


def test_dates_with_a_time_zone_keep_the_month_written(tmp_path):
    d = _frame(n_ids=3, n_months=3)
    d["date"] = pd.to_datetime(d.date).dt.tz_localize("Asia/Tokyo")  # 2001-02-01 00:00 +09:00
    p = write_long(d, tmp_path / "p.parquet")
    months = list(np.arange("2001-01", "2001-04", dtype="datetime64[M]"))
    assert list(load_panel(p).dates) == months  # not 2000-12 .. 2001-02, as in UTC
    d["date"] = [f"2001-{m:02d}-15 12:00:00+00:00" for m in np.tile([1, 2, 3], 3)]
    assert list(load_panel(write_long(d, tmp_path / "p.csv")).dates) == months


def test_an_empty_column_is_skipped_and_hints_name_the_likely_cause(tmp_path, capsys):
    d = _frame().assign(blank=np.nan)
    pan = load_panel(write_long(d, tmp_path / "p.csv"))
    assert pan.char_names == ("size", "bm") and "blank" in " ".join(pan.meta["notices"])
    p = tmp_path / "semi.csv"
    p.write_text("permno;date;ret;bm\n1;2001-01;0.01;1\n")
    _check(p, capsys, "stock id", "';'-separated")
    p = write_long(_frame().assign(ret=[np.nan] + list(_frame().ret[1:])), tmp_path / "jkp.csv")
    _check(p, capsys, "NaN", "row 1", "drop the rows without a return")


def test_csv_ids_are_read_as_written(tmp_path):
    d = _frame(n_ids=3)
    gv = d.assign(permno=[f"{i:06d}" for i in d.permno + 1003]).rename(columns={"permno": "gvkey"})
    assert list(load_panel(write_long(gv, tmp_path / "g.csv")).ids) == ["001004", "001005", "001006"]
    num = d.assign(permno=d.permno.map({1: 9, 2: 10, 3: 100}))  # plain numbers: sorted as numbers
    assert list(load_panel(write_long(num, tmp_path / "n.csv")).ids) == ["9", "10", "100"]
