"""The referee: runs one trial of a train.py and computes its val_bpb where train.py cannot reach.

    autoresearch trial [--repo PATH] [--budget 60s|300s|200steps|2Mtokens] [--seed N]

It owns what decides the score: the budget clock and the hard kill, the seed, the training
data (served batch by batch over a pipe, never as files), and the metric. The candidate runs
in a sandboxed subprocess (trainer/harness.py) and hands back a torch.export graph; this
process, which loaded the validation split and the evaluator before any candidate code ran,
scores that graph. `--protocol autoresearch` instead runs an unmodified autoresearch repo
(`python train.py`) and parses its summary block; that metric is self-reported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.records import TrialResult
from trainer import guard, sandbox
from trainer.budget import Budget, BudgetClock
from trainer.harness import HEADER
from trainer.prepare import evaluate_bpb, load_eval_data
from trainer.sandbox import MAX_FILE_BYTES

# Dense bf16 peak FLOP/s by GPU name fragment, for MFU.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}
MAX_BATCH_TOKENS = 1 << 22


@dataclass
class TrialConfig:
    data: Path  # a prepared data directory (trainer.prepare.prepare)
    budget: Budget
    seed: int = 0  # torch/numpy/random seed of the training process (initialization etc.)
    data_seed: int | None = None  # order of training batches; None: the same as seed
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # CPU threads for the trial (torch, OMP, MKL)
    sandbox: str = "auto"  # auto | on | off: mount/pid namespaces when available
    hard_timeout: float | None = None  # whole-trial kill; default from the budget
    warmup_steps: int | None = None  # steps excluded from a time budget (10 on GPU, 1 on CPU)
    warmup_allowance: float | None = None  # at most this many seconds of warm-up excluded
    eval_batch: int | None = None
    startup_allowance: float | None = None  # seconds until the first batch is asked for
    tail_grace: float | None = None  # seconds allowed after the budget ends (export, exit)
    memory_limit_mb: float | None = None  # resident memory of the whole trial; killed above
    max_file_bytes: int = MAX_FILE_BYTES  # no file the trial writes may be larger


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _BatchServer(threading.Thread):
    """Answers the trial's batch requests from the training split until the budget is spent."""

    def __init__(
        self,
        train: np.ndarray,
        clock: BudgetClock,
        seed: int,
        max_cols: int,
        req_fd: int,
        data_fd: int,
    ):
        super().__init__(daemon=True)
        self.train, self.clock, self.max_cols = train, clock, max_cols
        self.rng = np.random.default_rng(seed)
        self.req = os.fdopen(req_fd, "rb", buffering=0)
        self.data_fd = data_fd
        self.served_tokens = 0
        self.error = ""

    def run(self) -> None:
        try:
            for line in iter(self.req.readline, b""):
                rows, cols = (int(v) for v in line.split())
                if not (0 < cols <= self.max_cols and 0 < rows * cols <= MAX_BATCH_TOKENS):
                    self._send(HEADER.pack(-1, MAX_BATCH_TOKENS // max(cols, 1), cols, 0.0))
                    continue
                progress = self.clock.next_batch(rows * cols)
                if progress is None:
                    self._send(HEADER.pack(0, 0, 0, 1.0))
                    continue
                starts = self.rng.integers(0, len(self.train) - cols - 1, size=rows)
                batch = np.stack([self.train[s : s + cols + 1] for s in starts])
                self._send(HEADER.pack(1, rows, cols, progress) + batch.tobytes())
                self.served_tokens += rows * cols
        except (OSError, ValueError) as e:  # the trial died or spoke garbage
            self.error = f"batch protocol: {e}"
        finally:
            self.req.close()
            try:
                os.close(self.data_fd)
            except OSError:
                pass

    def _send(self, payload: bytes) -> None:
        view = memoryview(payload)
        while view:
            view = view[os.write(self.data_fd, view) :]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _mfu(flops_per_token: float, tokens: int, seconds: float, gpu: str) -> float | None:
    peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    if not peak or seconds <= 0:
        return None
    return 100.0 * flops_per_token * tokens / seconds / peak


def run_trial(
    train_py: Path, cfg: TrialConfig, log_path: Path, cancelled: Callable[[], bool] = lambda: False
) -> TrialResult:
    """Train `train_py` under `cfg` in a sandboxed subprocess, then score it. Never raises
    for anything the candidate does: failures come back as status crash/timeout/invalid."""
    t_start, started = time.monotonic(), time.time()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def result(status: str, error: str = "", **kw) -> TrialResult:
        return TrialResult(
            status=status,
            error=error[-3000:],
            log_path=str(log_path),
            total_seconds=round(time.monotonic() - t_start, 2),
            started=started,
            ended=time.time(),
            node=os.uname().nodename,
            **kw,
        )

    source = Path(train_py).read_text()
    problems = guard.referee_violations(source)
    if problems:
        log_path.write_text("rejected by the referee guard:\n" + "\n".join(problems) + "\n")
        return result("invalid", "reaches into the referee: " + "; ".join(problems))

    # Everything the score depends on is loaded before any candidate code runs.
    import torch
    import torch.export  # noqa: F401  (imported now so a trial cannot alter it on disk first)

    device = resolve_device(cfg.device)
    val, token_bytes, manifest = load_eval_data(cfg.data)
    train = np.memmap(Path(cfg.data) / "train.bin", dtype=np.uint16, mode="r")
    seq_len, on_gpu = manifest["seq_len"], device.startswith("cuda")
    eval_batch = cfg.eval_batch or (32 if on_gpu else 16)
    budget = cfg.budget
    clock = BudgetClock(
        budget,
        warmup_steps=cfg.warmup_steps if cfg.warmup_steps is not None else (10 if on_gpu else 1),
        warmup_allowance=cfg.warmup_allowance or (120.0 if on_gpu else 15.0),
    )
    startup_allowance = cfg.startup_allowance or (300.0 if on_gpu else 120.0)
    tail_grace = cfg.tail_grace or 30.0 + (0.1 * budget.amount if budget.kind == "time" else 0.0)
    hard_timeout = cfg.hard_timeout or (
        startup_allowance + clock.warmup_allowance + budget.amount + tail_grace
        if budget.kind == "time"
        else 600.0
    )
    use_ns = cfg.sandbox == "on" or (cfg.sandbox == "auto" and sandbox.namespaces_available())
    if cfg.sandbox == "on" and not sandbox.namespaces_available():
        return result("invalid", "sandbox=on but user namespaces are unavailable on this node")

    sandbox.become_subreaper()
    spare = set(sandbox.descendants(os.getpid()))
    with tempfile.TemporaryDirectory(prefix="ar-trial-") as scratch:
        scratch = Path(scratch)
        out = scratch / "out"
        out.mkdir()
        req_r, req_w = os.pipe()
        data_r, data_w = os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "trainer.harness",
            "--train-py",
            str(Path(train_py).resolve()),
            "--out",
            str(out),
            "--device",
            device,
            "--vocab-size",
            str(manifest["vocab_size"]),
            "--seq-len",
            str(seq_len),
            "--bos-id",
            str(manifest["bos_id"]),
            "--seed",
            str(cfg.seed),
            "--budget",
            str(budget),
            "--eval-batch",
            str(eval_batch),
            "--req-fd",
            str(req_w),
            "--data-fd",
            str(data_r),
        ]
        code_dir = (
            Path(__file__).resolve().parent
        )  # not trainer.__file__: a repo's trainer/ may shadow it
        cmd = sandbox.wrap_command(
            cmd,
            hide=[Path(cfg.data).resolve() / "eval"],
            read_only=[code_dir, Path(cfg.data).resolve()],
            enable=use_ns,
        )
        env = sandbox.trial_env(scratch, cfg.threads, {"PYTHONPATH": str(code_dir.parent)})
        with open(log_path, "w") as logf:
            logf.write(
                f"# trial {train_py} budget={budget} seed={cfg.seed} device={device} "
                f"sandbox={'namespaces' if use_ns else 'process-group'}\n"
            )
            logf.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=scratch,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                pass_fds=(req_w, data_r),
                start_new_session=True,
                preexec_fn=sandbox.child_limits(cfg.max_file_bytes),
            )
        os.close(req_w)
        os.close(data_r)
        data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
        server = _BatchServer(train, clock, data_seed, seq_len, req_r, data_w)
        server.start()
        reason, next_mem_check = "", 0.0
        while proc.poll() is None:
            now = time.monotonic()
            if cfg.memory_limit_mb and now >= next_mem_check:
                next_mem_check = now + 1.0
                rss = sandbox.tree_rss_mb(proc.pid)
                if rss > cfg.memory_limit_mb:
                    reason = (
                        f"used {rss:.0f} MiB of memory, over its share of "
                        f"{cfg.memory_limit_mb:.0f} MiB"
                    )
                    break
            if cancelled():
                reason = "cancelled"
            elif now - t_start > hard_timeout:
                reason = f"hard deadline of {hard_timeout:.0f}s reached"
            elif clock.first_batch_at is None and now - t_start > startup_allowance:
                reason = f"no training batch requested within {startup_allowance:.0f}s"
            elif clock.ended_at is not None and now - clock.ended_at > tail_grace:
                reason = f"still running {tail_grace:.0f}s after its budget ended"
            elif (
                budget.kind == "time"
                and clock.clock_start is not None
                and clock.training_seconds(now) > budget.amount + tail_grace
            ):
                reason = "ignored the time budget"
            if reason:
                break
            time.sleep(0.05)
        sandbox.kill_tree(proc, spare)
        server.join(timeout=5)
        stats_path = out / "stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        measured = dict(
            training_seconds=round(clock.training_seconds(), 2),
            num_steps=clock.steps,
            total_tokens_M=round(clock.tokens / 1e6, 6),
            num_params_M=round(stats["num_params"] / 1e6, 4) if stats else None,
            peak_vram_mb=round(stats.get("peak_vram_mb", 0.0), 1) if stats else None,
            gpu_name=stats.get("gpu_name", ""),
        )
        if reason == "cancelled":
            return result("lost", "cancelled by the driver", **measured)
        if reason.startswith("used "):
            return result("crash", f"killed: {reason}\n{_tail(log_path)}", **measured)
        if reason:
            return result("timeout", f"killed: {reason}\n{_tail(log_path)}", **measured)
        if proc.returncode != 0 or not (out / "model.pt2").exists():
            return result("crash", f"exit code {proc.returncode}\n{_tail(log_path)}", **measured)
        tail = stats.get("tail_seconds") or 0.0
        if tail > max(5.0, 0.05 * measured["training_seconds"]):
            return result(
                "invalid", f"kept training {tail:.1f}s after its budget ended", **measured
            )
        try:
            program = torch.export.load(out / "model.pt2")
            module = program.module()
            if on_gpu:
                module = module.to(device)
            bpb = evaluate_bpb(
                module,
                val,
                token_bytes,
                seq_len=seq_len,
                batch_size=eval_batch,
                eval_tokens=manifest["eval_tokens"],
                device=device,
            )
        except Exception as e:  # the graph is the candidate's: any failure is its failure
            return result(
                "invalid",
                f"evaluation of the exported model failed: {type(e).__name__}: {e}",
                **measured,
            )
    mfu = _mfu(
        stats["flops_per_token"], clock.tokens, clock.training_seconds(), measured["gpu_name"]
    )
    return result("ok", val_bpb=round(bpb, 6), mfu=round(mfu, 2) if mfu else None, **measured)


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
    """autoresearch's summary block, then our fields; `grep "^val_bpb:"` keeps working."""
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
        reason = ""
        while proc.poll() is None:
            if cancelled():
                reason = "cancelled"
            elif time.monotonic() - t_start > timeout:
                reason = f"hard deadline of {timeout:.0f}s reached"
            if reason:
                break
            time.sleep(0.1)
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
    summary = parse_summary(_tail(Path(log_path), 20000))
    if proc.returncode != 0 or "val_bpb" not in summary:
        return TrialResult(
            status="crash", error=f"exit code {proc.returncode}\n{_tail(Path(log_path))}", **common
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
