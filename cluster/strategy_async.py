"""`async`: every worker stays busy; results are gated as they arrive.

After the noise measurement (as in rounds), whenever a worker is free the strategy dispatches
the most useful next trial, in this order:
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
4. fresh proposals from the pipeline.

Each candidate is gated on arrival against its parent's runs; a promising one on the current
incumbent gets a confirmation run plus a fresh incumbent replicate, and merges only when the
confirmation passes and its parent is still the incumbent. Rows keep the ledger's kinds: a
re-run or a combine is a `candidate` (proposer `combine` for combines) whose description names
the trial(s) it came from.

Stopping: --trials K and --hours H as in rounds. There are no rounds to wait for, so
--rounds R means R x per_round candidate trials (per_round defaults to the workers); the
ledger's `round` column counts batches of per_round candidates started. Once a limit is
reached no new candidate (fresh or combine) starts; trials in flight finish, and follow-ups of
results already judged promising (confirmations, replicates, re-runs of stale winners) still
run, so a winner found last is not thrown away.

A new incumbent is measured with replicates (up to --replicates runs) before the next
candidate on it starts; candidates that land before its replicates are judged after them.

Resume: confirmations and replicates are journaled when queued, so a killed driver's resume
records them `lost` and runs them again if their parent is still the incumbent (a confirmation
is then judged as one). Stale-winner re-runs and combines still waiting for a worker are not
journaled and are dropped by a kill.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter, deque
from dataclasses import replace

from cluster import gitops
from cluster.patches import PatchError, apply_patch, make_patch, merge3
from cluster.proposers.base import ProposalContext
from cluster.records import Proposal, TrialSpec
from cluster.strategies import RoundsStrategy
from cluster.validate import validate

NEAR_MISSES_KEPT = 20  # the most recent near-misses that may still be paired
NEAR_MISS_SIGMA = 1.0  # a near-miss gains more than this many noise std (and less than the gate)
_RERUN = re.compile(r"^re-run of t\d+ on [0-9a-f]+: ")


class AsyncStrategy(RoundsStrategy):
    def __init__(self, cfg, driver, workers: int):
        super().__init__(cfg, driver, workers)
        self.followups: deque[TrialSpec] = deque()  # replicates, confirmations, lost re-runs
        self.rebases: deque[dict] = deque()  # winners to re-run on the current incumbent
        self.combines: deque[tuple[dict, dict]] = deque()  # near-miss pairs to stack
        self.fresh: deque[Proposal] = deque()  # taken from the pipeline while waiting
        self.near: list[dict] = []  # near-miss rows, oldest first
        self.paired: set[str] = set()  # trial ids of near-misses already combined
        self.deferred: list[dict] = []  # candidates waiting for their parent's replicates
        self.reps_pending: Counter = Counter()  # sha -> replicates queued or running
        # commit -> the candidate row that screened it (a lost confirmation's re-run finds it)
        self.screened: dict[str, dict] = {}
        self.stale_confirmed: set[str] = set()  # confirmations that passed on a stale parent
        self.first_round = self.camp.round
        # --rounds R is R x this many candidates, fixed at start (the pool may follow the cluster)
        self.round_size = self.per_round
        self.t_wait = time.monotonic()

    # ------------------------------------------------------------------ limits

    def candidates_started(self) -> int:
        camp = self.camp
        done = sum(1 for r in camp.rows if r["kind"] == "candidate") - camp.prior_candidates
        running = sum(1 for v in camp.inflight.values() if v["spec"]["kind"] == "candidate")
        return done + running

    def room(self) -> int | None:
        """Candidates that may still start under --trials/--rounds (None: no such limit)."""
        cfg, limits = self.cfg, []
        if cfg.trials is not None:
            limits.append(cfg.trials)
        if cfg.rounds is not None:
            limits.append(cfg.rounds * self.round_size)
        return max(0, min(limits) - self.candidates_started()) if limits else None

    def limit_reached(self) -> bool:
        """No new candidates once --trials, --rounds (x per_round) or --hours is spent."""
        cfg = self.cfg
        if self.room() == 0:
            return True
        return cfg.hours is not None and time.monotonic() - self.t_start >= cfg.hours * 3600

    def should_stop(self) -> bool:
        return self.limit_reached()

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        camp, driver, pool = self.camp, self.driver, self.driver.pool
        if camp.requeue:
            camp._say(f"re-running {len(camp.requeue)} trial(s) lost when the driver stopped")
            lost = {r["trial_id"]: r for r in camp.rows if r["status"] == "lost"}
            for s in camp.requeue:
                spec = camp.make_spec(s.kind, s.commit_sha, s.parent_sha)
                was = lost.get(s.trial_id) or {}
                keys = ("proposer", "model", "description")
                self._queue(spec, {k: was.get(k) for k in keys} if s.kind != "baseline" else None)
        self.measure_noise()
        driver.refresh_pipeline()
        while True:
            self.regate()
            while pool.idle():
                spec = self.next_spec(self.limit_reached())
                if spec is None:
                    break
                camp.inflight[spec.trial_id].pop("queued", None)
                camp._journal()
                pool.submit(spec)
            if not pool.busy():
                if self.followups or self.rebases:  # work left, and no worker free for it
                    driver.check_alive(True)  # raises: none idle, starting or restarting
                    driver.say_waiting(len(self.followups) + len(self.rebases))
                    self.poll(5.0)  # until a worker joins or comes back
                    continue
                if self.limit_reached():
                    break
                if pool.idle() and not pool.recovering():
                    self.wait_for_proposals()
                    continue
                driver.check_alive(True)  # else poll: a worker may join or come back
            driver.note_in_flight()
            self.poll(1.0 if pool.idle() and not self.limit_reached() else 5.0)

    def poll(self, timeout: float) -> None:
        rows, again = self.driver.poll(timeout, on_row=self.decide)
        for row in rows:
            self.arrived(row)
        for spec in again:  # lost: run again before anything new
            self._queue(spec, self.camp.inflight[spec.trial_id].get("proposal"), front=True)

    def _queue(self, spec: TrialSpec, proposal, front: bool = False) -> None:
        """A follow-up waits for a worker; journaled now (marked queued) so a resume runs it."""
        self.camp.inflight[spec.trial_id]["queued"] = True
        if proposal is not None:
            self.camp.inflight[spec.trial_id]["proposal"] = proposal
        if spec.kind == "baseline":
            self.reps_pending[spec.commit_sha] += 1
        (self.followups.appendleft if front else self.followups.append)(spec)

    def wait_for_proposals(self) -> None:
        """Every worker is idle and nothing is queued: block (briefly) on the pipeline."""
        camp, pipeline = self.camp, self.driver.pipeline
        room = self.room()
        want = max(
            1, self.driver.pool.idle() if room is None else min(room, self.driver.pool.idle())
        )
        valid, invalid = pipeline.take(want, timeout=5.0)
        for p in invalid:
            camp.record_invalid(p)
        self.fresh.extend(valid)
        if valid or invalid:
            self.t_wait = time.monotonic()
        elif time.monotonic() - self.t_wait > 30:
            reason = pipeline.last_error or "proposers have nothing new"
            camp._say(f"waiting for proposals ({reason})")
            self.t_wait = time.monotonic()

    # ------------------------------------------------------------------ what runs next

    def next_spec(self, stopping: bool) -> TrialSpec | None:
        camp = self.camp
        while True:
            while self.followups:
                spec = self.followups.popleft()
                if self._still_useful(spec):
                    return spec
            # Before candidates on a new incumbent, measure it.
            if (stopping and not self.rebases) or not self.top_up():
                break
        while self.rebases:
            spec = self.rerun(self.rebases.popleft())
            if spec is not None:
                return spec
        if stopping:
            return None
        while self.combines:
            spec = self.combine(*self.combines.popleft())
            if spec is not None:
                return spec
        while True:
            if not self.fresh:
                valid, invalid = self.driver.pipeline.take(1, timeout=0)
                for p in invalid:
                    camp.record_invalid(p)
                self.fresh.extend(valid)
            if not self.fresh:
                return None
            p = self._onto_incumbent(self.fresh.popleft())
            if p is not None:
                self._next_round()
                return camp.commit_proposal(p)
            if self.limit_reached():
                return None

    def top_up(self) -> bool:
        """Queue replicates until the incumbent has `replicates` runs (after a merge it has
        only its screen and confirmation runs, both selected by luck). True if it queued any."""
        camp, inc = self.camp, self.camp.incumbent
        missing = self.replicates - len(camp.runs_of(inc)) - self.reps_pending[inc]
        if missing <= 0:
            return False
        for _ in range(missing):
            self._queue(camp.make_spec("baseline", inc, inc), None)
        camp._journal()
        return True

    def _still_useful(self, spec: TrialSpec) -> bool:
        """A queued follow-up whose incumbent moved on is dropped (a winner is re-run)."""
        camp, inc = self.camp, self.camp.incumbent
        if spec.kind == "baseline":
            useful = spec.commit_sha == inc
        else:
            useful = spec.parent_sha == inc
        if useful:
            return True
        entry = camp.inflight.pop(spec.trial_id, {})
        camp._journal()
        if spec.kind == "baseline":
            self.reps_pending[spec.commit_sha] -= 1
        elif spec.kind == "confirm":
            cand = self.screened.get(spec.commit_sha) or self._row_of(spec, entry)
            camp._say(
                f"{cand['trial_id']} awaited confirmation, but the incumbent moved to "
                f"{inc[:10]}; re-running it there instead"
            )
            self.rebases.append(cand)
        return False

    @staticmethod
    def _row_of(spec: TrialSpec, entry: dict) -> dict:
        p = entry.get("proposal") or {}
        return {
            "trial_id": spec.trial_id,
            "commit_sha": spec.commit_sha,
            "parent_sha": spec.parent_sha,
            "description": p.get("description") or "",
            "proposer": p.get("proposer"),
            "model": p.get("model"),
        }

    def _next_round(self) -> None:
        self.camp.round = self.first_round + 1 + self.candidates_started() // self.round_size

    def _onto_incumbent(self, p: Proposal) -> Proposal | None:
        """A pipeline proposal made for an older incumbent, re-based (None if it conflicts)."""
        camp, target = self.camp, self.camp.cfg.target
        inc = camp.incumbent
        if p.parent_sha == inc:
            return p
        src = camp.incumbent_source()
        try:
            old = gitops.read_blob(camp.repo, p.parent_sha, target)
            new = merge3(old, src, apply_patch(old, p.patch, target))
        except (PatchError, gitops.GitError) as e:
            camp._say(
                f"dropped a proposal made for {p.parent_sha[:10]} ({p.description[:60]}): {e}"
            )
            return None
        return replace(p, parent_sha=inc, patch=make_patch(src, new, target))

    # ------------------------------------------------------------------ new candidates

    def _onto(self, row: dict, src: str) -> str:
        """The change of the row's commit (against its own parent), made to `src` instead.

        A three-way merge (parent, src, commit), not a context patch: a change three lines
        from one the incumbent gained since is still the same change."""
        camp, target = self.camp, self.camp.cfg.target
        old = gitops.read_blob(camp.repo, row["parent_sha"], target)
        new = gitops.read_blob(camp.repo, row["commit_sha"], target)
        return merge3(old, src, new)

    def _commit(self, p: Proposal) -> TrialSpec | None:
        """Validate like any proposal (and against everything tried), then commit and queue."""
        camp, pipeline = self.camp, self.driver.pipeline
        if not p.error:
            ctx = ProposalContext(
                incumbent_sha=camp.incumbent,
                incumbent_source=camp.incumbent_source(),
                target=camp.cfg.target,
            )
            with pipeline.cond:
                validate(p, ctx, pipeline.seen)
        if p.error:
            camp.record_invalid(p)
            return None
        self._next_round()
        return camp.commit_proposal(p)

    def rerun(self, win: dict) -> TrialSpec | None:
        """A winner whose parent is stale, re-applied to the incumbent: a new candidate."""
        camp, target = self.camp, self.camp.cfg.target
        inc, src = camp.incumbent, camp.incumbent_source()
        base = _RERUN.sub("", win.get("description") or "")
        p = Proposal(
            parent_sha=inc,
            patch="",
            description=f"re-run of {win['trial_id']} on {inc[:10]}: {base}",
            proposer=win.get("proposer") or "rerun",
            model=win.get("model"),
        )
        try:
            p.patch = make_patch(src, self._onto(win, src), target)
        except PatchError as e:
            p.error = (
                f"stale winner {win['trial_id']} (run on {win['parent_sha'][:10]}) no longer "
                f"applies to the incumbent {inc[:10]}: {str(e).splitlines()[0][:200]}"
            )
        if not p.error and not p.patch:
            p.error = f"stale winner {win['trial_id']}: the incumbent {inc[:10]} already has it"
        return self._commit(p)

    def combine(self, a: dict, b: dict) -> TrialSpec | None:
        """Two near-misses stacked on the current incumbent: its own candidate."""
        camp, target = self.camp, self.camp.cfg.target
        inc, src = camp.incumbent, camp.incumbent_source()
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
            p.patch = make_patch(src, self._stack(a, b, src), target)
        except PatchError as e:
            p.error = f"combine of {a['trial_id']} and {b['trial_id']} on {inc[:10]}: {e}"
        return self._commit(p)

    def _stack(self, a: dict, b: dict, src: str) -> str:
        return merge3(src, self._onto(a, src), self._onto(b, src))

    # ------------------------------------------------------------------ results

    def decide(self, spec: TrialSpec, result) -> str | None:
        """Called before a row is recorded: a confirmation merges or not."""
        if spec.kind != "confirm":
            return None
        camp, gate = self.camp, self.camp.gate
        runs = camp.runs_of(spec.parent_sha)
        noise, dof = gate.noise_dof(camp.rows)
        if not noise or not runs or result.val_bpb is None:
            return "discard"
        if not gate.confirmed(result.val_bpb, runs, noise, dof):
            return "discard"
        if camp.incumbent == spec.parent_sha:
            return "merge"
        self.stale_confirmed.add(spec.trial_id)
        return "discard"

    def arrived(self, row: dict) -> None:
        camp = self.camp
        kind = row["kind"]
        if kind == "baseline" and self.reps_pending[row["commit_sha"]] > 0:
            self.reps_pending[row["commit_sha"]] -= 1
        elif kind == "confirm":
            cand = self.screened.get(row["commit_sha"]) or row
            if row["trial_id"] in self.stale_confirmed:
                self.stale_confirmed.discard(row["trial_id"])
                camp._say(
                    f"{cand['trial_id']} confirmed, but on {row['parent_sha'][:10]}, no longer "
                    f"the incumbent; re-running it on {camp.incumbent[:10]}"
                )
                self.rebases.append(cand)
        elif kind == "candidate":
            self.screen(row)

    def regate(self) -> None:
        waiting, self.deferred = self.deferred, []
        for row in waiting:
            self.screen(row)

    def screen(self, row: dict) -> None:
        """Gate a candidate as it arrives: confirm, re-run on the incumbent, or near-miss."""
        camp, gate = self.camp, self.camp.gate
        if row["val_bpb"] is None or row["status"] != "discard":
            return
        parent = row["parent_sha"]
        if self.reps_pending[parent] > 0:
            self.deferred.append(row)  # judge it against the replicates being run
            return
        noise, dof = gate.noise_dof(camp.rows)
        runs = camp.runs_of(parent)
        if not noise or not runs:
            return
        gain = statistics.fmean(runs) - row["val_bpb"]
        if gate.promising(row["val_bpb"], runs, noise, dof):
            if parent != camp.incumbent:
                camp._say(
                    f"{row['trial_id']} beat its parent {parent[:10]} by {gain:.4f}, but the "
                    f"incumbent is now {camp.incumbent[:10]}; re-running it there"
                )
                self.rebases.append(row)
                return
            camp._say(
                f"{row['trial_id']} looks better (gain {gain:.4f}); confirming with a fresh "
                "seed beside a fresh incumbent run"
            )
            self._queue(camp.make_spec("baseline", parent, parent), None)
            confirm = camp.make_spec("confirm", row["commit_sha"], parent)
            self.screened[row["commit_sha"]] = row
            self._queue(confirm, {k: row.get(k) for k in ("proposer", "model", "description")})
            camp._journal()
        elif gain > NEAR_MISS_SIGMA * noise:
            self.near_miss(row)

    def near_miss(self, row: dict) -> None:
        """Pair a new near-miss with the best earlier unpaired one it stacks with."""
        camp = self.camp
        src = camp.incumbent_source()
        for other in sorted(self.near, key=lambda r: (r["val_bpb"], r["trial_id"])):
            if other["trial_id"] in self.paired:
                continue
            try:
                self._stack(other, row, src)
            except PatchError:
                continue
            self.paired.update((other["trial_id"], row["trial_id"]))
            camp._say(
                f"{other['trial_id']} and {row['trial_id']} are near-misses on different "
                "lines; proposing their combination"
            )
            self.combines.append((other, row))
            break
        self.near = [*self.near, row][-NEAR_MISSES_KEPT:]
