"""The population strategy on a local Ray with fake GPUs: sleep-only trials (see test_async).

A planted improvement (R) proposed on one island merges there, the trailing island copies it
at the next exploit step, and the campaign branch ends at the best island's incumbent."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from cluster import gitops
from cluster.campaign import island_branch
from cluster.driver import run_campaign
from cluster.status import status_text

from conftest import kill_driver, ledger_rows, start_cli
from test_async import _config, _parent, _queue, _repo, _source


@pytest.mark.slow
def test_population_islands_merge_migrate_and_final_answer(tmp_path, ray_cluster):
    repo, src = _repo(tmp_path / "repo")
    _queue(repo, "1-real.patch", src, src.replace("R = 1.0", "R = 2.0"), "real")
    for i, value in enumerate((2.0, 3.0, 4.0, 5.0, 6.0)):
        new = src.replace("UNUSED = 1.0", f"UNUSED = {value}")
        _queue(repo, f"{i + 2}-null.patch", src, new, f"null {value}")
    cfg = _config(repo, "pop", strategy="population", islands=2, migrate_every=2, trials=6)
    camp = run_campaign(cfg)
    rows = camp.ledger.rows()
    base = camp.base_sha

    # Every island has its own branch, and every row names its island.
    heads = {i: gitops.rev_parse(repo, island_branch("pop", i)) for i in (0, 1)}
    assert all(heads.values())
    assert {r["island"] for r in rows} <= {0, 1}
    cands = [r for r in rows if r["kind"] == "candidate"]
    assert {r["island"] for r in cands} == {0, 1}  # the workers served both islands

    # The planted improvement merged on the island it was proposed on, and nothing else did.
    merged = [r for r in rows if r["merged"]]
    assert [r["description"] for r in merged] == ["real"]
    win = merged[0]
    real = next(r for r in cands if r["description"] == "real")
    assert real["island"] == win["island"] and real["parent_sha"] == base
    assert _parent(repo, win["commit_sha"]) == base and "R = 2.0" in _source(
        repo, win["commit_sha"]
    )

    # The other island trailed by far more than the gate and copied the winner.
    other = 1 - win["island"]
    moves = [json.loads(x) for x in (camp.run_dir / "islands.jsonl").read_text().splitlines()]
    assert any(
        m["island"] == other and m["source"] == win["island"] and m["new"] == win["commit_sha"]
        for m in moves
    )
    assert heads[win["island"]] == win["commit_sha"]
    assert heads[other] == win["commit_sha"] or gitops.is_ancestor(
        repo, win["commit_sha"], heads[other]
    )
    # Candidates after the migration on the other island were run on the winner.
    after = [r for r in cands if r["island"] == other and r["parent_sha"] != base]
    assert all(r["parent_sha"] == win["commit_sha"] for r in after)

    # The final answer: the campaign branch is the best island's incumbent.
    assert gitops.rev_parse(repo, camp.main_branch) == win["commit_sha"]
    text = status_text(camp.run_dir, "pop")
    assert "island 0" in text and "island 1" in text
    assert win["commit_sha"][:10] in text.splitlines()[1]  # the incumbent line: the best island
    # The plot draws one running-best line per island.
    from cluster.report import progress_figure

    labels = [ln.get_label() for ln in progress_figure(rows).axes[0].get_lines()]
    assert {"island 0: running best", "island 1: running best"} <= set(labels)


@pytest.mark.slow
def test_population_resumes_after_sigkill_with_nothing_lost(tmp_path):
    repo, _ = _repo(tmp_path / "repo")
    train = repo / "train.py"
    train.write_text(train.read_text().replace("SLEEP = 0.5", "SLEEP = 1.5"))
    env = {**os.environ, **gitops.IDENTITY}
    subprocess.run(["git", "commit", "-qam", "slower"], cwd=repo, check=True, env=env)
    src = train.read_text()
    _queue(repo, "1-real.patch", src, src.replace("R = 1.0", "R = 2.0"), "real")
    for i in range(8):  # more than both runs take (--trials 3, then 6): no run waits for ideas
        new = src.replace("UNUSED = 1.0", f"UNUSED = {i + 2}.0")
        _queue(repo, f"{i + 2}-null.patch", src, new, f"null {i + 2}")
    cmd = ["run", "--tag", "popr", "--repo", str(repo)]
    cmd += ["--target", "train.py", "--protocol", "autoresearch", "--sandbox", "off"]
    cmd += ["--device", "cpu", "--workers", "2", "--replicates", "4"]
    cmd += ["--strategy", "population", "--islands", "2", "--migrate-every", "2"]
    cmd += ["--proposer", "queue:queue", "--hours", "0.05", "--seed", "1"]

    def rows():
        return ledger_rows(repo, "popr")

    first = start_cli(repo, *cmd, "--trials", "3")
    deadline = time.monotonic() + 120
    while len(rows()) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(rows()) >= 5, first.communicate()[0]
    kill_driver(first)
    before = rows()
    # --trials is the campaign's: the resumed run may start 3 more than the first started
    second = start_cli(repo, *cmd, "--trials", "6")
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    after = rows()
    assert after[: len(before)] == before  # nothing recorded before the kill was lost
    ids = [r["trial_id"] for r in after]
    assert len(ids) == len(set(ids))
    assert {r["island"] for r in after} <= {0, 1}
    merged = [r for r in after if r["merged"]]
    assert [r["description"] for r in merged] == ["real"]
    assert gitops.rev_parse(repo, "autoresearch/popr") == merged[0]["commit_sha"]


def test_an_interrupted_island_merge_is_completed_unless_a_migration_followed(tmp_path):
    """A killed driver may record a merge and die before moving the island's branch."""
    from cluster.campaign import Campaign
    from cluster.records import TrialResult

    repo, src = _repo(tmp_path / "repo")
    cfg = _config(repo, "imerge", strategy="population", islands=2)

    def resume() -> Campaign:
        camp = Campaign(cfg, say=lambda msg: None)
        camp.setup("cpu", "1s", 2, 2)
        return camp

    camp = resume()
    base = camp.base_sha
    win = gitops.commit_file(repo, base, "train.py", src.replace("R = 1.0", "R = 2.0"), "R")
    spec = camp.make_spec("confirm", win, base, 1)
    row = camp.draft(spec, None, TrialResult(status="ok", val_bpb=0.9, self_reported=True))
    row.status, row.merged = "keep", True
    camp.append(row)
    resume()
    assert gitops.rev_parse(repo, island_branch("imerge", 1)) == win
    assert gitops.rev_parse(repo, island_branch("imerge", 0)) == base
    # After a migration moved island 1 (later than the merge), its branch is left alone.
    gitops.set_ref(repo, f"refs/heads/{island_branch('imerge', 1)}", base)
    move = dict(time=time.time() + 1, island=1, source=0, old=win, new=base, why="test")
    (camp.run_dir / "islands.jsonl").write_text(json.dumps(move) + "\n")
    resume()
    assert gitops.rev_parse(repo, island_branch("imerge", 1)) == base


