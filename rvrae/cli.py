"""The `rvrae` command: parse, call, print (SPEC §7).

`main(argv=None) -> int` so tests run it in-process. A `UserError` anywhere, and every usage
error of typer's click (unknown command or option, bad value), becomes one line on stderr
and exit code 2, no traceback; nothing is written before the input has been validated.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from rvrae.errors import Interrupted, UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="RVRAE and five baseline factor models: run the demo, tabulate and plot results, check panels.",
)
data_app = typer.Typer(no_args_is_help=True, help="Write, check and describe panels.")
app.add_typer(data_app, name="data")
console = Console()


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Parquet or CSV file to write"),
    design: Optional[Path] = typer.Option(
        None, help="JSON file of SynthConfig fields: another planted design (studies/panels/*.json)"),
    stocks: Optional[int] = typer.Option(None, help="stocks alive per month (default panel if unset)"),
    months: Optional[int] = typer.Option(None, help="number of months"),
    chars: Optional[int] = typer.Option(None, help="number of characteristics"),
    seed: Optional[int] = typer.Option(None, help="seed of the planted model [default: the design's, else 0]"),
):
    """Write the planted synthetic panel (a known conditional factor model) as a long panel, and
    print its oracle scores (with the true betas' references) and its true factors. The flags
    given override the design file's fields."""
    from rvrae.data.synthetic import SynthConfig, make_synthetic, read_design, write_synthetic
    from rvrae.results.render import print_factors, print_oracle

    fields = read_design(design) if design is not None else {}
    flags = dict(seed=seed, n_stocks=stocks, n_months=months, n_chars=chars)
    fields.update({k: v for k, v in flags.items() if v is not None})
    synth = make_synthetic(SynthConfig(**fields))
    write_synthetic(synth, out)
    console.print(f"wrote {out}", soft_wrap=True, markup=False, highlight=False)  # a path is no markup
    print_oracle(synth, console)
    print_factors(synth, console)


def data_check(
    ctx: typer.Context,
    path: Path,
    percent: Optional[bool] = typer.Option(
        None, "--percent/--no-percent",
        help="returns are in percent / decimal (returns that look like percent are refused unless you say)",
    ),
    chars: Optional[str] = typer.Option(None, help="comma-separated characteristic columns (default: every other numeric column)"),
    exclude: Optional[str] = typer.Option(None, help="comma-separated columns that are not characteristics (e.g. SHRCD,EXCHCD)"),
    start: Optional[str] = typer.Option(None, help="first month kept, e.g. 1990-01"),
    end: Optional[str] = typer.Option(None, help="last month kept, e.g. 2016-12"),
    alignment: str = typer.Option("same_row", help="same_row: characteristics known before the row's return; lag: lag them one month"),
    id_col: Optional[str] = typer.Option(None, help="the stock id column (default: permno, id, gvkey or ticker)"),
    date_col: Optional[str] = typer.Option(None, help="the month column (default: date, yyyymm or eom)"),
    ret_col: Optional[str] = typer.Option(None, help="the return column (default: ret or ret_exc_lead1m)"),
):
    """check: validate a panel file (exit 0 if valid, exit 2 with one clear line if not).
    info: months, stocks per month, characteristics, missing share and return statistics."""
    from rvrae.data.io import load_panel
    from rvrae.results.render import print_panel_info

    def names(text):
        return None if text is None else [t.strip() for t in text.split(",") if t.strip()]

    panel = load_panel(path, alignment=alignment, percent=percent, chars=names(chars), start=start, end=end,
                       exclude=names(exclude), id_col=id_col, date_col=date_col, ret_col=ret_col)  # fmt: skip
    for note in panel.meta.get("notices", []):
        Console(stderr=True).print(f"note: {path}: {note}", markup=False, highlight=False, soft_wrap=True)
    if ctx.info_name == "info":
        print_panel_info(panel, console)
    else:
        console.print(f"ok: {path}: {panel.T} months, {panel.N} stocks, {panel.C} characteristics", soft_wrap=True,
                      markup=False, highlight=False)  # fmt: skip


# One command, two names: `check` validates, `info` also describes (same loader options).
data_app.command("check", help="Validate a panel file: exit 0 if valid, exit 2 with one clear line if not.")(data_check)
data_app.command("info", help="Months, stocks per month, characteristics, missing share and return statistics, "
                              "as the loader sees them.")(data_check)  # fmt: skip


@app.command("table")
def table(
    directory: Path,
    study: Optional[str] = typer.Option(None, help="tune, benchmark, robustness or speed (default: all present)"),
    fmt: str = typer.Option("rich", "--format", help="rich, markdown, latex or csv"),
    metrics: Optional[str] = typer.Option(None, help="comma-separated metric columns (custom table)"),
    identity: Optional[int] = typer.Option(
        None, help="show only study identity N (data, split, epochs, objective) when the folder holds several"
    ),
    rescore: bool = typer.Option(
        False, "--rescore", help="recompute every metric from the stored forecasts (no training)"
    ),
    cost: Optional[float] = typer.Option(
        None, help="long-short cost in bps per unit of turnover (default 30); implies --rescore"
    ),
    weighting: str = typer.Option(
        "equal", help="long-short legs: equal, or value (needs a 'size' column in the forecasts); value implies --rescore"
    ),
    share: bool = typer.Option(
        False, "--share", help="on a planted panel, each cell also gives its share of the oracle's mean [in brackets]"
    ),
):
    """Paper-style mean(std) tables over seeds from a results folder, one set per study
    identity, each saying under it what produced it; benchmark tables add a seed-ensemble row
    per model (the mean forecast over its seeds) where forecasts are stored."""
    from rvrae.results.forecasts import rescore_rows, seed_ensembles
    from rvrae.results.oracle import ORACLE, read_oracle
    from rvrae.results.render import render_tables
    from rvrae.results.store import read_results
    from rvrae.results.tables import build_tables, one_identity_per_study

    if weighting not in ("equal", "value"):
        raise UserError(f"--weighting must be equal or value, got {weighting!r}")
    if cost is not None and not cost >= 0:
        raise UserError(f"--cost must be >= 0 bps, got {cost:g}")
    df = read_results(directory, study=study)
    if fmt == "csv" and identity is None:
        one_identity_per_study(df, "one csv")
    bps = 30.0 if cost is None else float(cost)
    note = ""
    rescoring = rescore or cost is not None or weighting != "equal"
    if rescoring:
        df, n = rescore_rows(directory, df, bps / 1e4, weighting)
        if n == 0:
            raise UserError(f"--rescore: no stored forecasts under {str(Path(directory) / 'forecasts')!r} "
                            "(studies run with --no-forecasts or before forecasts were stored)")  # fmt: skip
        note = f"Rescored from the stored forecasts of {n} trials: {bps:g} bps, {weighting}-weighted long-short."
    ensembles = seed_ensembles(directory, df, bps / 1e4, weighting) if not metrics else None
    # the planted model's row, where the study generated its synthetic panel (rvrae.results.oracle)
    oracle = read_oracle(directory, bps / 1e4 if rescoring else None, weighting)
    tables = build_tables(df, study=study, metrics=metrics.split(",") if metrics else None, identity=identity,
                          ensembles=ensembles, note=note, cost_bps=bps, oracle=oracle, share=share)  # fmt: skip
    if share and not any(ORACLE in t.rows for t in tables):
        raise UserError(f"--share: no oracle rows in {str(directory)!r} (only a study that generates its synthetic "
                        "panel, --data synthetic[:DESIGN.json], writes them)")  # fmt: skip
    text = render_tables(tables, fmt, console=console)
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command("plot")
def plot(
    directory: Path,
    out: Path = typer.Option(..., "--out", help="folder for the figures"),
    fmt: str = typer.Option("png", "--format", help="png, svg or pdf"),
    identity: Optional[int] = typer.Option(None, help="draw study identity N where a study's rows hold several"),
    study: Optional[str] = typer.Option(None, help="one study's figures only (tune, benchmark, robustness)"),
):
    """Figures: cumulative long-short returns with their spread over seeds, Rank IC by m,
    tuning history; each title names the data and the split."""
    from rvrae.results.plots import make_plots

    for p in make_plots(directory, out, fmt=fmt, identity=identity, study=study):
        console.print(f"wrote {p}", soft_wrap=True, markup=False, highlight=False)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("results/demo"), "--out"),
    seeds: int = typer.Option(2, help="seeds per cell"),
    epochs: int = typer.Option(8, help="epoch cap per neural model"),
    verbose: bool = typer.Option(False, help="show Ray's own logs"),
):
    """The main job: all six models on the synthetic panel through Ray Tune, then the tables."""
    from rvrae.study.demo import run_demo

    run_demo(out=out, seeds=seeds, epochs=epochs, verbose=verbose, console=console)


