"""`autoresearch status --tag TAG`: where a campaign stands, read from its files (no Ray).

Incumbent and its score, the noise estimate, trials running (the in-flight journal) and done
by status, the best run so far, and how busy the workers were.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from cluster.export import campaign_summary
from cluster.gate import Gate
from cluster.ledger import Ledger, read_spend
from cluster.rundir import RunDir


def status_text(run_dir: Path, tag: str) -> str:
    files = RunDir(Path(run_dir))
    ledger = Ledger(files.path)
    rows, config = ledger.rows(), ledger.read_config() or {}
    journal = files.journal
    journaled = json.loads(journal.read_text()) if journal.exists() else {}
    running = {k: v for k, v in journaled.items() if not v.get("queued")}
    queued = len(journaled) - len(running)  # async: follow-ups waiting for a worker
    workers = config.get("workers", "?")
    ready = config.get("workers_ready", workers)  # fewer when some wait for resources
    s = campaign_summary(
        rows, workers=ready if isinstance(ready, int) else None, spend=read_spend(files.llm_calls)
    )
    merged = [r for r in rows if r.get("merged")]
    inc_sha = merged[-1]["commit_sha"] if merged else config.get("base_sha", "")
    islands = files.islands
    if islands.exists():  # population: the best island's incumbent
        scored = [i for i in json.loads(islands.read_text()) if i["mean"]]
        if scored:
            inc_sha = min(scored, key=lambda i: i["mean"])["sha"]
    inc_runs = Gate.runs_by_commit(rows).get(inc_sha, [])
    noise = Gate.noise(rows)
    lines = [
        f"campaign {tag}: branch autoresearch/{tag}, budget {config.get('budget')}, "
        f"{workers} workers ({config.get('device_kind', '?')})"
        + (f", {ready} ready" if ready != workers else ""),
        f"incumbent  {inc_sha[:10]}  val_bpb "
        + (f"{statistics.fmean(inc_runs):.4f} over {len(inc_runs)} run(s)" if inc_runs else "-")
        + f", after {len(merged)} merged change(s)",
        "noise      "
        + (f"{noise:.4f} val_bpb (std of replicates)" if noise else "not measured yet"),
        f"trials     {len(running)} running, {f'{queued} queued, ' if queued else ''}"
        f"{len(rows)} done: " + ", ".join(f"{k} {v}" for k, v in sorted(s["by_status"].items())),
    ]
    if s["best_val_bpb"] is not None:
        lines.append(
            f"best run   {s['best_val_bpb']:.4f} ({s['best_trial_id']}: "
            f"{(s['best_description'] or '')[:60]})"
        )
    held: dict[str, int] = {}
    for r in rows:
        if r.get("confinement"):
            held[r["confinement"]] = held.get(r["confinement"], 0) + 1
    if held:
        lines.append(
            "confined   "
            + ", ".join(f"{k} {v}" for k, v in sorted(held.items()))
            + (" (none: those trials ran unconfined)" if "none" in held else "")
        )
    if any(r.get("self_reported") for r in rows):
        lines.append(
            "metric     self-reported: train.py computes and prints val_bpb itself "
            "(--protocol autoresearch); the referee does not measure it"
        )
    if s["busy_fraction"] is not None:
        lines.append(f"busy       {s['busy_fraction']:.0%} of worker time running trials")
    if s["total_cost"]:
        cap = config.get("max_llm_cost")
        lines.append(
            f"llm cost   ${s['total_cost']:.4f}"
            + (f" of --max-llm-cost ${cap:g}" if cap is not None else "")
            + (f" ({s['answers']} answers billed)" if s["answers"] else "")
        )
    if config.get("device_kind") == "cpu":
        lines.append(
            "note       CPU trials share each machine's cores (threads split between "
            "workers); their timings are not GPU timings"
        )
    if islands.exists():  # population: one line per island
        for isl in json.loads(islands.read_text()):
            mean = f"{isl['mean']:.4f}" if isl.get("mean") is not None else "-"
            lines.append(
                f"island {isl['island']}   {isl['sha'][:10]}  val_bpb {mean} over "
                f"{isl['runs']} run(s), {isl['merges']} merge(s)  ({isl['branch']})"
            )
    for tid, entry in running.items():
        desc = (entry.get("proposal") or {}).get("description") or entry["spec"]["kind"]
        lines.append(f"running    {tid} {desc[:70]}")
    return "\n".join(lines)
