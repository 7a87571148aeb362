"""The async strategy on a local Ray with fake GPUs: real git, real Ray, seconds-long trials.

Trials use the autoresearch protocol with a train.py that sleeps briefly and prints a score
computed from its constants (as benchmarks/orchestration.py does), so every gain is planted
exactly: R and S are real improvements (0.1 each), P and Q near-misses (2e-4 each: over one
noise std at the 1e-4 floor, under the gate of ~3.5e-4) that are worth 0.01 more together,
UNUSED changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster import gitops
from cluster.campaign import CampaignConfig
from cluster.driver import run_campaign
from cluster.patches import make_patch

from conftest import commit_repo, kill_driver, ledger_rows, start_cli

TRAIN = '''"""Sleep-only trial: a score of its constants."""
import random
import time

NOISE = {noise}
SLEEP = 0.5

P = 1.0
# spacer: P and Q sit on lines far enough apart for a three-way merge
# spacer
# spacer
Q = 1.0
# spacer
# spacer
R = 1.0
# spacer
# spacer
S = 1.0
# spacer
# spacer
UNUSED = 1.0


def wait():
    pass


wait()
time.sleep(SLEEP)
score = 1.0 - 0.1 * (R != 1.0) - 0.1 * (S != 1.0)
score -= 0.0002 * (P != 1.0) + 0.0002 * (Q != 1.0) + 0.01 * (P != 1.0 and Q != 1.0)
score += random.gauss(0, NOISE) if NOISE else 0.0
print("---")
print(f"val_bpb:          {{score:.6f}}")
print(f"training_seconds: {{SLEEP:.1f}}")
print("num_steps:        1")
'''


def _repo(path: Path, noise: float = 0.0) -> tuple[Path, str]:
    commit_repo(path, {"train.py": TRAIN.format(noise=noise), ".gitignore": "runs/\nqueue/\n"})
    return path, (path / "train.py").read_text()


def _queue(repo: Path, name: str, old: str, new: str, desc: str) -> None:
    folder = repo / "queue"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"# {desc}\n" + make_patch(old, new, "train.py"))


def _config(repo: Path, tag: str, **kw) -> CampaignConfig:
    base = dict(
        tag=tag,
        repo=repo,
        target="train.py",
        protocol="autoresearch",
        strategy="async",
        proposer="queue:queue",
        device="cpu",
        sandbox="off",
        workers=2,
        replicates=4,
        seed=1,
        trial_timeout=120,
        hours=0.05,  # a backstop: a broken strategy fails the test instead of hanging it
    )
    return CampaignConfig.build(**{**base, **kw})


def _source(repo: Path, sha: str) -> str:
    return gitops.read_blob(repo, sha, "train.py")


def _parent(repo: Path, sha: str) -> str:
    return gitops.git(repo, "rev-parse", f"{sha}^").strip()


def _check_merges(repo: Path, camp, rows: list[dict]) -> None:
    """Every merge moved the branch to a commit that was itself screened on the incumbent."""
    inc = camp.base_sha
    for m in (r for r in rows if r["merged"]):
        assert m["kind"] == "confirm" and m["status"] == "keep"
        assert m["parent_sha"] == inc
        assert _parent(repo, m["commit_sha"]) == inc
        screened = [
            r for r in rows if r["kind"] == "candidate" and r["commit_sha"] == m["commit_sha"]
        ]
        assert screened and all(r["parent_sha"] == inc for r in screened)
        inc = m["commit_sha"]
    assert gitops.rev_parse(repo, camp.branch) == inc


@pytest.mark.slow
def test_async_merges_a_planted_improvement_but_not_a_null_change(tmp_path, ray_cluster):
    repo, src = _repo(tmp_path / "repo")
    _queue(repo, "1-null.patch", src, src.replace("UNUSED = 1.0", "UNUSED = 2.0"), "null")
    _queue(repo, "2-real.patch", src, src.replace("R = 1.0", "R = 2.0"), "real")
    camp = run_campaign(_config(repo, "planted", trials=2))
    rows = camp.ledger.rows()
    cands = {r["description"]: r for r in rows if r["kind"] == "candidate"}
    assert set(cands) == {"null", "real"}
    merged = [r for r in rows if r["merged"]]
    assert [r["description"] for r in merged] == ["real"]
    assert merged[0]["commit_sha"] == cands["real"]["commit_sha"]
    assert cands["real"]["parent_sha"] == camp.base_sha
    # The branch fast-forwarded to the very commit that was screened and confirmed on its parent.
    head = gitops.rev_parse(repo, camp.branch)
    assert head == cands["real"]["commit_sha"] and _parent(repo, head) == camp.base_sha
    assert "R = 2.0" in _source(repo, head)
    assert not any(r["kind"] == "confirm" and r["description"] == "null" for r in rows)
    _check_merges(repo, camp, rows)
    # The noise was measured first.
    assert [r["kind"] for r in rows[:4]] == ["baseline"] * 4
    assert gitops.git(repo, "status", "--porcelain") == ""


@pytest.mark.slow
def test_async_does_not_merge_pure_noise(tmp_path, ray_cluster):
    repo, src = _repo(tmp_path / "repo", noise=0.01)
    for i, value in enumerate((2.0, 3.0, 0.5, 0.25, 5.0, 7.0)):
        new = src.replace("UNUSED = 1.0", f"UNUSED = {value}")
        _queue(repo, f"{i}-null.patch", src, new, f"null {value}")
    camp = run_campaign(_config(repo, "noise", trials=6))
    rows = camp.ledger.rows()
    cands = [r for r in rows if r["kind"] == "candidate"]
    assert len(cands) == 6 and all(r["val_bpb"] is not None for r in cands)
    assert not any(r["merged"] for r in rows)
    assert gitops.rev_parse(repo, camp.branch) == camp.base_sha
    assert camp.noise() > 0.001  # the noise was real, and measured


@pytest.mark.slow
def test_a_stale_winner_is_rerun_on_the_new_incumbent(tmp_path, ray_cluster):
    repo, src = _repo(tmp_path / "repo")
    _queue(repo, "1-r.patch", src, src.replace("R = 1.0", "R = 2.0"), "raise R")
    # S's trial holds until the branch has moved (R merged): it finishes with a stale parent.
    hold = (
        "def wait():\n"
        "    import subprocess\n"
        f"    for _ in range(600):\n"
        f"        ref = subprocess.run(['git', '-C', {str(repo)!r}, 'rev-parse', "
        f"'autoresearch/stale'], capture_output=True, text=True).stdout.strip()\n"
        f"        if ref and ref != {{base!r}}:\n"
        "            return\n"
        "        time.sleep(0.2)\n"
    )
    base = gitops.rev_parse(repo, "HEAD")
    new = src.replace("S = 1.0", "S = 2.0").replace(
        "def wait():\n    pass\n", hold.format(base=base)
    )
    _queue(repo, "2-s.patch", src, new, "raise S")
    camp = run_campaign(_config(repo, "stale", trials=2))
    rows = camp.ledger.rows()
    by_desc = {r["description"]: r for r in rows if r["kind"] == "candidate"}
    first_s = by_desc["raise S"]
    r_merge = next(r for r in rows if r["merged"] and r["description"] == "raise R")
    assert first_s["parent_sha"] == camp.base_sha
    assert first_s["incumbent_bpb"] - first_s["val_bpb"] > 0.05  # it beat its parent
    # The stale winner was never merged or confirmed as it was: it ran again on the new incumbent.
    assert not any(r["commit_sha"] == first_s["commit_sha"] and r["merged"] for r in rows)
    assert not any(
        r["kind"] == "confirm" and r["commit_sha"] == first_s["commit_sha"] for r in rows
    )
    rerun = [
        r
        for r in rows
        if r["kind"] == "candidate"
        and r["description"].startswith(f"re-run of {first_s['trial_id']}")
    ]
    assert len(rerun) == 1
    assert rerun[0]["parent_sha"] == r_merge["commit_sha"]
    assert _parent(repo, rerun[0]["commit_sha"]) == r_merge["commit_sha"]
    text = _source(repo, rerun[0]["commit_sha"])
    assert "R = 2.0" in text and "S = 2.0" in text
    # The new incumbent was measured (its own runs were selected by luck) before the re-run
    # was judged against it.
    new_inc = [
        r for r in rows if r["kind"] == "baseline" and r["commit_sha"] == r_merge["commit_sha"]
    ]
    assert len(new_inc) >= 2
    assert rows.index(new_inc[1]) < rows.index(
        next(
            r for r in rows if r["kind"] == "confirm" and r["commit_sha"] == rerun[0]["commit_sha"]
        )
    )
    # The re-run won on its own merits and the branch holds both changes, each run on its parent.
    head = gitops.rev_parse(repo, camp.branch)
    assert head == rerun[0]["commit_sha"]
    _check_merges(repo, camp, rows)


@pytest.mark.slow
def test_two_near_misses_are_combined_into_a_validated_trial(tmp_path, ray_cluster):
    repo, src = _repo(tmp_path / "repo")
    _queue(repo, "1-p.patch", src, src.replace("P = 1.0", "P = 2.0"), "nudge P")
    _queue(repo, "2-q.patch", src, src.replace("Q = 1.0", "Q = 2.0"), "nudge Q")
    camp = run_campaign(_config(repo, "combine", trials=3))
    rows = camp.ledger.rows()
    cands = {r["description"]: r for r in rows if r["kind"] == "candidate"}
    p, q = cands["nudge P"], cands["nudge Q"]
    for near in (p, q):  # each beat the incumbent, by less than the gate asks: near-misses
        assert 0.00015 < near["incumbent_bpb"] - near["val_bpb"] < 0.00025
        assert not any(
            r["kind"] == "confirm" and r["commit_sha"] == near["commit_sha"] for r in rows
        )
    combos = [r for r in rows if r["proposer"] == "combine" and r["kind"] == "candidate"]
    assert len(combos) == 1
    combo = combos[0]
    assert combo["kind"] == "candidate" and combo["status"] != "invalid"
    assert p["trial_id"] in combo["description"] and q["trial_id"] in combo["description"]
    assert combo["parent_sha"] == camp.base_sha
    text = _source(repo, combo["commit_sha"])
    assert "P = 2.0" in text and "Q = 2.0" in text
    # Its own trial passed the gate and a confirmation before it merged.
    assert combo["incumbent_bpb"] - combo["val_bpb"] > 0.005
    merged = [r for r in rows if r["merged"]]
    assert [r["commit_sha"] for r in merged] == [combo["commit_sha"]]
    _check_merges(repo, camp, rows)


def _offline(tmp_path: Path, strategy: str = "async", **kw):
    """A strategy over a real campaign and git repo, on the simulated executor (no Ray)."""
    from cluster.campaign import Campaign
    from cluster.driver import start_pipeline
    from cluster.loop import Driver
    from cluster.proposers.mutate import MutateProposer
    from cluster.simulate import SimExecutor
    from cluster.strategy import build_strategy

    repo, src = _repo(tmp_path / "repo")
    cfg = _config(repo, "offline", strategy=strategy, **kw)
    camp = Campaign(cfg, say=lambda msg: None)
    strat = build_strategy(cfg, 2)
    camp.setup("cpu", camp.protocol_budget(), 2, strat.lines, strat.settings())
    pipeline = start_pipeline(camp, [(MutateProposer(), 1.0)], 2, inline=True)
    driver = Driver(camp, SimExecutor(2, lambda spec, rng: 1.0), pipeline, strat)
    return repo, src, camp, strat, driver.view


def _merge(camp, source: str, desc: str) -> str:
    """Move the campaign's line to a new commit, as a merge would."""
    line = camp.lines[0]
    sha = gitops.commit_file(camp.repo, line.head, "train.py", source, desc)
    camp.merge(line, sha, {"trial_id": "t0001", "val_bpb": 0.9, "description": desc})
    return sha


