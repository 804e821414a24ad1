"""`rvrae demo` end to end on two fast models: both grids through Ray Tune, the paper's three
tables and the oracle printed; a second run recomputes nothing and prints the same tables."""

import re

from rich.console import Console

from rvrae.results.store import read_results
from rvrae.study.demo import DEMO_M, run_demo


def test_demo_runs_both_grids_and_prints_tables(ray_session, tmp_path):
    out = tmp_path / "demo"
    console = Console(record=True, width=200)
    written = run_demo(out=out, seeds=1, epochs=1, console=console, models=["ipca", "ca"])
    assert written == {"benchmark": 2, "robustness": 2 * len(DEMO_M)}
    rows = read_results(out)
    assert (rows["status"] == "ok").all() and len(rows) == 2 + 2 * len(DEMO_M)
    text = console.export_text()
    for title in ("Table I", "Table II", "Table III", "Oracle"):
        assert title in text
    # a table row of each model: "CA" as its own first cell (a substring of "IPCA" would not do)
    assert re.search(r"^\W*IPCA\b", text, re.M) and re.search(r"^\W*CA\b", text, re.M)
    assert re.search(r"^\W*IPCA\W.*\d\.\d\d \[-?\d+%\]", text, re.M)  # a model's share of the oracle's

    again = Console(record=True, width=200)
    assert run_demo(out=out, seeds=1, epochs=1, console=again, models=["ipca", "ca"]) == {
        "benchmark": 0, "robustness": 0}
    assert len(read_results(out)) == len(rows)
    assert "Table III" in again.export_text()
