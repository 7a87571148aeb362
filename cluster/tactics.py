"""Behaviour the strategies share, as functions and small objects they compose.

- `Limits`: --trials K (candidates started), --rounds R (R x round_size candidates for the
  strategies without rounds), --hours H (on the driver's clock).
- `replicates(cfg, workers)` and `top_up(view, line, n)`: measure a line's incumbent with n
  runs before candidates are judged against it (4+: with 2, Student's t widens the gate 6x).
- `judge_confirmation(view, row)`: a fresh run of a screened candidate merges when it beats
  its parent's runs through the gate and the parent is still its line's incumbent.
- `screen(view, val_bpb, parent)`: whether a candidate's first run is worth confirming.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.strategy import Verdict

if TYPE_CHECKING:
    from cluster.lines import Line
    from cluster.loop import View
    from cluster.rows import TrialRow


def replicates(cfg, workers: int) -> int:
    """--replicates, else one per worker: at least 4 (Student's t), at most 16 (the noise is
    known well by then; 1000 workers asking for 1000 replicates would only wait)."""
    return max(2, cfg.search.replicates or max(4, min(workers, 16)))


class Limits:
    def __init__(self, cfg, round_size: int | None = None):
        self.trials, self.hours = cfg.search.trials, cfg.search.hours
        # --rounds R without rounds: R x round_size candidates, fixed at start
        self.rounds, self.round_size = cfg.search.rounds, round_size
        self.t_start: float | None = None  # the driver's clock when first asked

    def room(self, view: View) -> int | None:
        """Candidates that may still start (None: no count limit)."""
        limits = []
        if self.trials is not None:
            limits.append(self.trials)
        if self.rounds is not None and self.round_size:
            limits.append(self.rounds * self.round_size)
        return max(0, min(limits) - view.candidates_started()) if limits else None

    def time_up(self, view: View) -> bool:
        if self.t_start is None:
            self.t_start = view.now()
        return self.hours is not None and view.now() - self.t_start >= self.hours * 3600

    def reached(self, view: View) -> bool:
        return self.time_up(view) or self.room(view) == 0


def proposal_meta(row: dict) -> dict:
    """What a follow-up (a confirmation, a re-run) carries of the proposal a row ran."""
    return {k: row.get(k) for k in ("proposer", "model", "description")}


def fixed_seed(view: View) -> bool:
    """Under protocol=autoresearch train.py sets its own seed: a re-run differs only by
    run-to-run variation, and the console says so instead of promising a fresh seed."""
    return view.cfg.trial.protocol == "autoresearch"


def confirm_words(view: View) -> str:
    run = "a second run (train.py fixes its seed)" if fixed_seed(view) else "a fresh seed"
    return f"confirming with {run} beside a fresh incumbent run"


def top_up(view: View, line: Line, n: int) -> bool:
    """Queue replicates until the line's incumbent has n runs (one more while the noise is
    unknown). After a merge it has only its confirmation run. True if any was queued."""
    inc = line.head
    have = len(view.runs_of(inc)) + line.reps_pending[inc]
    missing = n - have
    if view.noise_dof()[0] is None and not line.reps_pending[inc]:
        missing = max(missing, 1)
    if missing > 0 and view.noise_dof()[0] is None and not line.reps_pending[inc]:
        where = f" of island {line.index}" if len(view.lines) > 1 else ""
        seeds = "(train.py fixes its seed)" if fixed_seed(view) else "with varied seeds"
        view.say(f"measuring noise: {missing} incumbent replicate(s){where} {seeds}")
    for _ in range(missing):
        view.queue(view.spec("baseline", inc, inc, line), line)
    return missing > 0


def judge_confirmation(view: View, row: TrialRow) -> tuple[Verdict, bool]:
    """(verdict, stale): stale when it passed but its parent is no longer the incumbent."""
    runs = view.runs_of(row.parent_sha)
    noise, dof = view.noise_dof()
    if row.val_bpb is None or not noise or not runs:
        return Verdict.DISCARD, False
    if not view.gate.confirmed(row.val_bpb, runs, noise, dof):
        return Verdict.DISCARD, False
    if view.lines[row.island or 0].head == row.parent_sha:
        return Verdict.MERGE, False
    return Verdict.DISCARD, True


def screen(view: View, val_bpb: float | None, parent: str) -> tuple[bool, float | None, float]:
    """(promising, gain over the parent's mean, the gain the gate asks) of a screening run."""
    runs = view.runs_of(parent)
    noise, dof = view.noise_dof()
    if val_bpb is None or not noise or not runs:
        return False, None, 0.0
    gate = view.gate
    need = gate.threshold(noise, len(runs), gate.noise_multiple, dof)
    gain = sum(runs) / len(runs) - val_bpb
    return gate.promising(val_bpb, runs, noise, dof), gain, need