def _row(repo: Path, parent: str, source: str, tid: str, desc: str) -> dict:
    sha = gitops.commit_file(repo, parent, "train.py", source, desc)
    return dict(trial_id=tid, parent_sha=parent, commit_sha=sha, description=desc, val_bpb=0.9)


def test_a_stale_winner_that_no_longer_applies_is_recorded_invalid_with_the_reason(tmp_path):
    repo, src, camp, strat, view = _offline(tmp_path)
    base, line = camp.incumbent, camp.lines[0]
    merged = _merge(camp, src.replace("R = 1.0", "R = 2.0"), "R")
    clash = _row(repo, base, src.replace("R = 1.0", "R = 3.0"), "t0042", "R to 3")
    assert strat.rerun(view, line, clash) is None
    bad = camp.rows[-1]
    assert bad["status"] == "invalid" and bad["kind"] == "candidate"
    assert "stale winner t0042" in bad["error"] and "no longer applies" in bad["error"]
    assert bad["parent_sha"] == merged and bad["description"].startswith("re-run of t0042")
    # A change on other lines re-applies, even next to the merged one: a new candidate there.
    fine = _row(repo, base, src.replace("S = 1.0", "S = 2.0"), "t0043", "S to 2")
    spec = strat.rerun(view, line, fine)
    assert spec.kind == "candidate" and spec.parent_sha == merged
    text = _source(repo, spec.commit_sha)
    assert "R = 2.0" in text and "S = 2.0" in text
    assert _parent(repo, spec.commit_sha) == merged


