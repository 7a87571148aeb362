"""Search-efficiency simulator: strategies x workers x merge gate on a noisy toy objective.

    python benchmarks/search_sim.py [--noise 0.015] [--hours 8] [--repeats 20]
                                    [--workers 1 4 8 16] [--seed 0] [--jobs 1]
                                    [--headroom 0.045] [--start-at-optimum]
                                    [--gate-k 2] [--confirm-k 2]

Training is replaced by a noisy function of train.py's constants, so that hundreds of trials
per configuration, over many seeds, run in seconds on a CPU. Time is SIMULATED: a
discrete-event clock on which every trial takes one budget unit (5 minutes by default; times
a small log-normal jitter, --jitter), nothing sleeps. What this measures is the search: how
fast and how safely each strategy improves the true (noise-free) objective. The real
driver's own cost per trial (Ray, git, ledger) is measured separately by
benchmarks/orchestration.py and is not modelled here.

The objective. A synthetic train.py (SOURCE below) holds six UPPER_CASE constants, four
floats and two ints, each started a factor 2-5 away from a known optimum. Its true value is
    BASE + sum_i c_i * ln(x_i / opt_i)^2,
with c_i set so that each constant holds --headroom of improvement at the start (default
0.045 = 3 sigma of the default noise per constant). A measured value is the true value plus
Gaussian noise of std --noise (0.015 by default, the order of the CPU referee's run-to-run
noise). Proposals come from the REAL cluster.proposers.mutate.MutateProposer on that source
(one or two constants scaled x0.5-2 or stepped +-1), which sees the ledger-shaped rows so far
and the noise, as in the driver (it learns which constants gained; with the gate off, and so
no replicates, it is given the true noise), N proposals at a time as
the driver's pipeline keeps N ready; the constants of each proposal are parsed back from its
patch with ast. The gate is the REAL cluster.gate.Gate (noise_dof, promising, confirmed,
threshold with the Student-t widening), fed ledger-shaped rows (commit_sha, val_bpb, status).
benchmarks/search_real.py runs the real driver on the same objective to check this model.

The strategies (N = workers; R = incumbent replicates = max(4, N), as RoundsStrategy):
  greedy      N=1, autoresearch's rule: one baseline run, then one candidate at a time,
              keep it if its single measurement beats the incumbent's. No replicates.
  rounds      cluster/strategies.py RoundsStrategy. Gate on: top the incumbent up to R runs
              (at least one more while the noise is unknown), run N candidates, screen the
              best with Gate.promising against the incumbent's runs, then run a fresh
              incumbent replicate and a confirmation run of the winner (one wave; with N=1
              one after the other) and merge if Gate.confirmed, judged with the replicate
              when it finished first. The new incumbent keeps its confirmation run (the
              screening run, best of its round, is not evidence: Gate.runs_by_commit) and is
              topped up to R before the next round. Gate off: one baseline run,
              then the best of each round of N merges if it beats the incumbent's mean.
  async       every worker takes the next job as soon as it is free: queued replicates,
              confirmations and re-runs first, else a fresh candidate against the current
              incumbent. Results are judged on arrival. Gate on: R replicates first (queued),
              a promising candidate queues [incumbent replicate, confirmation], a confirmed
              one merges and the new incumbent is topped up to R. A winner (promising, or with
              the gate off, better than its parent's mean) whose parent is no longer the
              incumbent is re-applied to the new incumbent and re-run as a fresh candidate,
              never merged blind; if the merge changed the same constant, the patch no longer
              applies and it is dropped.
  population  K = min(--islands, max(2, N)) islands, each with its own incumbent, run like
              async; workers take candidates from the islands in turn. Every --migrate x K
              candidate results, the bottom quarter of islands (at least one) copy the best
              island's incumbent when it beats theirs (gate on: by the screening threshold).
              R = max(4, N // K) per island incumbent; the noise is pooled over all islands.
              The campaign's answer is the island incumbent with the best measured mean.
"Gate off" applies the greedy rule inside each strategy: merge whenever a measured value
beats the incumbent's mean; no replicates, no confirmation.

What is reported per strategy x N x gate, over --repeats seeds (the same seeds for every
configuration): time to target (simulated hours until the true value of the campaign's
incumbent first closes --target of the starting headroom; median over seeds, 'never' when
fewer than half reach it), how many reached it, the true value at the end of --hours, merges,
and merges that were truly worse (true value of the merged commit above its parent's), with
ratios to sequential greedy. As in the driver, a proposal whose constants were already
proposed is dropped (the driver compares sources).
"""

