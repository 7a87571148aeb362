"""The campaign ledger: one JSON line per trial in runs/<tag>/trials.jsonl, append-only.

The ledger is the campaign's memory: the driver appends every trial (baselines, candidates,
confirmations, failures) and rebuilds its state from it on resume. Each append is flushed and
fsync'd before it returns, so a row the driver acted on survives a crash; a crash in the middle
of a write leaves at most one torn line, which `rows()` skips with a warning.

After every append the ledger also rewrites runs/<tag>/results.tsv, autoresearch's file: its
five columns first (commit, val_bpb, memory_gb, status, description), ours after, so the
upstream analysis notebook reads it unchanged.

A row is a cluster.rows.TrialRow (the schema) or a dict of its fields; either way its status
and kind are checked against the enums, and `rows()` gives plain dicts as the file holds them
(`TrialRow.from_dict` types one). MemoryLedger has the same interface and writes nothing.

    ledger = Ledger(Path("runs/mar5"))
    ledger.append(TrialRow.build(spec, proposal, result))   # or a dict of the same fields
    ledger.append({"trial_id": "r001-c03", "status": "discard", "val_bpb": 0.9981, ...})
    rows = ledger.rows()
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from cluster.rows import FAILED, FIELDS, Kind, Status, TrialRow
from cluster.rundir import RunDir

__all__ = [
    "FAILED",
    "FIELDS",
    "TSV_COLUMNS",
    "TSV_EXTRA",
    "Ledger",
    "MemoryLedger",
    "TrialRow",
    "format_results_tsv",
]

log = logging.getLogger(__name__)

# FIELDS (every field a ledger row may carry, in the order exports show them) and FAILED (the
# statuses without a usable metric) come from cluster.rows, whose TrialRow is the schema.

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
if not set(TSV_EXTRA) <= set(FIELDS):  # a renamed TrialRow field must not empty a column
    raise ImportError(f"results.tsv columns not in TrialRow: {set(TSV_EXTRA) - set(FIELDS)}")


class Ledger:
    """Append-only trial log of one campaign directory. Appends are thread-safe.

    durable=False skips the fsyncs (a simulator's or a test's scratch campaign: a machine
    crash may then lose the last rows); MemoryLedger writes no file at all.
    """

    def __init__(self, run_dir: Path | str, durable: bool = True) -> None:
        self.files = RunDir(Path(run_dir))
        self.run_dir = self.files.path
        self.path = self.files.ledger
        self.tsv_path = self.files.results_tsv
        self.config_path = self.files.config
        self.durable = durable
        self._lock = threading.RLock()
        self._rows: list[dict[str, Any]] | None = None  # cache for the TSV, loaded on first append

    def append(self, row: TrialRow | dict[str, Any]) -> None:
        """Write one row (flush, and fsync when durable), then refresh results.tsv."""
        line = json.dumps(_normal(row), allow_nan=False, ensure_ascii=False) + "\n"
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
                if self.durable:
                    os.fsync(f.fileno())
            if created and self.durable:
                _fsync_dir(self.run_dir)
            self._rows.append(json.loads(line))
            _atomic_write(self.tsv_path, format_results_tsv(self._rows), self.durable)

    def trial_ids(self) -> set[str]:
        """Every trial id the file names, torn lines included: a resume never reuses one."""
        try:
            with self._lock:
                data = self.path.read_bytes()
        except FileNotFoundError:
            return set()
        return {m.decode() for m in re.findall(rb'"trial_id": ?"([^"]+)"', data)}

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
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        _atomic_write(self.config_path, text, self.durable)

    def read_config(self) -> dict[str, Any] | None:
        """The campaign's config.json, or None when the campaign has none yet."""
        try:
            return json.loads(self.config_path.read_text())
        except FileNotFoundError:
            return None


class MemoryLedger:
    """Ledger's interface with nothing written: rows and config live in this object.

    For a simulator's tens of thousands of appends (no fsync, no results.tsv, no file). Rows
    are checked and stored as Ledger would read them back: JSON-native, NaN as None.
    `run_dir` is only a label here (None or a path); nothing is created there.
    """

    durable = False

    def __init__(self, run_dir: Path | str | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.path = None  # no trials.jsonl
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._config: str | None = None

    def append(self, row: TrialRow | dict[str, Any]) -> None:
        checked = _normal(row)
        with self._lock:
            self._rows.append(checked)

    def rows(self) -> list[dict[str, Any]]:
        """All rows in append order (copies, as a Ledger's rows() are fresh from the file)."""
        with self._lock:
            return [dict(r) for r in self._rows]

    def write_config(self, config: dict[str, Any]) -> None:
        self._config = json.dumps(config)  # refused here if config.json could not hold it

    def read_config(self) -> dict[str, Any] | None:
        return None if self._config is None else json.loads(self._config)

    def trial_ids(self) -> set[str]:
        return {r["trial_id"] for r in self._rows}


def atomic_json(path: Path, obj: Any) -> None:
    """Write JSON to path all at once (a reader sees the old file or the new, never half)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def _normal(row: TrialRow | dict[str, Any]) -> dict[str, Any]:
    """The row as the ledger stores it: status and kind checked and plain strings, and NaN or
    inf (a diverged run) as null, so the ledger stays strict JSON for jq and friends."""
    if isinstance(row, TrialRow):
        row = row.to_dict()
    out = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    for key, enum in (("status", Status), ("kind", Kind)):
        if out.get(key) is not None:
            out[key] = enum.parse(out[key]).value
    return out


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


def _atomic_write(path: Path, text: str, durable: bool = True) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_SPEND_LOCK = threading.Lock()


def append_spend(path: Path, entry: dict[str, Any]) -> None:
    """One billed LLM answer, appended (flushed and fsynced: it is money)."""
    line = json.dumps(entry, allow_nan=False, ensure_ascii=False) + "\n"
    with _SPEND_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            if path.stat().st_size and _ends_torn(path):
                f.write(b"\n")
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())


def read_spend(path: Path) -> list[dict[str, Any]]:
    """The billed answers of llm_calls.jsonl ([] if none); a torn line is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def spend_totals(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Cost and tokens of billed answers (or of ledger rows, which carry the same fields)."""
    return {
        "total_cost": sum(float(e.get("cost") or 0.0) for e in entries),
        "prompt_tokens": sum(int(e.get("prompt_tokens") or 0) for e in entries),
        "completion_tokens": sum(int(e.get("completion_tokens") or 0) for e in entries),
        "answers": len(entries),
    }