def test_only_near_misses_on_different_lines_are_combined(tmp_path):
    repo, src, camp, strat, view = _offline(tmp_path)
    base, line, st = camp.incumbent, camp.lines[0], strat.state[0]
    p = _row(repo, base, src.replace("P = 1.0", "P = 2.0"), "t0010", "P")
    p2 = _row(repo, base, src.replace("P = 1.0", "P = 3.0"), "t0011", "P again")
    q = _row(repo, base, src.replace("Q = 1.0", "Q = 2.0"), "t0012", "Q")
    strat.near_miss(view, line, p)
    strat.near_miss(view, line, p2)  # same line as p: no combination
    assert not st.combines
    strat.near_miss(view, line, q)
    assert [(a["trial_id"], b["trial_id"]) for a, b in st.combines] == [("t0010", "t0012")]
    spec = strat.combine(view, line, *st.combines.popleft())
    assert spec.kind == "candidate" and spec.parent_sha == base
    entry = camp.inflight[spec.trial_id]["proposal"]
    assert entry["proposer"] == "combine" and "t0010" in entry["description"]
    assert "t0012" in entry["description"]
    text = _source(repo, spec.commit_sha)
    assert "P = 2.0" in text and "Q = 2.0" in text
    # Validated like any proposal: the same stack again is a duplicate, recorded invalid.
    assert strat.combine(view, line, p, q) is None
    assert camp.rows[-1]["status"] == "invalid" and "duplicate" in camp.rows[-1]["error"]


