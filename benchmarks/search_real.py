"""The search simulator checked against the real driver, on the same objective (not a test).

    python benchmarks/search_real.py [--strategy async] [--workers 4] [--trials 40]
                                     [--repeats 5] [--sleep 1] [--noise 0.015] [--sim-seeds 40]

benchmarks/search_sim.py models each strategy on a simulated clock. Here the REAL campaign
(cluster.driver.run_campaign: Ray with fake GPUs, git, the ledger, the real strategy, mutate
proposer and gate) searches the simulator's objective: a train.py whose six constants start
away from a known optimum, which sleeps for the budget (--sleep seconds) and prints the true
value of its constants plus Gaussian noise (autoresearch protocol). After each campaign the
true value of every merged commit is computed from its source, so the figures are the
simulator's: the true value of the final incumbent, merges, and merges that were truly worse
than their parent. The simulator is then run for the same strategy, workers and gate with as
many trials per campaign as the real runs averaged, over --sim-seeds seeds, and both are
printed side by side. Agreement means the simulator's comparisons describe the real driver.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search_sim import BASE, CONSTANTS, Objective, Sim  # noqa: E402

from cluster.gate import Gate  # noqa: E402
from cluster.proposers.mutate import numeric_constants  # noqa: E402

TRIAL = """
import math
import random
import time

optimum = {optimum!r}
curvature = {curvature!r}
values = {{k: globals()[k] for k in optimum}}
true = {base!r} + sum(
    curvature[k] * math.log(max(v, 1e-12) / optimum[k]) ** 2 for k, v in values.items()
)
time.sleep({sleep!r})
print("---")
print(f"val_bpb:          {{true + random.gauss(0.0, {noise!r}):.6f}}")
print("training_seconds: {sleep}")
print("num_steps:        1")
"""


def train_source(obj: Objective, sleep: float, noise: float) -> str:
    head = Objective.source(obj.start()).split("\n\ndef main")[0]
    optimum = {k: o for k, (_, o, _) in CONSTANTS.items()}
    return head + TRIAL.format(
        optimum=optimum, curvature=obj.curv, base=BASE, sleep=sleep, noise=noise
    )


def constants_of(source: str) -> dict[str, float]:
    return {k: node.value for k, node in numeric_constants(source) if k in CONSTANTS}


def real_campaign(args, obj: Objective, root: Path, rep: int) -> dict:
    from cluster import gitops
    from cluster.campaign import CampaignConfig
    from cluster.driver import run_campaign

    repo = root / f"repo{rep}"
    repo.mkdir()
    (repo / "train.py").write_text(train_source(obj, args.sleep, args.noise))
    (repo / ".gitignore").write_text("runs/\n")
    env = {**os.environ, **gitops.IDENTITY}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "objective"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
    camp = run_campaign(
        CampaignConfig(
            tag="real",
            repo=repo,
            target="train.py",
            protocol="autoresearch",
            device="cpu",
            sandbox="off",
            budget=f"{args.sleep:g}s",
            strategy=args.strategy,
            workers=args.workers,
            trials=args.trials,
            seed=rep,
            noise_multiple=args.gate_k,
            confirm_multiple=args.confirm_k,
            clone_root=str(root / "clones"),
        )
    )

    def true(sha: str) -> float:
        return obj.true(constants_of(gitops.read_blob(repo, sha, "train.py")))

    rows = camp.ledger.rows()
    merged = [r for r in rows if r.get("merged")]
    return {
        "trials": sum(1 for r in rows if r["status"] not in ("invalid",)),
        "final_true": true(gitops.rev_parse(repo, camp.main_branch)),
        "merges": len(merged),
        "worse": sum(true(r["commit_sha"]) > true(r["parent_sha"]) for r in merged),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--strategy", default="async", choices=["rounds", "async", "population"])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--trials", type=int, default=40, help="candidates per real campaign")
    ap.add_argument("--repeats", type=int, default=5, help="real campaigns (seeds)")
    ap.add_argument("--sleep", type=float, default=1.0, help="seconds a real trial sleeps")
    ap.add_argument("--noise", type=float, default=0.015)
    ap.add_argument("--headroom", type=float, default=0.045)
    ap.add_argument("--gate-k", type=float, default=2.0)
    ap.add_argument("--confirm-k", type=float, default=2.0)
    ap.add_argument("--sim-seeds", type=int, default=40)
    args = ap.parse_args()
    import ray

    obj = Objective(args.headroom)
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=args.workers,
        include_dashboard=False,
        log_to_driver=False,
    )
    t0 = time.time()
    real = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            real.append(real_campaign(args, obj, Path(tmp), rep))
            print(f"real campaign {rep}: {real[-1]}", flush=True)
    ray.shutdown()
    wall = time.time() - t0
    trials = statistics.fmean(r["trials"] for r in real)

    def simulate(horizon: float, seed: int) -> Sim:
        gate = Gate(args.gate_k, args.confirm_k)
        return Sim(args.strategy, args.workers, True, obj, args.noise, horizon, seed, gate=gate)

    # The simulated horizon that holds as many trials as the real campaigns ran (rounds leave
    # workers idle, so it is longer than trials / workers).
    horizon = trials / args.workers
    pilot = statistics.fmean(simulate(horizon, 10_000 + i).run().trials for i in range(20))
    horizon *= trials / pilot
    sim = []
    for seed in range(args.sim_seeds):
        s = simulate(horizon, seed).run()
        sim.append(
            {"trials": s.trials, "final_true": s.final, "merges": s.merges, "worse": s.worse}
        )
    start = obj.true(obj.start())
    print(
        f"\n{args.strategy}, {args.workers} workers, gate {args.gate_k:g}/{args.confirm_k:g}, "
        f"noise {args.noise:g}; start {start:.4f}, optimum {BASE:.4f}; "
        f"{args.repeats} real campaigns in {wall:.0f}s, {args.sim_seeds} simulated"
    )
    print(f"{'':10} {'trials':>7} {'final_true':>11} {'closed':>7} {'merges':>7} {'worse':>6}")
    for name, runs in (("real", real), ("simulated", sim)):
        mean = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
        spread = statistics.stdev(r["final_true"] for r in runs) if len(runs) > 1 else 0.0
        print(
            f"{name:10} {mean['trials']:7.1f} {mean['final_true']:11.4f} "
            f"{(start - mean['final_true']) / (start - BASE):7.2f} {mean['merges']:7.2f} "
            f"{mean['worse']:6.2f}   (final_true std over seeds {spread:.4f}, "
            f"standard error of the mean {spread / len(runs) ** 0.5:.4f})"
        )


if __name__ == "__main__":
    main()
