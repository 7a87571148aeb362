"""Where a default trial's wall time goes, phase by phase (not a test).

    python benchmarks/fixed_cost.py [--device cpu|cuda] [--budget B] [--threads N]
                                    [--trials N] [--actor N] [--json FILE]

Runs trainer/train.py through the referee (`--trials` times in one process, as an actor
does: the first pays the referee's own imports and the node's confinement probe) and prints
each phase of the last as seconds and as a share of its wall time (trainer/phases.py: process
start, imports, model build, warm-up, training, export, exit, the graph's load, probes,
scoring, cleanup), with training seconds / wall seconds as the headline, and torch.compile's
time and cache hits when the trainer compiled. `--actor N` then runs N trials in a row
through a real TrialActor on a local Ray (a clone of this checkout, a worktree per trial,
the compile cache) and prints per trial what the driver saw: dispatch, the actor's checkout
and cleanup, the return, a durable ledger row, the gap between one trial's end and the next
one's training, and experiments per hour at that budget.

Timings mean something only on a quiet machine: the load average is printed before and
after; rerun when it is high.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load() -> float:
    return round(os.getloadavg()[0], 2)


def phase_table(result) -> str:
    """The phases of one trial as seconds and shares of its wall time."""
    from trainer.phases import NAMES

    wall = result.total_seconds or 0.0
    ph = result.extra.get("phases", {})
    lines = [f"{'phase':<14}{'seconds':>9}{'share':>8}"]
    for name in NAMES:
        v = ph.get(name)
        cell = f"{v:9.2f}{100 * v / wall:7.1f}%" if v is not None and wall else f"{'-':>9}"
        lines.append(f"{name:<14}{cell}")
    fixed = wall - (result.training_seconds or 0.0)
    lines.append(f"{'wall':<14}{wall:9.2f}  (fixed cost {fixed:.2f} s)")
    ratio = (result.training_seconds or 0.0) / wall if wall else 0.0
    lines.append(f"headline: training/wall = {ratio:.3f}")
    c = result.extra.get("compile") or {}
    if c.get("compile_s"):
        lines.append(
            f"torch.compile {c['compile_s']:.2f} s (inductor {c.get('inductor_s', 0):.2f} s); "
            f"FX graph cache {int(c.get('fxgraph_cache_hit', 0))} hit / "
            f"{int(c.get('fxgraph_cache_miss', 0))} miss; first step {result.extra.get('first_step_s')}"
            f" s against a median of {result.extra.get('step_s')} s"
        )
    return "\n".join(lines)


def summary(result) -> str:
    tokens = (result.total_tokens_M or 0) * 1e6
    tps = tokens / result.training_seconds if result.training_seconds else 0.0
    return (
        f"status {result.status} val_bpb {result.val_bpb} steps {result.num_steps} "
        f"tokens/s {tps:,.0f} mfu {result.mfu} peak_vram_mb {result.peak_vram_mb} "
        f"gpu {result.gpu_name or '-'} scored on {result.extra.get('eval_device')} "
        f"confinement {result.confinement}"
        + (" prestarted" if result.extra.get("prestarted") else "")
    )


def run_referee(budget: str, device: str, threads: int | None, trials: int, train_py: Path):
    """`trials` trials of train_py in this process, each starting the next one's process
    while it is scored, as a TrialActor does; all their results."""
    from trainer.budget import Budget
    from trainer.prepare import prepare
    from trainer.referee import TrialConfig, run_trial

    cfg = TrialConfig(
        data=prepare("builtin"),
        budget=Budget.parse(budget),
        device=device,
        threads=threads,
        prestart=True,
    )
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(trials):
            out.append(run_trial(train_py, cfg, Path(tmp) / f"trial{i}.log"))
            if out[-1].status != "ok":
                print(f"trial {i}: {out[-1].status}: {out[-1].error[-800:]}")
    return out


def run_actor(budget: str, device: str, threads: int | None, n: int, train_py: Path) -> list[dict]:
    """n trials of train_py in a row through a real TrialActor on a local Ray (from a repo
    holding only trainer/train.py, so no checkout is needed); per-trial timings."""
    import ray

    from actors.trial_actor import actor_class
    from cluster.gitops import bundle, git
    from cluster.ledger import Ledger
    from cluster.records import TrialSpec, asdict

    repo = Path(tempfile.mkdtemp(prefix="ar-fixedcost-repo-"))
    (repo / "trainer").mkdir()
    (repo / "trainer" / "train.py").write_text(train_py.read_text())
    git(repo, "init", "-q")
    git(repo, "add", "trainer/train.py")
    git(repo, "commit", "-qm", "incumbent")
    sha = git(repo, "rev-parse", "HEAD")
    base = bundle(repo, sha, None)
    gpus = 1 if device.startswith("cuda") else 0
    ray.init(
        address="local",
        num_cpus=max(2, threads or 1),
        num_gpus=gpus,
        include_dashboard=False,
        log_to_driver=False,
    )
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cls = actor_class(gpus, threads or 1, None)
            # untrusted=False: this project's own train.py, which a node that cannot confine
            # trials still runs (as it runs the mutate proposer's edits)
            clones = str(Path(tmp) / "c")
            actor = cls.remote(
                "fixedcost", sha, "builtin", None, device, threads, "auto", clones, False
            )
            t = time.time()
            ray.get(actor.describe.remote(base))
            print(f"actor ready in {time.time() - t:.1f} s (clone, data, confinement probe)")
            ledger = Ledger(Path(tmp) / "run")
            prev_end = None
            for i in range(n):
                spec = TrialSpec(f"t{i:04d}", 0, 0, "baseline", sha, sha, "", i, budget)
                sent = time.time()
                result, _ = ray.get(actor.run.remote(spec, b"", base))
                got = time.time()
                status = "keep" if result.status == "ok" else result.status  # a ledger status
                ledger.append({**asdict(result), "trial_id": spec.trial_id, "status": status})
                recorded = time.time()
                a = result.extra.get("actor", {})
                ph = result.extra.get("phases", {})
                pre = sum(ph.get(k) or 0 for k in ("setup", "start", "imports", "import_train"))
                pre += sum(ph.get(k) or 0 for k in ("build", "warmup"))
                row = {
                    "trial": spec.trial_id,
                    "status": result.status,
                    "prestarted": bool(result.extra.get("prestarted")),
                    "dispatch_s": a.get("started", sent) - sent,
                    "checkout_s": a.get("checkout_s"),
                    "referee_s": result.total_seconds,
                    "training_s": result.training_seconds,
                    "cleanup_s": a.get("cleanup_s"),
                    "return_s": got - (result.ended or got) - (a.get("cleanup_s") or 0),
                    "record_s": recorded - got,
                    "wall_s": recorded - sent,
                }
                # from the previous trial's ledger row to this trial's training clock
                start_train = (result.started or sent) + pre
                row["gap_s"] = start_train - prev_end if prev_end else None
                prev_end = (result.started or sent) + pre + (result.training_seconds or 0)
                rows.append(row)
    finally:
        ray.shutdown()
        shutil.rmtree(repo, ignore_errors=True)
    return rows


def actor_table(rows: list[dict], budget: str) -> str:
    keys = ["dispatch_s", "checkout_s", "referee_s", "training_s", "cleanup_s", "return_s"]
    keys += ["record_s", "wall_s", "gap_s"]
    lines = [f"{'trial':<7}{'status':<8}" + "".join(f"{k:>11}" for k in keys)]
    for r in rows:
        cells = "".join(f"{r[k]:11.2f}" if r[k] is not None else f"{'-':>11}" for k in keys)
        status = r["status"] + ("*" if r["prestarted"] else "")
        lines.append(f"{r['trial']:<7}{status:<8}" + cells)
    walls = [r["wall_s"] for r in rows]
    train = sum(r["training_s"] or 0 for r in rows)
    gaps = [r["gap_s"] for r in rows if r["gap_s"] is not None]
    lines.append("(* ran in a process started while the trial before it was scored)")
    lines.append(
        f"{len(rows)} trials at {budget}: {3600 * len(rows) / sum(walls):.1f} experiments per "
        f"hour per worker; training/wall {train / sum(walls):.3f}; gap between one trial's "
        f"training and the next's " + (f"{sum(gaps) / len(gaps):.2f} s (mean)" if gaps else "-")
    )
    return "\n".join(lines)


def main() -> None:
    from trainer.budget import default_budget

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default=None, help="default: the device's default budget")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 2 on cpu)")
    ap.add_argument("--trials", type=int, default=2, help="referee trials in one process")
    ap.add_argument("--actor", type=int, default=0, help="then N trials through a TrialActor")
    ap.add_argument("--actor-budget", default=None, help="their budget (default: --budget)")
    ap.add_argument("--train-py", type=Path, default=ROOT / "trainer" / "train.py")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    budget = args.budget or default_budget(args.device)
    threads = args.threads or (2 if args.device == "cpu" else None)
    print(
        f"fixed cost of a trial: {args.train_py.name}, budget {budget}, device {args.device}, "
        f"threads {threads}; load average {load()} before"
    )
    results = run_referee(budget, args.device, threads, args.trials, args.train_py)
    for i, r in enumerate(results):
        print(f"\n-- referee trial {i + 1} of {len(results)}: {summary(r)}")
        print(phase_table(r))
    actor_budget = args.actor_budget or budget
    rows = []
    if args.actor:
        rows = run_actor(actor_budget, args.device, threads, args.actor, args.train_py)
    if rows:
        print("\n-- through a TrialActor on a local Ray")
        print(actor_table(rows, actor_budget))
    print(f"\nload average {load()} after")
    if args.json:
        from dataclasses import asdict

        doc = {"budget": budget, "device": args.device, "actor_budget": actor_budget}
        doc["referee"] = [asdict(r) for r in results]
        args.json.write_text(json.dumps({**doc, "actor": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
