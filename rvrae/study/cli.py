"""Flags of the study scripts (SPEC §5): `studies/<study>.py` calls `main(study, argv)`.

    python studies/robustness.py --data synthetic --models all --seeds 2 --m 50,100 --epochs 2

Bad input is one line on stderr and exit code 2, before Ray starts or --out is touched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvrae.errors import Interrupted, UserError

DESCRIPTIONS = {
    "tune": "Optuna (TPE) search per model through Ray Tune; writes <out>/best_configs.json.",
    "benchmark": "The grid models x seeds with m = 0 (paper Tables I and II).",
    "robustness": "The grid models x seeds x m omitted stocks (paper Table III).",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors are user errors: one line, exit 2
        raise UserError(message)


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--m {text!r}: expected comma-separated integers like 50,100,150") from None
    if not vals:
        raise UserError(f"--m {text!r}: empty")
    return vals


def _split(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(t) for t in text.split("/"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise UserError(f"--split {text!r}: expected TRAIN/VALID/TEST years like 15/3/3")
    return parts


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def add_loader_flags(p: argparse.ArgumentParser) -> None:
    """The loader's options (rvrae.data.io.load_panel), for a panel file given as --data."""
    g = p.add_argument_group("panel file options (an error with --data synthetic)")
    g.add_argument("--percent", action=argparse.BooleanOptionalAction, default=None,
                   help="returns are in percent (--no-percent: decimal); returns that look like percent are refused unless you say")  # fmt: skip
    g.add_argument("--chars", default=None, help="comma-separated characteristic columns (default: every other numeric column)")
    g.add_argument("--exclude", default=None, help="comma-separated columns that are not characteristics (e.g. SHRCD,EXCHCD)")
    g.add_argument("--start", default=None, help="first month kept, e.g. 1990-01")
    g.add_argument("--end", default=None, help="last month kept, e.g. 2016-12")
    g.add_argument("--alignment", default=None, choices=["same_row", "lag"],
                   help="same_row (default): a row's characteristics are known before its return; lag: lag them one month")  # fmt: skip
    g.add_argument("--id-col", default=None, help="the stock id column (default: permno, id, gvkey or ticker)")
    g.add_argument("--date-col", default=None, help="the month column (default: date, yyyymm or eom)")
    g.add_argument("--ret-col", default=None, help="the return column (default: ret or ret_exc_lead1m)")


def loader_options(a: argparse.Namespace) -> dict:
    """The loader flags the user gave, as load_panel's keyword arguments."""
    opts = {"percent": a.percent, "chars": _names(a.chars), "exclude": _names(a.exclude), "start": a.start,
            "end": a.end, "alignment": a.alignment, "id_col": a.id_col, "date_col": a.date_col,
            "ret_col": a.ret_col}  # fmt: skip
    return {k: v for k, v in opts.items() if v is not None}


