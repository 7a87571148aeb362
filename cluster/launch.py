"""Check a cluster-launcher config (ray_config.yaml) offline, before `ray up` spends money.

Two layers, both without cloud credentials or network:
1. Ray's own validation, the chain `ray up` runs before it calls the cloud: the schema
   (a misspelled key, a missing `resources`, a fractional GPU) and the cross-field checks
   (`head_node_type` must be a node type, min_workers must fit max_workers).
2. This project's conventions: the head declares {"CPU": 0} so trials never land on it; each
   GPU worker type declares one `accelerator_type:<X>` so trials can pin a GPU type; every
   `ray start` runs with RAY_AUTH_MODE=token and the token file is mounted on every node; the
   head binds the dashboard to localhost.

Run it: `python -m cluster.launch ray_config.yaml` prints the GPU types the cluster can hold,
or what is wrong. tests/test_launch_config.py runs it on the shipped file.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

TOKEN_MOUNT = "~/.ray/auth_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ACCELERATOR_PREFIX = "accelerator_type:"


def validate_cluster_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Validate a cluster config file; return it as `ray up` will use it (defaults filled in).

    Raises ValueError("<file name>: <what is wrong>") on the first problem found.
    """
    name = Path(path).name
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{name}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"{name}: expected a mapping of cluster settings, got {type(raw).__name__}"
        )
    try:
        config = _ray_validate(raw)
        _check_conventions(config)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return config


def gpu_types(config: dict[str, Any]) -> dict[str, int]:
    """Accelerator type -> the most GPUs of that type the cluster can hold at once.

    For each worker type: GPUs per node x its max_workers (capped by the global max_workers),
    summed over worker types of the same accelerator type. E.g. {"H100": 8, "A100": 8}.
    """
    global_max = config.get("max_workers", 0)
    head = config.get("head_node_type")
    totals: dict[str, int] = {}
    for type_name, node_type in config.get("available_node_types", {}).items():
        resources = node_type.get("resources", {})
        accelerators = [
            k[len(ACCELERATOR_PREFIX) :] for k in resources if k.startswith(ACCELERATOR_PREFIX)
        ]
        if type_name == head or not resources.get("GPU") or len(accelerators) != 1:
            continue
        nodes = min(node_type.get("max_workers", global_max), global_max)
        totals[accelerators[0]] = totals.get(accelerators[0], 0) + resources["GPU"] * nodes
    return totals


def _ray_validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Ray's offline config validation; raises ValueError with where and what.

    Ray's private API (ray.autoscaler._private), kept to this one function: `prepare_config`
    merges the provider's defaults and `validate_config` checks the result, the two calls
    `ray up` makes before any cloud call (ray.autoscaler._private.commands._bootstrap_config).
    If a Ray upgrade moves them, tests/test_launch_config.py fails here, loudly. The schema is first checked on the raw file
    (against the schema file Ray ships) so that a malformed file gets a precise message
    instead of a crash inside prepare_config.
    """
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    # prepare_config logs each default it fills in ("setting max workers for ...") at INFO.
    ray_util_logger = logging.getLogger(prepare_config.__module__)
    level = ray_util_logger.level
    ray_util_logger.setLevel(logging.WARNING)
    try:
        jsonschema.validate(raw, schema)
        config = prepare_config(copy.deepcopy(raw))
        validate_config(config)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "top level"
        raise ValueError(f"{where}: {e.message}") from None
    except (KeyError, TypeError, NotImplementedError, RuntimeError) as e:
        raise ValueError(f"Ray could not read the config: {type(e).__name__}: {e}") from None
    finally:
        ray_util_logger.setLevel(level)
    return config


def _check_conventions(config: dict[str, Any]) -> None:
    node_types = config["available_node_types"]
    head_name = config["head_node_type"]

    head_cpus = node_types[head_name]["resources"].get("CPU")
    if head_cpus != 0:
        raise ValueError(
            f'head node type {head_name!r} must declare resources {{"CPU": 0}} so that no trial '
            f"is scheduled on the node that runs the driver (it declares CPU: {head_cpus})"
        )

    gpu_worker_types = []
    for type_name, node_type in node_types.items():
        resources = node_type["resources"]
        if type_name == head_name or not resources.get("GPU"):
            continue
        accelerators = [k for k in resources if k.startswith(ACCELERATOR_PREFIX)]
        if len(accelerators) != 1:
            raise ValueError(
                f"GPU worker type {type_name!r} must declare exactly one "
                f'"{ACCELERATOR_PREFIX}<X>": 1 in resources (e.g. "{ACCELERATOR_PREFIX}H100": 1), '
                f"so that a campaign can pin its GPU type; it declares {accelerators or 'none'}"
            )
        gpu_worker_types.append(type_name)
    if not gpu_worker_types:
        raise ValueError("no worker type declares GPUs; trials need at least one GPU worker type")

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if _RAY_START.search(c)]
        if not starts:
            raise ValueError(f"{key} has no `ray start` command")
        for command in starts:
            if _auth_mode_at_start(command) != "token":
                raise ValueError(
                    f"{key}: `ray start` runs without token authentication; begin the command "
                    f"with `export RAY_AUTH_MODE=token;` (command: {command!r})"
                )

    for command in config["head_start_ray_commands"]:
        if not _RAY_START.search(command):
            continue
        host = _DASHBOARD_HOST.search(command)
        if host is None or host.group(1).strip("'\"") not in LOOPBACK_HOSTS:
            bound = "nothing explicitly" if host is None else host.group(1)
            raise ValueError(
                "head_start_ray_commands: `ray start --head` must bind the dashboard to localhost "
                f"with --dashboard-host=127.0.0.1 (it binds {bound}); reach it through "
                "`ray dashboard ray_config.yaml`"
            )

    if TOKEN_MOUNT not in config.get("file_mounts", {}):
        raise ValueError(
            f'file_mounts must copy the auth token to every node: "{TOKEN_MOUNT}": "{TOKEN_MOUNT}" '
            "(create it once with `ray get-auth-token --generate`)"
        )


_RAY_START = re.compile(r"\bray\s+start\b")
_AUTH_MODE = re.compile(r"\bRAY_AUTH_MODE=[\"']?([A-Za-z]+)")
_DASHBOARD_HOST = re.compile(r"--dashboard-host[=\s]+(\S+)")


def _auth_mode_at_start(command: str) -> str | None:
    """The RAY_AUTH_MODE value set last before `ray start` in a shell command, if any."""
    before = command[: _RAY_START.search(command).start()]
    modes = _AUTH_MODE.findall(before)
    return modes[-1] if modes else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "ray_config.yaml"
    try:
        config = validate_cluster_config(path)
    except (ValueError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        return 1
    summary = ", ".join(f"{gpu} x{n}" for gpu, n in gpu_types(config).items())
    print(f"{Path(path).name}: ok; GPU types (most GPUs at once): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
