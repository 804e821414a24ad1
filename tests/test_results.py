"""Results store, tables, renderers and plots on a small hand-made results set (SPEC §6–7).

The set (4 seeds; hand-computed means and stds in the golden strings below):
  rvrae  r2_total .19 .21 .19 .21 -> 20.00(1.15) %   r2_pred .014 .016 .014 .016 -> 1.50(0.12) %
  ipca   r2_total = rvrae - .05 ± .001 -> 15.00(1.04) %, significant (paired differences ~ -.05)
  ca     r2_total .20 .18 .21 .19 -> 19.50(1.29) %, differences .01 -.03 .02 -.02: p ~ 0.7, not significant
"""

import io
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from rvrae.cli import main
from rvrae.errors import UserError
from rvrae.identity import StudyIdentity
from rvrae.results.render import print_oracle, print_panel_info, render_tables
from rvrae.results.store import (
    RESULT_COLUMNS, cell_key, existing_cells, provenance, read_results, recorded_keys, write_row,
)  # fmt: skip
from rvrae.results.tables import build_tables

SEEDS = range(4)
IDENT = StudyIdentity("f00dfeed12345678", "panel.parquet", (15, 3, 3), 4, code_version="abc123").columns()
BENCH = {
    "rvrae": dict(r2_total=[.19, .21, .19, .21], r2_pred=[.014, .016, .014, .016],
                  sharpe=[2.0, 2.2, 2.0, 2.2], sharpe_net=[1.9, 2.1, 1.9, 2.1]),
    "ipca": dict(r2_total=[.141, .159, .141, .159], r2_pred=[.004, .0065, .0035, .006],
                 sharpe=[1.0, 1.2, 1.1, 0.9], sharpe_net=[0.7, 0.9, 0.8, 0.6]),
    "ca": dict(r2_total=[.20, .18, .21, .19], r2_pred=[.012] * 4,
               sharpe=[2.3, 2.0, 2.2, 2.1], sharpe_net=[2.2, 1.9, 2.1, 2.0]),
}  # fmt: skip
ROBUST = {
    "rvrae": dict(omitted_rank_ic=[.05, .06, .05, .06], omitted_rank_icir=[.3, .32, .3, .32]),
    "ipca": dict(omitted_rank_ic=[.01, .02, .015, .015], omitted_rank_icir=[.1, .12, .11, .13]),
}  # fmt: skip


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    prov = provenance()
    for model, cols in BENCH.items():
        for s in SEEDS:
            g = 0.01 + 0.02 * np.sin(np.arange(24) + s)
            write_row(d, dict(study="benchmark", model=model, seed=s, m=0, trial_id=f"{model}-s{s}",
                              config={"lr": 1e-3, "hidden": 16}, **{k: v[s] for k, v in cols.items()},
                              ls_gross=g, ls_net=g - 0.001, ls_dates=[f"{2020 + i // 12}-{i % 12 + 1:02d}" for i in range(24)],
                              **prov, **IDENT))  # fmt: skip
    write_row(d, dict(study="benchmark", model="ipca", seed=9, m=0, trial_id="ipca-s9", status="error",
                      error="ValueError: boom", r2_total=99.0, config={"lr": 1e-3, "hidden": 16}, **IDENT))  # fmt: skip
    for model, cols in ROBUST.items():
        for m in (50, 100):
            for s in SEEDS:
                write_row(d, dict(study="robustness", model=model, seed=s, m=m, trial_id=f"{model}-m{m}-s{s}",
                                  config={}, **{k: v[s] for k, v in cols.items()}))  # fmt: skip
    for model in ("rvrae", "ipca"):
        for i, (obj, lr) in enumerate([(0.02, 1e-2), (0.05, 1e-3), (0.01, 1e-4)]):
            write_row(d, dict(study="tune", model=model, seed=0, trial_id=f"t{i}", config={"lr": lr},
                              valid_rank_ic=obj, rank_ic=obj / 2, started_at=f"2024-01-01T00:0{i}"))  # fmt: skip
    for case, secs in (("small", [1.0, 3.0]), ("large", [10.0, 14.0])):
        for s, v in enumerate(secs):
            write_row(d, dict(study="speed", model="rvrae", seed=s, trial_id=f"{case}-{s}", case=case,
                              config={}, fit_seconds=v, epoch_seconds=v / 10))  # fmt: skip
    return d


