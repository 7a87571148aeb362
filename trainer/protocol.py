"""autoresearch's side of the referee: its summary block, and its unmodified repos.

`format_summary` prints autoresearch's `---` block for a trial (so their log tools keep
working); `parse_summary` reads one back. `run_autoresearch_protocol` runs an unmodified
autoresearch repo (`python train.py` at its root) and parses its summary; that metric is
computed by code the candidate may have edited, so it is marked self-reported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainer import sandbox
from trainer.results import TrialResult

_SUMMARY_KEYS = (
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
)


def format_summary(r: TrialResult, budget: str = "", seed: int | None = None) -> str:
    """autoresearch's summary block, then our fields; `grep "^val_bpb:"` keeps working, and
    finds nothing for a failed trial (crash, timeout, invalid), whose `status:` and `error:`
    lines say why."""
    vals = {
        "val_bpb": r.val_bpb,
        "training_seconds": r.training_seconds,
        "total_seconds": r.total_seconds,
        "peak_vram_mb": r.peak_vram_mb,
        "mfu_percent": r.mfu,
        "total_tokens_M": r.total_tokens_M,
        "num_steps": r.num_steps,
        "num_params_M": r.num_params_M,
    }
    lines = ["---"]
    for k in _SUMMARY_KEYS:
        if k == "val_bpb" and (r.status != "ok" or r.val_bpb is None):
            continue  # autoresearch's convention: no val_bpb line means the run failed
        v = vals[k]
        if v is None:
            v = 0
        lines.append(
            f"{k + ':':<18}{v:.6f}"
            if k == "val_bpb"
            else f"{k + ':':<18}{v:.2f}"
            if isinstance(v, float)
            else f"{k + ':':<18}{v}"
        )
    lines.append(f"{'status:':<18}{r.status}")
    if budget:
        lines.append(f"{'budget:':<18}{budget}")
    if seed is not None:
        lines.append(f"{'seed:':<18}{seed}")
    lines.append(f"{'device:':<18}{r.gpu_name or 'cpu'}")
    if r.self_reported:
        lines.append(f"{'metric:':<18}self-reported (protocol=autoresearch)")
    if r.confinement:
        lines.append(f"{'confinement:':<18}{r.confinement}")
    if r.error:
        lines.append(f"{'error:':<18}{r.error.strip().splitlines()[0][:200]}")
    return "\n".join(lines)


def parse_summary(text: str) -> dict[str, float]:
    """The `key: value` numbers of the last `---` summary block in a log."""
    block = text.rsplit("\n---\n", 1)[-1] if "\n---\n" in text else text
    out = {}
    for m in re.finditer(r"^(\w+):\s+([-+0-9.eE]+)\s*$", block, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def run_autoresearch_protocol(
    repo: Path,
    log_path: Path,
    timeout: float = 600.0,
    threads: int | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> TrialResult:
    """Run an unmodified autoresearch repo (`python train.py` at its root) and parse its summary.

    Its metric is computed by code the candidate may have edited, so it is marked
    self-reported; the deadline, the process-group kill and the environment still hold.
    """
    t_start, started = time.monotonic(), time.time()
    sandbox.become_subreaper()
    spare = set(sandbox.descendants(os.getpid()))
    with tempfile.TemporaryDirectory(prefix="ar-trial-") as scratch, open(log_path, "w") as logf:
        env = sandbox.trial_env(Path(scratch), threads)
        env["HOME"] = os.environ.get("HOME", scratch)  # upstream reads ~/.cache/autoresearch
        proc = subprocess.Popen(
            [sys.executable, "train.py"],
            cwd=repo,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=sandbox.child_limits(),
        )
        reason = sandbox.watch(
            proc, started=t_start, hard_timeout=timeout, cancelled=cancelled, interval=0.1
        )
        sandbox.kill_tree(proc, spare)
    common = dict(
        log_path=str(log_path),
        started=started,
        ended=time.time(),
        total_seconds=round(time.monotonic() - t_start, 2),
        self_reported=True,
        node=os.uname().nodename,
    )
    if reason:
        status = "lost" if reason == "cancelled" else "timeout"
        return TrialResult(status=status, error=f"killed: {reason}", **common)
    summary = parse_summary(sandbox.tail(log_path, 20000))
    if proc.returncode != 0 or "val_bpb" not in summary:
        return TrialResult(
            status="crash", error=f"exit code {proc.returncode}\n{sandbox.tail(log_path)}", **common
        )

    def get(k):
        return summary.get(k)

    return TrialResult(
        status="ok",
        val_bpb=get("val_bpb"),
        training_seconds=get("training_seconds"),
        num_steps=int(get("num_steps") or 0),
        total_tokens_M=get("total_tokens_M"),
        num_params_M=get("num_params_M"),
        peak_vram_mb=get("peak_vram_mb"),
        mfu=get("mfu_percent"),
        **{**common, "total_seconds": common["total_seconds"]},
    )
