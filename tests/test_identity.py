"""Study identity (SPEC §6): every row knows what produced it (data, split, epoch cap, resolved
config, objective), resume runs exactly the cells whose identity is missing, and tables never
average rows of different identities."""

from __future__ import annotations

import json

import pytest

from rvrae.cli import main as rvrae_main
from rvrae.errors import UserError
from rvrae.identity import StudyIdentity, key_of
from rvrae.results.store import cell_key, read_results, write_row
from rvrae.results.tables import build_tables
from rvrae.study.cli import main as study_main


@pytest.fixture(scope="module")
def second_data_file(tmp_path_factory):
    """Another panel (the planted model with another seed): p2.parquet of the issue."""
    from rvrae.data.synthetic import SynthConfig, make_synthetic, write_synthetic

    synth = make_synthetic(SynthConfig(n_stocks=80, n_months=60, n_chars=8, seed=1))
    return write_synthetic(synth, tmp_path_factory.mktemp("data2") / "p2.parquet")


def _bench(data, out, split, seeds, resume=True):
    args = ["--data", str(data), "--models", "ipca", "--seeds", str(seeds), "--split", split,
            "--out", str(out)] + (["--resume"] if resume else [])  # fmt: skip
    return study_main("benchmark", args)


def test_a_study_on_a_planted_design(ray_session, tmp_path, capsys):
    design = tmp_path / "k2.json"
    design.write_text('{"seed": 4, "n_factors": 2, "n_chars": 5, "n_stocks": 60, "n_months": 60,'
                      ' "shapes": ["bump", "interaction"], "premia": [0.006, 0.003]}')
    res = tmp_path / ("a_results_folder_whose_path_is_longer_than_a_console_line_" + "x" * 30)
    assert _bench(f"synthetic:{design}", res, "3/1/1", 1, resume=False) == 0
    # the summary is one line, path whole, whatever the console's width (a pipe's is 80)
    assert f"benchmark: 1 trial written to {res};" in capsys.readouterr().out.splitlines()[-1]
    df = read_results(res, "benchmark")
    assert len(df) == 1 and df["status"].iloc[0] == "ok"
    assert df["data_source"].iloc[0].startswith("synthetic(seed=4, n_stocks=60, n_months=60, n_chars=5, n_factors=2")
    spans = df[["span_r2_1", "span_r2_2"]].iloc[0]  # one per true factor of the design
    assert ((spans > -1e-9) & (spans <= 1 + 1e-9)).all() and "span_r2_3" not in df.columns
    # the study generated the panel, so it knows the truth: the oracle heads the tables
    assert rvrae_main(["table", str(res), "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = out[out.index("study,model,m,metric,mean,std,n"):]  # the table after the study's own output
    assert lines[1].startswith("benchmark,oracle,0,r2_total,") and "benchmark,ipca,0,r2_total," in "\n".join(lines)


def test_resume_with_other_data_or_split_runs_those_cells(ray_session, tiny_data_file, second_data_file,
                                                           tmp_path, capsys):  # fmt: skip
    out = tmp_path / "res"
    assert _bench(tiny_data_file, out, "3/1/1", 1, resume=False) == 0
    # The scenario: another panel and split into the same folder with --resume.
    assert _bench(second_data_file, out, "2/1/1", 3) == 0
    assert "3 trials written" in capsys.readouterr().out  # seed 0 of p2 at 2/1/1 is a new cell
    assert _bench(tiny_data_file, out, "2/1/1", 1) == 0  # same data, other split: runs
    assert "1 trial written" in capsys.readouterr().out
    assert _bench(tiny_data_file, out, "3/1/1", 1) == 0  # exactly this identity: nothing runs
    assert "0 trials written" in capsys.readouterr().out

    df = read_results(out, "benchmark")
    assert len(df) == 5 and set(df["status"]) == {"ok"}
    assert not (out / "oracle").exists()  # a user's file: no truth to print
    assert not any(c.startswith("span_r2") for c in df.columns)
    assert set(df["split"]) == {"3/1/1", "2/1/1"} and df["data_source"].str.endswith(".parquet").all()
    assert df["data_fingerprint"].nunique() == 2 and (df["epoch_cap"] == 0).all()
    assert df["resolved_config"].map(lambda c: json.loads(c)["n_factors"]).notna().all()
    assert df["code_version"].str.len().gt(0).all()

    tables = [t for t in build_tables(df, "benchmark") if t.key.startswith("table1")]
    assert len(tables) == 3  # three identities, three Tables I: never one averaged cell
    assert sorted(int(t.frame.loc["ipca", ("r2_total", 0, "n")]) for t in tables) == [1, 1, 3]
    for t in tables:
        assert "Produced by: data " in t.footer and "split " in t.footer and "n = " in t.footer
    assert any("p2.parquet" in t.footer and "split 2/1/1" in t.footer and "n = 3" in t.footer for t in tables)

    # csv is one long table: mixing identities is refused, --identity picks one
    assert rvrae_main(["table", str(out), "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--identity" in err and len(err.strip().splitlines()) == 1
    assert rvrae_main(["table", str(out), "--format", "csv", "--identity", "3"]) == 0
    assert capsys.readouterr().out.count("\nbenchmark,ipca,0,r2_total,") == 1


def test_tune_stores_its_objective_and_table_and_best_configs_use_it(ray_session, tiny_data_file, tmp_path):
    out = tmp_path / "tune"
    # An objective other than the default (valid_rank_ic, max): rows, table and file must agree on it.
    rc = study_main("tune", ["--data", str(tiny_data_file), "--models", "ipca", "--samples", "4",
                             "--split", "3/1/1", "--metric", "valid_r2_pred", "--mode", "min", "--out", str(out)])
    assert rc == 0
    df = read_results(out, "tune")
    metric = df["objective"].iloc[0]
    assert set(df["objective"]) == {metric} and metric != "valid_rank_ic" and set(df["mode"]) == {"min"}
    assert df["config_source"].iloc[0] == "optuna search"
    (t,) = build_tables(df, "tune")
    assert metric in t.caption and "minimised" in t.caption
    best = json.loads((out / "best_configs.json").read_text())["ipca"]
    top = df.loc[df[metric].astype(float).idxmin()]
    assert best["n_factors"] == int(top["hp_n_factors"])
    assert t.extra["best config"]["ipca"].startswith(f"n_factors={int(top['hp_n_factors'])}")


def _row(trial, config, **kw):
    return dict(study="benchmark", model="ipca", seed=0, m=0, trial_id=trial, config=config,
                r2_total=kw.pop("r2", 0.1), **kw)  # fmt: skip


def test_two_configs_of_one_seed_are_two_rows_not_n_2(tmp_path):
    write_row(tmp_path, _row("a", {"n_factors": 3}, r2=0.10))
    write_row(tmp_path, _row("b", {"n_factors": 5}, r2=0.20))
    (t1,) = [t for t in build_tables(read_results(tmp_path), "benchmark") if t.key == "table1"]
    assert t1.rows == ["ipca (n_factors=3)", "ipca (n_factors=5)"]
    assert list(t1.frame[("r2_total", 0, "n")]) == [1, 1]
    assert list(t1.frame[("r2_total", 0, "mean")]) == pytest.approx([0.10, 0.20])


def test_identity_columns_and_cell_key():
    ident = StudyIdentity("abc", "p.parquet", (6, 2, 2), None, config_source="defaults", code_version="x")
    cols = ident.columns()
    assert cols["split"] == "6/2/2" and cols["epoch_cap"] == 0
    other = StudyIdentity("abc", "elsewhere/p.parquet", (6, 2, 2), None, code_version="y")
    assert other.key() == ident.key()  # same bytes under another path, another commit: same cells
    for changed in (StudyIdentity("abd", "p", (6, 2, 2), None), StudyIdentity("abc", "p", (5, 2, 2), None),
                    StudyIdentity("abc", "p", (6, 2, 2), 4), StudyIdentity("abc", "p", (6, 2, 2), None, "valid_nll", "min")):
        assert changed.key() != ident.key()
    row = _row("a", {"n_factors": 3}, **cols)
    assert key_of(row) == ident.key()
    assert cell_key(row) != cell_key({**row, "split": "5/2/2"})
    assert cell_key(row) != cell_key({**row, "resolved_config": json.dumps({"n_factors": 5})})


def test_bad_identity_choice_is_one_line(tmp_path, capsys):
    write_row(tmp_path, _row("a", {}))
    assert rvrae_main(["table", str(tmp_path), "--identity", "2"]) == 2
    assert "--identity 2" in capsys.readouterr().err
    with pytest.raises(UserError, match="the benchmark rows hold 1 identity: .*(1 row)"):
        build_tables(read_results(tmp_path), identity=5)


def test_a_figure_never_mixes_identities(tmp_path, capsys):
    for i, split in enumerate(("3/1/1", "2/1/1")):
        ident = StudyIdentity("fp", "p.parquet", tuple(map(int, split.split("/"))), None).columns()
        write_row(tmp_path, _row(f"t{i}", {}, ls_gross=[0.01, 0.02], ls_net=[0.0, 0.01],
                                 ls_dates=["2020-01", "2020-02"], **ident))  # fmt: skip
    figs = tmp_path / "figs"
    assert rvrae_main(["plot", str(tmp_path), "--out", str(figs)]) == 2
    assert "--identity" in capsys.readouterr().err and not figs.exists()
    assert rvrae_main(["plot", str(tmp_path), "--out", str(figs), "--identity", "2"]) == 0
    assert [p.name for p in figs.iterdir()] == ["cumulative_long_short.png"]


def test_identity_n_is_numbered_within_each_study(tmp_path, capsys):
    """--identity N picks each study's Nth identity; a study without one is left out (the
    robustness rows below hold one identity, the benchmark's two), and plot takes --study."""
    for i, split in enumerate(("3/1/1", "2/1/1")):
        ident = StudyIdentity("fp", "p.parquet", tuple(map(int, split.split("/"))), None).columns()
        write_row(tmp_path, _row(f"t{i}", {}, ls_gross=[0.01, 0.02], ls_net=[0.0, 0.01],
                                 ls_dates=["2020-01", "2020-02"], **ident))  # fmt: skip
    ident = StudyIdentity("fp", "p.parquet", (3, 1, 1), None).columns()
    for seed in range(2):
        write_row(tmp_path, {**_row(f"r{seed}", {}), "study": "robustness", "seed": seed, "m": 50,
                             "omitted_rank_ic": 0.02 + 0.01 * seed, **ident})  # fmt: skip
    df = read_results(tmp_path)
    assert {t.study for t in build_tables(df, identity=2)} == {"benchmark"}
    assert {t.study for t in build_tables(df, identity=1)} == {"benchmark", "robustness"}
    figs = tmp_path / "figs"
    assert rvrae_main(["plot", str(tmp_path), "--out", str(figs), "--identity", "2"]) == 0
    assert [p.name for p in figs.iterdir()] == ["cumulative_long_short.png"]
    only = tmp_path / "only"
    assert rvrae_main(["plot", str(tmp_path), "--out", str(only), "--study", "robustness"]) == 0
    assert [p.name for p in only.iterdir()] == ["rank_ic_by_m.png"]
    capsys.readouterr()
    assert rvrae_main(["plot", str(tmp_path), "--out", str(tmp_path / "x"), "--identity", "3"]) == 2
    assert "--identity 3" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_squares_are_another_panel_for_resume_and_the_tables(ray_session, tiny_data_file, tmp_path, capsys):
    out = tmp_path / "res"
    assert _bench(tiny_data_file, out, "3/1/1", 1, resume=False) == 0
    capsys.readouterr()
    args = ["--data", str(tiny_data_file), "--models", "ipca", "--seeds", "1", "--split", "3/1/1",
            "--out", str(out), "--resume", "--squares"]  # fmt: skip
    assert study_main("benchmark", args) == 0
    assert "1 trial written" in capsys.readouterr().out  # not "already there": other inputs
    df = read_results(out, "benchmark").sort_values("data_source")
    assert len(df) == 2 and set(df["status"]) == {"ok"} and df["data_fingerprint"].nunique() == 2
    assert df["data_source"].iloc[1] == df["data_source"].iloc[0] + " +squares"
    assert df["r2_total"].iloc[1] != df["r2_total"].iloc[0]  # IPCA's instruments really grew
    tables = [t for t in build_tables(df, "benchmark") if t.key.startswith("table1")]
    assert len(tables) == 2 and sum("+squares" in t.footer for t in tables) == 1
