"""A line of search: one branch with its own incumbent, follow-up queue and counters.

`rounds`, `async` and `greedy` keep one line, on the campaign branch `autoresearch/TAG`;
`population` keeps K, on `autoresearch/TAG-island-i`. Every operation that touches a branch
takes its line explicitly (`Campaign.commit(proposal, line)`, `Campaign.merge(line, sha)`),
and the proposal pipeline keeps one context and one ready queue per line, so a proposal is
always written for the incumbent it will run on. A row's `island` column is its line's index.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from cluster.records import TrialSpec


@dataclass
class Line:
    index: int
    branch: str
    head: str  # the incumbent; the driver is the only writer of the branch, so this is it
    follow_ups: deque[TrialSpec] = field(default_factory=deque)  # run before anything new
    reps_pending: Counter = field(default_factory=Counter)  # sha -> replicates queued/running
    merges: int = 0
    since_reset: int = 0  # candidates judged since its last merge or reset

    def moved(self, sha: str, merged: bool) -> None:
        self.head = sha
        self.since_reset = 0
        self.merges += merged

    def queue(self, spec: TrialSpec, front: bool = False) -> None:
        if spec.kind == "baseline":
            self.reps_pending[spec.commit_sha] += 1
        (self.follow_ups.appendleft if front else self.follow_ups.append)(spec)

    def settled(self, spec: TrialSpec) -> None:
        """A queued baseline ran (or was dropped): it no longer counts as pending."""
        if spec.kind == "baseline" and self.reps_pending[spec.commit_sha] > 0:
            self.reps_pending[spec.commit_sha] -= 1

    def judged(self) -> None:
        self.since_reset += 1


def island_branch(tag: str, i: int) -> str:
    """`autoresearch/TAG-island-i`: git cannot hold both `a/b` and `a/b/c`."""
    return f"autoresearch/{tag}-island-{i}"


def branches(tag: str, k: int) -> list[str]:
    """The branches of k lines: the campaign branch for one, island branches for more."""
    return [f"autoresearch/{tag}"] if k == 1 else [island_branch(tag, i) for i in range(k)]
