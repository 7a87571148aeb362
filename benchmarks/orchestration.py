"""Orchestration overhead and worker-busy fraction of the driver (not a test).

    python benchmarks/orchestration.py [--gpus 8] [--sleep 5] [--rounds 3] [--nodes 1]
                                       [--strategy rounds|async] [--grow J]

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
With --grow J the campaign runs with --workers auto, and J more nodes of the same size join
once its first trial is recorded: it prints how long after that the campaign first ran trials
on more GPUs than it started with (the pool re-reads the cluster every 10 s, then the new
actors are placed, clone the repo and prepare data).
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
    ap.add_argument("--grow", type=int, default=0, help="nodes to add while it runs")
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
        share = [args.gpus // args.nodes + (i < args.gpus % args.nodes) for i in range(args.nodes)]
        if args.nodes > 1 or args.grow:
            from ray.cluster_utils import Cluster

            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False},
            )
            for n in share:
                cluster.add_node(num_cpus=1, num_gpus=n)
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
        cfg = CampaignConfig.build(
            tag="bench",
            repo=repo,
            target="train.py",
            protocol="autoresearch",
            device="cpu",
            workers=None if args.grow else args.gpus,
            rounds=args.rounds,
            strategy=args.strategy,
            budget=f"{args.sleep:g}s",
            sandbox="off",
            clone_root=str(Path(tmp) / "clones"),
        )
        t0 = time.time()
        camp, grown = run_growing(cfg, cluster, share[0], args.grow) if args.grow else (None, 0)
        camp = camp or run_campaign(cfg)
        wall = time.time() - t0
        rows = camp.ledger.rows()
        clones = len(list((Path(tmp) / "clones").glob("*/*.git")))
        ray.shutdown()
        if cluster:
            cluster.shutdown()
    ok = [r for r in rows if r["started"] and r["dispatched"]]
    gpus = args.gpus + args.grow * share[0]
    if args.grow:
        wider = first_time_over(ok, args.gpus)
        print(
            f"grew {args.gpus} -> {gpus} fake GPUs ({args.grow} node(s) added): trials first "
            f"ran on more than {args.gpus} GPUs "
            + (f"{wider - grown:.1f}s after the nodes were added" if wider else "never")
        )
        if wider:
            end = max(r["ended"] for r in ok)
            held = sum(max(0.0, r["ended"] - max(r["started"], wider)) for r in ok)
            print(
                f"busy fraction of the {gpus} GPUs from then on: {held / (gpus * (end - wider)):.3f}"
            )
    dispatch = [1000 * (r["started"] - r["dispatched"]) for r in ok]
    record = [1000 * (r["recorded"] - r["ended"]) for r in ok]
    trial = [r["total_seconds"] for r in ok]
    first = min(r["dispatched"] for r in ok)
    last = max(r["recorded"] for r in ok)
    busy = sum(trial) / (gpus * (last - first))
    # Ideal for rounds: phases (replicates, candidates, confirmation pair) run one after the
    # other, each one trial long; a phase with fewer trials than workers leaves some idle.
    # Phases are the waves of dispatches (a gap of over a second between them).
    times = sorted(r["dispatched"] for r in ok)
    phases = 1 + sum(1 for a, b in zip(times, times[1:], strict=False) if b - a > 1.0)
    ideal = sum(trial) / (gpus * phases * statistics.fmean(trial))
    print(
        f"strategy {args.strategy}: {len(rows)} trials on {gpus} fake GPUs over "
        f"{args.nodes + args.grow} node(s), {args.sleep:g}s sleep each, campaign "
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


def run_growing(cfg, cluster, per_node: int, grow: int):
    """Run the campaign on a thread; add `grow` nodes once its first row is recorded.

    Cluster.add_node must be called on the main thread, so the campaign runs beside it."""
    import threading

    from cluster.driver import run_campaign

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(camp=run_campaign(cfg)), daemon=True)
    thread.start()
    ledger = Path(cfg.repo) / "runs" / cfg.tag / "trials.jsonl"
    while thread.is_alive() and not (ledger.exists() and ledger.read_text().strip()):
        time.sleep(0.2)
    grown = time.time()
    for _ in range(grow):
        cluster.add_node(num_cpus=1, num_gpus=per_node)
    thread.join()
    if "camp" not in box:
        raise SystemExit("the campaign failed; its output is above")
    return box["camp"], grown


def first_time_over(rows: list[dict], n: int) -> float | None:
    """When more than `n` trials first ran at once."""
    events = sorted([(r["started"], 1) for r in rows] + [(r["ended"], -1) for r in rows])
    running = 0
    for t, step in events:
        running += step
        if running > n:
            return t
    return None


if __name__ == "__main__":
    main()
