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


def _worse(strategy: str, gate_on: bool, obj) -> int:
    return sum(
        sim.Sim(strategy, 4, gate_on, obj, noise=0.03, horizon=48, seed=s).run().worse
        for s in SEEDS
    )


@pytest.mark.parametrize("strategy", ["rounds", "async", "population"])
def test_the_gate_stops_truly_worse_merges_when_there_is_nothing_to_gain(strategy):
    obj = sim.Objective(start_at_optimum=True)  # every change hurts; noise 2x the default
    gated, ungated = _worse(strategy, True, obj), _worse(strategy, False, obj)
    assert ungated >= 10  # best-of-N luck: the greedy rule merges regressions
    assert gated * 5 <= ungated


def _median_t(strategy: str, n: int, gate_on: bool) -> float:
    obj = sim.Objective()
    times = [
        sim.Sim(strategy, n, gate_on, obj, noise=0.015, horizon=96, seed=s).run().t_target
        for s in range(8)
    ]
    return statistics.median(math.inf if t is None else t for t in times)


def test_with_headroom_parallel_rounds_reach_the_target_sooner():
    # Under the gate, 8 workers beat one by far (replicates and confirmations run in parallel).
    assert _median_t("rounds", 8, True) * 2 < _median_t("rounds", 1, True)
    # Without it, rounds of 8 beat autoresearch's one-GPU greedy loop.
    assert _median_t("rounds", 8, False) * 2 < _median_t("greedy", 1, False)


def test_greedy_is_rounds_of_one_without_the_gate():
    obj = sim.Objective()
    a = sim.Sim("greedy", 1, False, obj, noise=0.015, horizon=48, seed=3).run()
    b = sim.Sim("rounds", 1, False, obj, noise=0.015, horizon=48, seed=3).run()
    assert (a.final, a.merges, a.worse, a.trials) == (b.final, b.merges, b.worse, b.trials)
    assert a.trials == 47 or a.trials == 48  # one trial per budget unit, jitter aside


def test_mutate_patches_parse_back_to_constants():
    s = sim.Sim("greedy", 1, False, sim.Objective(), noise=0.0, horizon=1, seed=0)
    (child,) = s.propose(s.inc[0], 1)
    parent_consts, child_consts = s.consts[s.inc[0]], s.consts[child]
    changed = {k for k in parent_consts if parent_consts[k] != child_consts[k]}
    assert 1 <= len(changed) <= 2 and changed == set(s.changes[child])
