"""Bad input through the two front doors (SPEC §7, §8): the study scripts' entry point
(`rvrae.study.cli.main`, what `studies/*.py` run) and the `rvrae` CLI, in-process.

Each case must end with ONE line on stderr starting "error: ", exit code 2, no results folder
created and an existing one left byte-for-byte as it was. Validation happens before Ray starts:
these cases run without the session's Ray (except the GPU request, which needs a cluster)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rvrae.cli import main as rvrae_main
from rvrae.results.store import write_row
from rvrae.study.cli import main as study_main


@pytest.fixture(scope="module")
def good(tiny_data_file) -> pd.DataFrame:
    """The tiny synthetic long panel (80 stocks x 60 months x 8 chars) as a frame."""
    df = pd.read_parquet(tiny_data_file)
    df["date"] = df["date"].dt.strftime("%Y-%m")
    return df


def _csv(df: pd.DataFrame, folder: Path, name="panel.csv") -> Path:
    p = folder / name
    df.to_csv(p, index=False)
    return p


def _set(df: pd.DataFrame, col: str, row: int, value) -> pd.DataFrame:
    df = df.copy()
    df[col] = df[col].astype(object)
    df.loc[row, col] = value
    return df


# Each data case: (id, how to make the file from the good frame, words the message must contain).
DATA_CASES = [
    ("no-id", lambda d, f: _csv(d.drop(columns="permno"), f), ["permno"]),
    ("no-date", lambda d, f: _csv(d.drop(columns="date"), f), ["date"]),
    ("no-ret", lambda d, f: _csv(d.drop(columns="ret"), f), ["ret"]),
    ("duplicate", lambda d, f: _csv(pd.concat([d, d.iloc[[7]]]), f), ["duplicate"]),
    ("non-numeric", lambda d, f: _csv(_set(d, "c3", 5, "abc"), f), ["'c3'", "not numeric"]),
    ("inf-ret", lambda d, f: _csv(_set(d, "ret", 9, np.inf), f), ["inf", "'ret'"]),
    ("nan-ret", lambda d, f: _csv(_set(d, "ret", 9, np.nan), f), ["NaN", "'ret'"]),
    ("bad-date", lambda d, f: _csv(_set(d, "date", 3, "2001-13-45"), f), ["date", "2001-13-45"]),
    ("empty", lambda d, f: (f / "empty.csv").write_bytes(b"") and None or f / "empty.csv", ["empty"]),
    ("header-only", lambda d, f: _csv(d.iloc[:0], f), ["empty"]),
    ("not-parquet-or-csv", lambda d, f: _csv(d, f, "panel.xlsx"), ["unsupported file type"]),
    ("garbage-parquet", lambda d, f: (f / "g.parquet").write_bytes(b"\x00garbage" * 50) and f / "g.parquet",
     ["not a readable Parquet"]),
    ("corrupt-npz", lambda d, f: (f / "c.npz").write_bytes(b"PK\x03\x04 not a zip") and f / "c.npz",
     ["corrupt", ".npz"]),
    ("missing-file", lambda d, f: f / "nope.parquet", ["no such file"]),
]


def _run(fn, argv, capsys) -> str:
    import ray

    had_ray = ray.is_initialized()
    capsys.readouterr()
    rc = fn(argv)
    err = capsys.readouterr().err
    assert ray.is_initialized() == had_ray  # rejected before Ray started (or stopped what it started)
    assert rc == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def existing_out(tmp_path) -> Path:
    """A results folder that already holds one robustness row."""
    out = tmp_path / "existing"
    write_row(out, {"study": "robustness", "model": "ipca", "seed": 0, "m": 10, "trial_id": "t0",
                    "config": {}, "rank_ic": 0.1, "omitted_rank_ic": 0.05})
    return out


def _study(argv, out, capsys, *words, study="robustness") -> None:
    err = _run(lambda a: study_main(study, a), argv + ["--out", str(out)], capsys)
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(case, good, tmp_path, existing_out, capsys):
    _, make, words = case
    path = make(good, tmp_path)
    argv = ["--data", str(path), "--models", "ipca", "--seeds", "1", "--m", "10", "--split", "3/1/1"]
    _study(argv, tmp_path / "fresh", capsys, *words)  # the study script
    assert not (tmp_path / "fresh").exists()
    before = _snapshot(existing_out)
    _study(argv + ["--resume"], existing_out, capsys, *words)
    assert _snapshot(existing_out) == before
    err = _run(rvrae_main, ["data", "check", str(path)], capsys)  # and the CLI says the same
    assert all(w in err for w in words), err


def _flag_cases(tmp_path: Path) -> list:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "key.json").write_text(json.dumps({"ipca": {"no_such_key": 1}}))
    (tmp_path / "list.json").write_text("[1, 2]")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return [
        (["--split", "15/3/3"], ["months"]),  # 60 months cannot make 21 years
        (["--models", "nope"], ["unknown model", "nope"]),
        (["--configs", str(tmp_path / "key.json")], ["unknown config key", "no_such_key"]),
        (["--configs", str(tmp_path / "bad.json")], ["not valid JSON"]),
        (["--configs", str(tmp_path / "list.json")], ["--configs"]),
        (["--configs", str(tmp_path / "missing.json")], ["no such file"]),
        (["--m", "50,abc"], ["--m", "50,abc"]),
        (["--m", "-5"], ["--m"]),
        (["--m", "500"], ["m = 500", "stocks"]),
        (["--seeds", "0"], ["--seeds"]),
        (["--epochs", "0"], ["--epochs"]),
        (["--max-concurrent", "0"], ["--max-concurrent"]),
        (["--cpus-per-trial", "-1"], ["--cpus-per-trial"]),
        (["--out", str(blocker / "sub")], ["--out"]),
        (["--bogus-flag"], ["unrecognized"]),
    ]


N_FLAG_CASES = 15


@pytest.mark.parametrize("i", range(N_FLAG_CASES))
def test_bad_study_flags(i, tiny_data_file, tmp_path, existing_out, capsys):
    cases = _flag_cases(tmp_path)
    assert len(cases) == N_FLAG_CASES
    args, words = cases[i]
    base = ["--data", str(tiny_data_file), "--models", "ipca", "--seeds", "1", "--m", "10", "--split", "3/1/1"]
    explicit_out = "--out" in args
    out = tmp_path / "fresh"
    argv = base + args + ([] if explicit_out else ["--out", str(out)])
    err = _run(lambda a: study_main("robustness", a), argv, capsys)
    assert all(w in err for w in words), err
    assert not out.exists() and not (tmp_path / "a_file" / "sub").exists()
    if not explicit_out:  # an existing results folder is not touched either
        before = _snapshot(existing_out)
        _run(lambda a: study_main("robustness", a), base + args + ["--out", str(existing_out), "--resume"], capsys)
        assert _snapshot(existing_out) == before


def test_benchmark_and_tune_validate_too(tiny_data_file, tmp_path, capsys):
    base = ["--data", str(tiny_data_file), "--models", "ipca", "--split", "3/1/1", "--out", str(tmp_path / "o")]
    err = _run(lambda a: study_main("benchmark", a), base + ["--m", "50"], capsys)
    assert "benchmark" in err
    err = _run(lambda a: study_main("tune", a), base + ["--metric", "no_such_metric"], capsys)
    assert "--metric" in err
    for study, flag, twice in (("benchmark", "--models", "ipca,ca,ipca"), ("robustness", "--m", "5,10,5")):
        args = [a if a != "ipca" else twice for a in base] if flag == "--models" else [*base, flag, twice]
        err = _run(lambda a: study_main(study, a), args, capsys)  # a cell runs once
        assert err == f"error: {flag} names {twice.split(',')[0]} twice\n", err
    for test_metric in ("rank_ic", "omitted_rank_ic"):  # choosing configs on the test months
        err = _run(lambda a: study_main("tune", a), base + ["--metric", test_metric], capsys)
        assert "--metric" in err and "validation" in err and "valid_rank_ic" in err
    err = _run(lambda a: study_main("tune", a), base + ["--samples", "0"], capsys)
    assert "--samples" in err
    assert not (tmp_path / "o").exists()


def test_gpus_on_a_gpu_less_cluster(ray_session, tiny_data_file, tmp_path, existing_out, capsys):
    assert not ray_session.cluster_resources().get("GPU")
    base = ["--data", str(tiny_data_file), "--models", "ipca", "--seeds", "1", "--m", "10", "--split", "3/1/1",
            "--gpus-per-trial", "1"]
    _study(base, tmp_path / "fresh", capsys, "no GPU")
    assert not (tmp_path / "fresh").exists()
    before = _snapshot(existing_out)
    _study(base + ["--resume"], existing_out, capsys, "no GPU")
    assert _snapshot(existing_out) == before


def test_rvrae_table_and_plot(existing_out, tmp_path, capsys):
    before = _snapshot(existing_out)
    err = _run(rvrae_main, ["table", str(existing_out), "--format", "html"], capsys)
    assert "html" in err
    err = _run(rvrae_main, ["table", str(tmp_path / "no_such_dir")], capsys)
    assert "does not exist" in err
    err = _run(rvrae_main, ["table", str(existing_out), "--study", "benchmark"], capsys)
    assert "benchmark" in err
    err = _run(rvrae_main, ["table", str(existing_out), "--metrics", "no_such_metric"], capsys)
    assert "no_such_metric" in err
    err = _run(rvrae_main, ["table", str(existing_out), "--share"], capsys)  # a user's file: no truth
    assert "--share" in err and "oracle" in err
    err = _run(rvrae_main, ["plot", str(tmp_path / "no_such_dir"), "--out", str(tmp_path / "figs")], capsys)
    assert "does not exist" in err and not (tmp_path / "figs").exists()
    err = _run(rvrae_main, ["data", "check", str(tmp_path)], capsys)
    assert "folder" in err
    assert _snapshot(existing_out) == before
    # The same table with a valid format works: the failures above were the input's fault.
    assert rvrae_main(["table", str(existing_out), "--format", "csv"]) == 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["tabel"], "No such command 'tabel'"),
        (["plot", "r2"], "--out"),
        (["demo", "--seeds", "abc"], "--seeds"),
        (["table"], "directory"),
        (["table", "x", "--identity", "one"], "--identity"),
        (["data", "check", "x.csv", "--bogus"], "--bogus"),
        (["data", "info"], "path"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(args, needle, tmp_path, monkeypatch, capsys):
    """typer ships its own click: its usage errors too must be one line, exit 2, no traceback."""
    monkeypatch.chdir(tmp_path)
    rc = rvrae_main(args)
    out = capsys.readouterr()
    assert rc == 2, out
    assert out.err.startswith("error: ") and needle in out.err and len(out.err.strip().splitlines()) == 1
    assert "Traceback" not in out.err + out.out and not list(tmp_path.iterdir())


def test_cli_without_a_command_prints_help(capsys):
    assert rvrae_main([]) == 0 and rvrae_main(["data"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_a_folder_another_study_is_writing_is_refused(tiny_data_file, tmp_path, existing_out, capsys):
    """Two studies into one --out at once each saw it empty, ran every cell and wrote every
    row twice (6 rows for 3 cells, measured). While a study holds the folder, a second one is
    refused with one line naming the holder, and the folder is left as it was."""
    from rvrae.study.runner import lock_out

    argv = ["--data", str(tiny_data_file), "--models", "ipca", "--seeds", "1", "--m", "10", "--split", "3/1/1"]
    for out, extra in ((tmp_path / "busy", []), (existing_out, ["--resume"])):
        existed = out.exists()
        before = _snapshot(out) if existed else None
        held = lock_out(out)  # what a running study holds
        try:
            _study(argv + extra, out, capsys, "another study is writing there", f"pid {os.getpid()}")
        finally:
            held.close()
        assert (_snapshot(out) == before) if existed else not out.exists()
    lock_out(tmp_path / "busy").close()  # released: the next study may take it


def test_the_folder_lock_does_not_depend_on_tmpdir(tmp_path, monkeypatch):
    """A batch scheduler gives each job its own $TMPDIR: two jobs writing one --out must
    still meet on one lock."""
    import tempfile

    from rvrae.errors import UserError
    from rvrae.study.runner import lock_out

    out = tmp_path / "shared"
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "a"))
    held = lock_out(out)
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "b"))
        with pytest.raises(UserError, match="another study is writing there"):
            lock_out(out)
    finally:
        held.close()


def test_demo_flags_are_checked_before_ray_starts(tmp_path, monkeypatch, capsys):
    import rvrae.study.runner as runner

    def no_ray(*a, **k):
        raise AssertionError("Ray was started before the flags were checked")

    monkeypatch.setattr(runner, "connect", no_ray)
    assert rvrae_main(["demo", "--seeds", "0", "--out", str(tmp_path / "demo")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_paths_print_as_written_and_an_unwritable_out_is_one_line(tmp_path, capsys):
    """A path is not rich markup ("[red]" vanished, "[/x]" was a MarkupError traceback after
    the work was done); a folder that cannot be written is exit 2 with nothing left."""
    folder = tmp_path / "d[red]" / "x[/x]"
    folder.mkdir(parents=True)
    out = folder / "p.parquet"
    args = ["--stocks", "20", "--months", "24", "--chars", "2"]
    assert rvrae_main(["data", "synth", "--out", str(out), *args]) == 0
    assert f"wrote {out}" in capsys.readouterr().out.replace("\n", "")
    assert rvrae_main(["data", "check", str(out)]) == 0
    assert f"ok: {out}:" in capsys.readouterr().out.replace("\n", "")
    assert rvrae_main(["data", "synth", "--out", "/proc/rvrae-x.parquet", *args]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and len(err.strip().splitlines()) == 1