def parser(study: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"studies/{study}.py", description=DESCRIPTIONS[study])
    p.add_argument("--data", default="synthetic", help="PATH of a long panel (Parquet/CSV/.npz), 'synthetic' or 'synthetic:DESIGN.json'")
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    p.add_argument("--models", default="all", help="comma-separated model names, or 'all'")
    p.add_argument("--seeds", type=int, default=1 if study == "tune" else 10, help="seeds per cell")
    p.add_argument("--m", default=None, help="omitted stocks, e.g. 50,100,150 (robustness)")
    p.add_argument("--split", default="15/3/3", help="train/valid/test years (paper: 15/3/3)")
    p.add_argument("--squares", action="store_true",
                   help="add each characteristic's squared rank (centred each month) as one more characteristic, for every model")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="epoch cap for neural models")
    p.add_argument("--configs", type=Path, default=None, help="best_configs.json from tune")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="default: 1 if the cluster has >= 2 CPUs")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="default: 0 without GPUs, else 0.25")
    p.add_argument("--max-concurrent", type=int, default=None, help="default: what fits the cluster")
    p.add_argument("--address", default=None, help="Ray cluster to attach to (host:port, or 'auto': the one running on this machine); default: RAY_ADDRESS if set, else a private local Ray")
    p.add_argument("--storage", default=None, help="Tune experiment storage, e.g. s3://bucket/rvrae (default <out>/_tune)")
    p.add_argument("--max-failures", type=int, default=1, help="Tune retries of a failed trial")
    p.add_argument("--resume", action="store_true", help="continue a killed study: every cell exactly once")
    p.add_argument("--retry-errors", action="store_true",
                   help="with --resume: remove this study identity's error rows and run those cells again")  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="show Ray's own output")
    p.add_argument("--forecasts", action=argparse.BooleanOptionalAction, default=True,
                   help="store every trial's forecasts under <out>/forecasts (default; --no-forecasts: rows only)")  # fmt: skip
    add_loader_flags(p)
    if study == "tune":
        p.add_argument("--samples", type=int, default=16, help="Optuna trials per model")
        p.add_argument("--metric", default="valid_rank_ic", help="objective (a validation metric)")
        p.add_argument("--mode", default="max", choices=["max", "min"])
        p.add_argument("--scheduler", default="none", choices=["none", "asha"],
                       help="asha: stop hopeless trials early on their per-epoch validation loss")  # fmt: skip
    return p


def options(study: str, argv: list[str] | None):
    """Parse argv into StudyOptions (validating names, lists and the configs file)."""
    from rvrae.models.registry import parse_models
    from rvrae.study.runner import DEFAULT_M, StudyOptions, load_configs

    a = parser(study).parse_args(argv)
    models = parse_models(a.models)
    m = DEFAULT_M[study] if a.m is None else _int_list(a.m)
    if study == "benchmark" and m != [0]:
        raise UserError("benchmark runs m = 0 only (use robustness for omitted stocks)")
    extra = {}
    if study == "tune":
        extra = {"samples": a.samples, "metric": a.metric, "mode": a.mode, "scheduler": a.scheduler}
    return StudyOptions(
        study=study, models=models, data=a.data, out=a.out, seeds=a.seeds, m=m, epochs=a.epochs,
        configs=load_configs(a.configs, models), cpus_per_trial=a.cpus_per_trial, load=loader_options(a),
        config_source=f"--configs {a.configs}" if a.configs else "defaults",
        gpus_per_trial=a.gpus_per_trial, max_concurrent=a.max_concurrent, address=a.address,
        resume=a.resume, retry_errors=a.retry_errors, verbose=a.verbose, forecasts=a.forecasts,
        storage=a.storage, max_failures=a.max_failures, split=_split(a.split), squares=a.squares, **extra,
    )


def main(study: str, argv: list[str] | None = None, console=None) -> int:
    from rich.console import Console

    console = console or Console()
    try:
        opts = options(study, argv)
        from rvrae.study.runner import run_study

        run = run_study(opts, console=console)
    except UserError as e:
        Console(stderr=True).print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return UserError.exit_code
    except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C: the rows so far stay, --resume goes on
        Console(stderr=True).print(f"interrupted: {str(e) or 'rerun with --resume to finish'}", markup=False,
                                   highlight=False, soft_wrap=True)  # fmt: skip
        return Interrupted.exit_code
    except SystemExit as e:  # --help
        return int(e.code or 0)
    console.print(
        f"{study}: {len(run.rows)} trial{'' if len(run.rows) == 1 else 's'} written to {run.out}"
        + (f" ({run.skipped} cells already there)" if run.skipped else "")
        + f"; {run.cpus_per_trial:g} CPU, {run.gpus_per_trial:g} GPU per trial, {run.max_concurrent} at a time",
        highlight=False, soft_wrap=True,  # one line: a path is not broken at the console's width
    )
    if study == "tune":
        console.print(f"best configs: {run.out / 'best_configs.json'}; Optuna studies: sqlite:///{run.out / 'optuna.db'}",
                      highlight=False, soft_wrap=True)  # fmt: skip
    return 0
