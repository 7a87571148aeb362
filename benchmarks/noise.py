"""Noise floor of the referee: val_bpb spread over seeds at given budgets (not a test).

    python benchmarks/noise.py --budgets 60s 190steps --seeds 5 [--threads 2]
    python benchmarks/noise.py --budgets 500ktokens --seeds 6 --paired UNEMBEDDING_LR=x1.4 \
        [--paired EMBEDDING_LR=x2 ...] [--jobs 2]

Runs the real trainer/train.py through the real referee and prints mean, std (ddof=1),
min-max and the step counts for each budget. The merge gate needs this number: a change must
beat a multiple of the std to count.

With --paired NAME=xF (a constant of train.py times F), each seed also trains the changed
train.py, and the script prints the std of the paired differences (changed minus incumbent
at one seed), the correlation of the two runs at one seed, and the gains the gate asks of a
candidate at k = 2 with m incumbent runs: unpaired, k x std x sqrt(1 + 1/m) x t, and paired,
k x std of a difference x t (t: Student's widening for the degrees of freedom measured here).
A token or step budget makes a run deterministic per seed, so load does not change the values.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from trainer.budget import Budget
from trainer.prepare import prepare
from trainer.referee import TrialConfig, run_trial

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "trainer" / "train.py"


def changed(source: str, edit: str) -> tuple[str, str]:
    """train.py with NAME=xF applied (the constant times F): (source, description)."""
    name, _, factor = edit.partition("=x")
    m = re.search(rf"^{name} = ([0-9.e+-]+)", source, flags=re.M)
    if not m or not factor:
        raise SystemExit(f"--paired {edit}: want NAME=xFACTOR for a numeric constant of train.py")
    new = float(m.group(1)) * float(factor)
    value = repr(int(new)) if m.group(1).isdigit() else f"{new:.6g}"
    return source[: m.start(1)] + value + source[m.end(1) :], f"{name} {m.group(1)} -> {value}"


def paired_report(budget: str, base: list[float], runs: dict[str, list[float]], m: int) -> None:
    """Std of runs and of paired differences, rho, and the gate's asks they imply."""
    from cluster.gate import Gate, t_factor

    gate, k = Gate(), 2.0
    sd, dof = statistics.stdev(base), len(base) - 1
    unpaired = gate.threshold(sd, m, k, dof)
    print(f"{budget}: incumbent std {sd:.4f} over {len(base)} seeds")
    print(f"  unpaired gate (k={k:g}, m={m}, t for {dof} dof): a gain of {unpaired:.4f}")
    for desc, vals in runs.items():
        diffs = [v - b for v, b in zip(vals, base, strict=True)]
        dsd = statistics.stdev(diffs)
        rho = statistics.correlation(base, vals)
        paired = gate.pair_threshold(dsd, k, len(diffs) - 1)
        print(
            f"  {desc}: mean gain {-statistics.fmean(diffs):+.4f}, std of the difference "
            f"{dsd:.4f} (unpaired it would be {sd * 2**0.5:.4f}), rho {rho:.2f}; "
            f"paired gate: a gain of {paired:.4f} ({unpaired / paired:.1f}x smaller; "
            f"t {t_factor(len(diffs) - 1):.2f})"
        )


def one(job, budget: str, data, data_seed: int | None, threads: int):
    """One trial of (description, train.py source, seed) through the referee."""
    desc, src, seed = job
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.py"
        path.write_text(src)
        cfg = TrialConfig(
            data=data,
            budget=Budget.parse(budget),
            seed=seed,
            data_seed=data_seed,
            threads=threads,
        )
        t0 = time.time()
        r = run_trial(path, cfg, Path(tmp) / "log")
    if r.status != "ok":
        raise SystemExit(f"{budget} seed {seed} {desc}: {r.status}: {r.error}")
    print(
        f"  {budget} seed {seed} {desc}: val_bpb {r.val_bpb:.4f} steps {r.num_steps} "
        f"({time.time() - t0:.0f}s wall)",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budgets", nargs="+", default=["60s", "190steps"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="fix the batch order across seeds (only initialization varies)",
    )
    ap.add_argument(
        "--paired",
        action="append",
        default=[],
        metavar="NAME=xF",
        help="also train train.py with constant NAME times F at every seed (repeatable)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="trials at once (2 at most on 2 cores)")
    ap.add_argument("--m", type=int, default=4, help="incumbent runs the unpaired gate has")
    args = ap.parse_args()
    data = prepare("builtin")
    base_src = TRAIN.read_text()
    variants = [("incumbent", base_src)]
    for edit in args.paired:
        src, desc = changed(base_src, edit)
        variants.append((desc, src))
    for budget in args.budgets:
        jobs = [(desc, src, seed) for seed in range(args.seeds) for desc, src in variants]

        run = partial(one, budget=budget, data=data, data_seed=args.data_seed, threads=args.threads)
        with ProcessPoolExecutor(max(1, args.jobs)) as pool:  # trials in processes, as actors
            results = list(pool.map(run, jobs))
        by = {
            desc: [r for (d, _, _), r in zip(jobs, results, strict=True) if d == desc]
            for desc, _ in variants
        }
        base = by.pop("incumbent")
        vals = [r.val_bpb for r in base]
        steps = [r.num_steps for r in base]
        tok_s = [r.total_tokens_M * 1e6 / r.training_seconds for r in base]
        if by:
            paired_report(
                budget, vals, {d: [r.val_bpb for r in rs] for d, rs in by.items()}, args.m
            )
        print(
            f"{budget}: val_bpb mean {statistics.fmean(vals):.4f} std "
            f"{statistics.stdev(vals):.4f} range {min(vals):.4f}-{max(vals):.4f}; steps "
            f"{min(steps)}-{max(steps)}; {statistics.fmean(tok_s):.0f} tokens/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
