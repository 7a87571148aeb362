"""The merge gate: a gain counts only when it beats the measured noise, twice.

Best-of-N of null proposals beats the incumbent by luck, more often as N grows. So:
1. noise: the pooled standard deviation of val_bpb over replicate runs of the same commit
   (incumbent replicates with varied seeds, confirmations), re-estimated as rows arrive;
2. screen: a candidate is promising when incumbent_mean - val_bpb > k * noise * sqrt(1 + 1/m)
   (m = incumbent runs; the difference of one run and a mean of m);
3. confirm: a fresh run of the candidate (new seed), beside a fresh incumbent run, must again
   beat the incumbent's mean by confirm_k * noise * sqrt(1 + 1/m), clearly (1.5x that) or on
   the mean of a second confirmation (a race: cluster/tactics.py, CLEAR). The
   selection-biased screening run is not reused as evidence.

Paired comparisons (common random numbers). A run's seed sets its initialization and its batch
order, and two commits trained at one seed share much of their noise (measured on the CPU
trainer: rho ~0.86). So a candidate runs at a seed on which its parent has an unselected run
(`paired_with` in the ledger), and is judged on the paired difference, parent minus candidate,
against k * pair_noise, where pair_noise is the pooled std of paired differences of one commit
against its parent over several seeds (a new incumbent's replicates run at its parent's seeds:
those pairs measure it, unselected). A confirmation is a fresh pair: the candidate and its
parent at a new seed, where nothing else was compared with the parent's run. Which
test applies is decided per campaign, not per candidate: the paired one once its noise is
known and it asks a smaller gain (k * pair_noise * t(dof) below k * noise * sqrt(1+1/m) * t);
until then, and where a seed cannot be set (protocol=autoresearch), the unpaired test.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

MIN_NOISE = 1e-4  # a floor: identical replicates (deterministic budgets) must not gate at 0


@dataclass
class Gate:
    noise_multiple: float = 2.0  # k for screening
    confirm_multiple: float = 2.0  # k for the confirmation run

    @staticmethod
    def runs_by_commit(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        """val_bpb of every successful unselected run, grouped by commit: replicates and
        confirmations. A candidate's screening run is left out: it was picked as the best of
        its round, so it is biased low and would inflate the noise and flatter an incumbent."""
        return RowIndex(rows).runs

    @staticmethod
    def noise_dof(rows: list[dict[str, Any]]) -> tuple[float | None, int]:
        """Pooled std of replicate groups (ddof=1 per group) and its degrees of freedom, over
        runs at fresh seeds (not paired: RowIndex.noise_dof says why)."""
        return RowIndex(rows).noise_dof()

    @staticmethod
    def pair_noise_dof(rows: list[dict[str, Any]]) -> tuple[float | None, int]:
        """Pooled std of paired differences (a run minus its parent's run at the same seed)
        over groups of one commit against one parent, and its degrees of freedom. Only
        unselected runs count (replicates, confirmations: never a screening run, on either
        side of a pair), and never the confirmation that merged a commit: the gate picked it
        for its value, and a merge's group would otherwise be biased up by it."""
        return RowIndex(rows).pair_noise_dof()

    @staticmethod
    def noise(rows: list[dict[str, Any]]) -> float | None:
        """The pooled std; None until some commit has 2 successful runs."""
        return Gate.noise_dof(rows)[0]

    def threshold(
        self, noise: float, incumbent_runs: int, multiple: float, dof: int | None = None
    ) -> float:
        """multiple x noise x sqrt(1 + 1/m), widened by Student's t when the noise itself rests
        on few replicates (4 replicates let a 2-sigma gate pass 3x more luck than it should)."""
        return multiple * noise * math.sqrt(1.0 + 1.0 / max(1, incumbent_runs)) * t_factor(dof)

    def pair_threshold(self, pair_noise: float, multiple: float, dof: int | None = None) -> float:
        """The paired difference a candidate must beat (one pair: no sqrt(1 + 1/m))."""
        return multiple * pair_noise * t_factor(dof)

    def promising(
        self, val_bpb: float, incumbent: list[float], noise: float, dof: int | None = None
    ) -> bool:
        gain = statistics.fmean(incumbent) - val_bpb
        return gain > self.threshold(noise, len(incumbent), self.noise_multiple, dof)

    def confirmed(
        self, confirm_bpb: float, incumbent: list[float], noise: float, dof: int | None = None
    ) -> bool:
        gain = statistics.fmean(incumbent) - confirm_bpb
        return gain > self.threshold(noise, len(incumbent), self.confirm_multiple, dof)


def comparable(rng: str | None, partner_rng: str | None) -> bool:
    """Whether a run and its partner at the same seed drew the same random numbers, so their
    difference is a paired one: their digests agree, or one is not known (the simulator, a
    ledger older than the digest); "?" (a state not read, or no digest reported) never is.
    A change of the model's shape (MLP_RATIO, a width, a layer) changes what its
    initialization draws: its run shares only the batch order with its partner, and on the
    CPU default its paired difference then spreads nearly as widely as two unpaired runs
    (0.016-0.019, rho 0.43, against 0.004-0.008 for a learning rate and 0.020 unpaired).
    Judged against the noise of learning-rate pairs, a null change of shape would pass a
    2-sigma screen about a fifth of the time."""
    if not rng or not partner_rng:
        return True
    return rng == partner_rng and "?" not in rng  # "?": a state that was not read


def _unselected(r: dict[str, Any]) -> bool:
    """A successful run nobody picked for its value: a replicate or a confirmation."""
    return (
        r.get("kind") != "candidate"
        and r.get("val_bpb") is not None
        and r.get("status") in ("keep", "discard")
    )


def _pooled(groups) -> tuple[float | None, int]:
    ss, dof = 0.0, 0
    for vals in groups:
        if len(vals) >= 2:
            mean = statistics.fmean(vals)
            ss += sum((v - mean) ** 2 for v in vals)
            dof += len(vals) - 1
    if dof == 0:
        return None, 0
    return max(math.sqrt(ss / dof), MIN_NOISE), dof


class RowIndex:
    """What the gate reads of a ledger, kept up to date as rows are appended (`update`):
    each commit's unselected runs (and their rows), the commits run as candidates, the paired differences by (commit,
    parent), rows by trial id, and the parent each merged commit came from. A campaign of
    thousands of trials reads these on every decision; recounting the ledger each time
    made a simulated day at 16 workers quadratic."""

    def __init__(self, rows: list[dict[str, Any]] | None = None):
        self.seen = 0
        self.runs: dict[str, list[float]] = defaultdict(list)
        self.seed_rows: dict[str, list[dict]] = defaultdict(list)
        self.by_id: dict[str, dict] = {}
        self.pairs: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.merged_from: dict[str, str] = {}
        self.candidates: set[str] = set()  # commits run as candidates (any status)
        self.fresh: dict[str, list[float]] = defaultdict(list)  # runs at seeds of their own
        self._replicated: set[str] = set()  # commits with 2+ runs at seeds of their own
        self._paired: set[tuple[str, str]] = set()  # groups with 2+ differences
        self._noise: tuple[float | None, int] | None = None  # noise_dof, until a fresh run
        self._pair_noise: tuple[float | None, int] | None = None  # and until a difference
        if rows:
            self.update(rows)

    def update(self, rows: list[dict[str, Any]]) -> RowIndex:
        """Take in rows[self.seen:] (the ledger only grows)."""
        for r in rows[self.seen :]:
            if r.get("trial_id"):
                self.by_id[r["trial_id"]] = r
            if r.get("kind") == "candidate" and r.get("commit_sha"):
                self.candidates.add(r["commit_sha"])
            if r.get("merged") and r.get("commit_sha") and r.get("parent_sha"):
                self.merged_from[r["commit_sha"]] = r["parent_sha"]
            if not _unselected(r):
                continue
            sha = r.get("commit_sha") or ""
            self.runs[sha].append(float(r["val_bpb"]))
            self.seed_rows[sha].append(r)
            if not r.get("paired_with"):
                self.fresh[sha].append(float(r["val_bpb"]))
                self._noise = None
                if len(self.fresh[sha]) >= 2:
                    self._replicated.add(sha)
            partner = self.by_id.get(r.get("paired_with") or "")
            # The confirmation that merged a commit was picked by the gate for its value: its
            # difference (or, as a partner, its run) would bias the noise of a pair upward.
            merging = r.get("merged") or (partner or {}).get("merged")
            if (
                partner is not None
                and _unselected(partner)
                and not merging
                and comparable(r.get("rng"), partner.get("rng"))
            ):
                key = (sha, partner.get("commit_sha") or "")
                self.pairs[key].append(float(r["val_bpb"]) - float(partner["val_bpb"]))
                self._pair_noise = None
                if len(self.pairs[key]) >= 2:
                    self._paired.add(key)
        self.seen = len(rows)
        return self

    def noise_dof(self) -> tuple[float | None, int]:
        """The noise of a run, from runs at seeds no other run of the group shares with a run
        elsewhere: a paired run re-uses its partner's seed, and every incumbent's replicates
        at the same few seeds of its parents would share those seeds' effects, so their
        spread would be as small as those few seed effects happen to be, with the degrees of
        freedom of many groups (on the simulator, half the true noise mid-campaign)."""
        if self._noise is None:  # the gate asks several times per row: pool once per change
            self._noise = _pooled(self.fresh[s] for s in self._replicated)
        return self._noise

    def pair_noise_dof(self) -> tuple[float | None, int]:
        if self._pair_noise is None:
            self._pair_noise = _pooled(self.pairs[k] for k in self._paired)
        return self._pair_noise


_T975 = {1: 12.706, 2: 4.303}  # exact where the expansion below is poor


def t_factor(dof: int | None) -> float:
    """t_{0.975, dof} / z_{0.975}: how much wider an interval is with an estimated std.

    Cornish-Fisher expansion of Student's t quantile (within 4% of the exact value for dof 3)."""
    if not dof:
        return 1.0
    z = 1.959964
    if dof in _T975:
        return _T975[dof] / z
    t = z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
    return t / z