def _usage_errors() -> tuple[type, ...]:
    """The usage errors of the click that typer runs: typer >= 0.2x ships its own copy
    (`typer._click`), whose classes are not click's, so both are caught."""
    import click

    usage = [click.exceptions.ClickException]
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # an older typer on the real click
        pass
    else:
        usage.append(ClickException)
    return tuple(usage)


def main(argv: list[str] | None = None) -> int:
    import click

    try:
        app(args=argv, standalone_mode=False, prog_name="rvrae")
    except UserError as e:
        Console(stderr=True).print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return UserError.exit_code
    except Interrupted as e:  # `rvrae demo` stopped by Ctrl-C: its rows stay
        Console(stderr=True).print(f"interrupted: {e}", markup=False, highlight=False, soft_wrap=True)
        return Interrupted.exit_code
    except typer.Exit as e:  # --help and friends
        return e.exit_code
    except _usage_errors() as e:  # bad command, option or value: one line, exit 2, no traceback
        if type(e).__name__ == "NoArgsIsHelpError":  # `rvrae`, `rvrae data`: the help text
            console.print(e.format_message(), markup=False, highlight=False)
            return 0
        message = " ".join(e.format_message().split())
        Console(stderr=True).print(f"error: {message} (see --help)", markup=False, highlight=False, soft_wrap=True)
        return UserError.exit_code
    except (typer.Abort, click.exceptions.Abort):
        return 130
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
