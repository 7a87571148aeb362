"""Noise floor of the referee: val_bpb spread over seeds at given budgets (not a test).

    python benchmarks/noise.py --budgets 60s 190steps --seeds 5 [--threads 2]

Runs the real trainer/train.py through the real referee, one trial at a time, and prints
mean, std (ddof=1), min-max and the step counts for each budget. The merge gate needs this
number: a change must beat a multiple of the std to count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from trainer.budget import Budget
from trainer.prepare import prepare
from trainer.referee import TrialConfig, run_trial

ROOT = Path(__file__).resolve().parent.parent


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
    args = ap.parse_args()
    data = prepare("builtin")
    for budget in args.budgets:
        vals, steps, tok_s = [], [], []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrialConfig(
                    data=data,
                    budget=Budget.parse(budget),
                    seed=seed,
                    data_seed=args.data_seed,
                    threads=args.threads,
                )
                t0 = time.time()
                r = run_trial(ROOT / "trainer" / "train.py", cfg, Path(tmp) / "log")
            assert r.status == "ok", r.error
            vals.append(r.val_bpb)
            steps.append(r.num_steps)
            tok_s.append(r.total_tokens_M * 1e6 / r.training_seconds)
            print(
                f"  {budget} seed {seed}: val_bpb {r.val_bpb:.4f} steps {r.num_steps} "
                f"{tok_s[-1]:.0f} tok/s ({time.time() - t0:.0f}s wall)",
                flush=True,
            )
        print(
            f"{budget}: val_bpb mean {statistics.fmean(vals):.4f} std "
            f"{statistics.stdev(vals):.4f} range {min(vals):.4f}-{max(vals):.4f}; steps "
            f"{min(steps)}-{max(steps)}; {statistics.fmean(tok_s):.0f} tokens/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