def test_every_island_is_proposed_for_on_its_own_incumbent():
    """Regression: the pipeline held one context for whichever island was current, so
    islands ran proposals written for another island's incumbent. Now each line has its own
    context and queue: count, over a whole simulated 4-island campaign, every candidate's
    proposal against the island and incumbent it was written for."""
    import random

    from cluster.campaign import Campaign, CampaignConfig
    from cluster.driver import start_pipeline
    from cluster.ledger import MemoryLedger
    from cluster.loop import Driver
    from cluster.proposers.mutate import MutateProposer
    from cluster.repo import MemoryRepo
    from cluster.simulate import SimExecutor
    from cluster.strategy import build_strategy

    class Tagged(MutateProposer):
        def propose(self, ctx, n):
            out = super().propose(ctx, n)
            for p in out:
                p.description += f" [for island {ctx.island} at {ctx.incumbent_sha}]"
            return out

    good = {"A": 3.0, "B": 0.2, "C": 5.0, "D": 0.3}  # every constant has a better value
    src = "".join(f"{k} = 1.0\n\n\n" for k in good)

    def score(spec, rng: random.Random) -> float:
        text = repo.read_blob(spec.commit_sha, "train.py")
        consts = {
            ln.split(" = ")[0]: float(ln.split(" = ")[1])
            for ln in text.split("\n\n\n")
            if " = " in ln
        }
        return sum(abs(math.log(consts[k] / v)) for k, v in good.items()) + rng.gauss(0, 0.02)

    import math

    repo = MemoryRepo({"train.py": src})
    cfg = CampaignConfig.build(
        tag="iso",
        target="train.py",
        strategy="population",
        islands=4,
        migrate_every=8,
        hours=40 * 300 / 3600,
        seed=3,
    )
    camp = Campaign(cfg, repo=repo, ledger=MemoryLedger(), say=lambda msg: None)
    strategy = build_strategy(cfg, 8)
    camp.setup("cpu", "300s", 8, strategy.lines, strategy.settings())
    pipeline = start_pipeline(camp, [(Tagged(seed=3), 1.0)], 8, inline=True)
    ex = SimExecutor(8, score, seed=3)
    Driver(camp, ex, pipeline, strategy, clock=ex.now).run()

    cands = [r for r in camp.rows if r["kind"] == "candidate" and r["commit_sha"]]
    islands = {r["island"] for r in cands}
    assert islands == {0, 1, 2, 3} and len(cands) > 100
    wrong_island = [r for r in cands if f"[for island {r['island']} " not in r["description"]]
    assert wrong_island == []
    # Each ran on the incumbent it was written for, or on its own island's next incumbent
    # (queued when that island merged, carried over by a three-way merge).
    heads = {i: {camp.base_sha} for i in range(4)}
    for r in camp.rows:
        if r["merged"]:
            heads[r["island"]].add(r["commit_sha"])
    for m in camp.moves:  # exploit steps: an island copied another's incumbent
        heads[m["island"]].add(m["new"])
    written_on = {r["trial_id"]: r["description"].rsplit(" at ", 1)[1][:-1] for r in cands}
    assert all(written_on[r["trial_id"]] in heads[r["island"]] for r in cands)
    moved = [r for r in cands if written_on[r["trial_id"]] != r["parent_sha"]]
    # (most: proposals queued while a new incumbent is measured carry over)
    assert len(moved) < 0.4 * len(cands) and camp.moves
    assert sum(1 for r in camp.rows if r["merged"]) >= 4


def test_cli_islands_flags():
    from cluster.campaign import CampaignConfig
    from cluster.cli import build_parser

    args = build_parser().parse_args(["run", "--tag", "t", "--strategy", "population"])
    cfg = CampaignConfig.from_args(args)
    assert (cfg.search.strategy, cfg.search.islands, cfg.search.migrate_every) == (
        "population",
        4,
        None,
    )
    args = build_parser().parse_args(
        ["run", "--tag", "t", "--strategy", "population", "--islands", "1", "--migrate-every", "5"]
    )
    cfg = CampaignConfig.from_args(args)
    assert (cfg.search.islands, cfg.search.migrate_every) == (
        2,
        5,
    )  # one island is not a population
