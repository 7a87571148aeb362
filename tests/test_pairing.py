"""Paired comparisons (common random numbers): a candidate runs at a seed on which its parent
has an unselected run, the ledger records which (`paired_with`), a new incumbent's replicates
run at its parent's seeds (those pairs measure the noise of a difference), and the gate judges
paired differences once that noise is measured and asks less than the unpaired test. On the
simulator (the real driver, strategies and gate; simulated clock): deterministic, no Ray."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

from cluster.campaign import Campaign, CampaignConfig
from cluster.gate import Gate, RowIndex
from cluster.ledger import MemoryLedger
from cluster.repo import MemoryRepo

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "search_sim.py"
_spec = importlib.util.spec_from_file_location("search_sim_pairing", _PATH)
sim = importlib.util.module_from_spec(_spec)
sys.modules["search_sim_pairing"] = sim
_spec.loader.exec_module(sim)


def _run(strategy: str, n: int = 4, seed: int = 1, horizon: float = 120, **obj):
    objective = sim.HardObjective(headroom=0.2, **obj)
    return sim.Sim(strategy, n, objective, noise=0.015, horizon=horizon, seed=seed).run()


@pytest.mark.parametrize("strategy", ["rounds", "async"])
def test_candidates_run_at_their_parents_seeds_and_later_incumbents_measure_pairs(strategy):
    s = _run(strategy)
    rows, camp = s.camp.rows, s.camp
    by_id = {r["trial_id"]: r for r in rows}
    cands = [r for r in rows if r["kind"] == "candidate" and r["val_bpb"] is not None]
    paired = [r for r in cands if r["paired_with"]]
    assert len(paired) >= 0.9 * len(cands) and len(cands) > 50
    for r in paired:
        partner = by_id[r["paired_with"]]
        assert partner["seed"] == r["seed"]
        assert partner["commit_sha"] == r["parent_sha"]
        assert partner["kind"] in ("baseline", "confirm") and partner["val_bpb"] is not None
    merged = [r for r in rows if r["merged"]]
    assert len(merged) >= 2
    for m in merged:  # the new incumbent's replicates: at its parent's seeds, paired with them
        # (later ones beside confirmations, at fresh seeds, add seeds to pair with)
        reps = [r for r in rows if r["kind"] == "baseline" and r["commit_sha"] == m["commit_sha"]]
        screened = {
            r["seed"]
            for r in rows
            if r["kind"] == "candidate" and r["commit_sha"] == m["commit_sha"]
        }
        # (fresh incumbent runs beside the next confirmations count among its runs too)
        assert any(r["paired_with"] for r in reps), m["trial_id"]
        for r in [r for r in reps if r["paired_with"]]:
            assert by_id[r["paired_with"]]["commit_sha"] == m["parent_sha"]
            assert r["seed"] not in screened  # never the selected screening run's seed again
    pair_noise, pair_dof = camp.pair_noise_dof()
    assert pair_dof >= 4 and pair_noise is not None
    if strategy == "rounds":
        return  # its 2 merges here leave the pair noise at the run noise (see gate.py)
    # A shared seed effect (rho^2 0.86): a pair's noise is about sqrt(2 x 0.14) of a run's.
    assert pair_noise < 0.8 * camp.noise()
    # ... so the gate judged by pairs: rows decided then carry the partner's value and that noise
    judged = [r for r in paired if r["incumbent_bpb"] == by_id[r["paired_with"]]["val_bpb"]]
    assert len(judged) >= 0.3 * len(paired)
    assert all(r["noise"] < 0.8 * camp.noise() for r in judged)


@pytest.mark.parametrize("strategy,n", [("rounds", 4), ("async", 4), ("async", 8)])
def test_confirmations_pair_with_fresh_incumbent_runs_and_wait_for_them(strategy, n):
    s = _run(strategy, n=n, horizon=160)
    rows = s.camp.rows
    at = {r["trial_id"]: i for i, r in enumerate(rows)}
    confirms = [r for r in rows if r["kind"] == "confirm" and r["val_bpb"] is not None]
    assert len(confirms) >= 4
    partners = [r["paired_with"] for r in confirms]
    assert len(set(partners)) == len(partners)  # one fresh incumbent run each, never shared
    for r in confirms:
        p = rows[at[r["paired_with"]]]
        # a fresh seed (not a replicate at an older commit's seed), beside it ...
        assert p["kind"] == "baseline" and p["commit_sha"] == r["parent_sha"]
        assert p["paired_with"] is None and p["seed"] == r["seed"]
        # ... and judged after it, though the two ran at once (it often finished first)
        assert at[p["trial_id"]] < at[r["trial_id"]]
    groups = {}
    for r in confirms:
        groups.setdefault((r["commit_sha"], r["parent_sha"]), []).append(r)
    sizes = [len(g) for g in groups.values()]
    assert max(sizes) <= 2
    if n >= 8:  # wide: two pairs at once (one alone: the other dropped when another merged)
        assert sizes.count(2) >= 0.75 * len(sizes), sizes
    else:  # narrow: one, and a second only for an ambiguous pass (the race)
        raced = [g for g in groups.values() if len(g) == 2]
        assert 1 in sizes and raced
        assert all(g[0]["status"] == "discard" for g in raced)


def test_no_pairing_runs_fresh_seeds_and_the_unpaired_gate():
    s = _run("async-unpaired", horizon=60)
    assert not any(r["paired_with"] for r in s.camp.rows)
    assert s.camp.pair_noise_dof() == (None, 0)
    seeds = [r["seed"] for r in s.camp.rows if r["val_bpb"] is not None]
    assert len(seeds) == len(set(seeds))  # a fresh seed per trial


def test_greedy_and_the_autoresearch_protocol_do_not_pair():
    s = _run("greedy", horizon=40)
    assert not any(r["paired_with"] for r in s.camp.rows)  # autoresearch's rule as it is
    cfg = CampaignConfig.build(tag="p", target="train.py", protocol="autoresearch")
    camp = Campaign(cfg, repo=MemoryRepo({"train.py": "X = 1\n"}), ledger=MemoryLedger())
    assert not camp.pairing_allowed()  # train.py fixes its own seed: nothing to pair with


@pytest.mark.parametrize("strategy", ["rounds", "async"])
def test_the_paired_gate_stops_truly_worse_merges_with_a_shared_seed_effect(strategy):
    # At the optimum every change hurts; runs at one seed share most of their noise, which a
    # gate on paired differences must not mistake for a gain.
    worse = sum(_run(strategy, seed=k, horizon=96, start_at_optimum=True).worse for k in range(4))
    ungated = sum(_run("greedy", seed=k, horizon=96, start_at_optimum=True).worse for k in range(4))
    assert ungated >= 10
    assert worse <= 1


def test_pair_noise_counts_only_unselected_pairs_of_one_commit_against_one_parent():
    def row(tid, sha, val, kind="baseline", paired=None, status="keep", merged=False):
        return dict(
            trial_id=tid,
            commit_sha=sha,
            val_bpb=val,
            kind=kind,
            paired_with=paired,
            status=status,
            merged=merged,
        )

    rows = [
        row("t1", "p", 1.00),
        row("t2", "p", 1.10),
        row("t3", "p", 0.90),
        row("t4", "c", 0.95, "candidate", "t1", "discard"),  # selected: not evidence
        row("t5", "c", 1.06, "confirm", "t2"),
        row("t6", "c", 0.87, "baseline", "t3"),
        row("t7", "d", 0.80, "baseline", "t4"),  # paired with a screening run: left out
        row("t8", "d", 0.70, "baseline", "t4"),
        # e merged on a lucky confirmation: the gate picked it, so it is no evidence of the
        # noise of a pair, and neither is a pair with it
        row("t9", "e", 0.50, "confirm", "t1", merged=True),
        row("t10", "e", 0.99, "baseline", "t2"),
        row("t11", "e", 0.87, "baseline", "t3"),
        row("t12", "f", 0.40, "baseline", "t9"),
        row("t13", "f", 0.45, "baseline", "t9"),
    ]
    groups = [[1.06 - 1.10, 0.87 - 0.90], [0.99 - 1.10, 0.87 - 0.90]]
    noise, dof = Gate.pair_noise_dof(rows)
    pooled = statistics.fmean([statistics.variance(g) for g in groups]) ** 0.5
    assert dof == 2 and noise == pytest.approx(pooled)
    index = RowIndex(rows[:4])  # kept up to date as rows arrive: the same answer
    assert index.pair_noise_dof() == (None, 0)
    assert index.update(rows).pair_noise_dof() == (noise, dof)
    assert index.runs["c"] == [1.06, 0.87] and index.candidates == {"c"}
    # the noise of a run: only runs at seeds of their own (a paired run shares its partner's
    # seed, and so would every later incumbent's replicates at their parents' few seeds)
    assert index.noise_dof() == (pytest.approx(statistics.stdev([1.00, 1.10, 0.90])), 2)


def test_a_confirmation_whose_fresh_partner_crashes_is_judged_unpaired_once_it_has():
    class Crashing(sim.Sim):
        """Every third fresh incumbent run beside a confirmation crashes."""

        def score(self, spec, rng):
            fresh = spec.kind == "baseline" and spec.paired_with is None
            if fresh and self.camp.noise() is not None and int(spec.trial_id[1:]) % 3 == 0:
                return None
            return super().score(spec, rng)

    objective = sim.HardObjective(headroom=0.2)
    s = Crashing("async", 4, objective, noise=0.015, horizon=160, seed=2).run()
    rows = s.camp.rows
    at = {r["trial_id"]: i for i, r in enumerate(rows)}
    confirms = [r for r in rows if r["kind"] == "confirm" and r["val_bpb"] is not None]
    orphans = [r for r in confirms if rows[at[r["paired_with"]]]["status"] == "crash"]
    assert orphans and len(confirms) > len(orphans)
    for r in orphans:
        assert at[r["paired_with"]] < at[r["trial_id"]]  # waited for it
        assert r["status"] in ("keep", "discard")  # and was judged: on the parent's mean
        assert r["incumbent_bpb"] != rows[at[r["paired_with"]]]["val_bpb"]
    assert s.merges >= 2  # the campaign went on


def test_a_result_held_for_its_partner_stays_journaled_as_running(monkeypatch):
    # A driver killed while a confirmation waits for its paired incumbent run must find it in
    # the journal as a running trial (a resume records it lost and re-runs it), never lose it.
    from cluster.loop import Driver

    seen, journaled = [], []
    collect = Driver.collect

    def watching(self, timeout):
        collect(self, timeout)
        for tid in self.held:
            entry = self.camp.inflight.get(tid) or {}
            seen.append(tid)
            journaled.append(bool(entry) and not entry.get("queued"))
            assert tid in self.running  # counted as running: no strategy ends meanwhile

    monkeypatch.setattr(Driver, "collect", watching)
    s = _run("async", n=8, horizon=100)
    assert seen and all(journaled)
    assert set(seen) <= {r["trial_id"] for r in s.camp.rows}  # all judged in the end


def test_a_change_of_shape_is_judged_unpaired_and_stays_out_of_the_noise_of_pairs():
    """With some constants as shapes (a change of one draws another initialization: its runs
    report another `rng` digest), such a candidate run at its parent's seed is judged against
    the parent's mean and the noise of a run, not on its difference with a run it shares only
    the batch order with; candidates of the other constants are still judged as pairs."""
    objective = sim.HardObjective(headroom=0.2).with_shapes(6)
    # (seed 1 merges a shape in every merge: no pair alike is ever measured, nothing paired)
    s = sim.Sim("async", 4, objective, noise=0.015, horizon=160, seed=2).run()
    rows = s.camp.rows
    by_id = {r["trial_id"]: r for r in rows}
    judged = [r for r in rows if r["kind"] == "candidate" and r["paired_with"] and r["noise"]]
    unlike = [r for r in judged if r["rng"] != by_id[r["paired_with"]]["rng"]]
    like = [r for r in judged if r["rng"] == by_id[r["paired_with"]]["rng"]]
    assert len(unlike) >= 10 and len(like) >= 10
    as_pairs = [r for r in like if r["incumbent_bpb"] == by_id[r["paired_with"]]["val_bpb"]]
    assert len(as_pairs) >= 0.3 * len(like)
    for r in unlike:  # the parent's mean (of more than the partner's run), not the partner
        assert r["incumbent_bpb"] != by_id[r["paired_with"]]["val_bpb"], r["trial_id"]
    # The noise of pairs: every unselected paired run whose partner drew alike, and no other.
    paired_runs = [
        (r, by_id[r["paired_with"]])
        for r in rows
        if r["kind"] != "candidate"
        and r["paired_with"]
        and r["val_bpb"] is not None
        and r["status"] in ("keep", "discard")
        and by_id[r["paired_with"]]["val_bpb"] is not None
        and not r["merged"]
        and not by_id[r["paired_with"]]["merged"]
    ]
    alike = [r for r, partner in paired_runs if r["rng"] == partner["rng"]]
    assert len(alike) < len(paired_runs), "no merged change of shape measured against its parent"
    assert sum(len(d) for d in s.camp.index().pairs.values()) == len(alike)
