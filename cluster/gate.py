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
    confirm_multiple: float = 1.0  # k for the confirmation run

    @staticmethod
    def runs_by_commit(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        """val_bpb of every successful run, grouped by commit (baselines, candidates, confirms)."""
        out: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            if r.get("val_bpb") is not None and r.get("status") in ("keep", "discard"):
                out[r["commit_sha"]].append(float(r["val_bpb"]))
        return out

    @staticmethod
    def noise(rows: list[dict[str, Any]]) -> float | None:
        """Pooled std of replicate groups (ddof=1 per group); None until some commit has 2 runs."""
        ss, dof = 0.0, 0
        for vals in Gate.runs_by_commit(rows).values():
            if len(vals) >= 2:
                mean = statistics.fmean(vals)
                ss += sum((v - mean) ** 2 for v in vals)
                dof += len(vals) - 1
        if dof == 0:
            return None
        return max(math.sqrt(ss / dof), MIN_NOISE)

    def threshold(self, noise: float, incumbent_runs: int, multiple: float) -> float:
        return multiple * noise * math.sqrt(1.0 + 1.0 / max(1, incumbent_runs))

    def promising(self, val_bpb: float, incumbent: list[float], noise: float) -> bool:
        gain = statistics.fmean(incumbent) - val_bpb
        return gain > self.threshold(noise, len(incumbent), self.noise_multiple)

    def confirmed(self, confirm_bpb: float, incumbent: list[float], noise: float) -> bool:
        gain = statistics.fmean(incumbent) - confirm_bpb
        return gain > self.threshold(noise, len(incumbent), self.confirm_multiple)
