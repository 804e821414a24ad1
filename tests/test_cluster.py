"""cluster/cluster.yaml is checked offline with Ray's own validator (ray-schema.json after
the autoscaler fills in its provider defaults), plus what SPEC §5 asks of it."""

from __future__ import annotations

import copy
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
