"""`greedy`: autoresearch's own rule, on every worker: keep a change if its one run beats
the incumbent's value; no replicates, no gate, no confirmation.

One run of the incumbent gives its value; each candidate is judged on arrival against the
value of the incumbent it ran on, and merges when lower (and its parent is still the
incumbent: a late result on an old incumbent is discarded). The merged run's value becomes
the incumbent's. On one GPU this is autoresearch; on N it is the baseline the gated
strategies are measured against (benchmarks/search_sim.py). Noise makes it merge
regressions: best-of-N luck looks like progress.
"""

from __future__ import annotations

import statistics

from cluster.strategy import Verdict
from cluster.tactics import Limits


class Greedy:
    name, lines = "greedy", 1

    def __init__(self, cfg, workers: int):
        self.cfg = cfg
        self.limits = Limits(cfg, cfg.search.per_round or workers)
        self.value: dict[str, float] = {}  # incumbent sha -> the value it is judged by

    def settings(self) -> dict:
        return {}

    def _value(self, view, sha: str) -> float | None:
        if sha not in self.value:
            won = [r for r in view.rows if r.get("merged") and r["commit_sha"] == sha]
            runs = view.runs_of(sha)
            if won and won[-1]["val_bpb"] is not None:
                self.value[sha] = won[-1]["val_bpb"]
            elif runs:
                self.value[sha] = statistics.fmean(runs)
        return self.value.get(sha)

    def next_trial(self, view):
        line = view.lines[0]
        spec = view.pop_follow_up(line)
        if spec is not None:
            return spec
        if self._value(view, line.head) is None:  # one run of the incumbent first
            if line.reps_pending[line.head]:
                return None
            view.queue(view.spec("baseline", line.head, line.head, line), line)
            return view.pop_follow_up(line)
        if self.limits.reached(view):
            return None
        got = view.take(line, 1)
        return got[0] if got else None

    def on_result(self, view, row) -> Verdict:
        if row.kind == "baseline":
            return Verdict.KEEP
        line = view.lines[row.island or 0]
        best = self._value(view, row.parent_sha)
        if row.val_bpb is None or best is None or row.parent_sha != line.head:
            return Verdict.DISCARD
        if row.val_bpb < best:
            self.value[row.commit_sha] = row.val_bpb
            return Verdict.MERGE
        return Verdict.DISCARD

    def done(self, view) -> bool:
        return self.limits.reached(view) and not view.queued()

    def close(self, view) -> None:
        pass
