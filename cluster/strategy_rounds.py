"""`rounds`: the shape autoresearch users know, N at a time, as a barrier over the loop.

Measure the incumbent's noise with replicates; start a round of per_round candidates (the
workers, by default); wait for all of them (the barrier: nothing new starts while the round
runs); screen the best through the gate; run a confirmation of it beside a fresh incumbent
replicate (replicate first, so the confirmation is judged with it when both fit); merge when
the confirmation passes; repeat. Stops after --rounds R rounds, --trials K candidates or
--hours H; a confirmation under way still finishes.

The barrier holds for the round's candidates and for what ran when it opened (the last
round's confirmation, so that its merge is known when this round closes); follow-ups that
start during the round (a race's second pair, a stack's fallback, a lost trial's re-run) run
beside it without holding it, and one that passes after a later round's merge is re-applied
to the new incumbent and confirmed there.
"""

from __future__ import annotations

from cluster.patches import PatchError, make_patch, merge3
from cluster.records import Proposal
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

JUST_STARTED = 5.0  # s: a trial submitted this recently holds its worker for about a trial


class Rounds:
    name, lines = "rounds", 1
    pairs = True  # candidates run at their parent's seeds; the gate judges pairs (gate.py)

    def __init__(self, cfg, workers: int):
        self.cfg, self.workers = cfg, workers
        self.replicates = replicates(cfg, workers)
        self.limits = Limits(cfg)
        self.rounds_done: int | None = None  # the campaign's, counted from its ledger
        self.open: int | None = None  # the round being collected or run
        self.taken = 0  # candidates started in the open round
        self.pauses_at_open = 0
        self.busy_at_open = 0  # workers held for most of a trial when the round opened
        self.opened_at = 0.0  # the clock when it opened: trials from before hold its barrier
        self.fallback: dict[str, dict] = {}  # a stack's commit -> the round's best, if it fails
        self.stacking = cfg.search.stack

    def settings(self) -> dict:
        return {}

    def per_round(self, view) -> int:
        """--per-round, else the workers wanted now (they follow the cluster with auto), less
        those busy for most of a trial more when this round opened (the last round's
        confirmation, a new incumbent's replicates; `held_workers`): a round that waited for
        them would hold every other worker idle at its barrier. Workers about to finish are
        not left out: the round's candidates start on them."""
        if self.cfg.search.per_round:
            return self.cfg.search.per_round
        return max(1, (view.workers() or self.workers) - self.busy_at_open)

    def stopping(self, view) -> bool:
        if self.rounds_done is None:  # a resume goes on counting: rounds begun before it count
            self.rounds_done = view.round
        if self.cfg.search.rounds is not None and self.rounds_done >= self.cfg.search.rounds:
            return True
        return self.limits.reached(view)

    def next_trial(self, view):
        line = view.lines[0]
        spec = view.pop_follow_up(line)
        if spec is not None:
            return spec
        if self.open is not None:
            if self.taken < self.per_round(view) and not self.stopping(view):
                if not self.exhausted(view):
                    got = view.take(line, 1, wait=10.0 if self.taken else None)
                    if got:
                        self.taken += 1
                        return got[0]
                if not self.taken and not self.exhausted(view):
                    return None  # no proposal yet: the loop asks again
                self.taken = self.per_round(view)  # run what we have rather than idle
            if view.running(line, kind="candidate") or view.running(line, before=self.opened_at):
                return None  # the barrier (below)
            exhausted = self.exhausted(view)
            self.close_round(view, line)
            # its confirmation, else the next round at once (None would leave the workers
            # idle until the next result: the barrier no longer waits for every trial);
            # not after a round cut short for want of proposals (the loop decides then)
            spec = view.pop_follow_up(line)
            return spec if spec is not None or exhausted else self.next_trial(view)
        if self.stopping(view):
            return None
        if top_up(view, line, self.replicates):
            return view.pop_follow_up(line)
        # (only when every worker wanted is placed: queued ones run the rest as GPUs free)
        placed = view.ready() >= view.workers()
        self.busy_at_open = self.held_workers(view, line) if placed else 0
        self.open, self.taken, self.opened_at = view.start_round(), 0, view.now()
        self.pauses_at_open = view.invalid_pauses()
        return self.next_trial(view)

    def held_workers(self, view, line) -> int:
        """Workers a round opening now should not wait for: those busy for more than 1/N of a
        trial more. A round of N that waits r of a trial for one of them idles the other
        N - 1 for r; leaving it out idles it for the 1 - r it finishes early. Until a trial
        has finished (no trial time yet): those started within JUST_STARTED."""
        held = view.holding(line, 1 / max(1, view.workers() or self.workers))
        return view.just_started(line, JUST_STARTED) if held is None else held

    def exhausted(self, view) -> bool:
        """Proposing paused for invalid proposals during this round: it runs what it has (an
        empty round ends), so --rounds R ends a campaign whose proposals all fail, one round
        per pause, and a short outage of the proposer costs at most one round. At the spend
        cap (no proposal will come) it runs what it has too, and the campaign then ends."""
        return view.invalid_pauses() > self.pauses_at_open or view.proposals_spent()

    def close_round(self, view, line) -> None:
        """The round's candidates are all in: confirm the best if it passes the screen (with
        the others that pass on different lines, as one stack). A round that ran while the
        last one's confirmation merged ran on the old incumbent: its winners, screened against
        that parent, are re-applied to the new one and confirmed there, not thrown away."""
        n, self.open = self.open, None
        self.rounds_done += 1
        parents = {line.head, view.camp.merged_from(line.head)} - {None}
        scored = [
            r
            for r in view.rows
            if r["kind"] == "candidate"
            and r["round"] == n
            and r["val_bpb"] is not None
            and r["status"] == "discard"
            and r["parent_sha"] in parents
        ]
        if not scored:
            return
        # Best first by the gate's own evidence (the paired gain when pairs judge: runs at
        # different seeds are not comparable by val_bpb alone).
        judged = sorted(((screen(view, r), r) for r in scored), key=lambda x: -(x[0][1] or 0.0))
        (promising, gain, need), best = judged[0]
        if gain is None:
            return
        if not promising:
            view.say(
                f"round {n}: best {best['trial_id']} {best['val_bpb']:.4f} does not beat the "
                f"incumbent by {need:.4f} ({view.gate.noise_multiple:g} x noise)"
            )
            return
        passing = [r for (ok, _, _), r in judged if ok]
        if not self.stacking:  # --no-stack: the best alone
            passing = passing[:1]
        stack = self.stack(view, line, passing)
        if stack is None and best["parent_sha"] != line.head:
            return  # the stale best no longer applies (recorded invalid) or is in already
        if stack is not None:
            spec, parts = stack
            alone = next((r for r in parts if r["parent_sha"] == line.head), None)
            meta = view.camp.proposal_of(spec) or {}
            view.camp.dropped(spec)  # confirmed as a whole, not screened again
            if alone is not None and len(parts) > 1:
                self.fallback[spec.commit_sha] = alone
            words = confirm(view, line, None, spec.commit_sha, meta)
            if len(parts) > 1:
                view.say(
                    f"round {n}: {len(parts)} candidates pass the screen on different lines "
                    f"({', '.join(r['trial_id'] for r in parts)}); {words}, for their stack"
                    + (f"; then {alone['trial_id']} alone if it fails" if alone else "")
                )
            else:
                view.say(
                    f"round {n}: {best['trial_id']} looks better on {best['parent_sha'][:10]}, "
                    f"the incumbent before the last merge; re-applied to {line.head[:10]}, {words}"
                )
            return
        words = confirm(view, line, best, best["commit_sha"], proposal_meta(best))
        view.say(f"round {n}: {best['trial_id']} looks better; {words}")

    def stack(self, view, line, passing: list[dict]):
        """The screened winners of a round that change different lines, applied to the
        incumbent best first (a part whose lines a better one changed is left out; a part
        screened on the incumbent's parent is re-applied with a three-way merge); committed
        as one candidate when two or more stack, or when the one part must be re-applied:
        (its spec, the parts). None otherwise (or when the commit is invalid: recorded)."""
        inc = line.head
        base = view.source(inc)
        src, parts = base, []
        for r in passing:
            try:
                new = merge3(view.source(r["parent_sha"]), src, view.source(r["commit_sha"]))
            except PatchError:
                continue  # the same lines as a better part (or the merge that made inc)
            if new != src:
                src = new
                parts.append(r)
        if not parts or (len(parts) == 1 and parts[0]["parent_sha"] == inc):
            return None
        strip = lambda r: (r.get("description") or "").strip()  # noqa: E731
        if len(parts) == 1:
            r = parts[0]
            text, proposer = f"re-run of {r['trial_id']} on {inc[:10]}: {strip(r)}", r["proposer"]
        else:
            text = "stack of " + " + ".join(f"{r['trial_id']} ({strip(r)})" for r in parts)
            proposer = "stack"
        p = Proposal(
            parent_sha=inc,
            patch=make_patch(base, src, view.cfg.trial.target),
            description=text,
            proposer=proposer,
            model=parts[0].get("model") if len(parts) == 1 else None,
        )
        spec = view.commit(p, line)
        return (spec, parts) if spec is not None else None

    def reapply(self, view, line, row: dict) -> None:
        """A confirmation that passed on a parent a merge has since replaced: its change,
        re-applied to the incumbent, is confirmed there (as a stale round's winners are)."""
        got = self.stack(view, line, [row])
        if got is None:
            return  # it no longer applies (recorded invalid) or the incumbent has it
        spec, _ = got
        view.camp.dropped(spec)
        words = confirm(view, line, None, spec.commit_sha, view.camp.proposal_of(spec) or {})
        view.say(
            f"{row['trial_id']} passed on {row['parent_sha'][:10]}, no longer the incumbent; "
            f"re-applied to {line.head[:10]}, {words}"
        )

    def on_result(self, view, row) -> Verdict:
        if row.kind == "baseline":
            return Verdict.KEEP
        if row.kind == "confirm":
            verdict, stale = judge_confirmation(view, row)
            if verdict is Verdict.FOLLOW_UP:
                return verdict  # a second confirmation decides (the fallback waits for it)
            best = self.fallback.pop(row.commit_sha, None)
            if stale:  # a merge landed while it ran (its round had closed before that merge)
                self.reapply(view, view.lines[row.island or 0], row.to_dict())
                return verdict
            if verdict is not Verdict.MERGE and best is not None:
                line = view.lines[row.island or 0]
                view.say(
                    f"{row.trial_id}: the stack is not confirmed; confirming "
                    f"{best['trial_id']} alone"
                )
                confirm(view, line, best, best["commit_sha"], proposal_meta(best))
            return verdict
        return Verdict.DISCARD

    def done(self, view) -> bool:
        line = view.lines[0]
        return (
            self.stopping(view) and self.open is None and not line.follow_ups and not view.running()
        )

    def close(self, view) -> None:
        pass
