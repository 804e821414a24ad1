"""cluster/cluster.yaml is checked offline with Ray's own validator (ray-schema.json after
the autoscaler fills in its provider defaults), plus what SPEC §5 asks of it."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

YAML = Path(__file__).resolve().parents[1] / "cluster" / "cluster.yaml"


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(YAML.read_text())


def test_valid_for_rays_own_validator(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_validator_rejects_a_broken_copy(config):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["no_such_field"] = 1
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(bad))


def test_cpu_head_gpu_workers_install_and_no_secrets(config):
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith("m5")
    workers = [n for k, n in nodes.items() if k != config["head_node_type"]]
    assert any(w["node_config"]["InstanceType"].startswith(("g5", "p4", "p5", "g6")) for w in workers)
    assert all(w["max_workers"] > w.get("min_workers", 0) for w in workers)  # autoscaling
    assert "." in config["file_mounts"].values()  # the project goes to every node...
    assert any("pip install" in c and "rvrae" in c for c in config["setup_commands"])  # ...and is installed
    text = YAML.read_text().lower()
    for secret in ("aws_access_key_id", "aws_secret_access_key", "password", "token:"):
        assert secret not in text
    assert "s3://" in text  # the shared storage path is documented
    assert all("127.0.0.1" in c for c in config["head_start_ray_commands"] if "--head" in c)


# ---------------------------------------------------------------- issue 15: a cluster that works

ROOT = YAML.parents[1]


def _pins() -> dict:
    """The project's pins: the `cluster` extra (what every node installs) and the Makefile's
    torch and Ray (what `make test` runs with)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the test extra's tomli
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["cluster"]
    pins = {"torch_range": next(r[len("torch"):] for r in project["dependencies"] if r.startswith("torch"))}
    for req in extra:
        m = re.fullmatch(r"([a-z0-9_-]+)(?:\[[^\]]*\])?==([0-9.]+)", req.replace(" ", ""))
        if m:
            pins[m.group(1)] = m.group(2)
    makefile = (ROOT / "Makefile").read_text()
    pins["make_torch"] = re.search(r'"torch==([0-9.]+)"', makefile).group(1)
    pins["make_ray"] = re.search(r'"ray\[tune\]==([0-9.]+)"', makefile).group(1)
    return pins


def test_ray_and_torch_pins_agree_with_the_project(config):
    import ray
    import torch

    pins = _pins()
    images = {k: v for k, v in config["docker"].items() if k.endswith("image")}
    assert images, "every node runs Ray's own image"
    for key, image in images.items():
        m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(gpu|cpu|cu\d+)", image)
        assert m, f"docker.{key}: {image} is not a pinned Ray image"
        assert m.group(1) == pins["ray"] == ray.__version__, (key, image, pins["ray"], ray.__version__)
        assert int(m.group(2)) >= 10, f"{image}: the project needs Python >= 3.10"
    assert config["docker"]["image"].endswith("-gpu")  # the workers' image carries CUDA
    assert pins["make_ray"] == pins["ray"]  # `make test` installs the cluster's Ray
    assert pins["torch"] == pins["make_torch"]
    # The torch installed is the Makefile's pin, or its fallback within the project's range
    # (where that wheel is missing): either way one `make test` accepts.
    from packaging.specifiers import SpecifierSet

    assert torch.__version__.split("+")[0] in SpecifierSet(pins["torch_range"]), (torch.__version__, pins["torch_range"])
    # The nodes install the extra that carries these pins.
    assert any("[cluster]" in c for c in config["setup_commands"])


def test_one_interpreter_installs_and_runs(config):
    """`ray submit` runs `python ~/script.py`: setup must install with that same `python`."""
    installs = [c for c in config["setup_commands"] if "pip" in c]
    assert installs and all(c.startswith("python -m pip ") for c in installs), installs
    assert not any(re.search(r"\bpython3\b|\bpip3?\s+install", c.replace("-m pip install", "")) for c in installs)


