"""Where a trial's wall time went, phase by phase: its fixed cost against its training.

    phases(stamps) -> {"setup": 0.41, "start": 0.35, ..., "cleanup": 0.02}

The referee stamps each boundary on its own clock (time.monotonic) and the harness reports a
few it alone can see (Python started, imports done, train.py imported, the model exported),
on the same system-wide clock. Those are the trial's word: shown, never judged, and a
reported stamp outside its trusted neighbours is dropped, its time going to the next phase.
The phases add up to the trial's total_seconds. `read_stats` reads the trial's report.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.budget import BudgetClock

# (phase, the stamp that ends it, whether the trial reports that stamp), in order.
PHASES: tuple[tuple[str, str, bool], ...] = (
    ("setup", "launched", False),  # guard, plan, evaluation data, the compile cache seeded
    ("start", "started", True),  # process start, confinement, Python
    ("imports", "imported", True),  # numpy, torch
    ("import_train", "train_imported", True),  # the candidate's module
    ("build", "first_batch", False),  # model, optimizer, until the first batch request
    ("warmup", "clock_start", False),  # warm-up steps (time budgets; compile lives here)
    ("training", "training_end", False),  # the budget's clock
    ("tail", "returned", False),  # the last step, and train() returning
    ("export", "exported", True),  # torch.export and the model files
    ("exit", "exited", False),  # stats, interpreter teardown
    ("stop", "stopped", False),  # reaping the process tree and the batch server
    ("load", "loaded", False),  # reading and checking the graph
    ("probe", "probed", False),  # causality and batch-independence probes
    ("eval", "scored", False),  # val_bpb
    ("cleanup", "ended", False),  # publishing compile-cache entries, removing scratch
)
NAMES = tuple(name for name, _, _ in PHASES)


def phases(stamps: dict[str, float | None]) -> dict[str, float | None]:
    """Seconds per phase from the stamps ("begin" and the PHASES' ends; missing ones None).

    A missing or out-of-order stamp makes its phase None and its time part of the next."""
    out: dict[str, float | None] = {}
    prev = stamps["begin"]
    end = stamps.get("ended")
    for name, key, _ in PHASES:
        t = stamps.get(key)
        if t is None or t < prev or (end is not None and t > end):
            out[name] = None
            continue
        out[name] = round(t - prev, 3)
        prev = t
    return out


def clock_stamps(clock: BudgetClock) -> dict:
    """The phase boundaries the referee's clock of the budget saw."""
    out = {"first_batch": clock.first_batch_at, "clock_start": clock.clock_start}
    out["returned"] = clock.returned_at
    if clock.clock_start is not None:
        out["training_end"] = clock.clock_start + clock.training_seconds(clock.returned_at)
    return out


def step_times(clock: BudgetClock) -> dict:
    """The first step (where torch.compile and allocator warm-up live) against the median."""
    r = clock.first_requests
    first = round(r[1] - r[0], 3) if len(r) > 1 else None
    return {"first_step_s": first, "step_s": round(clock.step_seconds(), 4)}


def read_stats(path: Path) -> dict:
    """What the trial says about itself (parameters, VRAM, phase stamps, compile times, the
    digest of its random draws): shown, never used to judge it, except that the digest picks
    the test a paired run gets (cluster.gate.comparable); anything malformed is dropped."""
    try:
        if path.stat().st_size > 1 << 16:
            return {}
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    out = {
        k: float(raw[k])
        for k in ("num_params", "peak_vram_mb")
        if isinstance(raw.get(k), int | float) and 0 <= raw[k] < 1e18
    }
    rng = raw.get("rng")
    if isinstance(rng, str) and 0 < len(rng) <= 40 and set(rng) <= set("0123456789abcdef:-?"):
        out["rng"] = rng
    for k in ("marks", "compile"):
        if isinstance(raw.get(k), dict):
            out[k] = {
                str(n)[:40]: float(v)
                for n, v in list(raw[k].items())[:20]
                if isinstance(v, int | float) and 0 <= v < 1e18
            }
    return out