from __future__ import annotations

import argparse
import ast
import heapq
import math
import random
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.gate import Gate  # noqa: E402
from cluster.proposers.base import ProposalContext  # noqa: E402
from cluster.proposers.mutate import MutateProposer  # noqa: E402

TARGET_FILE = "train.py"
# name: (start, optimum, comment). Starts are 2-5x off the optimum, both directions.
CONSTANTS = {
    "LEARNING_RATE": (0.002, 0.006, "matrices"),
    "EMBEDDING_LR": (0.01, 0.005, "token embedding table"),
    "WEIGHT_DECAY": (0.1, 0.02, "decoupled weight decay"),
    "WARMUP_FRAC": (0.05, 0.1, "fraction of the budget spent warming up"),
    "DEPTH": (4, 8, "transformer blocks"),
    "BATCH_SIZE": (16, 8, "sequences per step"),
}
BASE = 1.0  # true val_bpb at the optimum
ATTEMPTS = 5  # proposal batches tried for new constants before a repeat is run


@dataclass
class Objective:
    """True value of a constants dict; the start carries `headroom` per constant."""

    headroom: float = 0.045
    start_at_optimum: bool = False  # no real headroom: every change is truly worse
    curv: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.curv = {k: self.headroom / math.log(s / o) ** 2 for k, (s, o, _) in CONSTANTS.items()}

    def start(self) -> dict[str, float]:
        return {k: (o if self.start_at_optimum else s) for k, (s, o, _) in CONSTANTS.items()}

    def true(self, consts: dict[str, float]) -> float:
        return BASE + sum(
            self.curv[k] * math.log(max(v, 1e-12) / CONSTANTS[k][1]) ** 2 for k, v in consts.items()
        )

    @staticmethod
    def source(consts: dict[str, float]) -> str:
        lines = ['"""Synthetic train.py: only its constants matter to the simulator."""', ""]
        lines += [f"{k} = {consts[k]!r}  # {CONSTANTS[k][2]}" for k in CONSTANTS]
        lines += ["", "", "def main():", "    pass", ""]
        return "\n".join(lines)


def changes_of(patch: str) -> dict[str, float]:
    """Constants a mutate patch sets, parsed back with ast from its added lines."""
    out = {}
    for line in patch.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            node = ast.parse(line[1:]).body[0]
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                out[node.targets[0].id] = node.value.value
    return out


@dataclass
class Job:
    kind: str  # baseline | candidate | confirm
    sha: str
    parent: str
    island: int = 0


