"""Behaviour the strategies share, as functions and small objects they compose.

- `Limits`: --trials K (candidates started), --rounds R (R x round_size candidates for the
  strategies without rounds), --hours H (on the driver's clock).
- `replicates(cfg, workers)` and `top_up(view, line, n)`: measure a line's incumbent with n
  runs before candidates are judged against it (4+: with 2, Student's t widens the gate 6x).
- `judge_confirmation(view, row)`: a fresh run of a screened candidate merges when it beats
  its parent's runs clearly through the gate and the parent is still its line's incumbent; an
  ambiguous pass races one more confirmation (CLEAR).
- `screen(view, row)`: whether a candidate's first run is worth confirming.
- `evidence(view, row, k)`: a run's gain over its parent and the gain the gate asks: paired
  (against the parent's run at the same seed) when the campaign judges pairs, else against
  the mean of the parent's runs (cluster/gate.py says which, and why).
- `confirm(view, line, cand, commit, meta)`: queue a confirmation beside a fresh incumbent run
  (paired with it when the campaign pairs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.gate import comparable
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


def confirm_words(view: View, pair: dict | None = None) -> str:
    """What a confirmation runs, for the console."""
    if pair is not None:
        return (
            f"confirming at a fresh seed ({pair['seed']}) beside a fresh incumbent run there "
            f"({pair['trial_id']}), paired with it"
        )
    run = "a second run (train.py fixes its seed)" if fixed_seed(view) else "a fresh seed"
    return f"confirming with {run} beside a fresh incumbent run"


# A later incumbent (one a merge made) is measured with this many runs when pairs judge: its
# confirmation plus replicates at its parent's seeds. Its candidates pair with those runs,
# and the replicates' differences from the parent measure the noise of a pair (3 degrees of
# freedom per merge: the merging confirmation does not count, the gate picked it), so more
# replicates would only wait. Once the noise of a pair rests on PAIR_DOF_KNOWN degrees of
# freedom, PAIRED_REPLICATES_KNOWN runs do (seeds for screens and a confirmation, and one
# difference per merge that keeps the estimate current).
PAIRED_REPLICATES, PAIRED_REPLICATES_KNOWN, PAIR_DOF_KNOWN = 5, 3, 8


def top_up(view: View, line: Line, n: int) -> bool:
    """Queue replicates until the line's incumbent has n runs (one more while the noise is
    unknown). After a merge it has only its confirmation run; when pairs judge, it then gets
    PAIRED_REPLICATES runs at seeds of its parent's runs, each paired with one. True if any
    was queued."""
    inc = line.head
    source = view.camp.merged_from(inc) if view.camp.pairing else None
    if source is not None:  # (on one GPU too: the paired test needs the pairs' 3 dof)
        known = view.pair_noise_dof()[1] >= PAIR_DOF_KNOWN
        paired_n = PAIRED_REPLICATES_KNOWN if known else PAIRED_REPLICATES
        n = min(n, paired_n) if view.cfg.search.replicates else paired_n
    have = len(view.runs_of(inc)) + line.reps_pending[inc]
    missing = n - have
    if view.noise_dof()[0] is None and not line.reps_pending[inc]:
        missing = max(missing, 1)
    if missing > 0 and view.noise_dof()[0] is None and not line.reps_pending[inc]:
        where = f" of island {line.index}" if len(view.lines) > 1 else ""
        seeds = "(train.py fixes its seed)" if fixed_seed(view) else "with varied seeds"
        view.say(f"measuring noise: {missing} incumbent replicate(s){where} {seeds}")
    used = {r["seed"] for r in view.rows if r["commit_sha"] == inc} if missing > 0 else set()
    used |= {s.seed for s in view.pending(inc)}
    for _ in range(missing):
        pair = view.camp.pair_for(source, avoid=used) if source is not None else None
        spec = view.spec("baseline", inc, inc, line, pair=pair)
        used.add(spec.seed)
        view.queue(spec, line)
    return missing > 0


def evidence(view: View, row: dict, multiple: float) -> tuple[float | None, float, bool]:
    """(gain, the gain the gate asks at `multiple`, paired) of one run of a candidate. Paired
    (Campaign.paired_test): its parent's run at the same seed minus it, against multiple x the
    noise of a pair. Else the mean of the parent's runs minus it, against multiple x noise x
    sqrt(1 + 1/m). gain None: nothing to judge against yet."""
    val, parent = row.get("val_bpb"), row.get("parent_sha") or ""
    runs = view.runs_of(parent)
    noise, dof = view.noise_dof()
    if val is None or not noise or not runs:
        return None, 0.0, False
    gate = view.gate
    partner = view.camp.partner(row.get("paired_with"))
    if (
        partner is not None
        and comparable(row.get("rng"), partner.get("rng"))
        and view.camp.paired_test(parent)
    ):
        pair_noise, pair_dof = view.pair_noise_dof()
        need = gate.pair_threshold(pair_noise, multiple, pair_dof)
        return float(partner["val_bpb"]) - val, need, True
    need = gate.threshold(noise, len(runs), multiple, dof)
    return sum(runs) / len(runs) - val, need, False


# A wide campaign (this many workers or more) confirms with two fresh pairs at once rather
# than one and a race: a trial-time sooner, judged on the mean of both, at two more trials.
PARALLEL_CONFIRM_WORKERS = 8


def confirm(
    view: View, line: Line, cand: dict | None, commit: str, meta: dict, pairs: int | None = None
) -> str:
    """Queue the confirmation of `commit` (screened as `cand`, or None: a stack nobody ran):
    `pairs` fresh pairs (default: 2 from PARALLEL_CONFIRM_WORKERS workers, else 1), each a run
    of it beside a fresh incumbent run at a new seed, paired with it when the campaign pairs.

    Never paired with a run the incumbent already has: every candidate of an incumbent is
    screened against its few runs, and when one of them happens to be high, all the nulls
    paired with it look better together; a confirmation on the same runs would pass them
    together too (on the simulator that tripled the truly-worse merges). A fresh pair is
    independent of everything the screen saw. Its incumbent run also adds a seed for later
    candidates to pair with, and checks the incumbent for drift.
    Returns what it queued, in words for the console."""
    parent = line.head
    if pairs is None:
        pairs = 2 if view.workers() >= PARALLEL_CONFIRM_WORKERS else 1
    queued = []
    for _ in range(pairs):
        base = view.spec("baseline", parent, parent, line)
        view.queue(base, line)
        pair = {"trial_id": base.trial_id, "seed": base.seed} if view.camp.pairing else None
        view.queue(view.spec("confirm", commit, parent, line, meta, pair=pair), line)
        queued.append(pair)
    words = confirm_words(view, queued[0])
    return words if pairs == 1 else f"{words}, and {pairs - 1} more such pair(s) at once"


# Racing. A confirmation that beats its test by CLEAR times the gain asked merges at once; one
# that passes by less is ambiguous and gets a second fresh pair, and merges when the mean of the
# two beats CLEAR x that gain / sqrt(2) (as two confirmations run at once must). A null
# candidate that passed its screen passes a confirmation at k=2 in 2.3% of cases; with the
# race, in about 0.2% (two pairs at once: 0.13%), while a change that gains 3 noise std still
# merges about as often (0.81, or 0.89 with two pairs at once, against 0.84), at one more pair
# for a third of the confirmations of gains. With the many candidates of a wide campaign,
# that is what keeps the gate's false merges rare (truly-worse merges per simulated campaign
# at 16 workers: benchmarks/search_sim.py).
CLEAR = 1.5


def _confirmations(view: View, row: TrialRow) -> list[dict]:
    """The earlier scored confirmations of the row's commit on its parent (a race's first)."""
    return [
        r
        for r in view.camp.index().seed_rows.get(row.commit_sha or "", [])
        if r["kind"] == "confirm"
        and r["parent_sha"] == row.parent_sha
        and r["trial_id"] != row.trial_id
    ]


def judge_confirmation(view: View, row: TrialRow) -> tuple[Verdict, bool]:
    """(verdict, stale): MERGE; FOLLOW_UP while another confirmation of it is queued or
    running (it decides, on all of them), or when one alone is ambiguous (a second one is
    queued: the race); stale when it passed (or was ambiguous) but its parent is no longer
    the incumbent. A confirmation that failed to run leaves the decision to the others."""
    others = [
        s
        for s in view.pending(row.commit_sha or "")
        if s.kind == "confirm" and s.parent_sha == row.parent_sha and s.trial_id != row.trial_id
    ]
    if others:
        return Verdict.FOLLOW_UP, False
    k, this = view.gate.confirm_multiple, row.to_dict()
    # each confirmation in units of the gain its own test asks (a pair's partner may have
    # failed: that one is judged unpaired), so the paired and unpaired ones combine
    scores, gain, need = [], 0.0, 0.0
    for r in [*_confirmations(view, row), this]:
        g, asked, _ = evidence(view, r, k)
        if g is not None and asked > 0:
            scores.append(g / asked)
            gain, need = g, asked
    if not scores:
        return Verdict.DISCARD, False
    mean, n = sum(scores) / len(scores), len(scores)
    passed = mean > CLEAR / n**0.5
    ambiguous = n == 1 and not passed and mean > 1.0
    if not (passed or ambiguous):
        return Verdict.DISCARD, False
    line = view.lines[row.island or 0]
    if line.head != row.parent_sha:
        return Verdict.DISCARD, True
    if passed:
        return Verdict.MERGE, False
    words = confirm(view, line, None, row.commit_sha, proposal_meta(this), pairs=1)
    view.say(
        f"{row.trial_id} passes its confirmation (gain {gain:.4f} > {need:.4f}) but not "
        f"clearly (< {CLEAR * need:.4f}): one more, {words}"
    )
    return Verdict.FOLLOW_UP, False


def screen(view: View, row: dict) -> tuple[bool, float | None, float]:
    """(promising, gain, the gain the gate asks) of a candidate's screening run."""
    gain, need, _ = evidence(view, row, view.gate.noise_multiple)
    return gain is not None and gain > need, gain, need
