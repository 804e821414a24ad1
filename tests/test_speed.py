"""The speed study's machinery on tiny sizes (no timed assertions: timings are the study's
output, not the tests')."""

import math

import pytest
import torch

from rvrae.cli import main
from rvrae.errors import UserError
from rvrae.results.store import read_results
from rvrae.study.speed import (Grid, Sizes, g_label, grid_options, inprocess_cold_wall, json_subprocesses, loglog_slope,
                               met, run_speed, summarise)


def test_loglog_slope_recovers_the_exponent():
    n = [1000, 2000, 4000]
    assert loglog_slope(n, [3e-6 * x**1.5 for x in n]) == pytest.approx(1.5)
    assert loglog_slope(n, [0.7 * x for x in n]) == pytest.approx(1.0)


def test_verdicts_follow_the_targets():
    a, b = "a ipca/peer 2000x180x46 K=5", "b epoch 5682x252x46"
    assert met(a, {"ratio": 31.0, "delta_r2": 5e-5}) == "met"
    assert met(a, {"ratio": 31.0, "delta_r2": 2e-4}) == "missed"  # fast but wrong
    assert met(a, {"ratio": 29.0, "delta_r2": 0.0}) == "missed"
    assert met("a ipca/peer 500x60x46 K=5", {"ratio": 19.0, "delta_r2": 0.0}) == ""  # --quick size
    assert met(b, {"peak_rss_mb": 2100.0}) == "missed" and met(b, {"peak_rss_mb": 1600.0}) == "met"
    assert met("b epoch 500x84x46", {"peak_rss_mb": 2100.0}) == ""
    assert met("c tune", {"ratio": 1.05}) == "met" and met("c tune", {"ratio": 1.2}) == "missed"
    assert met("d speed-up", {"ratio": 1.8}) == "met" and met("d speed-up", {"ratio": 1.2}) == "missed"
    assert met("f rvrae demo", {"seconds": 200.0}) == "met"
    assert met("f rvrae demo --seeds 1", {"seconds": 200.0}) == ""  # reduced demo: no target
    assert met("e slope", {"slope": 3.0}) == ""
    verdict, context = Grid("built-in panel", {}, epochs=8), Grid("demo", {}, verdict=False)
    assert verdict.label() == "12 trials, built-in panel, 8 ep"
    assert met("c tune/in-process, " + verdict.label(), {"ratio": 1.2}) == "missed"
    assert met("c tune/in-process, " + context.label(), {"ratio": 1.2}) == ""  # context: no target
    assert met("d speed-up, " + context.label(), {"ratio": 1.2}) == ""
    g, close = "g ASHA/none tune rvrae, 10 trials x 8 ep", {"best": 0.049, "ref_best": 0.050, "seed_std": 0.003}
    assert met(g, {"ratio": 0.4, **close}) == "met" and met(g, {"ratio": 0.6, **close}) == "missed"
    assert met(g, {**close, "ratio": 0.4, "best": 0.040}) == "missed"  # cheaper, but worse than the seed noise
    h = "h forecasts stored/not, " + Sizes.full().store_grid.label()
    assert met(h, {"ratio": 1.03}) == "met" and met(h, {"ratio": 1.2}) == "missed"
    # --quick's reduced g and h are context, as its a, b and grids are: no verdict
    quick = Sizes.quick()
    assert met(f"{g_label(quick.asha)}, 150 stocks", {"ratio": 0.9, **close}) == ""
    assert met("h forecasts stored/not, " + quick.store_grid.label(), {"ratio": 1.2}) == ""


