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
from cluster.campaign import CampaignConfig
from cluster.driver import run_campaign
from cluster.pool import ResourceError

from conftest import TEST_VOCAB
from test_campaign import PLANTED, make_repo

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


def _alive_actor_nodes() -> dict[str, int]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "TrialActor"), ("state", "=", "ALIVE")])
    return {a.node_id: a.pid for a in actors}


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


def _config(repo: Path, tag: str, **kw) -> CampaignConfig:
    return CampaignConfig(
        tag=tag,
        repo=repo,
        budget="20steps",
        vocab_size=TEST_VOCAB,
        device="cpu",
        seed=1,
        workers=2,
        trial_timeout=120,
        **kw,
    )


def test_trials_spread_over_nodes_and_a_dead_node_loses_nothing(cluster, tmp_path):
    c, nodes = cluster
    repo = make_repo(tmp_path / "repo", **PLANTED)
    by_id = {n.node_id: n for n in nodes}

    def kill_a_busy_node():
        node_id = next(iter(_alive_actor_nodes()))
        c.remove_node(by_id[node_id], allow_graceful=False)
        return node_id

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
        pid = next(iter(_alive_actor_nodes().values()))
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
