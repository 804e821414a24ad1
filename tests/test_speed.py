"""The speed study's machinery on tiny sizes (no timed assertions: timings are the study's
output, not the tests')."""

import math

import pytest

from rvrae.cli import main
from rvrae.errors import UserError
from rvrae.results.store import read_results
from rvrae.study.speed import Sizes, loglog_slope, met, run_speed, summarise


def test_loglog_slope_recovers_the_exponent():
    n = [1000, 2000, 4000]
    assert loglog_slope(n, [3e-6 * x**1.5 for x in n]) == pytest.approx(1.5)
    assert loglog_slope(n, [0.7 * x for x in n]) == pytest.approx(1.0)


def test_verdicts_follow_the_targets():
    assert met("a ipca", {"ratio": 31.0, "delta_r2": 5e-5}) == "met"
    assert met("a ipca", {"ratio": 31.0, "delta_r2": 2e-4}) == "missed"  # fast but wrong
    assert met("a ipca", {"ratio": 29.0, "delta_r2": 0.0}) == "missed"
    assert met("b epoch", {"peak_rss_mb": 2100.0}) == "missed"
    assert met("c tune", {"ratio": 1.05}) == "met" and met("c tune", {"ratio": 1.2}) == "missed"
    assert met("d speed-up", {"ratio": 1.8}) == "met" and met("d speed-up", {"ratio": 1.2}) == "missed"
    assert met("f rvrae demo", {"seconds": 200.0}) == "met"
    assert met("f rvrae demo --seeds 1", {"seconds": 200.0}) == ""  # reduced demo: no target
    assert met("e slope", {"slope": 3.0}) == ""


def test_summary_takes_medians_per_case_and_model():
    rows = [dict(case="c x", model="harness", target="", ratio=r, seconds=s)
            for r, s in ((1.0, 10.0), (3.0, 30.0), (1.2, 12.0))]  # fmt: skip
    rows.append(dict(case="b y", model="ipca", target="", ratio=0.5, seconds=1.0, peak_rss_mb=3000.0))
    s = summarise(rows).set_index(["case", "model"])
    assert s.loc[("c x", "harness"), "ratio"] == pytest.approx(1.2)
    assert s.loc[("c x", "harness"), "n"] == 3 and s.loc[("c x", "harness"), "verdict"] == "missed"
    assert s.loc[("b y", "ipca"), "verdict"] == "missed" and math.isnan(s.loc[("c x", "harness"), "peak_rss_mb"])


def test_tiny_run_writes_rows_the_table_renders(tmp_path, capsys):
    sizes = Sizes(repeats=1, bench=dict(n_stocks=30, n_months=28, n_chars=4), bench_models=("ipca",),
                  scale_stocks=(20, 40), scale_months=28, scale_models=("ipca",))  # fmt: skip
    rows = run_speed("be", out=tmp_path, sizes=sizes)
    b = {r["model"]: r for r in rows if r["case"].startswith("b ")}
    assert set(b) == {"ipca"} and all(r["peak_rss_mb"] > 50 and r["seconds"] > 0 for r in b.values())
    e = [r for r in rows if r["case"].startswith("e fit")]
    assert [r["ratio"] for r in e][0] == 1.0 and len(e) == 2  # ratios against the smallest N
    assert any(r["case"].startswith("e slope") and math.isfinite(r["slope"]) for r in rows)
    df = read_results(tmp_path, "speed")
    assert len(df) == len(rows) and set(df["case"]) == {r["case"] for r in rows}
    capsys.readouterr()
    assert main(["table", str(tmp_path), "--study", "speed", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| Case |" in out and "| b epoch 30x28x4 |" in out and "peak_rss_mb" in out


def test_bad_cases_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--cases"):
        run_speed("xz", out=tmp_path)
    with pytest.raises(UserError, match="--repeats"):
        run_speed("a", out=tmp_path, repeats=0)
    assert not any(tmp_path.iterdir())
