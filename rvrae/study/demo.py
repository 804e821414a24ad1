"""`rvrae demo`: all six models on the synthetic panel through Ray Tune, then the tables (SPEC §7).

A benchmark grid (m = 0) and a robustness grid (m ∈ {50, 100, 150}), `seeds` seeds each, on
one local Ray instance, written under `out` (default results/demo). Re-running adds no rows
(the demo always resumes) and just prints the tables again.

Budget: ≤ 5 minutes on a 2-core laptop. The synthetic panel is the embedded default; the
neural models are capped at `epochs` epochs (default 4 from the CLI), which is what keeps the
48 trials (6 models × 2 seeds × 4 m values) inside the budget.
"""

from __future__ import annotations

import time
from pathlib import Path

DEMO_M = [50, 100, 150]


def run_demo(out: Path = Path("results/demo"), seeds: int = 2, epochs: int = 4, verbose: bool = False,
             console=None, models: list[str] | None = None) -> dict:
    """Run both grids and print Tables I-III; returns {study: trials written}."""
    import ray
    from rich.console import Console

    from rvrae.data.io import load_data
    from rvrae.models.registry import model_names
    from rvrae.results.render import render_tables
    from rvrae.results.store import read_results
    from rvrae.results.tables import build_tables
    from rvrae.study.runner import StudyOptions, connect, run_study

    console = console or Console()
    models = models or model_names()
    base = dict(models=models, out=Path(out), seeds=seeds, epochs=epochs, verbose=verbose,
                resume=True, address="local")
    plans = [StudyOptions(study="benchmark", m=[0], **base), StudyOptions(study="robustness", m=DEMO_M, **base)]
    panel = load_data("synthetic")
    t0 = time.time()
    started = connect("local", verbose)
    written = {}
    try:
        for opts in plans:
            run = run_study(opts, console=console, panel=panel)
            written[opts.study] = len(run.rows)
    finally:
        if started:
            ray.shutdown()
    console.print(f"demo: {sum(written.values())} trials in {time.time() - t0:.0f}s, results in {out}", highlight=False)
    for study in ("benchmark", "robustness"):
        tables = build_tables(read_results(out, study=study), study=study)
        text = render_tables(tables, "rich", console=console)
        if text:
            console.print(text)
    return written
