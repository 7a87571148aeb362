"""`async`: every worker stays busy; results are gated as they arrive.

After the noise measurement, whenever a worker is free the strategy hands out the most
useful next trial of a line, in this order:
1. follow-ups of results already judged: incumbent replicates, confirmation runs, and re-runs
   of trials lost when a worker (or a previous driver) died;
2. re-runs of stale winners: a candidate (or a confirmed one) that beat its parent while
   another winner was merged meanwhile is re-applied to the current incumbent and run again as
   a new candidate on it; it is never merged on the strength of runs on an old parent. A change
   that no longer applies is recorded `invalid` with the reason;
3. `combine` proposals: two near-misses whose changes touch different lines are stacked onto
   the current incumbent (a three-way merge), validated like any proposal, and run as their
   own candidate, which must pass the gate itself. A near-miss beat its parent's mean by more
   than one noise std (NEAR_MISS_SIGMA) but less than the gate asks: any positive gain would
   make half of all null proposals "near-misses" and fill the workers with combined noise.
   Each near-miss joins at most one combination;
4. fresh proposals from the pipeline's queue for that line.

Each candidate is gated on arrival against its parent's runs; a promising one on the current
incumbent gets a confirmation run plus a fresh incumbent replicate, and merges only when the
confirmation passes and its parent is still the incumbent. A new incumbent is measured with
replicates (up to --replicates runs) before the next candidate on it starts; candidates that
land before its replicates are judged after them.

Stopping: --trials K and --hours H; --rounds R means R x per_round candidates (per_round
defaults to the workers); the ledger's `round` counts batches of per_round candidates. Once a
limit is reached no new candidate starts; follow-ups of results already judged promising
still run, so a winner found last is not thrown away.

With `lines=K` (population) the same machinery serves K lines, each with its own incumbent,
follow-ups and near-misses; a free worker takes the next trial from the lines in turn.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from cluster.patches import PatchError, make_patch, merge3
from cluster.records import Proposal, TrialSpec
from cluster.strategy import Verdict
from cluster.tactics import (
    Limits,
    confirm,
    judge_confirmation,
    proposal_meta,
    replicates,
    screen,
    top_up,
)

NEAR_MISSES_KEPT = 20  # the most recent near-misses that may still be paired
NEAR_MISS_SIGMA = 1.0  # a near-miss gains more than this many noise std (and less than the gate)
_RERUN = re.compile(r"^re-run of t\d+ on [0-9a-f]+: ")


@dataclass
class _LineState:
    """What async keeps per line of search, beside the line's own follow-ups."""

    rebases: deque = field(default_factory=deque)  # winner rows to re-run on the incumbent
    combines: deque = field(default_factory=deque)  # near-miss row pairs to stack
    near: list = field(default_factory=list)  # near-miss rows, oldest first
    paired: set = field(default_factory=set)  # trial ids of near-misses already combined
    deferred: list = field(default_factory=list)  # candidates awaiting their parent's replicates
    screened: dict = field(default_factory=dict)  # commit -> the candidate row that screened it


