"""Where a study runs and how big it plans to be (issues 13 and 15): a private local Ray unless
--address / RAY_ADDRESS names a cluster, a failed attach is a one-line error (exit 2) and never
a silent local fallback, and concurrency follows what the cluster can grow to."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from rvrae.errors import UserError
from rvrae.study.runner import (
    StudyOptions, autoscaling_maxima, idle_note, plan_resources, resolve_address, reuse_actors, waiting_note,
)


class _Stop(Exception):
    """Raised by the fake ray.init once it has recorded its arguments."""


@pytest.fixture
def fake_init(monkeypatch):
    """ray.init recorded instead of run: attaching raises ConnectionError as Ray does when no
    cluster answers; starting a local instance stops the study right there (_Stop)."""
    import ray

    calls = []

    def init(**kw):
        calls.append(kw)
        if kw.get("address") != "local":
            raise ConnectionError("Could not find any running Ray instance.")
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def _args(data, out):
    return ["--data", str(data), "--models", "ipca", "--seeds", "1", "--m", "10", "--split", "3/1/1", "--out", str(out)]


def test_address_resolution(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "local"  # never another process's instance by accident
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(None) == "10.0.0.5:6379"
    assert resolve_address("auto") == "auto"  # the flag wins over the environment


def test_actors_are_reused_on_a_private_local_ray_only(monkeypatch, tmp_path):
    """On a cluster a reused actor on a lost node fails its trial for good (runner.reuse_actors)."""
    opts = lambda address: StudyOptions(study="robustness", models=["ipca"], out=tmp_path, address=address)  # noqa: E731
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert reuse_actors(opts(None)) and reuse_actors(opts("local"))
    assert not reuse_actors(opts("auto")) and not reuse_actors(opts("10.0.0.5:6379"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert not reuse_actors(opts(None))


def test_default_starts_a_private_local_ray(fake_init, tiny_data_file, tmp_path):
    from rvrae.study.cli import main

    with pytest.raises(_Stop):
        main("robustness", _args(tiny_data_file, tmp_path / "out"))
    assert [c["address"] for c in fake_init] == ["local"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_failed_attach_is_a_clear_error_not_a_local_fallback(how, fake_init, monkeypatch, tiny_data_file, tmp_path, capsys):
    from rvrae.study.cli import main

    out = tmp_path / "out"
    args = _args(tiny_data_file, out)
    if how == "flag":
        args += ["--address", "auto"]
    else:
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    rc = main("robustness", args)
    err = capsys.readouterr().err
    assert rc == 2
    assert ("--address auto: cannot attach" if how == "flag" else "RAY_ADDRESS=127.0.0.1:1: cannot attach") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert [c["address"] for c in fake_init] == (["auto"] if how == "flag" else ["127.0.0.1:1"])  # no "local" after it
    assert not out.exists()


def test_maxima_respect_the_cluster_wide_worker_cap():
    config = {
        "max_workers": 4,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 2}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 4}, "max_workers": 3},
            "gpu": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 3},
        },
    }
    grow, shapes = autoscaling_maxima(config)
    # CPU: head 2 + three 4-CPU nodes + one more worker (1 CPU); GPU: three GPU nodes.
    assert grow == {"CPU": 2 + 12 + 1, "GPU": 3}
    assert {"CPU": 1, "GPU": 1} in shapes and {"CPU": 4} in shapes


def test_a_head_without_workers_plans_for_growth_and_waits():
    opts = StudyOptions(study="robustness", models=["ipca"])
    grow, now = {"CPU": 96.0, "GPU": 8.0}, {"CPU": 0.0}
    shapes = [{"CPU": 0.0}, {"CPU": 48.0, "GPU": 4.0}]
    assert plan_resources(opts, grow, shapes) == (1.0, 0.25, 32)
    assert "waiting for resources: the cluster has 0 CPU, 0 GPU now and can grow to 96 CPU, 8 GPU" in waiting_note(1.0, 0.25, grow, now)
    assert waiting_note(1.0, 0.25, grow, {"CPU": 48.0, "GPU": 4.0}) is None
    # A trial no node type can hold would wait forever: refused up front.
    with pytest.raises(UserError, match="no node"):
        plan_resources(StudyOptions(study="robustness", models=["ipca"], gpus_per_trial=8), grow, shapes)
    with pytest.raises(UserError, match="no CPUs"):
        plan_resources(opts, {"CPU": 0.0}, [{"CPU": 0.0}])


def test_a_gpu_share_that_leaves_most_cpus_idle_says_how_to_use_them():
    opts = StudyOptions(study="robustness", models=["rvrae"])
    box = {"CPU": 16.0, "GPU": 1.0}  # one GPU box: the default share runs 4 trials on 4 of 16 CPUs
    cpus, gpus, conc = plan_resources(opts, box)
    assert (cpus, gpus, conc) == (1.0, 0.25, 4)
    note = idle_note(opts, cpus, gpus, conc, box)
    assert "4 trials at a time (0.25 GPU each) use 4 of 16 CPUs" in note
    assert "--cpus-per-trial 4" in note and "--gpus-per-trial 0.0625" in note and "--gpus-per-trial 0)" in note
    # Two GPUs, 32 CPUs: 8 trials; 32 at once need a share of 2/32 each, and 4 CPUs fill the node.
    two = {"CPU": 32.0, "GPU": 2.0}
    note = idle_note(opts, *plan_resources(opts, two), two)
    assert "8 trials at a time (0.25 GPU each) use 8 of 32 CPUs" in note
    assert "--cpus-per-trial 4" in note and "--gpus-per-trial 0.0625" in note
    # Balanced (the cluster's 3 CPU + 0.25 GPU on 48-CPU, 4-GPU nodes), CPU-only, or resources the
    # user chose: no note.
    assert idle_note(opts, 3.0, 0.25, 64, {"CPU": 196.0, "GPU": 16.0}) is None
    assert idle_note(opts, 1.0, 0.25, 4, {"CPU": 6.0, "GPU": 1.0}) is None
    assert idle_note(opts, 1.0, 0.0, 4, {"CPU": 16.0}) is None
    for chosen in ({"gpus_per_trial": 0.25}, {"max_concurrent": 4}, {"resource_flags": False}):  # the last: the demo
        assert idle_note(StudyOptions(study="robustness", models=["rvrae"], **chosen), 1.0, 0.25, 4, box) is None


def test_progress_line_says_when_trials_wait():
    from rvrae.study.callbacks import LiveProgress

    live = LiveProgress("robustness", None, total=4)
    trials = [SimpleNamespace(status=s) for s in ("PENDING", "PENDING", "RUNNING", "TERMINATED")]
    live.on_step_end(0, trials)
    assert "2 waiting for resources" in live._render().plain
    live.on_step_end(1, [SimpleNamespace(status="RUNNING")])
    assert "waiting" not in live._render().plain


def test_ray_start_records_are_held_for_the_study_log_and_the_handlers_restored(tmp_path, monkeypatch):
    import ray

    from rvrae.study import runner

    names = ("ray", "ray.tune", "ray.train", "ray.data", "optuna")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    ray_log = logging.getLogger("ray")
    seen_at_init = []

    def init(**kwargs):  # what Ray 2.60's ray.init does at every private start
        seen_at_init.append((list(ray_log.handlers), ray_log.propagate))
        logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        assert runner.connect(None, verbose=False) is True
        handlers, propagate = seen_at_init[0]
        assert propagate is False and handlers != saved["ray"][0]  # nothing reached the terminal ...
        assert [r.getMessage() for r in runner._HELD_AT_START] == ["Token authentication is enabled"]
        assert (list(ray_log.handlers), ray_log.propagate) == saved["ray"]  # ... and Ray's handlers are back
        runner._quiet_ray(tmp_path / "study.log")  # the study's log file gets them, once
        assert "ray._private.authentication WARNING Token authentication is enabled" in (tmp_path / "study.log").read_text()
        assert runner._HELD_AT_START == []
        for n, (h, p) in saved.items():
            logging.getLogger(n).handlers, logging.getLogger(n).propagate = h, p
        with pytest.raises(UserError), runner.holding_ray_logs(True):  # restored when a start is refused
            raise UserError("cannot attach")
        assert (list(ray_log.handlers), ray_log.propagate) == saved["ray"]
        assert runner.connect(None, verbose=True) is True  # --verbose: Ray's own handlers, nothing held
        assert seen_at_init[1] == saved["ray"] and runner._HELD_AT_START == []
    finally:
        runner._HELD_AT_START.clear()
        for n, (handlers, propagate) in saved.items():
            logging.getLogger(n).handlers, logging.getLogger(n).propagate = handlers, propagate
