"""Shared fixtures: ONE Ray instance per test session (ray.init takes seconds), a tiny
synthetic panel (60 months, split 3/1/1 years) in memory and as a Parquet file, and a
ten-year planted design for the studies' scripts."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

TINY_SPLIT = (3, 1, 1)


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray without dashboard, shared by every study test of the session. Tests
    that need a Ray of their own (the multi-node cluster) run it in a subprocess."""
    import ray

    if not ray.is_initialized():
        # address="local": always a private instance, never one another process `ray start`ed
        # on this machine (which ray.init() with no address would attach to)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_synth():
    from rvrae.data.synthetic import SynthConfig, make_synthetic

    return make_synthetic(SynthConfig(n_stocks=80, n_months=60, n_chars=8, seed=0))


@pytest.fixture(scope="session")
def tiny_panel(tiny_synth):
    return tiny_synth.panel


@pytest.fixture(scope="session")
def tiny_data_file(tiny_synth, tmp_path_factory):
    from rvrae.data.synthetic import write_synthetic

    return write_synthetic(tiny_synth, tmp_path_factory.mktemp("data") / "tiny.parquet")


@pytest.fixture(scope="session")
def ten_year_design(tmp_path_factory) -> str:
    """`--data synthetic:DESIGN.json` of a small planted panel: 200 stocks, 10 years (room for a
    6/2/2 split or rolling origins), 10 characteristics; the studies' scripts load it."""
    path = tmp_path_factory.mktemp("design") / "ten.json"
    path.write_text(json.dumps({"n_stocks": 200, "n_months": 120, "n_chars": 10, "seed": 0}))
    return f"synthetic:{path}"