class Sim:
    """One simulated campaign of one strategy; call run(), then read the counters."""

    def __init__(
        self,
        strategy: str,
        workers: int,
        gate_on: bool,
        obj: Objective,
        noise: float,
        horizon: float,
        seed: int,
        jitter: float = 0.02,
        target_frac: float = 0.5,
        islands: int = 4,
        migrate: int = 8,
        gate: Gate | None = None,
    ):
        self.strategy, self.n, self.gate_on = strategy, workers, gate_on
        self.obj, self.sigma, self.horizon, self.jitter = obj, noise, horizon, jitter
        self.rng = random.Random(seed * 7919 + 1)  # measurement noise
        self.trng = random.Random(seed * 7919 + 2)  # trial durations
        self.proposer = MutateProposer(seed=seed)
        self.gate = gate or Gate()
        self.consts: dict[str, dict[str, float]] = {}
        self.truth: dict[str, float] = {}
        self.src: dict[str, str] = {}
        self.changes: dict[str, dict[str, float]] = {}
        self.described: dict[str, str] = {}  # proposal descriptions, which mutate learns from
        self.seen = {tuple(sorted(obj.start().items()))}  # constants proposed so far
        self.rows: list[dict] = []
        self.rows_by: dict[str, list[dict]] = {}
        self.replicated: list[str] = []  # commits with 2+ runs: all that Gate.noise_dof uses
        self.t = 0.0
        root = self._commit(obj.start())
        self.k = min(islands, max(2, workers)) if strategy == "population" else 1
        self.inc = [root] * self.k
        self.migrate_every = migrate * self.k
        if strategy == "population":
            self.replicates = max(4, workers // self.k)
        else:
            self.replicates = max(2, max(4, workers))
        start, opt = obj.true(obj.start()), BASE
        self.start_true = start
        self.target = opt + (1 - target_frac) * (start - opt)
        self.t_target = 0.0 if start <= self.target else None
        self.merges = self.worse = self.trials = self.copies = self.worse_copies = 0

    # -- commits, measurements, ledger rows ---------------------------------------------------

    def _commit(self, consts: dict[str, float]) -> str:
        sha = f"c{len(self.consts):06d}"
        self.consts[sha] = consts
        self.truth[sha] = self.obj.true(consts)
        return sha

    def source(self, sha: str) -> str:
        if sha not in self.src:
            self.src[sha] = self.obj.source(self.consts[sha])
        return self.src[sha]

    def propose(self, parent: str, n: int) -> list[str]:
        # As in the driver, the proposer sees the ledger so far and the noise: mutate learns
        # which constants gained (cluster/proposers/mutate.py). With the gate off there are no
        # replicates to estimate the noise from; it is given the true noise, so that the arms
        # with and without the gate learn alike and differ only in what they merge.
        ctx = ProposalContext(
            incumbent_sha=parent,
            incumbent_source=self.source(parent),
            target=TARGET_FILE,
            history=self.rows,
            noise=self.noise_dof()[0] or self.sigma,
        )
        out: list[str] = []
        for attempt in range(ATTEMPTS):
            # Ask for more than needed: late in a campaign most proposals are repeats, and
            # each call re-reads the ledger.
            for p in self.proposer.propose(ctx, 4 * (n - len(out))):
                if len(out) >= n:
                    break
                change = changes_of(p.patch)
                consts = {**self.consts[parent], **change}
                key = tuple(sorted(consts.items()))
                # The driver drops a proposal whose source was already run (or is running);
                # with nothing new after many tries, a repeat is run rather than idle a worker.
                if key in self.seen and attempt < ATTEMPTS - 1:
                    continue
                self.seen.add(key)
                sha = self._commit(consts)
                self.changes[sha] = change
                self.described[sha] = p.description
                out.append(sha)
            if len(out) >= n:
                break
        return out

    def duration(self) -> float:
        return math.exp(self.jitter * self.trng.gauss(0.0, 1.0)) if self.jitter else 1.0

    def record(self, job: Job) -> float:
        val = self.truth[job.sha] + self.rng.gauss(0.0, self.sigma)
        row = {
            "commit_sha": job.sha,
            "parent_sha": job.parent,
            "val_bpb": val,
            "status": "discard",
            "kind": job.kind,
            "proposer": "mutate",
            "description": self.described.get(job.sha, ""),
        }
        self.rows.append(row)
        group = self.rows_by.setdefault(job.sha, [])
        group.append(row)
        if len(group) == 2:
            self.replicated.append(job.sha)
        self.trials += 1
        return val

    def runs(self, sha: str) -> list[float]:
        return [r["val_bpb"] for r in self.rows_by.get(sha, ())]

    def noise_dof(self) -> tuple[float | None, int]:
        return Gate.noise_dof([r for s in self.replicated for r in self.rows_by[s]])

    def merge(self, island: int, sha: str) -> None:
        parent = self.inc[island]
        self.merges += 1
        self.worse += self.truth[sha] > self.truth[parent]
        self.inc[island] = sha
        for r in self.rows_by.get(sha, ()):
            r["status"] = "keep"
        self.progress()

    def answer(self) -> str:
        """The campaign's incumbent: for islands, the one with the best measured mean."""
        if self.k == 1:
            return self.inc[0]
        return min(
            self.inc, key=lambda s: statistics.fmean(self.runs(s)) if self.runs(s) else math.inf
        )

    def progress(self) -> None:
        if self.t_target is None and self.truth[self.answer()] <= self.target:
            self.t_target = self.t

    # -- rounds (and greedy) --------------------------------------------------------------------

    def wave(self, jobs: list[Job], on_row=None) -> bool:
        """Run jobs on N workers from now (list scheduling); record in completion order.
        False when the wave would end past the horizon (then nothing of it is recorded)."""
        free = [self.t] * self.n
        ends = []
        for i, job in enumerate(jobs):
            start = heapq.heappop(free)
            end = start + self.duration()
            heapq.heappush(free, end)
            ends.append((end, i, job))
        ends.sort()
        if ends[-1][0] > self.horizon:
            self.t = self.horizon
            return False
        for end, _, job in ends:
            self.t = end
            val = self.record(job)
            if on_row:
                on_row(job, val)
        self.t = ends[-1][0]
        return True

    def run_rounds(self) -> None:
        gate = self.gate
        if not self.gate_on and not self.wave([Job("baseline", self.inc[0], self.inc[0])]):
            return
        while self.t < self.horizon:
            inc = self.inc[0]
            if self.gate_on:
                missing = self.replicates - len(self.runs(inc))
                if self.noise_dof()[0] is None:
                    missing = max(missing, 1)
                if missing > 0 and not self.wave([Job("baseline", inc, inc)] * missing):
                    return
            cands = [Job("candidate", s, inc) for s in self.propose(inc, self.n)]
            got: list[tuple[float, str]] = []
            if not self.wave(cands, on_row=lambda j, v, got=got: got.append((v, j.sha))):
                return
            best_val, best = min(got)
            inc_runs = self.runs(inc)
            if not self.gate_on:
                if best_val < statistics.fmean(inc_runs):
                    self.merge(0, best)
                continue
            noise, dof = self.noise_dof()
            if not noise or not gate.promising(best_val, inc_runs, noise, dof):
                continue

            def decide(job: Job, val: float, inc=inc, noise=noise, dof=dof) -> None:
                if job.kind != "confirm":
                    return
                now, now_dof = self.noise_dof()
                if gate.confirmed(val, self.runs(inc), now or noise, now_dof or dof):
                    self.merge(0, job.sha)

            if not self.wave([Job("baseline", inc, inc), Job("confirm", best, inc)], on_row=decide):
                return

    # -- async and population (event-driven) ---------------------------------------------------

    def rebase(self, sha: str, parent: str, island: int) -> str | None:
        """Re-apply a stale winner's change to the island's incumbent; None on a conflict."""
        inc = self.inc[island]
        change = self.changes.get(sha, {})
        if any(self.consts[inc][k] != self.consts[parent][k] for k in change):
            return None
        new = self._commit({**self.consts[inc], **change})
        self.changes[new] = change
        return new

    def beats(self, val: float, parent: str, confirm: bool = False) -> bool:
        runs = self.runs(parent)
        if not runs:
            return False
        if not self.gate_on:
            return val < statistics.fmean(runs)
        noise, dof = self.noise_dof()
        if not noise:
            return False
        check = self.gate.confirmed if confirm else self.gate.promising
        return check(val, runs, noise, dof)

    def top_up(self, island: int) -> None:
        inc = self.inc[island]
        queued = sum(1 for j in self.queue if j.kind == "baseline" and j.sha == inc)
        missing = self.replicates - len(self.runs(inc)) - queued
        self.queue.extend(Job("baseline", inc, inc, island) for _ in range(max(0, missing)))

    def next_job(self) -> Job:
        if self.queue:
            return self.queue.popleft()
        island = self.rr % self.k
        self.rr += 1
        inc = self.inc[island]
        # Proposals are made N at a time for the current incumbent, as the driver's pipeline
        # keeps N ready; a new incumbent gets fresh ones.
        ready = self.ready.setdefault(island, deque())
        if not ready or ready[0][1] != inc:
            ready.clear()
            ready.extend((sha, inc) for sha in self.propose(inc, self.n))
        return Job("candidate", ready.popleft()[0], inc, island)

    def on_result(self, job: Job, val: float) -> None:
        i, inc = job.island, self.inc[job.island]
        if job.kind == "baseline":
            self.progress()  # a replicate can change which island looks best
            return
        if job.kind == "candidate":
            self.results += 1
        if job.parent != inc:  # stale: the incumbent moved while this ran
            if self.beats(val, job.parent, confirm=job.kind == "confirm"):
                new = self.rebase(job.sha, job.parent, i)
                if new:
                    self.queue.append(Job("candidate", new, inc, i))
        elif job.kind == "confirm" or not self.gate_on:
            if self.beats(val, inc, confirm=True):
                self.merge(i, job.sha)
                if self.gate_on:
                    self.top_up(i)
        elif self.beats(val, inc):
            self.queue.extend([Job("baseline", inc, inc, i), Job("confirm", job.sha, inc, i)])
        if self.k > 1 and job.kind == "candidate" and self.results % self.migrate_every == 0:
            self.migrate()

    def migrate(self) -> None:
        def mean(s: str) -> float:
            return statistics.fmean(self.runs(s)) if self.runs(s) else math.inf

        order = sorted(range(self.k), key=lambda i: mean(self.inc[i]))
        top = self.inc[order[0]]
        for i in order[-max(1, self.k // 4) :]:
            bottom = self.inc[i]
            if bottom == top or not self.runs(bottom):
                continue
            if self.gate_on:
                noise, dof = self.noise_dof()
                gain = mean(bottom) - mean(top)
                if not noise or gain <= self.gate.threshold(
                    noise, len(self.runs(bottom)), self.gate.noise_multiple, dof
                ):
                    continue
            elif mean(top) >= mean(bottom):
                continue
            self.inc[i] = top
            self.copies += 1
            self.worse_copies += self.truth[top] > self.truth[bottom]
        self.progress()

    def run_events(self) -> None:
        self.queue: deque[Job] = deque()
        self.ready: dict[int, deque[tuple[str, str]]] = {}  # island -> (proposal, its parent)
        self.rr = self.results = 0
        if self.gate_on:
            self.top_up(0)
        else:
            self.queue.append(Job("baseline", self.inc[0], self.inc[0]))
        events: list[tuple[float, int, int, Job]] = []
        seq = 0
        for w in range(self.n):
            heapq.heappush(events, (self.duration(), seq, w, self.next_job()))
            seq += 1
        while events:
            end, _, w, job = heapq.heappop(events)
            if end > self.horizon:
                break
            self.t = end
            self.on_result(job, self.record(job))
            seq += 1
            heapq.heappush(events, (end + self.duration(), seq, w, self.next_job()))
        self.t = self.horizon

    def run(self) -> Sim:
        if self.strategy in ("greedy", "rounds"):
            self.run_rounds()
        else:
            self.run_events()
        self.final = self.truth[self.answer()]
        return self


CONFIG_KEYS = ("strategy", "N", "gate")


def configs(workers: list[int]) -> list[tuple[str, int, bool]]:
    out = [("greedy", 1, False)]
    for strategy in ("rounds", "async", "population"):
        for n in workers:
            for gate_on in (True, False):
                out.append((strategy, n, gate_on))
    return out


def simulate(args: argparse.Namespace, cfg: tuple[str, int, bool]) -> list[dict]:
    strategy, n, gate_on = cfg
    obj = Objective(args.headroom, args.start_at_optimum)
    horizon = args.hours * 60 / args.budget_minutes
    out = []
    for rep in range(args.repeats):
        s = Sim(
            strategy,
            n,
            gate_on,
            obj,
            args.noise,
            horizon,
            seed=args.seed * 100_003 + rep,
            jitter=args.jitter,
            target_frac=args.target,
            islands=args.islands,
            migrate=args.migrate,
            gate=Gate(args.gate_k, args.confirm_k),
        ).run()
        out.append(
            {
                "strategy": strategy,
                "N": n,
                "gate": "on" if gate_on else "off",
                "seed": rep,
                "t_target": s.t_target,
                "start_true": s.start_true,
                "final_true": s.final,
                "merges": s.merges,
                "worse": s.worse,
                "trials": s.trials,
                "busy": s.trials / (n * horizon),
                "copies": s.copies,
                "worse_copies": s.worse_copies,
                "noise_est": s.noise_dof()[0],
            }
        )
    return out


def summarize(runs: list[dict], unit_h: float):
    import pandas as pd

    df = pd.DataFrame(runs)
    headroom = df["start_true"] - BASE
    df["closed"] = (df["start_true"] - df["final_true"]) / headroom.where(headroom > 0)
    rows = []
    for key, g in df.groupby(list(CONFIG_KEYS), sort=False):
        t = sorted(math.inf if v is None or v != v else v for v in g["t_target"])
        med = statistics.median(t)
        rows.append(
            {
                **dict(zip(CONFIG_KEYS, key, strict=True)),
                "t_target_h": med * unit_h,
                "reached": f"{sum(v < math.inf for v in t)}/{len(t)}",
                "final_true": g["final_true"].mean(),
                "closed": g["closed"].mean(),
                "merges": g["merges"].mean(),
                "worse": g["worse"].mean(),
                "worse_frac": g["worse"].sum() / max(1, g["merges"].sum()),
                "trials": g["trials"].mean(),
                "busy": g["busy"].mean(),
                "copies": g["copies"].mean(),
                "worse_copies": g["worse_copies"].mean(),
                "noise_est": g["noise_est"].mean(),
            }
        )
    tab = pd.DataFrame(rows)
    greedy = tab[tab["strategy"] == "greedy"].iloc[0]
    tab["speedup"] = greedy["t_target_h"] / tab["t_target_h"]
    tab["gap_vs_greedy"] = (tab["final_true"] - BASE) / (greedy["final_true"] - BASE)
    tab["worse_vs_greedy"] = tab["worse"] / greedy["worse"] if greedy["worse"] else math.nan
    return tab


def fmt(tab) -> str:
    t = tab.copy()
    t["t_target_h"] = [("never" if not math.isfinite(v) else f"{v:.2f}") for v in t["t_target_h"]]
    t["speedup"] = [
        "-" if v != v or v == 0 else "inf" if v == math.inf else f"{v:.2f}" for v in t["speedup"]
    ]
    return t.to_string(
        index=False,
        float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}",
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--noise", type=float, default=0.015, help="std of a measured val_bpb")
    ap.add_argument(
        "--headroom", type=float, default=0.045, help="true improvement per constant at start"
    )
    ap.add_argument(
        "--start-at-optimum", action="store_true", help="no real headroom: changes only hurt"
    )
    ap.add_argument("--hours", type=float, default=8.0, help="simulated wall clock")
    ap.add_argument("--budget-minutes", type=float, default=5.0, help="one trial")
    ap.add_argument("--jitter", type=float, default=0.02, help="log-normal std of a trial time")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of headroom to close")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--islands", type=int, default=4)
    ap.add_argument("--migrate", type=int, default=8, help="candidate results per island")
    ap.add_argument("--gate-k", type=float, default=2.0, help="Gate.noise_multiple (screen)")
    ap.add_argument("--confirm-k", type=float, default=2.0, help="Gate.confirm_multiple")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="processes (configurations in parallel)")
    ap.add_argument("--csv", type=Path, default=None, help="also write per-seed results here")
    args = ap.parse_args(argv)
    t0 = time.time()
    cfgs = configs(args.workers)
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        with ProcessPoolExecutor(args.jobs) as pool:
            parts = list(pool.map(partial(simulate, args), cfgs))
    else:
        parts = [simulate(args, c) for c in cfgs]
    runs = [r for p in parts for r in p]
    unit_h = args.budget_minutes / 60
    obj = Objective(args.headroom, args.start_at_optimum)
    start = obj.true(obj.start())
    target = BASE + (1 - args.target) * (start - BASE)
    print(
        f"noise {args.noise:g}, headroom {args.headroom:g} x {len(CONSTANTS)} constants "
        f"(start {start:.3f}, optimum {BASE:.3f}, target {target:.3f}), "
        f"{args.hours:g} h of {args.budget_minutes:g}-min trials, {args.repeats} seeds, "
        f"gate k {args.gate_k:g}/{args.confirm_k:g}; "
        f"{sum(r['trials'] for r in runs)} simulated trials in {time.time() - t0:.0f}s"
    )
    print(
        "t_target_h: median simulated hours to close the target (never: under half the seeds); "
        "final_true/closed/merges/worse: means; worse_frac: truly-worse merges / merges; "
        "speedup, gap_vs_greedy, worse_vs_greedy: against sequential greedy"
    )
    print(fmt(summarize(runs, unit_h)))
    if args.csv:
        import pandas as pd

        pd.DataFrame(runs).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