@pytest.mark.slow
def test_a_killed_async_driver_resumes_with_nothing_lost(tmp_path, data):
    import json
    import time

    repo, src = _repo(tmp_path / "repo")
    (repo / "train.py").write_text(src.replace("SLEEP = 0.5", "SLEEP = 2.0"))
    gitops.git(repo, "commit", "-qam", "slower trials")
    src = (repo / "train.py").read_text()
    # Enough proposals for both runs (the first one's pipeline may have taken a few ahead).
    _queue(repo, "0-r.patch", src, src.replace("R = 1.0", "R = 2.0"), "raise R")
    for i in range(1, 10):
        new = src.replace("UNUSED = 1.0", f"UNUSED = {i + 1}.0")
        _queue(repo, f"{i}-null.patch", src, new, f"null {i}")
    cmd = ["run", "--tag", "resume", "--repo", str(repo)]
    cmd += ["--target", "train.py", "--protocol", "autoresearch", "--strategy", "async"]
    cmd += ["--proposer", "queue:queue", "--device", "cpu", "--sandbox", "off"]
    cmd += ["--workers", "2", "--replicates", "4", "--trials", "2"]
    cmd += ["--hours", "0.05"]

    def rows():
        return ledger_rows(repo, "resume")

    first = start_cli(repo, *cmd)
    deadline = time.monotonic() + 180
    while not any(r["kind"] == "candidate" for r in rows()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert any(r["kind"] == "candidate" for r in rows()), first.communicate()[0]
    kill_driver(first)
    before = rows()
    inflight = json.loads((repo / "runs" / "resume" / "inflight.json").read_text())
    assert set(inflight) - {r["trial_id"] for r in before}  # something was running

    second = start_cli(repo, *cmd)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    after = rows()
    assert after[: len(before)] == before
    ids = [r["trial_id"] for r in after]
    assert len(ids) == len(set(ids))
    lost = [r for r in after[len(before) :] if r["status"] == "lost"]
    running = {t for t, e in inflight.items() if not e.get("queued")}
    assert {r["trial_id"] for r in lost} == running - {r["trial_id"] for r in before}
    assert not any(r["trial_id"] in set(inflight) - running for r in after)  # queued: never ran
    # Lost trials still on the incumbent ran again (same commit, same kind) after the resume.
    for r in lost:
        again = [
            x
            for x in after[len(before) :]
            if x["commit_sha"] == r["commit_sha"]
            and x["kind"] == r["kind"]
            and x["status"] != "lost"
        ]
        assert again or r["parent_sha"] != before[0]["commit_sha"], r["trial_id"]
    # Every merge moved the branch from the incumbent of the day to a commit screened on it.
    config = json.loads((repo / "runs" / "resume" / "config.json").read_text())
    inc = config["base_sha"]
    for m in (r for r in after if r["merged"]):
        assert m["parent_sha"] == inc and _parent(repo, m["commit_sha"]) == inc
        inc = m["commit_sha"]
    assert gitops.rev_parse(repo, "autoresearch/resume") == inc


def _ours(pid: int) -> bool:
    """Whether pid descends from this test process (its Ray), not from another run's Ray."""
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
    return False


@pytest.mark.slow
def test_a_candidate_lost_with_its_worker_is_rerun_and_gated(tmp_path, ray_cluster):
    import json
    import signal
    import threading
    import time

    repo, src = _repo(tmp_path / "repo")
    (repo / "train.py").write_text(src.replace("SLEEP = 0.5", "SLEEP = 3.0"))
    gitops.git(repo, "commit", "-qam", "slower trials")
    src = (repo / "train.py").read_text()
    _queue(repo, "1-real.patch", src, src.replace("R = 1.0", "R = 2.0"), "real")
    journal = repo / "runs" / "lostone" / "inflight.json"
    killed = {}

    def kill_the_candidates_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            try:
                running = json.loads(journal.read_text())
            except (OSError, ValueError):
                running = {}
            if any(e["spec"]["kind"] == "candidate" for e in running.values()):
                time.sleep(1.5)  # into the 3 s trial
                for pid in filter(str.isdigit, os.listdir("/proc")):
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            cmd = f.read()
                    except OSError:
                        continue
                    if cmd.startswith(b"ray::TrialActor.run") and _ours(int(pid)):
                        os.kill(int(pid), signal.SIGKILL)
                        killed[pid] = True
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_the_candidates_worker, daemon=True)
    watcher.start()
    camp = run_campaign(_config(repo, "lostone", trials=1))
    watcher.join()
    assert killed
    rows = camp.ledger.rows()
    cands = [r for r in rows if r["kind"] == "candidate"]
    assert [r["status"] for r in cands] == ["lost", "discard"]
    assert cands[0]["commit_sha"] == cands[1]["commit_sha"]  # the same commit, run again
    assert cands[1]["description"] == "real"
    merged = [r for r in rows if r["merged"]]
    assert [r["commit_sha"] for r in merged] == [cands[1]["commit_sha"]]
    _check_merges(repo, camp, rows)


