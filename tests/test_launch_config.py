"""The shipped ray_config.yaml passes Ray's offline validation and our conventions; mistakes fail.

Each mistake is made on a deep copy of the real file's settings, written to a temporary
ray_config.yaml and validated as `python -m cluster.launch` would. No cloud, no network.
Run: pytest tests/test_launch_config.py -q
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.launch import gpu_types, validate_cluster_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "ray_config.yaml"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())


@pytest.fixture
def config(shipped: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the shipped settings, free to break."""
    return copy.deepcopy(shipped)


def validate(tmp_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    path = tmp_path / "ray_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return validate_cluster_config(path)


def assert_rejected(tmp_path: Path, config: dict[str, Any], *fragments: str) -> str:
    with pytest.raises(ValueError) as excinfo:
        validate(tmp_path, config)
    message = str(excinfo.value)
    assert message.startswith("ray_config.yaml: ")
    for fragment in fragments:
        assert fragment in message
    return message


def gcp_alternative() -> dict[str, Any]:
    """The commented GCP block of ray_config.yaml, uncommented and parsed."""
    lines = SHIPPED.read_text().splitlines()
    start = lines.index("# provider:")
    end = next(i for i, line in enumerate(lines) if line.startswith("# --- end of GCP"))
    return yaml.safe_load("\n".join(line[2:] for line in lines[start:end]))


def test_shipped_config_validates_as_ray_up_would_use_it():
    config = validate_cluster_config(SHIPPED)
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] == "us-west-2"
    # prepare_config filled in what ray up fills in: the head may launch no extra nodes.
    assert config["available_node_types"]["head"]["max_workers"] == 0
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_shipped_config_offers_one_gpu_type_per_worker_type():
    assert gpu_types(validate_cluster_config(SHIPPED)) == {"H100": 8, "A100": 8, "A10G": 4}


def test_commented_gcp_alternative_validates_too(tmp_path, config):
    config.update(gcp_alternative())
    validated = validate(tmp_path, config)
    assert validated["provider"]["type"] == "gcp"
    assert gpu_types(validated) == {"H100": 8, "A100": 8}


def test_gpu_types_counts_every_node_a_type_may_launch(tmp_path, config):
    config["max_workers"] = 4
    config["available_node_types"]["gpu_a10gx4"]["max_workers"] = 3
    assert gpu_types(validate(tmp_path, config))["A10G"] == 12


def test_misspelled_key_in_a_node_type_fails(tmp_path, config):
    config["available_node_types"]["gpu_h100x8"]["gpus"] = 1
    assert_rejected(tmp_path, config, "available_node_types.gpu_h100x8", "'gpus' was unexpected")


def test_misspelled_top_level_key_fails(tmp_path, config):
    config["setup_command"] = config.pop("setup_commands")
    assert_rejected(tmp_path, config, "'setup_command' was unexpected")


def test_node_type_without_resources_fails(tmp_path, config):
    del config["available_node_types"]["gpu_h100x8"]["resources"]
    assert_rejected(tmp_path, config, "'resources' is a required property")


def test_fractional_gpu_fails(tmp_path, config):
    config["available_node_types"]["gpu_h100x8"]["resources"]["GPU"] = 0.5
    assert_rejected(tmp_path, config, "resources.GPU", "0.5 is not of type 'integer'")


def test_head_node_type_missing_from_node_types_fails(tmp_path, config):
    config["head_node_type"] = "head_node"
    assert_rejected(tmp_path, config, "head_node_type", "available_node_types")


def test_min_workers_beyond_the_global_cap_fails(tmp_path, config):
    for node_type in ("gpu_a100x8", "gpu_a10gx4"):
        config["available_node_types"][node_type]["min_workers"] = 1
    assert_rejected(tmp_path, config, "max_workers")


def test_head_that_offers_cpus_to_trials_fails(tmp_path, config):
    config["available_node_types"]["head"]["resources"] = {"CPU": 8}
    assert_rejected(tmp_path, config, "'head'", '{"CPU": 0}', "CPU: 8")


def test_gpu_worker_type_without_accelerator_type_fails(tmp_path, config):
    del config["available_node_types"]["gpu_a100x8"]["resources"]["accelerator_type:A100"]
    assert_rejected(tmp_path, config, "'gpu_a100x8'", "accelerator_type:")


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_start_without_token_auth_fails(tmp_path, config, key):
    config[key] = [c.replace("export RAY_AUTH_MODE=token; ", "") for c in config[key]]
    assert_rejected(tmp_path, config, key, "RAY_AUTH_MODE=token")


def test_token_auth_switched_off_before_ray_start_fails(tmp_path, config):
    config["worker_start_ray_commands"] = [
        c.replace("ray start", "RAY_AUTH_MODE=disabled ray start")
        for c in config["worker_start_ray_commands"]
    ]
    assert_rejected(tmp_path, config, "worker_start_ray_commands", "without token authentication")


def test_dashboard_bound_to_all_interfaces_fails(tmp_path, config):
    config["head_start_ray_commands"] = [
        c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
        for c in config["head_start_ray_commands"]
    ]
    assert_rejected(tmp_path, config, "binds 0.0.0.0", "--dashboard-host=127.0.0.1")


def test_omitted_start_commands_fall_back_to_rays_unsafe_defaults_and_fail(tmp_path, config):
    # Ray's AWS defaults start the head without token auth and with --dashboard-host=0.0.0.0.
    del config["head_start_ray_commands"]
    assert_rejected(tmp_path, config, "head_start_ray_commands", "RAY_AUTH_MODE=token")


def test_token_not_mounted_on_nodes_fails(tmp_path, config):
    del config["file_mounts"]["~/.ray/auth_token"]
    assert_rejected(tmp_path, config, "file_mounts", "ray get-auth-token --generate")


def test_project_checkout_is_synced_with_its_git_history(shipped):
    assert shipped["file_mounts"]["~/autoresearch"] == "."
    assert not any(".git" == p.strip("/") for p in shipped.get("rsync_exclude") or [])


def test_not_a_mapping_fails_clearly(tmp_path):
    path = tmp_path / "ray_config.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match=r"^ray_config.yaml: expected a mapping"):
        validate_cluster_config(path)


def test_command_line_check_reports_ok_or_the_problem(tmp_path, config):
    ok = subprocess.run(
        [sys.executable, "-m", "cluster.launch", str(SHIPPED)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ray_config.yaml: ok" in ok.stdout and "H100 x8" in ok.stdout

    config["available_node_types"]["gpu_h100x8"]["resources"]["GPU"] = 0.5
    broken = tmp_path / "ray_config.yaml"
    broken.write_text(yaml.safe_dump(config))
    bad = subprocess.run(
        [sys.executable, "-m", "cluster.launch", str(broken)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 1
    assert "0.5 is not of type 'integer'" in bad.stderr
