"""Autoscaling: a robustness study submitted to a head that runs no trials and has no workers
waits, leaves its trials pending, and Ray's autoscaler (the `fake_multinode` provider: worker
"nodes" are Ray nodes started on this machine) adds workers that run them (issue 15).

The head is started here by hand, not with `ray.cluster_utils.AutoscalingCluster`: its
`start()` runs `ray stop --force`, which kills every Ray on the machine (the test session's
shared instance and anyone else's included). Ours gets its own temp dir, ports and token, runs
in its own process group, and only its processes are ended, by id."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rvrae.results.store import read_results

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
WORKERS = 2  # the worker type's max_workers: the study must use both

# Our processes are found (and the study finds the autoscaler's config) through /proc.
pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fake_config(gcs_address: str) -> dict:
    """Ray's fake_multinode example config (not shipped in the wheel): a head with no CPUs
    and one CPU worker type that starts at zero nodes."""
    return {
        "cluster_name": "rvrae-fake",
        "max_workers": WORKERS,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,  # longer than the study: nodes stay once added
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,  # two pending trials -> two nodes in one update
            "gcs_address": gcs_address,  # ours, not the default port 6379
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": WORKERS},
        },
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _ours(group: int, marker: str) -> set[int]:
    """Live processes of our fake cluster: in the head's process group, or naming its temp dir."""
    pids = set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(d.name)) == group or marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                if (d / "stat").read_text().split(") ")[-1][:1] != "Z":  # zombies are gone already
                    pids.add(int(d.name))
        except (OSError, ValueError):
            continue
    return pids - {os.getpid()}


def _end(head: subprocess.Popen, marker: str) -> set[int]:
    """End our head's process group and any process naming our temp dir; return survivors."""
    # SIGTERM gets 3 s (some of Ray's processes outlive it: waiting longer only delayed the
    # SIGKILL), SIGKILL 10 s.
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        for pid in _ours(head.pid, marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and _ours(head.pid, marker):
            time.sleep(0.2)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return _ours(head.pid, marker)


@pytest.fixture
def fake_cluster():
    import ray._private.services as services

    tmp = tempfile.mkdtemp(prefix="rvfc", dir="/tmp")  # short: Ray's socket paths have a length limit
    ip, port = services.get_node_ip_address(), _free_port()
    address = f"{ip}:{port}"
    config = Path(tmp) / "autoscaling.json"
    config.write_text(json.dumps(fake_config(address)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    log = Path(tmp) / "head.log"
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", f"--temp-dir={tmp}", "--num-cpus=0",
         "--include-dashboard=false", f"--dashboard-agent-listen-port={_free_port()}",
         f"--autoscaling-config={config}", "--disable-usage-stats"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield {"address": address, "env": env, "tmp": tmp, "log": log}
    finally:
        left = _end(head, tmp)
        assert not left, f"fake cluster processes left behind: {sorted(left)}"
        assert head.poll() is not None
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_study_on_an_empty_head_waits_then_runs_on_autoscaled_workers(fake_cluster, tiny_data_file, tmp_path):
    out = tmp_path / "res"
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "studies" / "robustness.py"), "--data", str(tiny_data_file),
         "--models", "ipca", "--seeds", "3", "--m", "10,20", "--split", "3/1/1", "--max-failures", "0",
         "--address", fake_cluster["address"], "--out", str(out)],
        env=fake_cluster["env"], capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:] + fake_cluster["log"].read_text()[-2000:]
    # Sized from what the cluster can grow to (2 workers x 1 CPU), not what it had (0 CPUs)...
    assert f"{WORKERS} at a time" in proc.stdout, proc.stdout
    # ...and it said it was waiting for the autoscaler instead of failing.
    assert "waiting for resources: the cluster has 0 CPU" in proc.stdout, proc.stdout
    df = read_results(out)
    cells = df.groupby(["seed", "m"]).size()
    assert len(cells) == 6 and set(cells) == {1}, cells  # every cell exactly once
    assert set(df["status"]) == {"ok"}, df["error"].tolist()
    # Rows from at least two autoscaled workers: the fake provider's worker ids are
    # fff...f0000N; the head (CPU 0) ran nothing.
    nodes = set(df["node_id"])
    assert len(nodes) >= 2 and all(n.startswith("ffffffff") for n in nodes), nodes
    print(f"autoscaled study: {time.time() - t0:.0f}s on nodes {sorted(n[-5:] for n in nodes)}")