def run_cli(capsys, *args):
    rc = main(["table", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


GOLDEN_MD = """\
**Table I: total and predictive R²**

| Model | Total R² (%) | Predictive R² (%) | n |
|:---|---:|---:|---:|
| IPCA | 15.00(1.04)* | 0.50(0.15)* | 4 |
| CA | 19.50(1.29) | 1.20(0.00)* | 4 |
| RVRAE | **20.00(1.15)** | **1.50(0.12)** | 4 |

Out-of-sample total R² (eq. 32) and predictive R² (eq. 33, β̂ times the prevailing mean of f̂_post), in percent; forecast R²: the model's own r̂, and of it the part its cross-section earns (each month's mean taken out of r and r̂; the rest is the part the month's level earns); β-regression R²: each month's returns on β̂ by least squares (the ceiling of the factor path). Mean (std) over seeds; n = seeds; best per column in bold. * = paired t-test over seeds vs RVRAE (scipy.stats.ttest_rel, two-sided), p < 0.05.

Produced by: data panel.parquet (fingerprint f00dfeed); split 15/3/3 years (train/valid/test); epochs capped at 4; configs: defaults; n = 12 trials; code abc123.

**Table II: out-of-sample Sharpe ratio**

| Model | Sharpe | Sharpe (30 bps) | n |
|:---|---:|---:|---:|
| IPCA | 1.05(0.13)* | 0.75(0.13)* | 4 |
| CA | **2.15(0.13)** | **2.05(0.13)** | 4 |
| RVRAE | 2.10(0.12) | 2.00(0.12) | 4 |

Annualised Sharpe ratio of the decile long-short portfolio, without transaction costs and with 30 bps per unit of turnover. Mean (std) over seeds; n = seeds; best per column in bold. * = paired t-test over seeds vs RVRAE (scipy.stats.ttest_rel, two-sided), p < 0.05.

Produced by: data panel.parquet (fingerprint f00dfeed); split 15/3/3 years (train/valid/test); epochs capped at 4; configs: defaults; n = 12 trials; code abc123.
"""

GOLDEN_CSV = """\
study,model,m,metric,mean,std,n
robustness,ipca,50,omitted_rank_ic,0.015,0.004082482905,4
robustness,ipca,50,omitted_rank_icir,0.115,0.01290994449,4
robustness,ipca,100,omitted_rank_ic,0.015,0.004082482905,4
robustness,ipca,100,omitted_rank_icir,0.115,0.01290994449,4
robustness,rvrae,50,omitted_rank_ic,0.055,0.005773502692,4
robustness,rvrae,50,omitted_rank_icir,0.31,0.01154700538,4
robustness,rvrae,100,omitted_rank_ic,0.055,0.005773502692,4
robustness,rvrae,100,omitted_rank_icir,0.31,0.01154700538,4
"""


def test_markdown_golden(results_dir, capsys):
    rc, out, _ = run_cli(capsys, results_dir, "--study", "benchmark", "--format", "markdown")
    assert rc == 0
    assert out == GOLDEN_MD


def test_csv_golden(results_dir, capsys):
    rc, out, _ = run_cli(capsys, results_dir, "--study", "robustness", "--format", "csv")
    assert rc == 0
    assert out == GOLDEN_CSV


def test_significance_marks_only_real_differences(results_dir):
    df = read_results(results_dir, "benchmark")
    t1 = build_tables(df, "benchmark")[0]
    f = t1.frame
    assert f.loc["ipca", ("r2_total", 0, "sig")] and f.loc["ipca", ("r2_total", 0, "p")] < 1e-4
    assert not f.loc["ca", ("r2_total", 0, "sig")] and f.loc["ca", ("r2_total", 0, "p")] > 0.5
    assert math.isnan(f.loc["rvrae", ("r2_total", 0, "p")])  # no test against itself
    # the error row (r2_total = 99) is not aggregated: n = 4 and the best is RVRAE's
    assert f.loc["ipca", ("r2_total", 0, "n")] == 4
    assert f.loc["rvrae", ("r2_total", 0, "best")] and f["r2_total", 0, "best"].sum() == 1


def _check_latex(text: str, cells_per_row: list[int]):
    assert text.count(r"\begin{") == text.count(r"\end{")
    for env in ("table", "tabular"):
        assert text.count(rf"\begin{{{env}}}") == text.count(rf"\end{{{env}}}") >= 1
    specs = re.findall(r"\\begin\{tabular\}\{([lrc]+)\}", text)
    assert len(specs) == len(cells_per_row)
    for block, spec, ncells in zip(text.split(r"\begin{tabular}")[1:], specs, cells_per_row):
        body = block.split(r"\end{tabular}")[0]
        assert body.count(r"\toprule") == body.count(r"\midrule") == body.count(r"\bottomrule") == 1
        assert len(spec) == ncells
        head, rows = body.split(r"\midrule")
        for line in (head.strip().splitlines()[-1], *rows.split(r"\bottomrule")[0].strip().splitlines()):
            assert line.endswith(r"\\")
            assert len(line[:-2].split(" & ")) == ncells, line
    assert r"\caption{" in text and "ttest" in text


def test_latex_structure_every_study(results_dir, capsys):
    rc, out, _ = run_cli(capsys, results_dir, "--format", "latex")
    assert rc == 0
    # tune (model, 2 metrics, n, best config), Table I, II (model, 2, n), III (model, 4, n), speed
    assert out.count(r"\begin{tabular}") == 5
    _check_latex(out, [5, 4, 4, 6, 4])
    assert r"\multicolumn{2}{c}{$m = 50$}" in out and r"\cmidrule(lr){2-3}" in out
    assert r"\textbf{20.00(1.15)}" in out and r"15.00(1.04)$^{*}$" in out
    assert "p $<$ 0.05" in out


def test_every_format_of_every_table(results_dir, capsys):
    for fmt in ("markdown", "csv", "latex"):
        rc, out, _ = run_cli(capsys, results_dir, "--format", fmt)
        assert rc == 0 and out.strip()
    console = Console(record=True, width=250, force_terminal=True, color_system="standard")
    tables = build_tables(read_results(results_dir))
    assert [t.key for t in tables] == ["tune", "table1", "table2", "table3", "speed"]
    assert render_tables(tables, "rich", console=console) == ""
    text = console.export_text(styles=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "Table III" in plain and "0.055(0.006)" in plain and "0.015(0.004)*" in plain
    assert re.search(r"\x1b\[1;32m20\.00\(1\.15\)", text)  # best: bold green
    assert not re.search(r"\x1b\[1;32m15\.00", text)
    rc, _, _ = run_cli(capsys, results_dir, "--format", "rich")
    assert rc == 0


def test_tune_table_picks_best_trial(results_dir):
    (t,) = build_tables(read_results(results_dir, "tune"), "tune")
    assert t.frame.loc["rvrae", ("valid_rank_ic", 0, "mean")] == pytest.approx(0.05)
    assert t.frame.loc["rvrae", ("rank_ic", 0, "mean")] == pytest.approx(0.025)
    assert t.frame.loc["ipca", ("valid_rank_ic", 0, "n")] == 3
    assert t.extra["best config"]["rvrae"] == "lr=0.001"
    # in a csv (no caption) the cell is one trial's value: n = 1, not the 3 trials searched
    text = render_tables([t], "csv")
    assert "tune,rvrae,0,valid_rank_ic,0.05,,1" in text.replace("\r", "")


def test_generic_speed_table_by_case(results_dir, capsys):
    rc, out, _ = run_cli(capsys, results_dir, "--study", "speed", "--format", "markdown")
    assert rc == 0
    assert "| Case | fit_seconds | epoch_seconds | n |" in out
    # fit_seconds: lower is better, so the small case is the best of its column
    assert "| small | **2.000(1.414)** | **0.2000(0.1414)** | 2 |" in out
    assert "| large | 12.00(2.828) | 1.200(0.2828) | 2 |" in out


def test_custom_metrics_and_the_csv_format(results_dir, capsys):
    rc, out, _ = run_cli(capsys, results_dir, "--study", "benchmark", "--format", "csv", "--metrics", "sharpe")
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0] == "study,model,m,metric,mean,std,n" and len(lines) == 4
    assert lines[3].startswith("benchmark,rvrae,0,sharpe,2.1,")
    rc, _, err = run_cli(capsys, results_dir, "--metrics", "nosuch")
    assert rc == 2 and "nosuch" in err and len(err.strip().splitlines()) == 1
    # a fit's diagnostics (the forecast's share and its t) are listed, never marked best or starred
    df = read_results(results_dir)
    df = df.assign(forecast_tstat=np.arange(len(df), dtype=float), sharpe_copy=np.arange(len(df), dtype=float))
    (t,) = build_tables(df, study="benchmark", metrics=["forecast_tstat", "sharpe_copy"])
    assert not t.frame[("forecast_tstat", 0, "best")].any() and t.frame[("sharpe_copy", 0, "best")].any()
    assert not t.frame[("forecast_tstat", 0, "sig")].any() and t.frame[("sharpe_copy", 0, "sig")].any()


def test_store_columns_config_and_temp_files(results_dir, tmp_path):
    df = read_results(results_dir, "benchmark")
    assert set(RESULT_COLUMNS) <= set(df.columns)
    assert len(df) == 13 and set(df["status"]) == {"ok", "error"}
    r = df[(df.model == "rvrae") & (df.seed == 0)].iloc[0]
    assert json.loads(r["config"]) == {"hidden": 16, "lr": 0.001} and r["hp_hidden"] == 16
    assert json.loads(r["versions"])["numpy"] == np.__version__
    assert len(json.loads(r["ls_gross"])) == 24
    # temp / hidden files are invisible; so are files of other studies when filtering
    folder = results_dir / "study=benchmark" / "model=rvrae"
    (folder / ".rvrae-s0.parquet.tmp").write_bytes(b"half a file")
    (folder / ".hidden.parquet").write_bytes(b"junk")
    assert len(read_results(results_dir, "benchmark")) == 13
    # pandas / pyarrow read the folder as one hive dataset too
    assert len(pd.read_parquet(results_dir / "study=benchmark")) == 13


def test_write_row_atomic_replace_and_cells(tmp_path):
    row = dict(study="benchmark", model="ca", seed=3, m=50, trial_id="x1", config={"b": 1, "a": 2.0}, rank_ic=0.1)
    p = write_row(tmp_path, row)
    assert p == tmp_path / "study=benchmark" / "model=ca" / "x1.parquet"
    write_row(tmp_path, {**row, "rank_ic": 0.2})  # same trial: replaced, never duplicated
    assert [q.name for q in p.parent.iterdir()] == ["x1.parquet"]
    df = read_results(tmp_path)
    assert len(df) == 1 and df["rank_ic"].iloc[0] == 0.2 and df["study"].iloc[0] == "benchmark"
    key = cell_key({**row, "config": {"a": 2.0, "b": 1}})
    assert existing_cells(tmp_path, "benchmark") == {key}
    assert key == ("benchmark", "ca", 3, 50, '{"a":2.0,"b":1}', "", "", 0, "", "")  # no identity: ""
    assert existing_cells(tmp_path, "robustness") == set() and existing_cells(tmp_path / "no", "x") == set()
    # a search that samples one config twice: two trials (rows), one cell
    for t in ("s1", "s2"):
        write_row(tmp_path, {**row, "study": "tune", "trial_id": t})
    assert len(existing_cells(tmp_path, "tune")) == 1 and len(recorded_keys(tmp_path, "tune")) == 2
    assert recorded_keys(tmp_path / "no", "tune") == []
    with pytest.raises(UserError):
        write_row(tmp_path, {**row, "model": "../evil"})


def test_read_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        read_results(tmp_path / "missing")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="'.*afile' is a file, not a results folder"):
        read_results(tmp_path / "afile")
    (tmp_path / "afile").unlink()
    with pytest.raises(UserError, match="no results"):
        read_results(tmp_path)
    write_row(tmp_path, dict(study="tune", model="ca", trial_id="a", valid_rank_ic=0.1))
    with pytest.raises(UserError, match="studies present: tune"):
        read_results(tmp_path, "benchmark")
    rc, _, err = run_cli(capsys, tmp_path / "missing")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(capsys, tmp_path, "--format", "html")
    assert rc == 2 and "html" in err
    write_row(tmp_path, dict(study="benchmark", model="ca", trial_id="e", status="error", error="Boom"))
    with pytest.raises(UserError, match="Boom"):
        build_tables(read_results(tmp_path, "benchmark"), "benchmark")


def test_a_figure_that_cannot_be_written_leaves_nothing(results_dir, tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    calls = []

    def full_disk(self, path, **kw):
        calls.append(path)
        if len(calls) == 2:  # the second figure: the first is already on disk
            raise OSError(28, "No space left on device")
        open(path, "wb").write(b"x")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    out = tmp_path / "new" / "fig"
    assert main(["plot", str(results_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left" in err and len(err.strip().splitlines()) == 1
    assert len(calls) == 2 and not (tmp_path / "new").exists()  # the first figure and the folders went


def test_plots(results_dir, tmp_path, capsys):
    out = tmp_path / "fig"
    assert main(["plot", str(results_dir), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["cumulative_long_short.png", "rank_ic_by_m.png", "tune_history.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    for fmt, magic in (("svg", b"<?xml"), ("pdf", b"%PDF")):
        assert main(["plot", str(results_dir), "--out", str(tmp_path / fmt), "--format", fmt]) == 0
        assert sorted(p.suffix for p in (tmp_path / fmt).iterdir()) == [f".{fmt}"] * 3
        assert all(p.read_bytes().startswith(magic) for p in (tmp_path / fmt).iterdir())
    assert main(["plot", str(results_dir), "--out", str(tmp_path / "gif"), "--format", "gif"]) == 2
    only_speed = tmp_path / "speed"
    write_row(only_speed, dict(study="speed", model="ca", trial_id="a", fit_seconds=1.0))
    assert main(["plot", str(only_speed), "--out", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()
    # --out where no folder can be: one line, exit 2, nothing left behind
    afile = tmp_path / "afile"
    afile.write_text("x")
    capsys.readouterr()
    for bad in (afile, afile / "sub"):
        assert main(["plot", str(results_dir), "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert afile.read_text() == "x"


def test_print_oracle_and_panel_info():
    console = Console(record=True, width=120)
    synth = SimpleNamespace(oracle=SimpleNamespace(scores={"r2_total": 0.181, "r2_pred": 0.0123,
                                                           "rank_ic": 0.071, "coverage90": math.nan}))  # fmt: skip
    print_oracle(synth, console)
    text = console.export_text()
    assert "18.100" in text and "1.230" in text and "0.071" in text and "Coverage" not in text
    synth.oracle.references = {"true β, AR(1)": {"r2_total": 0.181, "r2_pred": 0.0123,
                                                  "rank_ic": 0.064, "coverage90": math.nan}}  # fmt: skip
    print_oracle(synth, console)
    text = console.export_text()
    assert "true β, AR(1)" in text and "0.064" in text and "Coverage" not in text
    from rvrae.data.panel import Panel

    mask = np.ones((3, 12), bool)
    mask[0, :4] = False
    panel = Panel(chars=np.zeros((3, 12, 2), np.float32), ret=np.zeros((3, 12), np.float32), mask=mask,
                  dates=np.arange("2020-01", "2020-04", dtype="datetime64[M]"), ids=np.arange(12).astype(str),
                  char_names=("size", "bm"), source="tiny")  # fmt: skip
    print_panel_info(panel, console)
    text = console.export_text()
    assert "months" in text and "characteristics" in text and "2020-03" in text and "size" in text


def test_tune_objective_from_rows(tmp_path):
    for i, nll in enumerate([1.5, 0.7, 0.9]):
        write_row(tmp_path, dict(study="tune", model="rvrae", trial_id=f"t{i}", config={"lr": 10.0 ** -i},
                                 objective="valid_nll", mode="min", valid_nll=nll, valid_rank_ic=0.1 * i))  # fmt: skip
    (t,) = build_tables(read_results(tmp_path), "tune")
    assert t.frame.loc["rvrae", ("valid_nll", 0, "mean")] == pytest.approx(0.7)
    assert t.extra["best config"]["rvrae"] == "lr=0.1" and "minimised" in t.caption
    # rows tuned on a column the table also shows (a study before --metric had to be a
    # validation metric): one column for it, not two
    for i, ic in enumerate([0.02, 0.05]):
        write_row(tmp_path / "old", dict(study="tune", model="ca", trial_id=f"o{i}", config={"lr": 10.0 ** -i},
                                         objective="rank_ic", mode="max", rank_ic=ic, r2_total=0.1))  # fmt: skip
    (t,) = build_tables(read_results(tmp_path / "old"), "tune")
    assert [c for c, _ in t.cells] == ["rank_ic", "r2_total"] and t.frame.loc["ca", ("rank_ic", 0, "mean")] == 0.05


def test_plot_contents(results_dir):
    """Spread bands over seeds, the data and split in the title, integer trial ticks, m ticks
    at the m studied, the best so far as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rvrae.results import plots

    figs = {}

    def keep(fig, name):
        figs[name] = fig
        return name

    ok = read_results(results_dir)
    ok = ok[ok["status"] == "ok"]
    for f in (plots._plot_long_short, plots._plot_rank_ic_by_m, plots._plot_tune_history):
        f(ok, plt, keep)
    ls = figs["cumulative_long_short"].axes[0]
    assert "data panel.parquet" in ls.get_title() and "split 15/3/3" in ls.get_title()
    assert len(ls.collections) == 3  # one ± std band per model (4 seeds each)
    assert [t for t in figs["rank_ic_by_m"].axes[0].get_xticks()] == [50, 100]
    tune = figs["tune_history"].axes[0]
    assert all(line.get_drawstyle() == "steps-post" for line in tune.get_lines())
    ticks = [t for t in tune.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close("all")


def test_resume_removes_a_killed_writers_leftovers(tmp_path):
    from rvrae.results.forecasts import write_forecast
    from rvrae.results.store import remove_leftovers

    p = write_row(tmp_path, dict(study="robustness", model="ipca", trial_id="a", config={}))
    stale = p.parent / ".b.parquet.tmp"
    stale.write_bytes(b"half a file")
    other = tmp_path / "study=benchmark" / "model=ipca" / ".c.parquet.tmp"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    buf = io.BytesIO()
    pq.write_table(pa.table({"split": ["test"], "date": [0], "id": [0], "r_hat": [0.0]}), buf)
    data = buf.getvalue()
    kept = write_forecast(tmp_path, "robustness", "ipca", "a", data, "c0")  # its row exists
    alone = write_forecast(tmp_path, "robustness", "ipca", "d", data, "c1")  # killed before its row
    half = kept.parent / ".e.parquet.tmp"  # killed while its forecasts were written
    half.write_bytes(b"half a forecast")
    assert remove_leftovers(tmp_path, "robustness") == 3
    assert not stale.exists() and not half.exists() and not alone.exists()
    assert p.exists() and kept.exists() and other.exists()  # rows, their forecasts, other studies


def test_a_metric_some_study_lacks_is_shown_where_it_exists(tmp_path):
    for i in range(2):
        write_row(tmp_path, dict(study="benchmark", model="ipca", seed=i, m=0, trial_id=f"b{i}", config={},
                                 r2_total=0.1 + i, r2_pred=math.nan))  # fmt: skip
        write_row(tmp_path, dict(study="robustness", model="ipca", seed=i, m=50, trial_id=f"r{i}", config={},
                                 r2_total=0.2, r2_pred=math.nan, omitted_rank_ic=0.03 + 0.01 * i))  # fmt: skip
    df = read_results(tmp_path)
    (t,) = build_tables(df, metrics=["omitted_rank_ic"])  # the benchmark (m = 0) has none
    assert t.study == "robustness" and t.frame.loc["ipca", ("omitted_rank_ic", 50, "mean")] == pytest.approx(0.035)
    assert [t.study for t in build_tables(df, metrics=["r2_total"])] == ["benchmark", "robustness"]
    with pytest.raises(UserError, match="no successful trial has a value for r2_pred"):
        build_tables(df, metrics=["r2_pred"])  # a metric the harness writes, NaN everywhere
    with pytest.raises(UserError, match="unknown metric 'nosuch'"):
        build_tables(df, metrics=["nosuch"])
    for key in ("seed", "m", "model", "config", "trial_id"):  # keys and text: one line, not a traceback
        with pytest.raises(UserError, match=f"--metrics '{key}' is not a numeric metric column"):
            build_tables(df, metrics=[key])


def test_figures_keep_configs_apart_draw_the_oracle_as_a_level_and_number_identities_as_tables_do(tmp_path, capsys):
    """A grid run under two configs is two lines (as the tables' two rows), never their mean;
    tune's oracle is a dashed level, not a model with one trial; a robustness learning curve
    holds one m; --identity N names the same rows in `rvrae table` and `rvrae plot`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rvrae.results import plots
    from rvrae.results.oracle import ORACLE

    figs = {}

    def keep(fig, name):
        figs[name] = fig
        return name

    hist = [{"epoch": e, "train_loss": 1.0 / e, "valid_loss": 1.2 / e} for e in (1, 2, 3)]
    for k, ic in ((5, 0.04), (10, 0.54)):
        for s in range(3):
            for m in (50, 100):
                write_row(tmp_path, dict(study="robustness", model="rvrae", seed=s, m=m, trial_id=f"k{k}m{m}s{s}",
                                         config={"k": k}, resolved_config={"k": k}, omitted_rank_ic=ic + 0.001 * s,
                                         history=[{**h, "train_loss": h["train_loss"] * m} for h in hist], **IDENT))  # fmt: skip
    ok = read_results(tmp_path)
    plots._plot_rank_ic_by_m(ok, plt, keep)
    lines = {c.get_label(): c.lines[0].get_ydata() for c in figs["rank_ic_by_m"].axes[0].containers}
    assert len(lines) == 2, lines  # one line per config
    assert sorted(round(float(y[0]), 3) for y in lines.values()) == [0.041, 0.541]
    plots._plot_learning_curves(ok, plt, keep)
    fig = figs["learning_curves"]
    assert "m = 50" in fig._suptitle.get_text() and len(fig.axes) == 2  # two configs, one panel each
    train = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "train loss"][0]
    assert train.get_ydata()[0] == pytest.approx(50.0)  # m = 50's curves only (m = 100's is 100)

    tune = pd.DataFrame([dict(study="tune", model=mdl, trial_id=f"{mdl}{i}", seed=0, m=0, valid_rank_ic=v,
                              started_at=f"2024-01-01T00:0{i}", **IDENT)
                         for mdl, vals in (("rvrae", (0.02, 0.05, 0.01)), (ORACLE, (0.09,))) for i, v in enumerate(vals)])  # fmt: skip
    plots._plot_tune_history(tune, plt, keep)
    ax = figs["tune_history"].axes[0]
    oracle = [ln for ln in ax.get_lines() if ln.get_label() == "Oracle (true model)"]
    assert len(oracle) == 1 and oracle[0].get_linestyle() == "--" and list(oracle[0].get_ydata()) == [0.09, 0.09]
    assert not any("Oracle" in ln.get_label() and ln.get_drawstyle() == "steps-post" for ln in ax.get_lines())
    plt.close("all")

    # identity 1 (by key order) holds only an error row, identity 2 the results
    d = tmp_path / "two"
    other = StudyIdentity("00000000aaaaaaaa", "other.parquet", (15, 3, 3), 4).columns()
    write_row(d, dict(study="benchmark", model="ipca", seed=0, m=0, trial_id="e", status="error", error="boom",
                      config={}, **other))  # fmt: skip
    for s in range(2):
        g = [0.01, -0.02, 0.03]
        write_row(d, dict(study="benchmark", model="ipca", seed=s, m=0, trial_id=f"ok{s}", config={}, r2_total=0.1,
                          ls_gross=g, ls_net=g, ls_dates=["2020-01", "2020-02", "2020-03"], **IDENT))  # fmt: skip
    capsys.readouterr()
    assert main(["table", str(d), "--identity", "2", "--format", "csv"]) == 0
    assert "r2_total" in capsys.readouterr().out
    assert main(["plot", str(d), "--identity", "2", "--out", str(tmp_path / "fig")]) == 0
    assert main(["plot", str(d), "--identity", "1", "--out", str(tmp_path / "fig1")]) == 2  # errors only
    assert not (tmp_path / "fig1").exists()


def test_hp_columns_hold_the_resolved_config(tmp_path):
    """SPEC §6: config JSON + flattened hyperparameters. A default-config row (config {}) still
    has every hyperparameter it ran with as an hp_* column; an override wins over nothing."""
    write_row(tmp_path, dict(study="benchmark", model="rvrae", seed=0, trial_id="d", config={},
                             resolved_config={"n_factors": 5, "hidden": 32, "lr": 0.001}))  # fmt: skip
    write_row(tmp_path, dict(study="benchmark", model="rvrae", seed=1, trial_id="o", config={"n_factors": 3},
                             resolved_config={"n_factors": 3, "hidden": 32, "lr": 0.001}))  # fmt: skip
    df = read_results(tmp_path).set_index("trial_id")
    assert df.loc["d", "config"] == "{}" and df.loc["d", "hp_n_factors"] == 5 and df.loc["d", "hp_hidden"] == 32
    assert df.loc["o", "hp_n_factors"] == 3 and df.loc["o", "config"] == '{"n_factors":3}'


def test_tune_best_config_names_what_the_trial_was_given(tmp_path):
    """hp_* hold the whole resolved config; the tune table's best config names the trial's own
    keys (the searched ones), not every default field, and the csv's n counts that one trial
    only in the best-trial table (a --metrics table over tune rows is a mean over trials)."""
    for i, lr in enumerate([1e-2, 1e-3]):
        write_row(tmp_path, dict(study="tune", model="rvrae", trial_id=f"t{i}", config={"lr": lr, "epochs": 4},
                                 resolved_config={"lr": lr, "epochs": 4, "hidden": 32, "n_factors": 5},
                                 objective="valid_rank_ic", mode="max", valid_rank_ic=0.01 * (i + 1)))  # fmt: skip
    df = read_results(tmp_path)
    assert df["hp_hidden"].notna().all()
    (t,) = build_tables(df, "tune")
    assert t.extra["best config"]["rvrae"] == "lr=0.001"
    (m,) = build_tables(df, "tune", metrics=["valid_rank_ic"])
    assert "tune,rvrae,0,valid_rank_ic,0.015,0.007071067812,2" in render_tables([m], "csv").replace("\r", "")


def test_config_rows_go_by_each_rows_cell_key_config():
    """One resolved config given two ways (overrides {} and {"hidden": 32}, the default) is one
    row, and stays one when the oracle's row (no config at all) joins, as in the figures."""
    from rvrae.results.oracle import ORACLE
    from rvrae.results.tables import _config_rows

    same = '{"hidden":32,"lr":0.001}'
    rows = pd.DataFrame([dict(model="rvrae", seed=0, config="{}", resolved_config=same),
                         dict(model="rvrae", seed=1, config='{"hidden":32}', resolved_config=same),
                         dict(model="rvrae", seed=2, config='{"hidden":64}', resolved_config='{"hidden":64,"lr":0.001}')])  # fmt: skip
    with_oracle = pd.concat([rows, pd.DataFrame([dict(model=ORACLE, seed=0)])], ignore_index=True)
    for df in (rows, with_oracle):
        got = _config_rows(df)["model"].tolist()
        assert got[:3] == ["rvrae (hidden=32)", "rvrae (hidden=32)", "rvrae (hidden=64)"], got
    assert _config_rows(with_oracle)["model"].iloc[3] == ORACLE