def test_a_proposal_made_for_a_replaced_incumbent_is_rebased_or_recorded(tmp_path):
    """Proposals queued when a merge lands are carried over by a three-way merge; one that no
    longer applies becomes an invalid row with the reason (never lost without a trace)."""
    from cluster.records import Proposal

    repo, src, camp, strat, view = _offline(tmp_path)
    base, line, pipeline = camp.incumbent, camp.lines[0], view._d.pipeline

    def proposal(new: str, desc: str) -> Proposal:
        return Proposal(base, make_patch(src, new, "train.py"), desc, "queue")

    pipeline.ready[0] += [
        proposal(src.replace("S = 1.0", "S = 2.0"), "S"),  # three lines from the merged R
        proposal(src.replace("R = 1.0", "R = 5.0"), "R to 5"),  # the merged line itself
    ]
    merged = _merge(camp, src.replace("R = 1.0", "R = 2.0"), "R")
    pipeline.update(0, camp.context(line))
    specs = [s for s in view.take(line, 5) if s.kind == "candidate"]
    assert [(s.parent_sha, camp.inflight[s.trial_id]["proposal"]["description"]) for s in specs][
        :1
    ] == [(merged, "S")]
    text = _source(repo, specs[0].commit_sha)
    assert "R = 2.0" in text and "S = 2.0" in text
    dropped = [r for r in camp.rows if r["description"] == "R to 5"]
    assert [r["status"] for r in dropped] == ["invalid"]
    assert "no longer applies to the new incumbent" in dropped[0]["error"]


