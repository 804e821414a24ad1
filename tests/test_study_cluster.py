"""Multi-node: a study on a `ray.cluster_utils.Cluster` (a head and a worker node, one CPU
each) runs trials on both nodes and every row comes back to the driver's Parquet sink.

The cluster needs a Ray of its own, so it runs in a subprocess (the session's shared Ray in
this process stays untouched)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rvrae.results.store import read_results

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ray.cluster_utils import Cluster
    from rvrae.data.io import load_data
    from rvrae.study.runner import StudyOptions, run_study

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        opts = StudyOptions(study="robustness", models=["ipca"], seeds=2, m=[10], split=(3, 1, 1),
                            out=Path(sys.argv[2]), address=cluster.address, max_failures=0)
        run = run_study(opts, panel=load_data(sys.argv[1]))
        print(f"max_concurrent {run.max_concurrent}", flush=True)  # one write: Ray's log thread cannot split it
    finally:
        cluster.shutdown()
    """
)


@pytest.mark.slow
def test_rows_come_back_from_both_nodes(tiny_data_file, tmp_path):
    out = tmp_path / "res"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_data_file), str(out)],
        capture_output=True, text=True, timeout=240, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max_concurrent 2" in proc.stdout  # sized from the two nodes' CPUs
    df = read_results(out)
    assert len(df) == 2 and set(df["status"]) == {"ok"}
    assert df["node_id"].nunique() == 2  # one trial per node: 1 CPU each
