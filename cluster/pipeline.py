"""Proposals generated ahead, one queue per line of search, so no GPU waits for the next one.

A background thread keeps up to `ahead` validated proposals in all, shared out over the lines
(one for rounds and async, K islands for population), drawing from the proposers by weight.
Each line has its own context (its incumbent, its source, the history), so a proposal is
written for the incumbent of the line it will run on. The queues are saved as they change
(`on_change`; the campaign keeps them in runs/TAG/proposals.json) and a restarted driver starts
with them, so a proposal taken from a proposer (a queue file moved to done/, a paid LLM answer)
is not lost with the process. When a line's incumbent moves, its queued proposals are carried
over by a three-way merge (old incumbent, new incumbent,
proposal); one that no longer merges becomes an invalid proposal with the reason, like any
unusable answer: the driver records it and proposers hear about it next time.

`inline=True` has no thread: `take` asks the proposers itself. The search simulator uses it,
so that a simulated campaign is deterministic and needs no wall-clock waits.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import replace

from cluster.patches import PatchError, apply_patch, make_patch, merge3
from cluster.proposers.base import ProposalContext, Proposer
from cluster.records import Proposal
from cluster.validate import validate

log = logging.getLogger(__name__)
# An inline take (the simulator's, the tests') calls the proposer itself, up to INLINE_ATTEMPTS
# times, and gives up after INLINE_DRY calls in a row that queued nothing: the thread backs off
# 0.5-5 s after such a call, so between two results of a 16-worker campaign it makes about as
# many. Without that stop, a converged random proposer was asked 50 times per idle worker.
INLINE_ATTEMPTS, INLINE_DRY = 50, 5


class ProposalPipeline:
    def __init__(
        self,
        proposers: list[tuple[Proposer, float]],
        ahead: int,
        seed: int = 0,
        inline: bool = False,
        on_change=None,
    ):
        if not proposers:
            raise ValueError("no proposers configured")
        self.proposers = proposers
        self.ahead = max(1, ahead)
        self.rng = random.Random(seed)
        self.inline = inline
        self.on_change = on_change  # called with {line: [Proposal]} when a queue changes
        self.ctx: dict[int, ProposalContext] = {}
        self.seen: set[str] = set()
        self.ready: dict[int, list[Proposal]] = {}
        self.invalid: dict[int, list[Proposal]] = {}
        self.in_flight_text: list[str] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.last_error = ""
        self.empty_since: float | None = None
        self.paused_until = 0.0
        self.thread = threading.Thread(target=self._loop, daemon=True, name="proposals")

    # ------------------------------------------------------------------ driver side

    def start(
        self,
        contexts: dict[int, ProposalContext],
        seen: set[str],
        pending: dict[int, list[tuple[Proposal, ProposalContext]]] | None = None,
    ) -> None:
        """Begin with `pending`: proposals a previous driver had queued (with the context
        each was validated in), carried over to the lines' incumbents and validated again."""
        self.ctx, self.seen = dict(contexts), seen
        self.ready = {i: [] for i in contexts}
        self.invalid = {i: [] for i in contexts}
        for line, items in (pending or {}).items():
            if line not in self.ctx:
                continue
            for p, old in items:
                self._accept(line, p, old)
        self._changed()
        if not self.inline:
            self.thread.start()

    def update(self, line: int, ctx: ProposalContext) -> None:
        """A line's incumbent or history changed: carry its queued proposals over."""
        with self.cond:
            old = self.ctx.get(line)
            self.ctx[line] = ctx
            if old is not None and old.incumbent_sha != ctx.incumbent_sha:
                kept = []
                for p in self.ready[line]:
                    q = self._rebase(p, old, ctx)
                    (self.invalid[line] if q.error else kept).append(q)
                self.ready[line] = kept
                self._changed()
            self.cond.notify_all()

    def resize(self, ahead: int) -> None:
        """Keep `ahead` proposals ready in all (the pool grew or shrank)."""
        with self.cond:
            self.ahead = max(1, ahead)
            self.cond.notify_all()

    def in_flight(self, descriptions: list[str]) -> None:
        with self.cond:
            self.in_flight_text = list(descriptions)

    def take(self, line: int, n: int, timeout: float) -> tuple[list[Proposal], list[Proposal]]:
        """Up to n valid proposals for the line's incumbent, plus invalid ones to record."""
        if self.inline:
            dry = 0
            for _ in range(INLINE_ATTEMPTS):
                if len(self.ready[line]) >= n or dry >= INLINE_DRY:
                    break
                got, queued = self._fill(line, max(n, self.share()) - len(self.ready[line]))
                if not got:
                    break
                dry = 0 if queued else dry + 1
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.ready[line] and not self.invalid[line] and not self.stopped:
                left = deadline - time.monotonic()
                if left <= 0 or self.inline:
                    break
                self.cond.wait(left)
            valid, self.ready[line] = self.ready[line][:n], self.ready[line][n:]
            invalid, self.invalid[line] = self.invalid[line], []
            if valid:
                self._changed()
            self.cond.notify_all()
        return valid, invalid

    def pause(self, seconds: float) -> None:
        """Call no proposer for this long (the driver saw only invalid proposals)."""
        with self.cond:
            self.paused_until = time.monotonic() + seconds
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    # ------------------------------------------------------------------ proposing

    def share(self) -> int:
        """Proposals kept ready per line."""
        return max(1, math.ceil(self.ahead / max(1, len(self.ctx))))

    def _hungry(self) -> int | None:
        """The line with the fewest ready proposals, if any is below its share."""
        lines = [i for i in self.ctx if len(self.ready[i]) < self.share()]
        return min(lines, key=lambda i: (len(self.ready[i]), i)) if lines else None

    def exhausted(self) -> bool:
        """Every proposer is out of budget (an LLM at its spend cap): none will propose."""
        return all(getattr(p, "exhausted", False) for p, _ in self.proposers)

    def _pick(self) -> Proposer | None:
        live = [(p, w) for p, w in self.proposers if not getattr(p, "exhausted", False)]
        if not live:
            return None
        total = sum(w for _, w in live)
        x = self.rng.uniform(0, total)
        for p, w in live:
            x -= w
            if x <= 0:
                return p
        return live[-1][0]

    def _fill(self, line: int, want: int) -> tuple[bool, int]:
        """One proposer call for `line`: (it returned anything, proposals queued)."""
        with self.cond:
            base = self.ctx[line]
            ctx = replace(base, history=list(base.history), in_flight=list(self.in_flight_text))
            ctx.in_flight += [p.description for p in self.ready[line]]
        proposer = self._pick()
        if proposer is None:
            return False, 0
        try:
            got = proposer.propose(ctx, want)
        except Exception as e:  # a proposer bug must not stop the campaign
            log.exception("proposer %s failed", proposer.name)
            self.last_error = f"{proposer.name}: {type(e).__name__}: {e}"
            got = []
        with self.cond:
            before = len(self.ready[line])
            for p in got:
                try:
                    self._accept(line, p, ctx)
                except Exception as e:  # a proposal built to break a check must not stop us
                    log.exception("checking a proposal of %s failed", p.proposer)
                    p.error = f"the proposal could not be checked ({type(e).__name__}: {e})"
                    self.invalid[line].append(p)
            queued = len(self.ready[line]) - before
            if got:
                self._changed()
                self.cond.notify_all()
            if queued:
                self.empty_since = None
            else:  # nothing, or nothing usable: the next call waits longer (see _loop)
                self.empty_since = self.empty_since or time.monotonic()
        return bool(got), queued

    def _accept(self, line: int, p: Proposal, written: ProposalContext) -> None:
        """Queue a proposal written in context `written` for the line (its incumbent now)."""
        now = self.ctx[line]
        if p.parent_sha != now.incumbent_sha and not p.error:
            p = self._rebase(p, written, now)  # the line moved while it was written
        if not p.error:
            validate(p, now, self.seen)
        if p.error and p.proposer == "mutate" and p.error.startswith("duplicate"):
            return  # a random perturbation repeating itself is not news
        (self.invalid[line] if p.error else self.ready[line]).append(p)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change({i: list(q) for i, q in self.ready.items()})

    @staticmethod
    def _rebase(p: Proposal, old: ProposalContext, new: ProposalContext) -> Proposal:
        """The proposal's change, carried from the old incumbent to the new one (3-way)."""
        try:
            mine = apply_patch(old.incumbent_source, p.patch, old.target)
            source = merge3(old.incumbent_source, new.incumbent_source, mine)
            patch = make_patch(new.incumbent_source, source, new.target)
        except PatchError as e:
            return replace(
                p,
                parent_sha=new.incumbent_sha,
                error=f"written for {old.incumbent_sha[:10]}, it no longer applies to the "
                f"new incumbent {new.incumbent_sha[:10]}: {e}",
            )
        return replace(p, parent_sha=new.incumbent_sha, patch=patch)

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and (
                    self._hungry() is None
                    or time.monotonic() < self.paused_until
                    or self.exhausted()
                ):
                    left = self.paused_until - time.monotonic()
                    self.cond.wait(left if left > 0 else None)
                if self.stopped:
                    return
                line = self._hungry()
                want = self.share() - len(self.ready[line])
            if self._fill(line, want)[1]:
                continue
            # Nothing usable came back (empty queue folder, exhausted budget, provider down, a
            # model answering garbage or repeating itself): back off, 0.5 s growing to 5 s.
            time.sleep(min(5.0, 0.5 + 0.1 * (time.monotonic() - (self.empty_since or 0))))