def test_rounds_count_per_round_candidates_for_async(tmp_path):
    _, _, camp, strat, view = _offline(tmp_path)
    assert strat.limits.room(view) is None  # --hours alone: no count limit
    _, _, camp, strat, view = _offline(tmp_path / "b", rounds=3)
    assert strat.limits.room(view) == 6  # 3 x per_round (the 2 workers)
    _, _, camp, strat, view = _offline(tmp_path / "c", rounds=3, trials=4)
    assert strat.limits.room(view) == 4
    line = camp.lines[0]
    sha = gitops.commit_file(camp.repo, line.head, "train.py", "X = 1\n", "x")
    view.queue(view.spec("candidate", sha, line.head, line), line)  # one started
    assert strat.limits.room(view) == 3 and not strat.limits.reached(view)


@pytest.mark.slow
def test_a_rounds_driver_killed_during_a_confirmation_merges_the_winner_on_resume(tmp_path, data):
    """Regression: the rounds strategy re-ran a killed driver's confirmation without judging
    it, so the winner was recorded `discard`, without its description, and never merged."""
    import json
    import time

    repo, src = _repo(tmp_path / "repo")
    (repo / "train.py").write_text(src.replace("SLEEP = 0.5", "SLEEP = 3.0"))
    gitops.git(repo, "commit", "-qam", "slower trials")
    src = (repo / "train.py").read_text()
    _queue(repo, "0-r.patch", src, src.replace("R = 1.0", "R = 2.0"), "raise R")
    _queue(repo, "1-null.patch", src, src.replace("UNUSED = 1.0", "UNUSED = 2.0"), "null")
    cmd = ["run", "--tag", "rk", "--repo", str(repo)]
    cmd += ["--target", "train.py", "--protocol", "autoresearch", "--strategy", "rounds"]
    cmd += ["--proposer", "queue:queue", "--device", "cpu", "--sandbox", "off"]
    cmd += ["--workers", "2", "--replicates", "4", "--rounds", "1"]
    cmd += ["--hours", "0.05"]
    journal = repo / "runs" / "rk" / "inflight.json"

    def confirming() -> bool:
        try:
            running = json.loads(journal.read_text())
        except (OSError, ValueError):
            return False
        return any(e["spec"]["kind"] == "confirm" and not e.get("queued") for e in running.values())

    first = start_cli(repo, *cmd)
    deadline = time.monotonic() + 240
    while not confirming() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    assert confirming(), first.communicate()[0]
    kill_driver(first)
    before = ledger_rows(repo, "rk")
    assert not any(r["merged"] for r in before) and not any(r["kind"] == "confirm" for r in before)
    winner = next(r for r in before if r["description"] == "raise R")

    second = start_cli(repo, *cmd)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    after = ledger_rows(repo, "rk")
    confirms = [r for r in after if r["kind"] == "confirm"]
    assert [r["status"] for r in confirms] == ["lost", "keep"], confirms
    assert all(r["description"] == "raise R" for r in confirms)  # the proposal came along
    merged = [r for r in after if r["merged"]]
    assert [r["commit_sha"] for r in merged] == [winner["commit_sha"]]
    assert gitops.rev_parse(repo, "autoresearch/rk") == winner["commit_sha"]


def test_queued_proposals_survive_a_restart(tmp_path):
    """A proposal taken from a proposer (a queue file moved to done/) and still waiting for a
    worker when the driver dies is queued again by the next driver, not lost."""
    from cluster.campaign import Campaign
    from cluster.driver import start_pipeline
    from cluster.proposers.queue import QueueProposer

    repo, src = _repo(tmp_path / "repo")
    _queue(repo, "1-r.patch", src, src.replace("R = 1.0", "R = 2.0"), "raise R")
    _queue(repo, "2-s.patch", src, src.replace("S = 1.0", "S = 2.0"), "raise S")
    cfg = _config(repo, "pend", strategy="async")

    def start():
        camp = Campaign(cfg, say=lambda msg: None)
        camp.setup("cpu", "1s", 2, 1)
        pipeline = start_pipeline(camp, [(QueueProposer(repo / "queue"), 1.0)], 2, inline=True)
        return camp, pipeline

    camp, pipeline = start()
    first, _ = pipeline.take(0, 1, timeout=0)  # one taken (the driver would run it) ...
    assert [p.description for p in first] == ["raise R"]
    assert not list((repo / "queue").glob("*.patch"))  # ... and both files consumed
    camp, pipeline = start()  # the driver died; a new one starts
    again, _ = pipeline.take(0, 5, timeout=0)
    assert [p.description for p in again] == ["raise S"]
    assert again[0].parent_sha == camp.lines[0].head
