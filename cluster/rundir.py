"""A campaign's directory, runs/<tag>/: the names of the files in it, in one place.

The ledger, status, report and export (and the driver) name the campaign's files through
RunDir, so a file is renamed here or nowhere. Nothing here creates or reads a file.

    files = RunDir(Path("runs/mar5"))
    files.ledger  # runs/mar5/trials.jsonl, the append-only trial log
    files.log("r3-c1")  # runs/mar5/logs/r3-c1.log
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """The paths of one campaign directory (nothing is created or read here)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # accept a str too

    @property
    def ledger(self) -> Path:
        """One JSON line per trial, append-only (cluster.ledger)."""
        return self.path / "trials.jsonl"

    @property
    def results_tsv(self) -> Path:
        """autoresearch's results.tsv, rewritten from the ledger after every append."""
        return self.path / "results.tsv"

    @property
    def config(self) -> Path:
        """The campaign's settings, for resume and status."""
        return self.path / "config.json"

    @property
    def journal(self) -> Path:
        """The trials in flight (and, async, queued), for resume."""
        return self.path / "inflight.json"

    @property
    def proposals(self) -> Path:
        """Validated proposals queued for each line and not yet run, for resume."""
        return self.path / "proposals.json"

    @property
    def llm_calls(self) -> Path:
        """One JSON line per LLM answer the provider billed, whatever became of it: the
        campaign's spend (report, status, --max-llm-cost over resumes) is summed from here."""
        return self.path / "llm_calls.jsonl"

    @property
    def islands(self) -> Path:
        """Population: each island's head, mean, runs and merges now."""
        return self.path / "islands.json"

    @property
    def islands_log(self) -> Path:
        """Population: one JSON line per migration."""
        return self.path / "islands.jsonl"

    @property
    def driver_lock(self) -> Path:
        """Held (flock) by the one driver running the campaign (cluster.lock)."""
        return self.path / "driver.lock"

    @property
    def logs(self) -> Path:
        """The directory of the trials' logs."""
        return self.path / "logs"

    def log(self, trial_id: str) -> Path:
        return self.logs / f"{trial_id}.log"

    @property
    def progress_png(self) -> Path:
        return self.path / "progress.png"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"
