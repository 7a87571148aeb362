"""The merge gate: noise estimation, and that best-of-N luck does not merge."""

from __future__ import annotations

import random
import statistics

import pytest

from cluster.gate import MIN_NOISE, Gate, RowIndex, comparable


def rows_for(groups: dict[str, list[float]]) -> list[dict]:
    return [
        {"commit_sha": sha, "val_bpb": v, "status": "keep"}
        for sha, vals in groups.items()
        for v in vals
    ]


def test_noise_is_the_pooled_std_of_replicate_groups():
    a, b = [1.0, 1.02, 0.98], [2.0, 2.04]
    expected = ((0.02**2 + 0.02**2) + 2 * 0.02**2) / (2 + 1)
    assert Gate.noise(rows_for({"a": a, "b": b})) == pytest.approx(expected**0.5)


def test_a_selected_screening_run_is_not_evidence_of_noise_or_of_the_incumbent():
    rows = rows_for({"inc": [2.70, 2.72]})
    rows += [
        {"commit_sha": "w", "val_bpb": 2.55, "status": "discard", "kind": "candidate"},
        {"commit_sha": "w", "val_bpb": 2.65, "status": "keep", "kind": "confirm"},
    ]
    assert Gate.runs_by_commit(rows)["w"] == [2.65]
    assert Gate.noise(rows) == pytest.approx(statistics.stdev([2.70, 2.72]))


def test_noise_is_unknown_until_some_commit_has_two_runs_and_never_zero():
    assert Gate.noise(rows_for({"a": [1.0], "b": [2.0]})) is None
    assert Gate.noise(rows_for({"a": [1.0, 1.0]})) == MIN_NOISE


def test_failed_runs_do_not_count_as_replicates():
    rows = rows_for({"a": [1.0]}) + [{"commit_sha": "a", "val_bpb": 0.1, "status": "invalid"}]
    assert Gate.noise(rows) is None


def _campaign_round(
    gate: Gate | None, rng: random.Random, n: int, sigma: float, true_gain: float
) -> bool:
    """One round: n candidates of which one has `true_gain`; True if a null one merges."""
    incumbent = [rng.gauss(1.0, sigma) for _ in range(n)]
    cands = [rng.gauss(1.0 - (true_gain if i == 0 else 0.0), sigma) for i in range(n)]
    best = min(range(n), key=lambda i: cands[i])
    if gate is None:  # naive greedy: keep whatever beats the incumbent's mean
        return best != 0 and cands[best] < statistics.fmean(incumbent)
    noise, dof = statistics.stdev(incumbent), n - 1
    if not gate.promising(cands[best], incumbent, noise, dof):
        return False
    confirm = rng.gauss(1.0 - (true_gain if best == 0 else 0.0), sigma)
    return best != 0 and gate.confirmed(confirm, incumbent + [rng.gauss(1.0, sigma)], noise, dof)


@pytest.mark.parametrize("n", [4, 16])
def test_best_of_n_of_pure_noise_rarely_merges_through_the_gate(n):
    rng = random.Random(n)
    trials = 2000
    naive = sum(_campaign_round(None, rng, n, 0.01, 0.0) for _ in range(trials)) / trials
    gated = sum(_campaign_round(Gate(), rng, n, 0.01, 0.0) for _ in range(trials)) / trials
    assert naive > 0.5  # greedy keeps a lucky null change most rounds
    assert gated < 0.02  # measured ~1% at N = 4, 8 and 16


def test_t_factor_matches_students_t():
    from cluster.gate import t_factor

    for dof, exact in ((3, 3.182), (5, 2.571), (10, 2.228), (30, 2.042)):
        assert t_factor(dof) * 1.959964 == pytest.approx(exact, rel=0.04)
    assert t_factor(None) == 1.0


def test_a_real_gain_of_four_sigma_usually_merges():
    rng = random.Random(7)
    gate, merged = Gate(), 0
    for _ in range(500):
        inc = [rng.gauss(1.0, 0.01) for _ in range(8)]
        cand = rng.gauss(0.96, 0.01)
        noise = statistics.stdev(inc)
        confirm = rng.gauss(0.96, 0.01)
        if gate.promising(cand, inc, noise, 7) and gate.confirmed(confirm, inc, noise, 7):
            merged += 1
    assert merged / 500 > 0.75  # measured ~82%


def test_a_pair_whose_runs_drew_other_random_numbers_is_not_a_pair():
    """Runs at one seed whose digests (`rng`) differ share only the batch order: their
    difference is left out of the noise of pairs (a change of shape, say)."""
    parent = [
        {"trial_id": f"p{i}", "commit_sha": "P", "seed": i, "val_bpb": 2.70 + i / 100}
        for i in range(4)
    ]
    child = [
        {
            "trial_id": f"c{i}",
            "commit_sha": "C",
            "parent_sha": "P",
            "seed": i,
            "paired_with": f"p{i}",
        }
        for i in range(4)
    ]
    for r in parent:
        r.update(status="keep", kind="baseline", rng="a")
    for r, v, rng in zip(child, (2.60, 2.62, 2.65, 2.60), ("a", "a", "a", "b"), strict=True):
        r.update(status="keep", kind="baseline", val_bpb=v, rng=rng)
    index = RowIndex(parent + child)
    assert index.pairs[("C", "P")] == pytest.approx([-0.10, -0.09, -0.07])
    assert comparable("a", "a") and comparable(None, "b") and not comparable("a", "b")
    assert not comparable("?", "?") and not comparable("?:a", "?:a")  # digests not read
    child[3]["rng"] = "a"
    assert len(RowIndex(parent + child).pairs[("C", "P")]) == 4
