"""Multi-node campaigns and faults, on one machine with ray.cluster_utils.Cluster."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from cluster import gitops
from cluster.driver import run_campaign
from cluster.pool import ResourceError

from conftest import PLANTED, campaign_config, make_repo

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(data, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False},
    )
    nodes = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(3)]
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def _running_trial_actors() -> list[tuple[int, int]]:
    """(pid, parent pid) of actor processes running a trial (Ray sets their process title)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray::TrialActor.run"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                out.append((int(pid), int(f.read().rsplit(")", 1)[1].split()[1])))
        except (OSError, ValueError):
            continue
    return out


def _inject_when_running(run_dir: Path, fault, min_inflight: int = 2, delay: float = 4.0):
    """Call fault() once `min_inflight` trials have been running for `delay` seconds."""
    box = {}

    def watch():
        journal = run_dir / "inflight.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                running = json.loads(journal.read_text())
            except (OSError, ValueError):
                running = {}
            if len(running) >= min_inflight:
                time.sleep(delay)
                box["at"] = time.time()
                box["what"] = fault()
                return
            time.sleep(0.2)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return box


def _config(repo: Path, tag: str, **kw):
    return campaign_config(repo, tag, workers=2, **kw)


def test_trials_spread_over_nodes_and_a_dead_node_loses_nothing(cluster, tmp_path):
    c, nodes = cluster
    repo = make_repo(tmp_path / "repo", **PLANTED)

    def kill_a_busy_node():
        # The node whose raylet is the parent of an actor that is running a trial.
        raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
        node = next(raylets[ppid] for _, ppid in _running_trial_actors() if ppid in raylets)
        c.remove_node(node, allow_graceful=False)
        return node.node_id

    box = _inject_when_running(repo / "runs" / "nodes", kill_a_busy_node)
    camp = run_campaign(_config(repo, "nodes", rounds=1, per_round=2))
    rows = camp.ledger.rows()
    assert "what" in box, "the fault was never injected"
    lost = [r for r in rows if r["status"] == "lost"]
    assert lost and all("worker died" in r["error"] for r in lost)
    reruns = [
        r
        for r in rows
        if r["status"] != "lost"
        and any(
            r["commit_sha"] == x["commit_sha"]
            and r["kind"] == x["kind"]
            and r["trial_id"] > x["trial_id"]
            for x in lost
        )
    ]
    assert len(reruns) >= len(lost)  # each lost trial ran again and finished
    assert all(r["val_bpb"] is not None for r in reruns)
    # Node-local clones: one per node that ran trials, none shared.
    clones = list(
        (Path(os.environ["AUTORESEARCH_CACHE"]) / "clones").glob(
            f"nodes-{camp.base_sha[:12]}/*.git"
        )
    )
    assert len(clones) >= 2
    detect = min(r["recorded"] for r in lost) - box["at"]
    print(f"dead node detected and its trial recorded lost after {detect:.1f}s")
    assert gitops.rev_parse(repo, "autoresearch/nodes") == (
        [r for r in rows if r["merged"]][-1]["commit_sha"]
        if any(r["merged"] for r in rows)
        else camp.base_sha
    )


def test_a_killed_actor_process_is_recorded_lost_and_rerun(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo")

    def kill_an_actor():
        pid = _running_trial_actors()[0][0]
        os.kill(pid, signal.SIGKILL)
        return pid

    box = _inject_when_running(repo / "runs" / "actor", kill_an_actor)
    camp = run_campaign(_config(repo, "actor", rounds=1, per_round=2))
    rows = camp.ledger.rows()
    assert "what" in box
    lost = [r for r in rows if r["status"] == "lost"]
    assert len(lost) >= 1
    assert sum(1 for r in rows if r["kind"] == "baseline" and r["val_bpb"] is not None) >= 2


def test_an_unknown_gpu_type_is_refused_with_the_types_the_cluster_has(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(ResourceError, match="no GPU of type H100 in the cluster"):
        run_campaign(_config(repo, "typed", rounds=1, gpu_type="H100"))


def _queued_repo(path: Path) -> Path:
    from cluster.patches import make_patch

    from conftest import set_constants

    repo = make_repo(path, **PLANTED)
    src = (repo / "trainer" / "train.py").read_text()
    (repo / "queue").mkdir()
    for name, new in (
        ("1-lr.patch", set_constants(src, LEARNING_RATE=0.002)),
        ("2-clip.patch", set_constants(src, GRAD_CLIP=0.5)),
    ):
        (repo / "queue" / name).write_text(make_patch(src, new, "trainer/train.py"))
    return repo


def _outcome(camp) -> tuple[dict, str]:
    rows = camp.ledger.rows()
    scores = {(r["kind"], r["description"], r["seed"]): r["val_bpb"] for r in rows}
    tree = gitops.git(camp.repo, "rev-parse", f"{camp.branch}^{{tree}}")
    return scores, tree


def test_a_multi_node_run_matches_a_single_node_run(data, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False},
    )
    for _ in range(2):
        c.add_node(num_cpus=1, num_gpus=1)
    ray.init(address=c.address, log_to_driver=False)
    try:
        multi = run_campaign(
            _config(
                _queued_repo(tmp_path / "multi"),
                "same",
                rounds=1,
                per_round=2,
                proposer="queue:queue",
            )
        )
        nodes = {r["node"] for r in multi.ledger.rows()}
    finally:
        ray.shutdown()
        c.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        single = run_campaign(
            _config(
                _queued_repo(tmp_path / "single"),
                "same",
                rounds=1,
                per_round=2,
                proposer="queue:queue",
            )
        )
    finally:
        ray.shutdown()
    clones = list(
        (Path(os.environ["AUTORESEARCH_CACHE"]) / "clones").glob(
            f"same-{multi.base_sha[:12]}/*.git"
        )
    )
    assert len(clones) >= 2 and nodes  # each node made its own clone
    assert _outcome(multi) == _outcome(single)
