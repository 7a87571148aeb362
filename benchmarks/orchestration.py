"""Orchestration overhead and worker-busy fraction of the driver (not a test).

    python benchmarks/orchestration.py [--gpus 8] [--sleep 5] [--rounds 3] [--nodes 1]
                                       [--strategy rounds|async]

A campaign on a local Ray with fake GPUs whose trials only sleep for a fixed time (an
autoresearch-protocol train.py that sleeps, then prints a score of its constants), so what is
measured is the driver, the actors, git and the ledger, not training. Prints, per trial:
  dispatch overhead = trainer start - proposal dispatched to a free worker (Ray call, bundle
                      fetch, worktree checkout, process start)
  record overhead   = ledger row written - trainer end (result transfer, gate, fsync'd append)
and the busy fraction: time workers spent in trials / (workers x campaign wall-clock), next to
its ideal for the rounds strategy (1 at full rounds; confirmation pairs leave workers idle),
and the trial slot (dispatched to recorded) as a multiple of the sleep (ideal 1).
With --nodes K > 1 the fake GPUs are split over K raylets of a ray.cluster_utils.Cluster on
this machine (a head with no resources, as on a real cluster), so actors, clones and bundle
transfers cross node boundaries; each node costs a raylet and an object store (~0.5 GB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

TRAIN = '''"""Sleep-only trial: a noisy score of its constants after a fixed sleep."""
import random, time
A = 1.0
B = 2.0
sleep_seconds = {sleep}
time.sleep(sleep_seconds)
score = (A - 0.3) ** 2 + (B - 1.5) ** 2 + random.gauss(0, 0.01) + 1.0
print("---")
print(f"val_bpb:          {{score:.6f}}")
print(f"training_seconds: {{sleep_seconds:.1f}}")
print("num_steps:        1")
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--sleep", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=1, help="Cluster nodes sharing the GPUs")
    ap.add_argument("--strategy", default="rounds", choices=["rounds", "async"])
    args = ap.parse_args()
    import ray

    from cluster.campaign import CampaignConfig
    from cluster.driver import run_campaign

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "train.py").write_text(TRAIN.format(sleep=args.sleep))
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "b",
            "GIT_AUTHOR_EMAIL": "b@b",
            "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@b",
        }
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "sleep trial"]):
            subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
        cluster = None
        if args.nodes > 1:
            from ray.cluster_utils import Cluster

            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False},
            )
            for i in range(args.nodes):
                share = args.gpus // args.nodes + (i < args.gpus % args.nodes)
                cluster.add_node(num_cpus=1, num_gpus=share)
            ray.init(address=cluster.address, log_to_driver=False)
            cluster.wait_for_nodes()
        else:
            ray.init(
                address="local",
                num_cpus=2,
                num_gpus=args.gpus,
                include_dashboard=False,
                log_to_driver=False,
            )
        t0 = time.time()
        camp = run_campaign(
            CampaignConfig(
                tag="bench",
                repo=repo,
                target="train.py",
                protocol="autoresearch",
                device="cpu",
                workers=args.gpus,
                rounds=args.rounds,
                strategy=args.strategy,
                budget=f"{args.sleep:g}s",
                sandbox="off",
                clone_root=str(Path(tmp) / "clones"),
            )
        )
        wall = time.time() - t0
        rows = camp.ledger.rows()
        clones = len(list((Path(tmp) / "clones").glob("*/*.git")))
        ray.shutdown()
        if cluster:
            cluster.shutdown()
    ok = [r for r in rows if r["started"] and r["dispatched"]]
    dispatch = [1000 * (r["started"] - r["dispatched"]) for r in ok]
    record = [1000 * (r["recorded"] - r["ended"]) for r in ok]
    trial = [r["total_seconds"] for r in ok]
    first = min(r["dispatched"] for r in ok)
    last = max(r["recorded"] for r in ok)
    busy = sum(trial) / (args.gpus * (last - first))
    # Ideal for rounds: phases (replicates, candidates, confirmation pair) run one after the
    # other, each one trial long; a phase with fewer trials than workers leaves some idle.
    # Phases are the waves of dispatches (a gap of over a second between them).
    times = sorted(r["dispatched"] for r in ok)
    phases = 1 + sum(1 for a, b in zip(times, times[1:], strict=False) if b - a > 1.0)
    ideal = sum(trial) / (args.gpus * phases * statistics.fmean(trial))
    print(
        f"strategy {args.strategy}: {len(rows)} trials on {args.gpus} fake GPUs over "
        f"{args.nodes} node(s), {args.sleep:g}s sleep each, campaign "
        f"wall {wall:.1f}s (trials {last - first:.1f}s)"
    )
    print(
        f"dispatch overhead: median {statistics.median(dispatch):.0f} ms, "
        f"p90 {sorted(dispatch)[int(0.9 * len(dispatch))]:.0f} ms"
    )
    print(
        f"record overhead:   median {statistics.median(record):.0f} ms, "
        f"p90 {sorted(record)[int(0.9 * len(record))]:.0f} ms"
    )
    print(f"trial process wall: mean {statistics.fmean(trial):.2f}s for a {args.sleep:g}s sleep")
    slot = [r["recorded"] - r["dispatched"] for r in ok]
    print(
        f"trial slot (dispatched to recorded): mean {statistics.fmean(slot):.2f}s, "
        f"p90 {sorted(slot)[int(0.9 * len(slot))]:.2f}s; ratio to the {args.sleep:g}s ideal "
        f"{statistics.fmean(slot) / args.sleep:.3f}"
    )
    print(f"node-local clones made (one per node that ran trials): {clones}")
    print(
        f"busy fraction {busy:.3f}; ideal for rounds ({phases} phases) {ideal:.3f}; "
        f"ratio {busy / ideal:.3f}"
    )


if __name__ == "__main__":
    main()
