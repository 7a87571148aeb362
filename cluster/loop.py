"""The driver's loop, the only one: dispatch what the strategy asks for, record what lands.

    Driver(campaign, executor, pipeline, strategy).run()

Every strategy (cluster/strategy.py) runs in this loop, on any Executor: the Ray worker pool
(cluster/pool.py) or the simulated clock (cluster/simulate.py). Each pass:
1. while a worker is idle, ask `strategy.next_trial(view)` and submit what it returns;
2. when nothing runs and the strategy is done, stop;
3. collect finished trials: draft each row, ask `strategy.on_result(view, row)` for its
   verdict, record the row (status from the verdict), merge when the verdict says so, and
   queue a lost trial again (up to MAX_REQUEUES) at the front of its line's follow-ups.
Resume is here, once for every strategy: trials a killed driver left in flight were recorded
`lost` by the Campaign and are queued again, with their proposals, before anything new.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from cluster.campaign import MAX_REQUEUES, Campaign, CampaignError
from cluster.lines import Line
from cluster.records import TrialResult, TrialSpec
from cluster.rows import TrialRow
from cluster.strategy import Strategy, Verdict


class Executor(Protocol):
    """Where trials run: the Ray worker pool (cluster/pool.py) or the simulated clock
    (cluster/simulate.py). `results` yields (spec, result, log text, worker index)."""

    target: int  # workers wanted

    def submit(self, spec: TrialSpec) -> None: ...
    def results(self, timeout: float) -> Iterator[tuple[TrialSpec, TrialResult, str, int]]: ...
    def idle(self) -> int: ...
    def busy(self) -> int: ...
    def recovering(self) -> int: ...
    def starting(self) -> int: ...


WAIT_FOR_PROPOSALS = 5.0  # s a take blocks when no trial runs (nothing else to wait for)
SAY_WAITING = 30.0  # s without proposals before the console says why
INVALID_STREAK = 20  # invalid proposals in a row before proposing pauses
INVALID_PAUSE = 60.0  # s of the first pause; each further one in a row doubles, up to 10 min


class View:
    """What a strategy may read of the campaign, and the few things it may do."""

    def __init__(self, driver: Driver):
        self._d = driver
        self.camp: Campaign = driver.camp
        self.cfg = driver.camp.cfg
        self.gate = driver.camp.gate
        self.lines: list[Line] = driver.camp.lines

    # -- reading
    @property
    def rows(self) -> list[dict]:
        return self.camp.rows

    @property
    def round(self) -> int:
        return self.camp.round

    def now(self) -> float:
        return self._d.clock()

    def runs_of(self, sha: str) -> list[float]:
        return self.camp.runs_of(sha)

    def noise_dof(self) -> tuple[float | None, int]:
        return self.camp.noise_dof()

    def source(self, sha: str) -> str:
        return self.camp.source(sha)

    def workers(self) -> int:
        return self._d.executor.target

    def idle(self) -> int:
        return self._d.executor.idle()

    def ready(self) -> int:
        """Workers placed and able to run a trial."""
        return self._d.executor.ready()

    def running(
        self, line: Line | None = None, kind: str | None = None, before: float | None = None
    ) -> int:
        """Trials submitted and not finished (of a line, of a kind, submitted at or before
        the clock's `before`)."""
        at = self._d.submitted_at
        return sum(
            1
            for tid, s in self._d.running.items()
            if (line is None or s.island == line.index)
            and (kind is None or s.kind == kind)
            and (before is None or at.get(tid, -1e18) <= before)
        )

    def trial_time(self) -> float | None:
        """The median time from submit to result of the last trials (None before any)."""
        d = self._d.durations
        return statistics.median(d) if d else None

    def holding(self, line: Line, fraction: float) -> int | None:
        """Trials of the line expected to hold their worker for more than `fraction` of a
        trial time from now (the median trial time); None while no trial has finished."""
        typical = self.trial_time()
        if typical is None:
            return None
        now, d = self.now(), self._d
        return sum(
            1
            for tid, s in d.running.items()
            if s.island == line.index
            and tid not in d.held  # finished: its worker is free
            and typical - (now - d.submitted_at.get(tid, now)) > fraction * typical
        )

    def just_started(self, line: Line, within: float) -> int:
        """Trials of the line submitted in the last `within` seconds of the clock: workers
        taken for about a whole trial from now."""
        now, d = self.now(), self._d
        return sum(
            1
            for tid, s in d.running.items()
            if s.island == line.index and now - d.submitted_at.get(tid, -1e18) <= within
        )

    def pending(self, sha: str) -> list[TrialSpec]:
        """Trials of a commit queued or running, not finished."""
        queued = [s for x in self.lines for s in x.follow_ups]
        return [s for s in [*queued, *self._d.running.values()] if s.commit_sha == sha]

    def queued(self, line: Line | None = None) -> int:
        lines = [line] if line else self.lines
        return sum(len(x.follow_ups) for x in lines)

    def candidates_started(self) -> int:
        """Candidates run, running or queued in this campaign, before a resume too (--trials K
        is the campaign's K, not each driver's); invalid ones do not count."""
        camp = self.camp
        done = camp.index().candidates
        run = {s.commit_sha for s in self._d.running.values() if s.kind == "candidate"}
        queued = {s.commit_sha for x in self.lines for s in x.follow_ups if s.kind == "candidate"}
        return len(done | run | queued)

    # -- doing
    def pair_noise_dof(self) -> tuple[float | None, int]:
        return self.camp.pair_noise_dof()

    def spec(
        self,
        kind: str,
        commit: str,
        parent: str,
        line: Line,
        proposal: dict | None = None,
        pair: dict | None = None,
    ) -> TrialSpec:
        """A trial to queue (journaled now, so a killed driver's resume runs it); with
        `pair` (a run of the parent) at that run's seed, paired with it."""
        return self.camp.make_spec(kind, commit, parent, line, proposal, queued=True, pair=pair)

    def queue(self, spec: TrialSpec, line: Line, front: bool = False) -> None:
        line.queue(spec, front)
        self.camp.journal()

    def pop_follow_up(self, line: Line, stale=None) -> TrialSpec | None:
        """The line's next follow-up still useful on its incumbent; the others are dropped
        (and handed to `stale(spec, proposal)`)."""
        while line.follow_ups:
            spec = line.follow_ups.popleft()
            useful = (spec.commit_sha if spec.kind == "baseline" else spec.parent_sha) == line.head
            if useful:
                return spec
            entry = self.camp.dropped(spec)
            line.settled(spec)
            self.camp.journal()
            if stale is not None:
                stale(spec, entry.get("proposal"))
        return None

    def take(self, line: Line, n: int, wait: float | None = None) -> list[TrialSpec]:
        """Up to n fresh candidates for the line, committed; invalid proposals are recorded.
        Blocks (up to `wait`, default: only while no trial runs) when none is ready."""
        d = self._d
        if d.paused_until is not None and d.clock() < d.paused_until:
            return []  # too many invalid proposals in a row: see Driver.invalid_proposals
        if wait is None:
            wait = 0.0 if d.running else WAIT_FOR_PROPOSALS
        valid, invalid = d.pipeline.take(line.index, n, timeout=wait)
        for p in invalid:
            self.camp.record_invalid(p, line)
        d.proposals_seen(bool(valid or invalid))
        d.invalid_proposals(len(valid), invalid)
        return [self.camp.commit(p, line) for p in valid if p.parent_sha == line.head]

    def invalid_pauses(self) -> int:
        """How often proposing has paused for invalid proposals since this driver started."""
        return self._d.invalid_pauses

    def proposals_spent(self) -> bool:
        """No proposal will come: every proposer is at its spend cap and none is ready."""
        p = self._d.pipeline
        return p.exhausted() and not any(p.ready.values())

    def commit(self, p, line: Line) -> TrialSpec | None:
        """A proposal the strategy made itself (a re-run, a combination), validated like any
        (and against everything tried) and committed; None when invalid (recorded)."""
        from cluster.validate import validate

        if not p.error:
            with self._d.pipeline.cond:
                validate(p, self.camp.context(line), self._d.pipeline.seen)
        if p.error:
            self.camp.record_invalid(p, line)
            return None
        return self.camp.commit(p, line)

    def start_round(self, n: int | None = None) -> int:
        return self.camp.start_round(n)

    def reset(self, line: Line, source: Line, why: str) -> None:
        """Move a line to another line's incumbent (population's exploit step)."""
        self.camp.reset(line, source, why, now=time.time())
        self._d.pipeline.update(line.index, self.camp.context(line))

    def follow(self, sha: str, why: str) -> None:
        """Point the campaign branch at a line's incumbent."""
        self.camp.follow(sha, why)

    def write_lines(self, state: list[dict]) -> None:
        self.camp.write_lines(state)

    def say(self, msg: str) -> None:
        self.camp.say(msg)


class Driver:
    def __init__(
        self,
        camp: Campaign,
        executor: Executor,
        pipeline,
        strategy: Strategy,
        *,
        gpu_name: str = "",
        clock=time.monotonic,
        on_workers=None,
    ):
        self.camp, self.executor, self.pipeline, self.strategy = camp, executor, pipeline, strategy
        self.gpu_name, self.clock, self.on_workers = gpu_name, clock, on_workers
        self.running: dict[str, TrialSpec] = {}
        self.held: dict[str, tuple] = {}  # finished paired runs awaiting their partner
        self.submitted_at: dict[str, float] = {}  # trial id -> the loop's clock at submit
        self.durations: deque[float] = deque(maxlen=32)  # submit to result, latest trials
        self.requeues: dict[str, int] = {}
        self.waiting_since: float | None = None
        self.no_proposals_since: float | None = None
        self.invalid_streak = self.pauses = self.invalid_pauses = 0
        self.paused_until: float | None = None
        self.view = View(self)
        camp.pairing = camp.pairing_allowed() and getattr(strategy, "pairs", False)

    def run(self) -> None:
        camp, ex, strategy = self.camp, self.executor, self.strategy
        if camp.requeue:
            camp.say(f"re-running {len(camp.requeue)} trial(s) lost when the driver stopped")
            for old, proposal in camp.requeue:
                line = camp.lines[old.island or 0]
                self.view.queue(self.again(old, line, proposal), line)
        while True:
            while ex.idle():
                spec = strategy.next_trial(self.view)
                if spec is None:
                    break
                self.submit(spec)
            self.check_alive()
            if not ex.busy() and (strategy.done(self.view) or self.out_of_proposals()):
                break
            self.note_in_flight()
            self.collect(1.0 if ex.idle() else 5.0)
        strategy.close(self.view)

    def submit(self, spec: TrialSpec) -> None:
        self.camp.dispatched(spec)
        self.camp.journal()
        self.running[spec.trial_id] = spec
        self.submitted_at[spec.trial_id] = self.clock()
        self.executor.submit(spec)

    def out_of_proposals(self) -> bool:
        """Every proposer is at its spend cap, nothing proposed is left to run and nothing is
        queued: the campaign ends (running trials have finished), saying why."""
        if not self.view.proposals_spent() or self.view.queued():
            return False
        caps = [q.cap_text() for q, _ in self.pipeline.proposers if hasattr(q, "cap_text")]
        self.camp.say(f"{'; '.join(caps) or 'proposers exhausted'}: the campaign ends")
        return True

    def check_alive(self) -> None:
        """Queued work with no worker idle, busy or coming back can never run."""
        ex, queued = self.executor, self.view.queued()
        if not queued or ex.idle() or ex.busy():
            self.waiting_since = None
            return
        if not (ex.recovering() or ex.starting()):
            raise CampaignError("no trial worker is left alive to run the queued trials")
        now = time.monotonic()
        if self.waiting_since is None or now - self.waiting_since >= 60:
            self.waiting_since = now
            self.camp.say(
                f"{queued} trial(s) wait for a worker: {ex.starting()} not placed yet (no free "
                f"GPU/CPU for them: `ray status`), {ex.recovering()} restarting after a failure"
            )

    def proposals_seen(self, got: bool) -> None:
        """Say why nothing new runs when the proposers stay silent (once per SAY_WAITING s)."""
        now = time.monotonic()
        if got or self.running:
            self.no_proposals_since = None
            return
        if self.no_proposals_since is None:
            self.no_proposals_since = now
        elif now - self.no_proposals_since > SAY_WAITING:
            reason = self.pipeline.last_error or "proposers have nothing new"
            self.camp.say(f"waiting for proposals ({reason})")
            self.no_proposals_since = now

    def invalid_proposals(self, valid: int, invalid: list) -> None:
        """A proposer that only writes invalid proposals (a guard it cannot pass, a model
        answering garbage, a patch for another file) must not spin the campaign: after
        INVALID_STREAK in a row, proposing pauses, saying why; the pauses grow."""
        if valid:
            self.invalid_streak = self.pauses = 0
            return
        self.invalid_streak += len(invalid)
        if self.invalid_streak < INVALID_STREAK:
            return
        pause = min(600.0, INVALID_PAUSE * 2**self.pauses)
        reason = (invalid[-1].error or "").strip().splitlines()
        self.camp.say(
            f"{self.invalid_streak} proposals in a row were invalid (the last: "
            f"{reason[0][:200] if reason else '?'}); pausing proposals for {pause:.0f} s"
        )
        self.pauses += 1
        self.invalid_pauses += 1
        self.invalid_streak = 0
        self.paused_until = self.clock() + pause
        self.pipeline.pause(pause)  # no proposer is called meanwhile (an LLM costs money)

    def note_in_flight(self) -> None:
        """Tell the proposers what is running, so they do not propose it again."""
        self.pipeline.in_flight(
            [(self.camp.proposal_of(s) or {}).get("description", "") for s in self.running.values()]
        )

    def collect(self, timeout: float) -> None:
        camp = self.camp
        results = list(self.executor.results(timeout=timeout))
        for spec, result, text, _ in results:
            at = self.submitted_at.get(spec.trial_id)
            if at is not None and result.status == "ok":
                self.durations.append(self.clock() - at)
            if result.status == "ok" and self._partner_pending(spec):
                self.held[spec.trial_id] = (spec, result, text)  # still "running" meanwhile
                continue
            self._finish_running(spec, result, text)
        self.release()
        if self.on_workers is not None:
            self.on_workers()
        if results:
            for line in camp.lines:  # the proposers see the new history
                self.pipeline.update(line.index, camp.context(line))

    def _finish_running(self, spec: TrialSpec, result: TrialResult, text: str) -> None:
        self.running.pop(spec.trial_id, None)
        self.submitted_at.pop(spec.trial_id, None)
        self.finish(spec, result, text)

    def _partner_pending(self, spec: TrialSpec) -> bool:
        """A paired run is judged once its partner has run: a confirmation beside a fresh
        incumbent run at its seed often finishes first, and judged then it would fall back to
        the unpaired test. Until the partner finishes (or fails, or is dropped), its result
        waits here, counted as running; a driver killed meanwhile re-runs it on resume."""
        pid = spec.paired_with
        if not pid:
            return False
        if pid in self.running and pid not in self.held:
            return True
        return any(s.trial_id == pid for line in self.camp.lines for s in line.follow_ups)

    def release(self) -> None:
        """Judge the held results whose partners have now run."""
        for tid, (spec, result, text) in list(self.held.items()):
            if not self._partner_pending(spec):
                del self.held[tid]
                self._finish_running(spec, result, text)

    def finish(self, spec: TrialSpec, result: TrialResult, text: str) -> None:
        camp, line = self.camp, self.camp.lines[spec.island or 0]
        proposal = camp.dropped(spec).get("proposal")
        result = self._check_gpu(result)
        line.settled(spec)
        row = camp.draft(spec, proposal, result)
        if spec.kind == "baseline" and result.status == "ok":
            row.status = "keep"
        verdict = self.strategy.on_result(self.view, row)
        if result.status == "ok" and verdict is not None:
            row.status = verdict.status
            row.merged = verdict is Verdict.MERGE
        recorded = camp.append(row, text)
        self.report(row)
        if row.merged:
            camp.merge(line, spec.commit_sha, recorded)
            self.pipeline.update(line.index, camp.context(line))
        camp.journal()
        if result.status == "lost" and self.requeues.get(spec.commit_sha, 0) < MAX_REQUEUES:
            self.requeues[spec.commit_sha] = self.requeues.get(spec.commit_sha, 0) + 1
            again = self.again(spec, line, proposal)
            camp.say(f"{spec.trial_id} lost ({result.error[:80]}); re-running as {again.trial_id}")
            self.view.queue(again, line, front=True)
        self._incumbent_trains(line, row)

    def again(self, old: TrialSpec, line: Line, proposal: dict | None) -> TrialSpec:
        """A lost trial's re-run: the same trial, paired with the same run when it was."""
        pair = {"seed": old.seed, "trial_id": old.paired_with} if old.paired_with else None
        return self.view.spec(old.kind, old.commit_sha, old.parent_sha, line, proposal, pair)

    def _incumbent_trains(self, line: Line, row: TrialRow) -> None:
        """Every run of an incumbent failed and none is left to try: nothing can be judged."""
        sha = row.commit_sha
        if row.kind != "baseline" or row.status not in ("crash", "timeout", "invalid"):
            return
        if (
            self.camp.runs_of(sha)
            or line.reps_pending[sha]
            or any(s.kind == "baseline" and s.commit_sha == sha for s in self.running.values())
        ):
            return
        raise CampaignError(
            f"the incumbent {sha[:10]} itself does not train: {row.status}: "
            f"{(row.error or '').strip()[-600:]}\nTry it alone with "
            f"`autoresearch trial`; full log: {row.log_path or '(none)'}"
        )

    def _check_gpu(self, r: TrialResult) -> TrialResult:
        if r.status == "ok" and self.gpu_name and r.gpu_name != self.gpu_name:
            r.status = "invalid"
            r.error = f"ran on {r.gpu_name or 'cpu'}; this campaign compares {self.gpu_name} only"
        return r

    def report(self, row: TrialRow) -> None:
        bpb = f"{row.val_bpb:.4f}" if row.val_bpb is not None else "   -  "
        extra = ""
        if row.val_bpb is not None and row.incumbent_bpb and row.kind != "baseline":
            gain = row.incumbent_bpb - row.val_bpb
            sigma = f" = {gain / row.noise:.1f} sigma" if row.noise else ""
            extra = f" gain {gain:+.4f}{sigma}"
        err = ""
        if row.error and row.status in ("crash", "timeout", "invalid", "lost"):
            lines = [x for x in row.error.strip().splitlines() if x.strip()]
            err = f" [{lines[-1][:100] if lines else ''}]"
        self.camp.say(
            f"{row.trial_id} r{row.round} {row.kind:<9} {row.status:<7} "
            f"{bpb}{extra} {(row.description or '')[:70]}{err}"
        )
