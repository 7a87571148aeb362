"""How proposers meet the driver: a context in, proposals out (cf. Ray Tune's Searcher).

A proposer turns the campaign's history into edits of the target file. It never touches git,
actors or the ledger; the driver validates, commits, runs and records what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cluster.records import Proposal


@dataclass
class ProposalContext:
    """Everything a proposer may look at when proposing against the incumbent."""

    incumbent_sha: str
    incumbent_source: str  # text of the target file at incumbent_sha
    target: str  # repo path of the one file proposals may edit, e.g. trainer/train.py
    program: str = ""  # the human's research program (program.md)
    history: list[dict[str, Any]] = field(default_factory=list)  # ledger rows, oldest first
    in_flight: list[str] = field(default_factory=list)  # descriptions running on other GPUs
    noise: float | None = None  # std of incumbent val_bpb replicates; None before measured
    round: int = 0
    island: int = 0
    protocol: str = "referee"  # "autoresearch": train.py's contract with prepare.py is checked


class Proposer(Protocol):
    """Turns a context into up to `n` proposals. May return fewer (or none) when it has none."""

    name: str

    def propose(self, ctx: ProposalContext, n: int) -> list[Proposal]: ...