def test_gpu_workers_start_at_zero_and_the_head_runs_no_trials(config):
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    workers = [n for k, n in nodes.items() if k != config["head_node_type"]]
    assert workers and all(w.get("min_workers", 0) == 0 and w["resources"].get("GPU", 0) > 0 for w in workers)


def _rsync_drops(pattern: str, path: str) -> bool:
    """Whether rsync's `--exclude PATTERN` (how Ray passes rsync_exclude) drops `path`, a path
    relative to the copy's top, for the pattern forms the YAML uses: a leading "/" anchors at
    the top; a pattern without "/" matches a file or folder name at any depth; one with "/"
    matches the end of the path ("**" spans folders)."""
    import fnmatch

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a, a/b, a/b/c
    if pattern.startswith("/"):
        return pattern[1:] in prefixes
    if "/" not in pattern:
        return any(fnmatch.fnmatch(p, pattern) for p in parts)
    return any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, "*/" + pattern) for p in prefixes)


def test_the_copy_keeps_the_package_and_the_commit(config, tmp_path):
    """What `file_mounts` copies to every node: the whole package (rvrae/results/ is not the
    results folder) and .git (rows record `git_commit`; git must be usable there), without the
    local venv and results. With rsync on this machine, the real rsync says the same."""
    import shutil
    import subprocess

    excludes = config.get("rsync_exclude", [])
    assert _rsync_drops("results", "rvrae/results/store.py")  # the matcher knows the trap
    kept = ["rvrae/results/store.py", "rvrae/study/runner.py", "studies/robustness.py", ".git/HEAD"]
    dropped = [".venv/bin/python", "results/x.parquet", "rvrae/__pycache__/cli.cpython-311.pyc"]
    for path in kept + dropped:
        assert any(_rsync_drops(p, path) for p in excludes) == (path in dropped), path
    assert any("git" in c for c in config["setup_commands"])
    if shutil.which("rsync"):
        src = tmp_path / "src"
        for path in kept + dropped:
            (src / path).parent.mkdir(parents=True, exist_ok=True)
            (src / path).write_text("x")
        args = [a for p in excludes for a in ("--exclude", p)]
        subprocess.run(["rsync", "-a", *args, f"{src}/", str(tmp_path / "dst")], check=True)
        for path in kept + dropped:
            assert (tmp_path / "dst" / path).exists() == (path in kept), path


def test_a_study_sizes_itself_from_what_the_yaml_can_grow_to(config):
    """Before any worker exists, the study plans for 4 x (48 CPU, 4 GPU): 64 trials at 0.25 GPU,
    so 64 pending trials ask the autoscaler for all four workers."""
    from rvrae.study.runner import StudyOptions, autoscaling_maxima, plan_resources

    grow, shapes = autoscaling_maxima(config)
    assert grow == {"CPU": 192.0, "GPU": 16.0}
    assert plan_resources(StudyOptions(study="robustness", models=["ipca"]), grow, shapes) == (1.0, 0.25, 64)


def test_robustness_script_alone_finds_the_installed_package(tmp_path):
    """What `ray submit` does: the script copied alone to another folder, run by the interpreter
    the project is installed in."""
    import shutil
    import subprocess
    import sys

    script = shutil.copy(ROOT / "studies" / "robustness.py", tmp_path / "robustness.py")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, script, "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--address" in proc.stdout and "Table III" in proc.stdout


def test_tune_storage_under_a_bucket_stays_a_uri():
    """README's cluster step: --storage s3://BUCKET/rvrae/_tune; the tune study keeps a folder
    per model under it, which must still name the bucket."""
    from rvrae.study.runner import storage_join

    assert storage_join("s3://b/rvrae/_tune/", "tune", "rvrae") == "s3://b/rvrae/_tune/tune/rvrae"
    assert storage_join("/home/ray/results/_tune", "tune") == "/home/ray/results/_tune/tune"
