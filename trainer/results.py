"""What the referee hands back for one trial: the record trainer/ produces and cluster/ stores.

It lives with the referee (cluster.records re-exports it for the driver and the ledger), so
trainer/ depends on nothing in cluster/ to say what it measured. A dataclass of JSON-native
fields: `dataclasses.asdict` is its serialization.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialResult:
    """What the referee measured. status is one of ok, crash, timeout, invalid, lost."""

    status: str
    val_bpb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    num_steps: int | None = None
    total_tokens_M: float | None = None
    num_params_M: float | None = None
    peak_vram_mb: float | None = None
    mfu: float | None = None
    gpu_name: str = ""
    node: str = ""
    error: str = ""  # tail of the error or log when the trial failed
    log_path: str = ""
    self_reported: bool = False  # protocol=autoresearch: the metric came from train.py's output
    confinement: str = ""  # what held the trial: namespaces, landlock or none
    rng: str = ""  # what random numbers train.py drew (trainer.harness.rng_fingerprint)
    started: float | None = None
    ended: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
