"""The `queue:DIR` proposer: patches a person drops into a folder, each tried once.

Drop a unified diff of the target file (`git diff > DIR/wider-mlp.patch`) into DIR. Its
description is the first `Subject:` or `#` line, else the file name. Files are taken in
name order; each is moved to DIR/done/ once proposed, so a restart does not repeat it.
"""

from __future__ import annotations

from pathlib import Path

from cluster.proposers.base import ProposalContext
from cluster.records import Proposal

PATTERNS = ("*.patch", "*.diff")


def _description(text: str, fallback: str) -> str:
    for line in text.splitlines():
        if line.startswith("Subject:"):
            return line.split(":", 1)[1].replace("[PATCH]", "").strip()
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.startswith(("diff ", "--- ")):
            break
    return fallback


class QueueProposer:
    name = "queue"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(
                f"queue folder {self.folder} does not exist; create it and drop "
                "*.patch files (unified diffs of the target file) into it"
            )

    def propose(self, ctx: ProposalContext, n: int) -> list[Proposal]:
        files = sorted(p for pat in PATTERNS for p in self.folder.glob(pat))[:n]
        out = []
        done = self.folder / "done"
        for path in files:
            text = path.read_text(errors="replace")
            done.mkdir(exist_ok=True)
            path.replace(done / path.name)
            body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#")) + "\n"
            out.append(
                Proposal(
                    parent_sha=ctx.incumbent_sha,
                    patch=body,
                    proposer=self.name,
                    description=_description(text, path.stem),
                )
            )
        return out
