"""Plain records that cross a boundary: proposer -> driver -> actor -> driver -> ledger.

They are dataclasses of JSON-native fields, so `dataclasses.asdict` is their serialization
and the ledger (runs/<tag>/trials.jsonl) needs no custom encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainer.results import TrialResult  # noqa: F401

# Ledger statuses. keep/discard/crash are autoresearch's; the rest say why a trial has no metric.
STATUSES = ("keep", "discard", "crash", "timeout", "invalid", "lost")
# Trial kinds: incumbent replicates (noise), candidates, and confirmation reruns.
KINDS = ("baseline", "candidate", "confirm")


@dataclass
class Proposal:
    """One proposed edit of the target file, against a known parent commit."""

    parent_sha: str
    patch: str  # unified diff of the target file against parent_sha ("" = no change)
    description: str
    proposer: str  # "mutate", "queue", "llm", ...
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    # Set when the proposer's answer was unusable; the driver records it as status "invalid".
    error: str | None = None


@dataclass
class TrialSpec:
    """What an actor needs to run one trial; everything else it derives from git."""

    trial_id: str
    round: int
    island: int
    kind: str
    parent_sha: str
    commit_sha: str
    patch: str  # `git format-patch` of commit_sha against parent_sha ("" for baselines)
    seed: int | None  # None: protocol=autoresearch and train.py sets no seed we can read
    budget: str
    target: str = "trainer/train.py"
    protocol: str = "referee"  # or "autoresearch" (self-reported metric)
    paired_with: str | None = None  # the parent's run at this seed (paired comparison), if any


def asdict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)
