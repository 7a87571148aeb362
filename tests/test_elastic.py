"""An elastic worker pool: more workers than GPUs queue, `--workers auto` follows the cluster.

Real Ray (a local one, and a ray.cluster_utils.Cluster whose nodes the test adds and removes
while the campaign runs), real git, and trials that are real subprocesses of the autoresearch
protocol: a train.py that sleeps, then prints a score of its constants.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from cluster import pool
from cluster.campaign import CampaignConfig
from cluster.driver import run_campaign

from conftest import TEST_VOCAB, commit_repo

pytestmark = pytest.mark.slow

TRAIN = '''"""Sleep-only trial: a score of its constants."""
import time

A = 1.0
B = 2.0
time.sleep({sleep})
print("---")
print(f"val_bpb:          {{1.0 + (A - 0.5) ** 2 + (B - 1.0) ** 2:.6f}}")
print("training_seconds: {sleep}")
print("num_steps:        1")
'''


def _repo(path: Path, sleep: float) -> Path:
    return commit_repo(path, {"train.py": TRAIN.format(sleep=sleep), ".gitignore": "runs/\n"})


def _config(repo: Path, tag: str, **kw) -> CampaignConfig:
    base = dict(
        tag=tag,
        repo=repo,
        target="train.py",
        protocol="autoresearch",
        proposer="mutate",
        device="cpu",
        sandbox="off",
        vocab_size=TEST_VOCAB,
        replicates=4,
        seed=1,
        trial_timeout=120,
        hours=0.1,  # a backstop: a pool that never drains fails the test instead of hanging it
    )
    return CampaignConfig.build(**{**base, **kw})


def _overlap(rows: list[dict], since: float = 0.0) -> int:
    """The most trials whose trainer processes ran at the same moment (after `since`)."""
    events = []
    for r in rows:
        if r.get("started") and r.get("ended") and r["ended"] > since:
            events += [(max(r["started"], since), 1), (r["ended"], -1)]
    most = now = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        now += step
        most = max(most, now)
    return most


def test_more_workers_than_gpus_queue_for_them(data, tmp_path, capsys):
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        camp = run_campaign(_config(_repo(tmp_path / "repo", 1.0), "queue", workers=4, rounds=1))
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "2 of 4 workers wait for resources" in out
    rows = camp.ledger.rows()
    candidates = [r for r in rows if r["kind"] == "candidate"]
    assert len(candidates) == 4  # a round is the 4 workers asked for, not the 2 GPUs
    assert all(r["status"] in ("keep", "discard") for r in rows)
    assert _overlap(rows) == 2  # never more at once than there are GPUs, and both used
    from cluster.status import status_text

    assert "4 workers (cpu), 2 ready" in status_text(camp.run_dir, "queue")


def test_workers_auto_follows_the_cluster_of_its_gpu_type_as_it_grows_and_shrinks(
    data, tmp_path, capsys, monkeypatch
):
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setattr(pool, "FOLLOW_SECONDS", 1.0)
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False},
    )
    h100 = {"accelerator_type:H100": 1}  # as Ray labels a GPU node
    c.add_node(num_cpus=1, num_gpus=1, resources=h100)
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    repo = _repo(tmp_path / "repo", 2.0)
    ledger = repo / "runs" / "elastic" / "trials.jsonl"
    box: dict = {}

    def landed() -> list[dict]:
        try:
            return [json.loads(x) for x in ledger.read_text().splitlines() if x.strip()]
        except OSError:
            return []

    def wait_rows(n: int, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if len(landed()) >= n:
                return True
            time.sleep(0.2)
        return False

    # Cluster.add_node must run on the main thread: the campaign runs beside it.
    done: dict = {}

    def campaign():
        try:
            done["camp"] = run_campaign(_config(repo, "elastic", strategy="async", trials=16))
        except BaseException as e:  # re-raised below, on the test's thread
            done["error"] = e

    t = threading.Thread(target=campaign, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 240
        if wait_rows(1, deadline):
            box["grown"] = time.time()
            # GPUs of another type do not count: the campaign follows its workers' type.
            c.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:A100": 1})
            node = c.add_node(num_cpus=1, num_gpus=2, resources=h100)
            # Once trials have run on the bigger cluster for a while, take the new node away.
            if wait_rows(len(landed()) + 9, deadline):
                box["shrunk"] = time.time()
                c.remove_node(node, allow_graceful=False)
        t.join(timeout=400)
    finally:
        ray.shutdown()
        c.shutdown()
    assert not t.is_alive(), "the campaign did not finish"
    if "error" in done:
        raise done["error"]
    camp = done["camp"]
    out = capsys.readouterr().out
    assert "grown" in box and "shrunk" in box, "the cluster was never resized"
    assert "1 -> 3 workers" in out and "3 -> 1 workers" in out
    rows = camp.ledger.rows()
    grown = [r for r in rows if box["grown"] < (r["started"] or 0) < box["shrunk"]]
    assert _overlap(grown, since=box["grown"]) == 3  # the new H100s ran trials, no A100
    assert _overlap(rows, since=box["shrunk"] + 5) <= 1  # and none after it went
    # A trial lost with the removed node was run again on what was left.
    for lost in (r for r in rows if r["status"] == "lost"):
        assert any(
            r["commit_sha"] == lost["commit_sha"]
            and r["kind"] == lost["kind"]
            and r["status"] != "lost"
            and r["trial_id"] > lost["trial_id"]
            for r in rows
        )
    assert sum(1 for r in rows if r["kind"] == "candidate") >= 16
    assert json.loads((repo / "runs" / "elastic" / "config.json").read_text())["workers"] == 1
