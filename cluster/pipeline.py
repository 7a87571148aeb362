"""Proposals generated ahead, so no GPU waits for the next one.

A background thread keeps up to `ahead` validated proposals for the current incumbent, drawing
from the proposers by weight. When the incumbent moves, queued proposals are re-applied to it
(a patch that no longer applies is dropped). Invalid proposals are handed to the driver too:
they become ledger rows with their reason, and proposers hear about them next time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import replace

from cluster.patches import PatchError, apply_patch, make_patch
from cluster.proposers.base import ProposalContext, Proposer
from cluster.records import Proposal
from cluster.validate import validate

log = logging.getLogger(__name__)


class ProposalPipeline:
    def __init__(self, proposers: list[tuple[Proposer, float]], ahead: int, seed: int = 0):
        if not proposers:
            raise ValueError("no proposers configured")
        self.proposers = proposers
        self.ahead = max(1, ahead)
        self.rng = random.Random(seed)
        self.ctx: ProposalContext | None = None
        self.seen: set[str] = set()
        self.ready: list[Proposal] = []
        self.invalid: list[Proposal] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.last_error = ""
        self.empty_since: float | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True, name="proposals")

    def start(self, ctx: ProposalContext, seen: set[str]) -> None:
        self.ctx, self.seen = ctx, seen
        self.thread.start()

    def update(self, ctx: ProposalContext) -> None:
        """New incumbent or history: re-base queued proposals and let the thread refill."""
        with self.cond:
            old = self.ctx
            self.ctx = ctx
            if old is not None and old.incumbent_sha != ctx.incumbent_sha:
                self.ready = [p for p in (self._rebase(p, old, ctx) for p in self.ready) if p]
            self.cond.notify_all()

    def resize(self, ahead: int) -> None:
        """Keep `ahead` proposals ready (the pool grew or shrank)."""
        with self.cond:
            self.ahead = max(1, ahead)
            self.cond.notify_all()

    def in_flight(self, descriptions: list[str]) -> None:
        with self.cond:
            if self.ctx is not None:
                self.ctx.in_flight = list(descriptions)

    @staticmethod
    def _rebase(p: Proposal, old: ProposalContext, new: ProposalContext) -> Proposal | None:
        try:
            source = apply_patch(new.incumbent_source, p.patch, new.target)
        except PatchError:
            return None
        return replace(
            p,
            parent_sha=new.incumbent_sha,
            patch=make_patch(new.incumbent_source, source, new.target),
        )

    def take(self, n: int, timeout: float) -> tuple[list[Proposal], list[Proposal]]:
        """Up to n valid proposals for the current incumbent, plus invalid ones to record."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.ready and not self.invalid and not self.stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            valid, self.ready = self.ready[:n], self.ready[n:]
            invalid, self.invalid = self.invalid, []
            self.cond.notify_all()
        return valid, invalid

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def _pick(self) -> Proposer:
        total = sum(w for _, w in self.proposers)
        x = self.rng.uniform(0, total)
        for p, w in self.proposers:
            x -= w
            if x <= 0:
                return p
        return self.proposers[-1][0]

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and len(self.ready) >= self.ahead:
                    self.cond.wait()
                if self.stopped:
                    return
                ctx = replace(
                    self.ctx, history=list(self.ctx.history), in_flight=list(self.ctx.in_flight)
                )
                want = self.ahead - len(self.ready)
            proposer = self._pick()
            try:
                got = proposer.propose(ctx, want)
            except Exception as e:  # a proposer bug must not stop the campaign
                log.exception("proposer %s failed", proposer.name)
                self.last_error = f"{proposer.name}: {type(e).__name__}: {e}"
                got = []
            with self.cond:
                for p in got:
                    p = validate(
                        p, self.ctx if p.parent_sha == self.ctx.incumbent_sha else ctx, self.seen
                    )
                    if p.error and p.proposer == "mutate" and p.error.startswith("duplicate"):
                        continue  # a random perturbation repeating itself is not news
                    if p.error:
                        self.invalid.append(p)
                    elif p.parent_sha == self.ctx.incumbent_sha:
                        self.ready.append(p)
                        ctx.in_flight.append(p.description)
                    else:
                        rebased = self._rebase(p, ctx, self.ctx)
                        if rebased:
                            self.ready.append(rebased)
                if got:
                    self.empty_since = None
                    self.cond.notify_all()
                    continue
                self.empty_since = self.empty_since or time.monotonic()
            # Nothing came back (empty queue folder, exhausted budget, provider down): back off.
            time.sleep(min(5.0, 0.5 + 0.1 * (time.monotonic() - self.empty_since)))
