"""The merge gate: a gain counts only when it beats the measured noise, twice.

Best-of-N of null proposals beats the incumbent by luck, more often as N grows. So:
1. noise: the pooled standard deviation of val_bpb over replicate runs of the same commit
   (incumbent replicates with varied seeds, confirmations), re-estimated as rows arrive;
2. screen: a candidate is promising when incumbent_mean - val_bpb > k * noise * sqrt(1 + 1/m)
   (m = incumbent runs; the difference of one run and a mean of m);
3. confirm: a fresh run of the candidate (new seed), beside a fresh incumbent run, must again
   beat the incumbent's mean by confirm_k * noise * sqrt(1 + 1/m). The selection-biased
   screening run is not reused as evidence.
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
        out: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            if r.get("kind") == "candidate":
                continue
            if r.get("val_bpb") is not None and r.get("status") in ("keep", "discard"):
                out[r["commit_sha"]].append(float(r["val_bpb"]))
        return out

    @staticmethod
    def noise_dof(rows: list[dict[str, Any]]) -> tuple[float | None, int]:
        """Pooled std of replicate groups (ddof=1 per group) and its degrees of freedom."""
        ss, dof = 0.0, 0
        for vals in Gate.runs_by_commit(rows).values():
            if len(vals) >= 2:
                mean = statistics.fmean(vals)
                ss += sum((v - mean) ** 2 for v in vals)
                dof += len(vals) - 1
        if dof == 0:
            return None, 0
        return max(math.sqrt(ss / dof), MIN_NOISE), dof

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
