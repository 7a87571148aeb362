"""Campaigns on a local Ray with fake GPUs: real git, real trials, real merges and resumes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cluster import gitops
from cluster.driver import run_campaign
from cluster.export import load_results

from conftest import (
    PLANTED,
    TEST_VOCAB,
    kill_driver,
    ledger_rows,
    make_repo,
    set_constants,
    start_cli,
)
from conftest import campaign_config as config

pytestmark = pytest.mark.slow


def test_mutate_campaign_finds_and_merges_a_real_improvement(tmp_path, ray_cluster):
    repo = make_repo(tmp_path / "repo", **PLANTED)
    camp = run_campaign(config(repo, "e2e", workers=2, per_round=4, rounds=3))
    rows = camp.ledger.rows()
    merged = [r for r in rows if r["merged"]]
    assert merged, "no improvement merged"
    base_runs = [
        r["val_bpb"] for r in rows if r["kind"] == "baseline" and r["commit_sha"] == camp.base_sha
    ]
    assert len(base_runs) >= 2  # the noise was measured before any candidate
    assert merged[-1]["val_bpb"] < min(base_runs)
    # The branch fast-forwarded exactly to the last confirmed winner, on top of the base.
    head = gitops.rev_parse(repo, "autoresearch/e2e")
    assert head == merged[-1]["commit_sha"]
    assert gitops.is_ancestor(repo, camp.base_sha, head)
    for r in merged:
        assert r["kind"] == "confirm" and r["status"] == "keep"
        assert r["incumbent_bpb"] - r["val_bpb"] > r["noise"]
    # The user's checkout is untouched: the driver never checks anything out.
    assert gitops.git(repo, "status", "--porcelain") == ""
    # The export holds every ledger row, ranked.
    df = load_results(camp.run_dir)
    assert sorted(df["trial_id"]) == sorted(r["trial_id"] for r in rows)
    ranked = df.dropna(subset=["rank"])
    assert list(ranked["val_bpb"]) == sorted(ranked["val_bpb"])
    tsv = (camp.run_dir / "results.tsv").read_text().splitlines()
    assert tsv[0].startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription")
    assert len(tsv) == len(rows) + 1


def _queue(folder: Path, name: str, source: str, new: str, desc: str) -> None:
    from cluster.patches import make_patch

    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"# {desc}\n" + make_patch(source, new, "trainer/train.py"))


def test_gate_merges_a_real_improvement_but_not_a_null_change(tmp_path, ray_cluster):
    repo = make_repo(tmp_path / "repo", **PLANTED)
    source = (repo / "trainer" / "train.py").read_text()
    queue = repo / "queue"
    _queue(
        queue,
        "1-null.patch",
        source,
        set_constants(source, GRAD_CLIP=1.0000001),
        "null: clip threshold moved by 1e-7",
    )
    _queue(
        queue,
        "2-real.patch",
        source,
        set_constants(source, LEARNING_RATE=0.002, EMBEDDING_LR=0.01, UNEMBEDDING_LR=0.002),
        "real: learning rates 5x up",
    )
    camp = run_campaign(
        config(repo, "gate", workers=2, per_round=2, rounds=1, proposer="queue:queue")
    )
    rows = {r["description"]: r for r in camp.ledger.rows() if r["kind"] == "confirm"}
    cands = {r["description"]: r for r in camp.ledger.rows() if r["kind"] == "candidate"}
    assert set(cands) == {"null: clip threshold moved by 1e-7", "real: learning rates 5x up"}
    assert not cands["null: clip threshold moved by 1e-7"]["merged"]
    assert "null: clip threshold moved by 1e-7" not in rows  # never even got to confirmation
    assert rows["real: learning rates 5x up"]["merged"]
    assert (
        gitops.rev_parse(repo, "autoresearch/gate")
        == rows["real: learning rates 5x up"]["commit_sha"]
    )
    assert sorted(p.name for p in (queue / "done").iterdir()) == ["1-null.patch", "2-real.patch"]


def test_crashing_hanging_and_broken_proposals_are_recorded_and_the_campaign_goes_on(
    tmp_path, ray_cluster
):
    repo = make_repo(tmp_path / "repo")
    source = (repo / "trainer" / "train.py").read_text()
    queue = repo / "queue"
    entry = "def train(ctx):\n"
    _queue(
        queue,
        "1-crash.patch",
        source,
        source.replace(entry, entry + "    raise RuntimeError('planted crash')\n"),
        "crash",
    )
    _queue(
        queue,
        "2-hang.patch",
        source,
        source.replace(entry, entry + "    import time\n    time.sleep(3600)\n"),
        "hang",
    )
    (queue / "3-broken.patch").write_text(
        "# broken\n--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -1,2 +1,2 @@\n"
        "-this line is not in train.py\n+neither is this\n"
    )
    _queue(queue, "4-good.patch", source, set_constants(source, WARMDOWN_FRAC=0.6), "good")
    camp = run_campaign(
        config(
            repo,
            "faults",
            workers=2,
            per_round=3,
            rounds=1,
            proposer="queue:queue",
            trial_timeout=25,
        )
    )
    by_desc = {r["description"]: r for r in camp.ledger.rows() if r["kind"] == "candidate"}
    assert by_desc["crash"]["status"] == "crash"
    assert "planted crash" in by_desc["crash"]["error"]
    assert by_desc["hang"]["status"] == "timeout"
    assert by_desc["broken"]["status"] == "invalid"
    assert "does not apply" in by_desc["broken"]["error"]
    assert by_desc["good"]["val_bpb"] is not None
    assert Path(by_desc["crash"]["log_path"]).read_text().count("planted crash") >= 1


def _run_cli(repo: Path, tag: str, *extra: str) -> subprocess.Popen:
    args = ["run", "--tag", tag, "--repo", str(repo), "--budget", "20steps"]
    args += ["--vocab-size", str(TEST_VOCAB), "--device", "cpu", "--workers", "2"]
    return start_cli(repo, *args, "--rounds", "2", "--seed", "3", *extra)


def test_a_killed_driver_resumes_with_nothing_lost(tmp_path, data):
    repo = make_repo(tmp_path / "repo", **PLANTED)
    first = _run_cli(repo, "resume")
    deadline = time.monotonic() + 240
    while len(ledger_rows(repo, "resume")) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(ledger_rows(repo, "resume")) >= 3, first.communicate()[0]
    kill_driver(first)  # the driver and everything it started itself
    before = ledger_rows(repo, "resume")
    inflight = json.loads((repo / "runs" / "resume" / "inflight.json").read_text())
    # The trials it had started must not outlive it (nothing keeps a GPU busy forever).
    time.sleep(3)
    leftover = subprocess.run(
        ["pgrep", "-f", f"trainer.harness.*{tmp_path}"], capture_output=True, text=True
    ).stdout.split()
    assert leftover == []

    second = _run_cli(repo, "resume")
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out
    after = ledger_rows(repo, "resume")
    assert after[: len(before)] == before  # nothing recorded before the kill was lost
    ids = [r["trial_id"] for r in after]
    assert len(ids) == len(set(ids))
    lost = [r for r in after[len(before) :] if r["status"] == "lost"]
    assert {r["trial_id"] for r in lost} == set(inflight) - {r["trial_id"] for r in before}
    merged = [r for r in after if r["merged"]]
    head = gitops.rev_parse(repo, "autoresearch/resume")
    config = json.loads((repo / "runs" / "resume" / "config.json").read_text())
    assert head == (merged[-1]["commit_sha"] if merged else config["base_sha"])
    tsv = (repo / "runs" / "resume" / "results.tsv").read_text().splitlines()
    assert len(tsv) == len(after) + 1


def test_resume_refuses_a_different_budget(tmp_path, data):
    repo = make_repo(tmp_path / "repo")
    (repo / "runs" / "locked").mkdir(parents=True)
    (repo / "runs" / "locked" / "config.json").write_text(
        json.dumps(
            {
                "budget": "300s",
                "gpu_type": None,
                "dataset": "builtin",
                "vocab_size": TEST_VOCAB,
                "target": "trainer/train.py",
                "protocol": "referee",
                "device_kind": "cpu",
                "base_sha": gitops.rev_parse(repo, "HEAD"),
            }
        )
    )
    proc = _run_cli(repo, "locked")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2
    assert "budget: campaign has '300s', this run asks '20steps'" in out
