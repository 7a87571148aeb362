"""What a campaign finds when it starts again: its branches, unfinished merges, lost trials.

The driver writes the ledger before it moves a branch, and journals every trial before it
runs (runs/TAG/inflight.json), so a driver killed at any point leaves one of three things,
each repaired here on the next start: a line branch behind its last recorded merge (moved
forward, unless the line was reset by an exploit step after that merge), trials in the
journal with no ledger row (recorded `lost` by the Campaign and run again when still on a
line's incumbent, with their proposals), or nothing to repair.
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster.config import CampaignError, canonical_budget, refuse_incomparable
from cluster.lines import Line
from cluster.proposers.base import ProposalContext
from cluster.records import Proposal, TrialSpec


def check_rows(tag: str, rows: list[dict], settings: dict) -> None:
    """The ledger is the authority on what was measured: a resume whose budget, protocol or
    GPU type differs from its rows' is refused, whatever config.json says (or if it is gone)."""
    measured = [r for r in rows if r.get("val_bpb") is not None]
    diffs = []
    budgets = sorted({canonical_budget(r["budget"]) for r in measured if r.get("budget")})
    if budgets and budgets != [canonical_budget(settings["budget"])]:
        diffs.append(
            f"budget: its trials ran with {', '.join(budgets)}, this run asks {settings['budget']}"
        )
    reported = {r.get("self_reported") for r in measured} - {None}
    protocol = settings.get("protocol")
    if (True in reported and protocol != "autoresearch") or (
        False in reported and protocol == "autoresearch"
    ):
        was = "autoresearch" if True in reported else "referee"
        diffs.append(f"protocol: its trials ran under {was}, this run asks {protocol}")
    gpu = settings.get("gpu_type")
    names = sorted({r.get("gpu_name") or "cpu" for r in measured})
    if gpu and measured and any(gpu not in n for n in names):
        diffs.append(f"gpu_type: its trials ran on {', '.join(names)}, this run asks {gpu}")
    refuse_incomparable(f"campaign {tag}'s ledger (runs/{tag}/trials.jsonl) was measured", diffs)


def base_of(rows: list[dict]) -> str | None:
    """The commit a campaign started from, by its ledger (config.json lost)."""
    first = next((r for r in rows if r.get("parent_sha")), None)
    return first["parent_sha"] if first else None


def refuse_uncommitted(git, target: str, head: str | None) -> None:
    """A new campaign starts from HEAD: edits to the target not in it would be left out."""
    if head and git.uncommitted(target):
        raise CampaignError(
            f"{target} has changes that are not committed; the campaign would start from "
            f"the committed version (HEAD {head[:10]}) without them. Commit them "
            f"(git commit -am 'baseline') or stash them (git stash), then rerun."
        )


def refuse_checked_out(git, names: list[str]) -> None:
    checked_out = [b.removeprefix("refs/heads/") for b in git.checked_out_branches()]
    for name in names:
        if name in checked_out:
            raise CampaignError(
                f"{name} is checked out in a worktree; the driver moves it, so check "
                "out another branch first (git switch -)"
            )


def head(git, branch: str, base: str) -> str:
    """The branch's commit; a new branch starts at the base."""
    sha = git.rev_parse(branch)
    if not sha:
        git.set_ref(f"refs/heads/{branch}", base)
        sha = base
    return sha


def moves(path: Path) -> list[dict]:
    """The exploit steps recorded in runs/TAG/islands.jsonl."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def unfinished_merge(git, line: Line, rows: list[dict], moved: list[dict], k: int) -> str | None:
    """The commit a killed driver recorded as merged on the line without moving its branch."""
    won = [r for r in rows if r.get("merged") and (r.get("island") or 0) == line.index]
    if not won or won[-1]["commit_sha"] == line.head:
        return None
    if any(m["island"] == line.index and m["time"] > won[-1]["recorded"] for m in moved):
        return None
    want = won[-1]["commit_sha"]
    if git.is_ancestor(line.head, want):
        return want
    if k > 1:
        return None  # an island may have copied another island's incumbent since
    raise CampaignError(
        f"{line.branch} is at {line.head[:10]}, which the ledger never "
        f"merged (it expects {want[:10]}); was it moved by hand?"
    )


def lost(journal: Path, rows: list[dict]) -> list[tuple[TrialSpec, dict | None, str | None]]:
    """Journaled trials without a ledger row: (spec, proposal, why it has no result), why
    None for a trial that was only queued (it never ran, so it was not lost: it runs now)."""
    if not journal.exists():
        return []
    recorded = {r["trial_id"] for r in rows}
    out = []
    for tid, entry in json.loads(journal.read_text()).items():
        if tid in recorded:
            continue
        why = None if entry.get("queued") else "the driver stopped while this trial was running"
        out.append((TrialSpec(**entry["spec"]), entry.get("proposal"), why))
    return out


def pending(path: Path, source, target: str) -> dict[int, list[tuple[Proposal, ProposalContext]]]:
    """Proposals a previous driver had queued per line, each with the context it was
    written in (its parent's source), so the pipeline can carry it to the line's incumbent."""
    if not path.exists():
        return {}
    out: dict[int, list] = {}
    for line, items in json.loads(path.read_text()).items():
        for d in items:
            p = Proposal(**d)
            out.setdefault(int(line), []).append(
                (p, ProposalContext(p.parent_sha, source(p.parent_sha), target))
            )
    return out