def test_summary_takes_medians_per_case_and_model():
    rows = [dict(case="c x", model="harness", target="", ratio=r, seconds=s)
            for r, s in ((1.0, 10.0), (3.0, 30.0), (1.2, 12.0))]  # fmt: skip
    rows.append(dict(case="b 5682x252x46", model="ipca", target="", ratio=0.5, seconds=1.0, peak_rss_mb=3000.0))
    s = summarise(rows).set_index(["case", "model"])
    assert s.loc[("c x", "harness"), "ratio"] == pytest.approx(1.2)
    assert s.loc[("c x", "harness"), "n"] == 3 and s.loc[("c x", "harness"), "verdict"] == "missed"
    assert s.loc[("b 5682x252x46", "ipca"), "verdict"] == "missed" and math.isnan(s.loc[("c x", "harness"), "peak_rss_mb"])


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
    with pytest.raises(UserError, match="--device: expected cpu or cuda"):
        run_speed("b", out=tmp_path, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            run_speed("b", out=tmp_path, device="cuda")
    assert not any(tmp_path.iterdir())
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(UserError, match="is not a directory"):  # before any case runs
        run_speed("e", out=afile, sizes=Sizes(scale_stocks=(20, 40), scale_months=28, scale_models=("ipca",)))


def test_case_a_without_the_peer_package_is_a_user_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipca" else real(name, *a))
    with pytest.raises(UserError, match="peer ipca package"):
        run_speed("a", out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_bench_command_line_errors_exit_2(tmp_path, capsys):
    from rvrae.bench import main as bench_main

    for argv, says in ((["--device", "gpu"], "expected cpu or cuda"), (["--stocks", "0"], "--stocks must be"),
                       (["--epochs", "0"], "--epochs must be"), (["--threads", "-1"], "--threads must be"),
                       (["--model", "rvrae", "--epochs", "0"], "--epochs must be"),
                       (["--barrier", f"{tmp_path}/none:2", "--stocks", "20", "--months", "14", "--chars", "2"],
                        "is not a directory")):  # fmt: skip
        assert bench_main(["--model", "ipca", *argv]) == 2, argv
        assert says in capsys.readouterr().err, argv


def test_harness_cases_run_on_cpus_whatever_the_machine_has(tmp_path):
    """c, d, g and h measure the harness with CPU trials (--device moves b, e and s only): on a
    GPU box the runner would otherwise give each trial a quarter GPU while case c's loop
    reference stays on the CPU."""
    assert grid_options(Grid("x", {}), tmp_path, 1).gpus_per_trial == 0.0


def test_subprocesses_past_their_time_are_killed_with_a_message():
    import sys
    import time

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="sleeper did not finish in 1 s"):
        json_subprocesses([sys.executable, "-c", "import time; time.sleep(30)"], 1, "sleeper", 2, timeout=1)
    assert time.perf_counter() - t0 < 20
    chatty = "import sys; sys.stderr.write('x' * 300_000); print('{\"ok\": 1}')"
    assert json_subprocesses([sys.executable, "-c", chatty], 1, "chatty", 3) == [{"ok": 1}] * 3


def test_in_process_reference_runs_in_a_new_process_without_ray():
    """Case c's reference: a fresh interpreter that imports torch inside the clock (the child
    refuses a torch imported earlier) and never starts Ray (the child refuses that too)."""
    g = Grid("tiny", dict(n_stocks=40, n_months=60, n_chars=4), split=(3, 1, 1), epochs=1, seeds=1,
             models=("ipca", "ca"))  # fmt: skip
    seconds = inprocess_cold_wall(g)
    assert math.isfinite(seconds) and seconds > 0


def test_peak_rss_of_a_subprocess_is_its_own_not_the_parents():
    """Linux carries ru_maxrss across fork + exec: a benchmark child of a large parent must
    still report its own peak (VmHWM), or case b's memory target would check the parent."""
    import numpy as np

    from rvrae.bench import peak_rss_mb
    from rvrae.study.speed import bench_subprocess

    ballast = np.ones((100, 1024, 1024))  # 800 MB touched in this (the parent) process
    child = bench_subprocess("ipca", dict(n_stocks=30, n_months=28, n_chars=4), 1, 1)["peak_rss_mb"]
    assert peak_rss_mb() > 800 and child < peak_rss_mb() - 600, (child, peak_rss_mb())
    del ballast


def test_several_epochs_report_the_steady_state_and_the_first_apart():
    """With n > 1 epochs, seconds_per_epoch is epochs 2..n (the first pays one-time costs on a
    GPU) and the first is reported on its own; together they fit inside the whole fit."""
    from rvrae.bench import epoch_benchmark

    r = epoch_benchmark("ca", n_stocks=30, n_months=28, n_chars=4, epochs=3)
    assert r["epochs"] == 3 and r["first_epoch_seconds"] > 0 and r["seconds_per_epoch"] > 0
    assert r["first_epoch_seconds"] + 2 * r["seconds_per_epoch"] <= r["fit_seconds"] + 1e-9
    assert math.isnan(r["gpu_peak_mb"]) and r["device"] == "cpu"


def test_case_s_runs_its_fits_side_by_side_and_reports_the_throughput(tmp_path):
    """Case s: `share` fits of each named model at once (a GPU shared the cluster's way)
    against one alone; the shared fits overlap in time and the ratio is share × alone ÷ the
    mean shared epoch. One run names two models (--models), six fits in all."""
    assert Sizes().share_models == ("rvrae",)  # without --models: RVRAE's fits
    sizes = Sizes(repeats=1, bench=dict(n_stocks=30, n_months=28, n_chars=4), share=2)
    rows = run_speed("s", out=tmp_path, sizes=sizes, models=("rvrae", "ca"))
    assert [r["model"] for r in rows] == ["rvrae", "ca"]  # one row per named model
    for row in rows:
        assert row["case"] == "s 2 fits sharing cpu, 30x28x4"
        assert row["ratio"] == pytest.approx(2 * row["ref_seconds"] / row["seconds"])
        assert row["seconds_max"] >= row["seconds"] > 0 and math.isnan(row["gpu_peak_mb"])
    # RVRAE's two fits ran at the same time (they start together; CA's epochs are too short
    # for the overlap to mean much)
    assert 0.5 < rows[0]["overlap"] <= 1.0
    assert rows[1]["seconds"] < rows[0]["seconds"]  # CA's epoch is RVRAE's at a fraction
    assert len(read_results(tmp_path, "speed")) == 2
    with pytest.raises(UserError, match="--cases"):
        run_speed("sx", out=tmp_path, sizes=sizes)
    with pytest.raises(UserError, match="--models"):
        run_speed("s", out=None, sizes=sizes, models=("rvrae", "lstm"))


def test_studies_bench_ipca_refuses_sizes_it_cannot_fit(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
    try:
        from bench_ipca import main as bench_ipca_main
    finally:
        sys.path.pop(0)
    for argv, says in ((["--stocks", "1"], "--stocks must be at least 2"), (["--chars", "3", "--k", "5"], "--chars"),
                       (["--months", "5", "--k", "5"], "--months")):  # fmt: skip
        assert bench_ipca_main(argv) == 2, argv
        assert says in capsys.readouterr().err
