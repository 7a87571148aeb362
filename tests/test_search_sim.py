"""The search simulator (benchmarks/search_sim.py) runs the real proposer and gate: check that
its headline effects hold on fixed seeds (a second or two; no wall-clock assertions)."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "search_sim.py"
_spec = importlib.util.spec_from_file_location("search_sim", _PATH)
sim = importlib.util.module_from_spec(_spec)
sys.modules["search_sim"] = sim  # dataclasses look their module up while the class is built
_spec.loader.exec_module(sim)

SEEDS = range(6)


def _worse(strategy: str, obj) -> int:
    return sum(sim.Sim(strategy, 4, obj, noise=0.03, horizon=48, seed=s).run().worse for s in SEEDS)


@pytest.mark.parametrize("strategy", ["rounds", "async", "population"])
def test_the_gate_stops_truly_worse_merges_when_there_is_nothing_to_gain(strategy):
    obj = sim.Objective(start_at_optimum=True)  # every change hurts; noise 2x the default
    gated, ungated = _worse(strategy, obj), _worse("greedy", obj)
    assert ungated >= 10  # best-of-N luck: autoresearch's rule merges regressions
    assert gated * 5 <= ungated


def _median_t(strategy: str, n: int) -> float:
    obj = sim.Objective()
    times = [
        sim.Sim(strategy, n, obj, noise=0.015, horizon=96, seed=s).run().t_target for s in range(8)
    ]
    return statistics.median(math.inf if t is None else t for t in times)


def test_with_headroom_parallel_workers_reach_the_target_sooner():
    # Under the gate, 8 workers beat one by far (replicates and confirmations run in parallel).
    assert _median_t("rounds", 8) * 2 < _median_t("rounds", 1)
    # Without it too: autoresearch's rule on 8 workers against the same rule on one.
    assert _median_t("greedy", 8) * 1.5 < _median_t("greedy", 1)


def test_greedy_on_one_worker_is_autoresearch():
    obj = sim.Objective()
    s = sim.Sim("greedy", 1, obj, noise=0.015, horizon=48, seed=3).run()
    assert 46 <= s.trials <= 49  # one trial per budget unit (jitter; the last ends late)
    assert s.merges >= 3 and s.final < s.start_true
    rows = s.camp.rows
    assert [r["kind"] for r in rows[:2]] == ["baseline", "candidate"]  # one run, then candidates
    assert all(r["kind"] != "confirm" for r in rows)  # no gate, no confirmations


def test_the_hard_objective_rewards_pairs_only_together_and_shares_a_seed_effect():
    obj = sim.HardObjective(headroom=0.2)
    start, opt = obj.start(), obj.opt
    assert obj.true(opt) == pytest.approx(sim.BASE) and obj.true(start) > sim.BASE + 0.15
    a, b = obj.pairs[0]
    one = {**start, a: opt[a]}
    assert obj.true(one) > obj.true(start)  # one half of a pair alone is worse than neither
    assert obj.true({**one, b: opt[b]}) < obj.true(start)
    r1, r2 = obj.redundant
    either = obj.true({**start, r1: opt[r1]})
    assert either < obj.true(start) and obj.true({**start, r1: opt[r1], r2: opt[r2]}) == either
    fixed = [k for k in obj.names if obj.start0[k] == opt[k]]
    assert len(fixed) >= 4  # every proposal on those is harmful
    assert all(obj.true({**start, k: opt[k] * 2}) > obj.true(start) for k in fixed)
    s = sim.Sim("rounds", 2, obj, noise=0.015, horizon=4, seed=1)
    s.run()  # on the hard objective; runs at one seed share most of their noise
    import random

    spec = type("Spec", (), {"commit_sha": s.camp.base_sha, "seed": 7})
    same = [s.score(spec, random.Random(i)) for i in range(40)]
    assert statistics.stdev(same) < 0.5 * 0.015  # the residual only
    shared = random.Random("seed-7").gauss(0, 0.015 * math.sqrt(obj.seed_share))
    assert statistics.fmean(same) == pytest.approx(s.true(s.camp.base_sha) + shared, abs=0.003)


def test_the_headline_names_the_best_gated_strategy_at_sixteen_workers():
    import pandas as pd

    def tab(rows):
        return pd.DataFrame(
            [dict(zip(("strategy", "N", "speedup", "worse"), r, strict=True)) for r in rows]
        )

    runs = [("greedy", 16, 6.0, 8.0), ("rounds", 16, 7.7, 0.15), ("async", 16, 8.3, 0.05)]
    line = sim.headline(tab([*runs, ("async-unpaired", 16, 9.0, 0.0), ("async", 8, 9.5, 0.0)]))
    assert line.startswith("speedup N=16: 8.30 worse/campaign: 0.05 (async")
    assert "the default rounds: 7.70x" in line  # a variant and another N do not count
    assert sim.headline(tab(runs[:2])) == "speedup N=16: 7.70 worse/campaign: 0.15 (rounds)"
    assert sim.headline(pd.DataFrame({"strategy": ["rounds"], "N": [16]})).endswith("not run)")


def test_a_round_does_not_wait_for_follow_ups_that_started_during_it():
    """A stack's fallback or a race's second pair starts mid-round; the round closes on its
    own candidates and the next one starts beside them. Before, the barrier waited for them
    too, and most of the workers idled for a whole trial several times a simulated day."""
    gaps: list[tuple[float, float]] = []

    class Watched(sim.SimExecutor):
        def results(self, timeout):
            t0, idle = self.t, self.idle()
            candidates = sum(1 for *_, s in self.heap if s.kind == "candidate")
            for got in super().results(timeout):
                long = self.t - t0 > 0.5 * self.duration
                if self.heap and idle > self.target // 2 and not candidates and long:
                    gaps.append((t0, self.t))
                yield got

    real, sim.SimExecutor = sim.SimExecutor, Watched
    try:
        s = sim.Sim("rounds", 16, sim.HardObjective(headroom=0.2), 0.015, 50, seed=0).run()
    finally:
        sim.SimExecutor = real
    assert s.merges >= 2 and len(s.camp.rows) > 700
    assert not [g for g in gaps if g[1] < 50 * 300], gaps


def test_speedups_come_with_bootstrap_intervals():
    same = {"start_true": 1.2, "final_true": 1.1, "merges": 3, "worse": 0, "trials": 100}
    same |= {"busy": 1.0, "copies": 0, "worse_copies": 0, "noise_est": 0.01}

    def runs(strategy, n, times):
        return [
            {"strategy": strategy, "N": n, "seed": i, "t_target": t, **same}
            for i, t in enumerate(times)
        ]

    ref = [4.0, 6.0, 8.0, 10.0, 30.0, None, 12.0, 5.0, 9.0, 7.0]  # heavy-tailed, one never
    tab = sim.summarize(
        runs("greedy", 1, ref) + runs("rounds", 16, [1.0] * 10) + runs("async", 16, [None] * 10),
        unit_h=1.0,
    )
    rounds = tab[tab["strategy"] == "rounds"].iloc[0]
    assert rounds["speedup"] == pytest.approx(8.5)  # median 8.5 h against 1 h
    assert rounds["speedup_lo"] < 8.5 < rounds["speedup_hi"]  # the reference's spread
    assert rounds["speedup_lo"] >= 5.0 and rounds["speedup_hi"] <= 12.0
    never = tab[tab["strategy"] == "async"].iloc[0]
    assert never["speedup"] == 0 and never["speedup_hi"] == 0  # never reached: no speed-up
    again = sim.summarize(runs("greedy", 1, ref) + runs("rounds", 16, [1.0] * 10), unit_h=1.0)
    assert again["speedup_lo"].iloc[1] == rounds["speedup_lo"]  # seeded: the same every run
    text = sim.summary_table(tab)
    assert "90% bootstrap intervals" in text and "median of 10 seeds (9/10 reached" in text
    assert "; 90% interval " in sim.headline(tab)
