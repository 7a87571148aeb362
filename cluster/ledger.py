"""The campaign ledger: one JSON line per trial in runs/<tag>/trials.jsonl, append-only.

The ledger is the campaign's memory: the driver appends every trial (baselines, candidates,
confirmations, failures) and rebuilds its state from it on resume. Each append is flushed and
fsync'd before it returns, so a row the driver acted on survives a crash; a crash in the middle
of a write leaves at most one torn line, which `rows()` skips with a warning.

After every append the ledger also rewrites runs/<tag>/results.tsv, autoresearch's file: its
five columns first (commit, val_bpb, memory_gb, status, description), ours after, so the
upstream analysis notebook reads it unchanged.

    ledger = Ledger(Path("runs/mar5"))
    ledger.append({"trial_id": "r001-c03", "status": "discard", "val_bpb": 0.9981, ...})
    rows = ledger.rows()
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from cluster.records import KINDS, STATUSES

log = logging.getLogger(__name__)

# Every field a ledger row may carry, in the order exports show them. Any may be None.
FIELDS = (
    "trial_id",
    "round",
    "island",
    "kind",
    "parent_sha",
    "commit_sha",
    "proposer",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "description",
    "status",
    "val_bpb",
    "seed",
    "budget",
    "training_seconds",
    "total_seconds",
    "num_steps",
    "total_tokens_M",
    "num_params_M",
    "peak_vram_mb",
    "mfu",
    "gpu_name",
    "node",
    "started",
    "ended",
    "error",
    "log_path",
    "self_reported",
    "confinement",  # what held the trial: namespaces, landlock or none
    "merged",  # the campaign branch fast-forwarded to this commit because of this row
    "noise",  # the noise estimate (std of val_bpb) when the row was decided
    "incumbent_bpb",  # mean val_bpb of the row's parent (the incumbent it ran against) then
)
# Statuses without a usable metric: such rows are never ranked.
FAILED = ("crash", "timeout", "invalid", "lost")

# autoresearch's results.tsv columns, then ours.
TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
TSV_EXTRA = (
    "trial_id",
    "round",
    "island",
    "kind",
    "proposer",
    "model",
    "seed",
    "budget",
    "training_seconds",
    "num_steps",
    "gpu_name",
    "node",
    "cost",
)
_TSV_FORMATS = {"training_seconds": "{:.1f}", "cost": "{:.6f}"}

TRIALS_FILE = "trials.jsonl"
RESULTS_FILE = "results.tsv"
CONFIG_FILE = "config.json"


class Ledger:
    """Append-only trial log of one campaign directory. Appends are thread-safe."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / TRIALS_FILE
        self.tsv_path = self.run_dir / RESULTS_FILE
        self.config_path = self.run_dir / CONFIG_FILE
        self._lock = threading.RLock()
        self._rows: list[dict[str, Any]] | None = None  # cache for the TSV, loaded on first append

    def append(self, row: dict[str, Any]) -> None:
        """Write one row durably (flush + fsync), then refresh results.tsv."""
        _check(row)
        line = json.dumps(_finite(row), allow_nan=False, ensure_ascii=False) + "\n"
        with self._lock:
            if self._rows is None:
                self._rows = self.rows()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            with open(self.path, "ab") as f:
                if not created and _ends_torn(self.path):
                    # A crash tore the last line; keep it on a line of its own (rows() skips it)
                    # instead of gluing this row onto it.
                    f.write(b"\n")
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
            if created:
                _fsync_dir(self.run_dir)
            self._rows.append(json.loads(line))
            _atomic_write(self.tsv_path, format_results_tsv(self._rows))

    def rows(self) -> list[dict[str, Any]]:
        """All rows in append order. Lines that do not parse (a torn write) are skipped."""
        try:
            with self._lock:
                data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        rows = []
        for n, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if not isinstance(row, dict):
                log.warning(
                    "%s:%d: skipping an unreadable line (a write torn by a crash?): %.80r",
                    self.path,
                    n,
                    raw,
                )
                continue
            rows.append(row)
        return rows

    def write_config(self, config: dict[str, Any]) -> None:
        """Write run_dir/config.json atomically (the campaign's settings, for resume)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def read_config(self) -> dict[str, Any] | None:
        """The campaign's config.json, or None when the campaign has none yet."""
        try:
            return json.loads(self.config_path.read_text())
        except FileNotFoundError:
            return None


def format_results_tsv(rows: list[dict[str, Any]]) -> str:
    """results.tsv text: autoresearch's five columns, then ours, one line per row."""
    lines = ["\t".join(TSV_COLUMNS + TSV_EXTRA)]
    for row in rows:
        bpb = row.get("val_bpb")
        vram = row.get("peak_vram_mb")
        cells = [
            (row.get("commit_sha") or "")[:7],
            f"{bpb:.6f}" if bpb is not None else "0.000000",  # upstream writes crashes as 0
            f"{vram / 1024:.1f}" if vram is not None else "0.0",
            _cell(row.get("status")),
            _cell(row.get("description")),
        ]
        for name in TSV_EXTRA:
            value = row.get(name)
            fmt = _TSV_FORMATS.get(name)
            cells.append(fmt.format(value) if fmt and value is not None else _cell(value))
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return " ".join(str(value).replace("\t", " ").splitlines())


def _check(row: dict[str, Any]) -> None:
    status, kind = row.get("status"), row.get("kind")
    if status is not None and status not in STATUSES:
        raise ValueError(f"ledger row status {status!r} is not one of {STATUSES}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"ledger row kind {kind!r} is not one of {KINDS}")


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    # NaN/inf (a diverged run) become null: the ledger stays strict JSON for jq and friends.
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _ends_torn(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