class Async:
    name = "async"
    pairs = True  # candidates run at their parent's seeds; the gate judges pairs (gate.py)

    def __init__(self, cfg, workers: int, lines: int = 1):
        self.cfg, self.lines = cfg, lines
        self.replicates = replicates(cfg, max(1, workers // lines))  # a line's share
        self.round_size = cfg.search.per_round or workers
        self.limits = Limits(cfg, self.round_size)
        self.state = [_LineState() for _ in range(lines)]
        self.turn = 0  # the line the next trial is asked of first
        self.first_round: int | None = None

    def settings(self) -> dict:
        return {}

    # ------------------------------------------------------------------ what runs next

    def next_trial(self, view) -> TrialSpec | None:
        if self.first_round is None:
            self.first_round = view.round
        self.regate(view)
        stopping = self.limits.reached(view)
        for k in range(self.lines):
            i = (self.turn + k) % self.lines
            spec = self._next_on(view, view.lines[i], stopping, first=k == 0)
            if spec is not None:
                self.turn = (i + 1) % self.lines
                return spec
        return None

    def _next_on(self, view, line, stopping: bool, first: bool) -> TrialSpec | None:
        st = self.state[line.index]

        def stale(spec, proposal):
            if spec.kind == "confirm":
                cand = st.screened.get(spec.commit_sha) or _row_of(spec, proposal)
                view.say(
                    f"{cand['trial_id']} awaited confirmation, but the incumbent moved to "
                    f"{line.head[:10]}; re-running it there instead"
                )
                st.rebases.append(cand)

        while True:
            spec = view.pop_follow_up(line, stale)
            if spec is not None:
                return spec
            # Before candidates on a new incumbent, measure it.
            if (stopping and not st.rebases) or not self.top_up(view, line):
                break
        while st.rebases:
            spec = self.rerun(view, line, st.rebases.popleft())
            if spec is not None:
                return spec
        if stopping:
            return None
        while st.combines:
            spec = self.combine(view, line, *st.combines.popleft())
            if spec is not None:
                return spec
        got = view.take(line, 1, wait=None if first else 0.0)
        if got:
            view.start_round(self.first_round + 1 + view.candidates_started() // self.round_size)
            return got[0]
        return None

    def top_up(self, view, line) -> bool:
        if any(x.reps_pending[line.head] for x in view.lines if x is not line):
            return False  # another line (same commit) is measuring it
        return top_up(view, line, self.replicates)

    def _onto(self, view, row: dict, src: str) -> str:
        """The change of the row's commit (against its own parent), made to `src` instead.

        A three-way merge (parent, src, commit), not a context patch: a change three lines
        from one the incumbent gained since is still the same change."""
        return merge3(view.source(row["parent_sha"]), src, view.source(row["commit_sha"]))

    def rerun(self, view, line, win: dict) -> TrialSpec | None:
        """A winner whose parent is stale, re-applied to the incumbent: a new candidate."""
        inc, src, target = line.head, view.source(line.head), view.cfg.trial.target
        base = _RERUN.sub("", win.get("description") or "")
        p = Proposal(
            parent_sha=inc,
            patch="",
            description=f"re-run of {win['trial_id']} on {inc[:10]}: {base}",
            proposer=win.get("proposer") or "rerun",
            model=win.get("model"),
        )
        try:
            p.patch = make_patch(src, self._onto(view, win, src), target)
        except PatchError as e:
            p.error = (
                f"stale winner {win['trial_id']} (run on {win['parent_sha'][:10]}) no longer "
                f"applies to the incumbent {inc[:10]}: {str(e).splitlines()[0][:200]}"
            )
        if not p.error and not p.patch:
            p.error = f"stale winner {win['trial_id']}: the incumbent {inc[:10]} already has it"
        return view.commit(p, line)

    def combine(self, view, line, a: dict, b: dict) -> TrialSpec | None:
        """Two near-misses stacked on the current incumbent: its own candidate."""
        inc, src, target = line.head, view.source(line.head), view.cfg.trial.target
        p = Proposal(
            parent_sha=inc,
            patch="",
            description=(
                f"combine {a['trial_id']} + {b['trial_id']}: "
                f"{_RERUN.sub('', a.get('description') or '')} + "
                f"{_RERUN.sub('', b.get('description') or '')}"
            ),
            proposer="combine",
        )
        try:
            p.patch = make_patch(src, self._stack(view, a, b, src), target)
        except PatchError as e:
            p.error = f"combine of {a['trial_id']} and {b['trial_id']} on {inc[:10]}: {e}"
        return view.commit(p, line)

    def _stack(self, view, a: dict, b: dict, src: str) -> str:
        return merge3(src, self._onto(view, a, src), self._onto(view, b, src))

    # ------------------------------------------------------------------ results

    def on_result(self, view, row) -> Verdict:
        line = view.lines[row.island or 0]
        st = self.state[line.index]
        if row.kind == "baseline":
            return Verdict.KEEP
        if row.kind == "confirm":
            verdict, stale = judge_confirmation(view, row)
            if stale:
                cand = st.screened.get(row.commit_sha) or row.to_dict()
                view.say(
                    f"{cand['trial_id']} confirmed, but on {row.parent_sha[:10]}, no longer "
                    f"the incumbent; re-running it on {line.head[:10]}"
                )
                st.rebases.append(cand)
            return verdict
        if row.val_bpb is not None:
            line.judged()
            return self.screen(view, line, row.to_dict())
        return Verdict.DISCARD

    def regate(self, view) -> None:
        """Candidates that waited for their parent's replicates are judged now."""
        for line in view.lines:
            st = self.state[line.index]
            waiting, st.deferred = st.deferred, []
            for row in waiting:
                self.screen(view, line, row)

    def screen(self, view, line, row: dict) -> Verdict:
        """Gate a candidate as it arrives: confirm, re-run on the incumbent, or near-miss."""
        st, parent = self.state[line.index], row["parent_sha"]
        if any(x.reps_pending[parent] for x in view.lines):
            st.deferred.append(row)  # judge it against the replicates being run
            return Verdict.DISCARD
        promising, gain, need = screen(view, row)
        if gain is None:
            return Verdict.DISCARD
        if promising:
            if parent != line.head:
                view.say(
                    f"{row['trial_id']} beat its parent {parent[:10]} by {gain:.4f}, but the "
                    f"incumbent is now {line.head[:10]}; re-running it there"
                )
                st.rebases.append(row)
                return Verdict.DISCARD
            st.screened[row["commit_sha"]] = row
            words = confirm(view, line, row, row["commit_sha"], proposal_meta(row))
            view.say(f"{row['trial_id']} looks better (gain {gain:.4f}); {words}")
            return Verdict.FOLLOW_UP
        if gain > NEAR_MISS_SIGMA * need / view.gate.noise_multiple:  # > 1 std of its test
            self.near_miss(view, line, row)
        return Verdict.DISCARD

    def near_miss(self, view, line, row: dict) -> None:
        """Pair a new near-miss with the best earlier unpaired one it stacks with."""
        st, src = self.state[line.index], view.source(line.head)
        for other in sorted(st.near, key=lambda r: (r["val_bpb"], r["trial_id"])):
            if other["trial_id"] in st.paired:
                continue
            try:
                self._stack(view, other, row, src)
            except PatchError:
                continue
            st.paired.update((other["trial_id"], row["trial_id"]))
            view.say(
                f"{other['trial_id']} and {row['trial_id']} are near-misses on different "
                "lines; proposing their combination"
            )
            st.combines.append((other, row))
            break
        st.near = [*st.near, row][-NEAR_MISSES_KEPT:]

    def done(self, view) -> bool:
        if not self.limits.reached(view):
            return False
        return not view.queued() and not any(st.rebases for st in self.state)

    def close(self, view) -> None:
        pass


def _row_of(spec: TrialSpec, proposal: dict | None) -> dict:
    p = proposal or {}
    return {
        "trial_id": spec.trial_id,
        "commit_sha": spec.commit_sha,
        "parent_sha": spec.parent_sha,
        "description": p.get("description") or "",
        "proposer": p.get("proposer"),
        "model": p.get("model"),
    }
