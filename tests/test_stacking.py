"""Rounds stack a round's screened winners that change different lines into one candidate,
confirm the stack, and fall back to the round's best alone when the stack fails (issue: N GPUs,
N times the progress). On the simulated executor and an in-memory repo: deterministic, no Ray.
"""

from __future__ import annotations

import random
import re

from cluster.campaign import Campaign, CampaignConfig
from cluster.driver import start_pipeline
from cluster.ledger import MemoryLedger
from cluster.loop import Driver
from cluster.patches import make_patch
from cluster.records import Proposal
from cluster.repo import MemoryRepo
from cluster.simulate import SimExecutor
from cluster.strategy import build_strategy

SOURCE = "EMBEDDING_LR = 1.0\nUNEMBEDDING_LR = 1.0\nMATRIX_LR = 1.0\n"  # consecutive lines


class Scripted:
    """Proposes each of its edits once, on whatever the incumbent is (then nothing)."""

    name = "scripted"

    def __init__(self, edits: list[tuple[str, str]]):
        self.edits = list(edits)

    def propose(self, ctx, n):
        out = []
        while self.edits and len(out) < n:
            name, value = self.edits.pop(0)
            new = re.sub(rf"^{name} = 1.0$", f"{name} = {value}", ctx.incumbent_source, flags=re.M)
            patch = make_patch(ctx.incumbent_source, new, ctx.target)
            out.append(Proposal(ctx.incumbent_sha, patch, f"{name} -> {value}", self.name))
        return out


def _consts(text: str) -> dict[str, float]:
    return {a: float(b) for a, b in (ln.split(" = ") for ln in text.splitlines() if " = " in ln)}


def _campaign(score, edits, **kw):
    repo = MemoryRepo({"train.py": SOURCE})
    said: list[str] = []
    settings = dict(rounds=1, per_round=3, replicates=4, hours=10.0, seed=1)
    cfg = CampaignConfig.build(
        tag="stack", target="train.py", strategy="rounds", **{**settings, **kw}
    )
    camp = Campaign(cfg, repo=repo, ledger=MemoryLedger(), say=said.append)
    strat = build_strategy(cfg, 3)
    camp.setup("cpu", "300s", 3, strat.lines, strat.settings())
    pipeline = start_pipeline(camp, [(Scripted(edits), 1.0)], 3, inline=True)

    def value(spec, rng: random.Random) -> float:
        return score(_consts(repo.read_blob(spec.commit_sha, "train.py"))) + rng.gauss(0, 0.002)

    ex = SimExecutor(3, value, seed=1)
    Driver(camp, ex, pipeline, strat, clock=ex.now).run()
    return camp, repo, said


def _gains(c: dict[str, float]) -> float:
    return 1.0 - 0.05 * (c["EMBEDDING_LR"] == 2.0) - 0.04 * (c["UNEMBEDDING_LR"] == 1.4)


EDITS = [("EMBEDDING_LR", "2.0"), ("UNEMBEDDING_LR", "1.4"), ("MATRIX_LR", "0.5")]


def test_a_rounds_independent_winners_on_neighbouring_lines_merge_together():
    camp, repo, said = _campaign(lambda c: _gains(c) + 0.03 * (c["MATRIX_LR"] != 1.0), EDITS)
    merged = [r for r in camp.rows if r["merged"]]
    assert len(merged) == 1, said
    final = _consts(repo.read_blob(camp.incumbent, "train.py"))
    assert (final["EMBEDDING_LR"], final["UNEMBEDDING_LR"], final["MATRIX_LR"]) == (2.0, 1.4, 1.0)
    assert merged[0]["proposer"] == "stack" and "stack of" in merged[0]["description"]
    assert any("2 candidates pass the screen on different lines" in s for s in said), said


def test_a_stack_that_fails_falls_back_to_the_rounds_best_alone():
    # Each change helps alone; together they hurt (an interaction the screen cannot see).
    def score(c):
        both = c["EMBEDDING_LR"] == 2.0 and c["UNEMBEDDING_LR"] == 1.4
        return _gains(c) + 0.03 * (c["MATRIX_LR"] != 1.0) + (0.2 if both else 0.0)

    camp, repo, said = _campaign(score, EDITS)
    confirms = [r for r in camp.rows if r["kind"] == "confirm"]
    assert [r["proposer"] for r in confirms] == ["stack", "scripted"], said
    assert not confirms[0]["merged"] and confirms[1]["merged"]
    final = _consts(repo.read_blob(camp.incumbent, "train.py"))
    assert (final["EMBEDDING_LR"], final["UNEMBEDDING_LR"]) == (2.0, 1.0)  # the best alone
    assert any("confirming t" in s and "alone" in s for s in said), said


def test_no_stack_confirms_only_the_best():
    camp, repo, _ = _campaign(lambda c: _gains(c), EDITS, stack=False)
    final = _consts(repo.read_blob(camp.incumbent, "train.py"))
    assert (final["EMBEDDING_LR"], final["UNEMBEDDING_LR"]) == (2.0, 1.0)
    assert all(r["proposer"] != "stack" for r in camp.rows)


def test_a_winner_screened_while_the_last_confirmation_merged_is_re_applied_not_lost():
    # Round 2 runs while round 1's confirmation runs; that merge leaves round 2's candidates
    # on the old incumbent. Its winner is re-applied to the new one and confirmed there.
    edits = [*EDITS[:1], ("MATRIX_LR", "0.5"), ("MATRIX_LR", "0.7")]
    edits += [("UNEMBEDDING_LR", "1.4"), ("MATRIX_LR", "0.6"), ("MATRIX_LR", "0.8")]
    camp, repo, said = _campaign(
        lambda c: _gains(c) + 0.03 * (c["MATRIX_LR"] != 1.0), edits, rounds=2
    )
    merged = [r for r in camp.rows if r["merged"]]
    assert len(merged) == 2, said
    first, second = merged
    won = next(r for r in camp.rows if r["description"] == "UNEMBEDDING_LR -> 1.4")
    assert won["parent_sha"] == first["parent_sha"]  # screened on the old incumbent
    assert second["parent_sha"] == first["commit_sha"]  # confirmed on the new one
    assert second["description"].startswith(f"re-run of {won['trial_id']} on ")
    final = _consts(repo.read_blob(camp.incumbent, "train.py"))
    assert (final["EMBEDDING_LR"], final["UNEMBEDDING_LR"], final["MATRIX_LR"]) == (2.0, 1.4, 1.0)
    assert any("the incumbent before the last merge; re-applied to" in s for s in said), said
