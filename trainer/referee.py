"""The referee: runs one trial of a train.py and computes its val_bpb where train.py cannot reach.

    autoresearch trial [--repo PATH] [--budget 60s|300s|200steps|2Mtokens] [--seed N]

It owns what decides the score: the budget clock and the kills, the seed, the training data
(served batch by batch over a pipe by trainer/batches.py, never as files), and the metric.
The candidate runs confined (trainer/confine.py) in trainer/harness.py and hands back an
exported graph; this process, which loaded the validation split and the evaluator before any
candidate code ran, loads that graph as data (trainer/graph.py: an op allowlist, no
unpickling), probes it for causality and batch independence and scores it.

A trial is planned (`plan`), started confined (`_start`, in a harness process that
trainer/launch.py spawned, maybe while the trial before was scored; the launcher's command
and the confinement a node offers: trainer/confine_spec.py), watched against the referee's
own clock (`_watch`, on trainer/sandbox.py's `watch`), judged (`_verdict`), then scored
(`_score`). Its phases (trainer/phases.py) and the node's compile cache
(trainer/compile_cache.py) are recorded in result.extra.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import guard, launch, sandbox
from trainer.batches import BatchServer
from trainer.budget import Budget, BudgetClock
from trainer.compile_cache import CompileCache, source_key
from trainer.confine_spec import ConfinementError, resolve_confinement
from trainer.mfu import mfu, training_flops_per_token
from trainer.phases import clock_stamps, phases, read_stats, step_times
from trainer.prepare import evaluate_bpb, load_eval_data
from trainer.results import TrialResult
from trainer.sandbox import MAX_FILE_BYTES


@dataclass
class TrialConfig:
    data: Path  # a prepared data directory (trainer.prepare.prepare)
    budget: Budget
    seed: int = 0  # torch/numpy/random seed of the training process (initialization etc.)
    data_seed: int | None = None  # order of training batches; None: the same as seed
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # CPU threads for the trial (torch, OMP, MKL)
    sandbox: str = "auto"  # see trainer.confine_spec.resolve_confinement
    hard_timeout: float | None = None  # whole-trial kill; default from the budget
    warmup_steps: int | None = None  # time budgets: batches excluded (10 on GPU, 1 on CPU)
    warmup_allowance: float | None = None  # at most this many seconds of warm-up excluded
    eval_batch: int | None = None
    startup_allowance: float | None = None  # seconds until the first batch is asked for
    stall_timeout: float | None = None  # seconds without a batch request before a kill
    export_allowance: float | None = None  # seconds from train() returning to the process exit
    memory_limit_mb: float | None = None  # resident memory of the whole trial; killed above
    max_file_bytes: int = MAX_FILE_BYTES  # no file the trial writes may be larger
    # The node's compile cache (trainer/compile_cache.py): the trial reads copies of the
    # partitions of its own source and of `cache_parents` (source keys of the code it was
    # derived from); a trial that passed publishes into its own source's partition.
    compile_cache: bool = True
    cache_parents: tuple[str, ...] = ()
    prestart: bool = False  # start the next trial's process while this one is scored


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class _Plan:
    """Every limit of one trial, resolved once before it starts."""

    device: str
    confinement: str
    eval_batch: int
    clock: BudgetClock
    startup_allowance: float
    stall_timeout: float
    export_allowance: float
    hard_timeout: float | None

    def overrun_allowance(self) -> float:
        """Training after the budget ran out that still counts as finishing the last step."""
        return max(5.0, 3.0 * self.clock.step_seconds())


def plan(cfg: TrialConfig, device: str) -> _Plan:
    on_gpu, budget = device.startswith("cuda"), cfg.budget
    clock = BudgetClock(
        budget,
        warmup_steps=cfg.warmup_steps if cfg.warmup_steps is not None else (10 if on_gpu else 1),
        warmup_allowance=cfg.warmup_allowance or (120.0 if on_gpu else 15.0),
    )
    startup = cfg.startup_allowance or (300.0 if on_gpu else 120.0)
    export = cfg.export_allowance or (120.0 if on_gpu else 60.0)
    hard = cfg.hard_timeout
    if hard is None and budget.kind == "time":
        hard = startup + clock.warmup_allowance + 1.2 * budget.amount + 30.0 + export
    return _Plan(
        device=device,
        confinement=resolve_confinement(cfg.sandbox),
        eval_batch=cfg.eval_batch or (32 if on_gpu else 16),
        clock=clock,
        startup_allowance=startup,
        stall_timeout=cfg.stall_timeout or (300.0 if on_gpu else 120.0),
        export_allowance=export,
        hard_timeout=hard,
    )


@dataclass
class _Running:
    """A launched trial: the harness, the server of its batches, the processes that were
    already ours (not to be killed with it) and why its confinement failed ("" if it holds)."""

    proc: subprocess.Popen
    server: BatchServer
    spare: set[int]
    failed: str

    def stop(self, clock: BudgetClock) -> None:
        clock.returned()  # a trial that never said so returned when it exited or was killed
        sandbox.kill_tree(self.proc, self.spare)
        self.server.join(timeout=5)


def _start(p: _Plan, cfg: TrialConfig, h: launch.Harness, train_py: Path, log_path: Path):
    """Hand the waiting harness its candidate, and start the server of its batches."""
    header = (
        f"# trial {train_py} budget={cfg.budget} seed={cfg.seed} device={p.device} "
        f"confinement={p.confinement}\n"
    )
    # Processes that were ours before this trial, not to be killed with it: not the harness.
    spare = set(sandbox.descendants(os.getpid())) - {h.proc.pid, *sandbox.descendants(h.proc.pid)}
    failed = h.go(train_py, cfg.seed, str(cfg.budget), log_path, header)
    train = np.memmap(Path(cfg.data) / "train.bin", dtype=np.uint16, mode="r")
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    server = BatchServer(
        train, p.clock, data_seed, h.key.seq_len, h.key.vocab_size, h.req_r, h.data_w
    )
    h.req_r = h.data_w = None  # the server's now
    server.start()
    return _Running(h.proc, server, spare, failed)


def _watch(p: _Plan, cfg: TrialConfig, proc: subprocess.Popen, t_start: float, cancelled) -> str:
    """Wait for the trial, against the referee's own clock of its budget; the reason it was
    killed, or "" when it exited by itself."""
    clock, pace_limit = p.clock, None

    def check(now: float) -> str:
        nonlocal pace_limit
        if pace_limit is None and clock.clock_start is not None and clock.progress(now) >= 0.1:
            # A deterministic budget's deadline follows the trial's own pace: 4x what its
            # first tenth predicts (at least a minute), whatever else the node runs.
            predicted = (now - clock.clock_start) / clock.progress(now)
            pace_limit = clock.clock_start + max(60.0, 4 * predicted)
        if clock.first_batch_at is None:
            if now - t_start > p.startup_allowance:
                return f"no training batch requested within {p.startup_allowance:.0f}s"
        elif clock.returned_at is not None:
            if now - clock.returned_at > p.export_allowance:
                return f"still running {p.export_allowance:.0f}s after train() returned"
        elif clock.overrun(now) > p.overrun_allowance() + 10.0:
            return f"still training {clock.overrun(now):.0f}s after its budget ended"
        elif now - clock.last_request_at > p.stall_timeout:
            return f"asked for no batch in {p.stall_timeout:.0f}s"
        elif (
            pace_limit is not None
            and cfg.budget.kind != "time"
            and clock.budget_end(now) is None
            and now > pace_limit
        ):
            return "ran 4x longer than its first tenth of the budget predicted"
        return ""

    return sandbox.watch(
        proc,
        started=t_start,
        hard_timeout=p.hard_timeout,
        cancelled=cancelled,
        memory_limit_mb=cfg.memory_limit_mb,
        check=check,
    )


def _verdict(p: _Plan, trial: _Running, reason: str, log_path: Path) -> tuple[str, str]:
    """The status and error of a trial that ran; ("", "") when its model is to be scored."""
    if reason == "cancelled":
        return "lost", "cancelled by the driver"
    if reason:  # over its memory share it crashed; any other kill is a timeout
        status = "crash" if reason.startswith("used ") else "timeout"
        return status, f"killed: {reason}\n{sandbox.tail(log_path)}"
    if trial.failed:  # the node's fault, not the candidate's; said so, never re-run blind
        return "crash", f"{trial.failed} (on {os.uname().nodename})"
    if trial.proc.returncode != 0:
        return "crash", f"exit code {trial.proc.returncode}\n{sandbox.tail(log_path)}"
    if p.clock.overrun() > p.overrun_allowance():
        return "invalid", f"kept training {p.clock.overrun():.1f}s after its budget ended"
    return "", ""


def _score(
    p: _Plan, out: Path, manifest: dict, val, token_bytes, stamps: dict
) -> tuple[float, dict]:
    """Load the exported graph as data, check it, score it. Raises GraphRejected."""
    from trainer.graph import check_model, load_model

    t0 = time.monotonic()
    forward = load_model(
        out,
        batch=p.eval_batch,
        seq_len=manifest["seq_len"],
        vocab_size=manifest["vocab_size"],
        device=p.device,
    )
    t1 = time.monotonic()
    check_model(forward, val, seq_len=manifest["seq_len"], batch=p.eval_batch, device=p.device)
    t2 = time.monotonic()
    bpb = evaluate_bpb(
        forward,
        val,
        token_bytes,
        seq_len=manifest["seq_len"],
        batch_size=p.eval_batch,
        eval_tokens=manifest["eval_tokens"],
        device=p.device,
    )
    t3 = time.monotonic()
    stamps.update(loaded=t1, probed=t2, scored=t3)
    return bpb, {
        "load_s": round(t1 - t0, 3),
        "probe_s": round(t2 - t1, 3),
        "eval_s": round(t3 - t2, 3),
        # where the checks and scoring ran: the device the checked weights live on
        "eval_device": str(next(iter(forward.weights.values())).device),
        "flops_per_token": training_flops_per_token(
            forward.stats.matmul_flops, p.eval_batch * manifest["seq_len"]
        ),
    }


def run_trial(
    train_py: Path, cfg: TrialConfig, log_path: Path, cancelled: Callable[[], bool] = lambda: False
) -> TrialResult:
    """Train `train_py` under `cfg` in a confined subprocess, then score it. Never raises
    for anything the candidate does: failures come back as status crash/timeout/invalid."""
    t_start, started = time.monotonic(), time.time()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    confinement = ""

    def result(status: str, error: str = "", **kw) -> TrialResult:
        return TrialResult(
            status=status,
            error=error[-3000:],
            log_path=str(log_path),
            total_seconds=round(time.monotonic() - t_start, 2),
            started=started,
            ended=time.time(),
            node=os.uname().nodename,
            confinement=confinement,
            **kw,
        )

    source = Path(train_py).read_text()
    problems = guard.referee_violations(source)
    if problems:
        log_path.write_text("rejected by the referee guard:\n" + "\n".join(problems) + "\n")
        return result("invalid", "reaches into the referee: " + "; ".join(problems))
    try:
        p = plan(cfg, resolve_device(cfg.device))
    except ConfinementError as e:
        log_path.write_text(f"{e}\n")
        return result("invalid", str(e))
    confinement, clock = p.confinement, p.clock

    # Everything the score depends on is loaded before any candidate code runs.
    import torch

    from trainer import graph  # noqa: F401

    val, token_bytes, manifest = load_eval_data(cfg.data)
    # The GPU's name as the referee sees it, not as the trial reports it.
    gpu_name = torch.cuda.get_device_name() if p.device.startswith("cuda") else ""
    src_key, node_cache = source_key(source), CompileCache.for_node() if cfg.compile_cache else None
    stamps: dict = {"begin": t_start}
    extra: dict = {}
    key = launch.LaunchKey(
        p.device,
        p.confinement,
        manifest["vocab_size"],
        manifest["seq_len"],
        manifest["bos_id"],
        p.eval_batch,
        cfg.threads,
        cfg.max_file_bytes,
    )
    harness = launch.adopt(key)
    extra["prestarted"] = harness is not None
    harness = harness or launch.spawn(key)
    try:
        out, compiled = harness.scratch / "out", harness.compile_dir
        if node_cache:
            node_cache.seed(compiled, [*cfg.cache_parents, src_key])
        stamps["launched"] = time.monotonic()
        trial = _start(p, cfg, harness, Path(train_py), log_path)
        reason = "" if trial.failed else _watch(p, cfg, trial.proc, t_start, cancelled)
        stamps["exited"] = time.monotonic()
        trial.stop(clock)
        stamps["stopped"] = time.monotonic()
        if cfg.prestart:  # the next trial's process starts while this one is scored
            launch.prestart(key)
        if early := harness.early_output():
            with open(log_path, "a") as f:
                f.write("# before the trial started:\n" + early)
        stats = read_stats(out / "stats.json")
        status, error = _verdict(p, trial, reason, log_path)
        if not status:
            try:
                bpb, timings = _score(p, out, manifest, val, token_bytes, stamps)
                extra.update(timings)
            except Exception as e:  # the graph is the candidate's: any failure is its failure
                msg = f"{e}" if type(e).__name__ == "GraphRejected" else f"{type(e).__name__}: {e}"
                status, error = "invalid", f"evaluation of the exported model failed: {msg}"
        if node_cache and not status:  # only a trial that passed adds to the node's cache
            extra["compile_cache_published"] = node_cache.publish(compiled, src_key)
    finally:
        harness.close()
    measured = dict(
        training_seconds=round(clock.training_seconds(), 2),
        num_steps=clock.steps,
        total_tokens_M=round(clock.tokens / 1e6, 6),
        num_params_M=round(stats["num_params"] / 1e6, 4) if "num_params" in stats else None,
        peak_vram_mb=round(stats.get("peak_vram_mb", 0.0), 1) if stats else None,
        gpu_name=gpu_name,
        rng=stats.get("rng") or "?",  # none reported: never taken for a pair
    )
    extra.update(
        warmup_tokens=clock.warmup_tokens,
        overrun_s=round(clock.overrun(), 2),
        compile=stats.get("compile", {}),
        **step_times(clock),
    )
    stamps.update(stats.get("marks", {}), **clock_stamps(clock), ended=time.monotonic())
    extra["phases"] = phases(stamps)
    if status:
        return result(status, error, **measured, extra=extra)
    flops = extra["flops_per_token"]
    return result(
        "ok",
        val_bpb=round(bpb, 6),
        mfu=mfu(flops, clock.tokens, clock.training_seconds(), gpu_name),
        **measured,
        extra=extra,
    )
