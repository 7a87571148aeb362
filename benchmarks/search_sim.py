"""Search-efficiency simulator: the REAL strategies, gate and proposer on a simulated clock.

    python benchmarks/search_sim.py --objective hard --summary     # the headline, ~9 min on 2 cores
    python benchmarks/search_sim.py [--objective smooth|hard] [--noise 0.015] [--hours 8]
                                    [--repeats 20] [--reference-repeats 200]
                                    [--workers 1 4 8 16]
                                    [--strategies greedy rounds async-unpaired ...]
                                    [--seed 0] [--jobs CORES] [--headroom 0.045]
                                    [--start-at-optimum] [--gate-k 2] [--confirm-k 2]

Both end with one line, `speedup N=16: X.XX worse/campaign: Y.YY (STRATEGY...)`, for the best
gated strategy at its default settings (and the default strategy's figures when it is another).
A strategy name may carry a variant: `-unpaired` (fresh seeds, the unpaired gate, as
--no-pairing), for rounds `-nostack`, or with --shapes `-nodigest` (runs report no digest
of their random draws, so every run at a parent's seed is taken for a pair).

Training is replaced by a noisy function of train.py's constants, so that hundreds of trials
per configuration, over many seeds, run in seconds on a CPU. Everything else is the product:
the driver's loop (cluster/loop.py) runs each strategy (cluster/strategy_*.py) with the real
Campaign, gate (cluster/gate.py), proposal pipeline and `mutate` proposer, on two stand-ins:
a `SimExecutor` (cluster/simulate.py: every trial takes one budget unit, 5 minutes by
default, times a small log-normal jitter, on a discrete-event clock; nothing sleeps) and a
`MemoryRepo` (cluster/repo.py: commits in dictionaries) with a `MemoryLedger`. What this
measures is the search: how fast and how safely each strategy improves the true
(noise-free) objective. The driver's own cost per trial (Ray, git, ledger) is measured by
benchmarks/orchestration.py and is not modelled here.

The objective. A synthetic train.py (SOURCE below) holds six UPPER_CASE constants, four
floats and two ints, each started a factor 2-5 away from a known optimum. Its true value is
    BASE + sum_i c_i * ln(x_i / opt_i)^2,
with c_i set so that each constant holds --headroom of improvement at the start (default
0.045 = 3 sigma of the default noise per constant). A measured value is the true value plus
Gaussian noise of std --noise (0.015 by default, the order of the CPU referee's run-to-run
noise). The value of a commit is computed from its constants, parsed with ast.

Strategies: `greedy` (autoresearch's keep-if-better rule, no gate; N=1 is autoresearch
itself and the baseline of every ratio), `rounds`, `async` and `population` (gated, with
--gate-k / --confirm-k; population with K = min(--islands, max(2, N)) islands, exploiting
every --migrate x K results).

Reported per strategy x N over --repeats seeds (the same seeds for every configuration; the
reference, greedy at N=1, over --reference-repeats, the first --repeats of them the same):
time to target (simulated hours until the true value of the campaign's answer, the branch
autoresearch/TAG, first closes --target of the starting headroom; median over seeds, 'never'
when fewer than half reach it), how many reached it, the true value at the end of --hours,
merges, and merges that were truly worse (true value of the merged commit above its
parent's), with ratios to greedy at N=1 and their 90% bootstrap intervals (the seeds of the
configuration and of the reference resampled: a median over 20 heavy-tailed campaigns is
itself uncertain, and the intervals say by how much).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.campaign import Campaign, CampaignConfig  # noqa: E402
from cluster.driver import start_pipeline  # noqa: E402
from cluster.ledger import MemoryLedger  # noqa: E402
from cluster.loop import Driver  # noqa: E402
from cluster.proposers.mutate import MutateProposer  # noqa: E402
from cluster.repo import MemoryRepo  # noqa: E402
from cluster.simulate import SimExecutor  # noqa: E402
from cluster.strategy import build_strategy  # noqa: E402
from trainer import pyast  # noqa: E402

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


class HardObjective:
    """`--objective hard`, as hard as a real campaign: 30 constants with small and unequal
    headroom (a few carry most of it), a third already at their optimum (every proposal on
    those is harmful), two pairs that help only together (one alone is worse than neither)
    and a redundant pair (either gives the benefit, both give it once). Runs at one seed
    share a seed effect (`seed_share` of the noise variance; the trainer's CRN)."""

    seed_share = 0.86  # squared correlation of two runs at one seed (measured: rho ~0.86)
    shapes: tuple[str, ...] = ()  # constants that change what initialization draws (--shapes)

    def __init__(self, headroom: float = 0.045, start_at_optimum: bool = False):
        import random as _random

        rng = _random.Random(20261201)  # the objective is fixed; only the campaigns vary
        self.names = [f"K{i:02d}" for i in range(30)]
        weights = sorted((rng.expovariate(1.0) ** 2 for _ in range(20)), reverse=True)
        total = sum(weights) + 9.0  # the three pairs' share below (3 each)
        self.opt: dict[str, float] = {}
        self.start0: dict[str, float] = {}
        self.curv: dict[str, float] = {}
        for i, name in enumerate(self.names):
            opt = round(rng.choice([0.003, 0.01, 0.03, 0.1, 0.3]) * rng.uniform(0.8, 1.25), 6)
            self.opt[name] = opt
            if i < 20:  # free constants: a factor 1.4-4 off, in either direction
                factor = rng.choice([1.4, 2.0, 2.8, 4.0]) ** rng.choice([-1, 1])
                self.start0[name] = round(opt * factor, 6)
                self.curv[name] = headroom * weights[i] / total / math.log(factor) ** 2
            else:  # at the optimum already: any change hurts (as much as a mid constant)
                self.start0[name] = opt
                self.curv[name] = headroom * statistics.median(weights) / total / 0.48
        # K20-K23: two pairs that only help together; K24/K25: a redundant pair
        self.pairs = [("K20", "K21"), ("K22", "K23")]
        self.redundant = ("K24", "K25")
        self.pair_gain = headroom * 3.0 / total
        for a, b in [*self.pairs, self.redundant]:
            for k in (a, b):
                self.start0[k] = round(self.opt[k] / 2, 6)  # one x2 step reaches the optimum
        self.start_at_optimum = start_at_optimum

    def with_shapes(self, k: int) -> HardObjective:
        """Make k of the free constants shapes (every third, so big and small gains): half of a
        run's seed effect (the batch order's) is then shared by every run at its seed, the
        other half (the initialization's) only by those with the same values of all of them.
        So on the real trainer: a change of MLP_RATIO or of the width draws another
        initialization and keeps the batch order, and its runs correlate with its parent's at
        one seed with rho 0.43-0.44 (std of the paired difference 0.016-0.019, against
        0.004-0.008 for a learning rate and 0.020 unpaired)."""
        self.shapes = tuple(self.names[0:20:3][:k])
        return self

    def start(self) -> dict[str, float]:
        return dict(self.opt if self.start_at_optimum else self.start0)

    def _pos(self, k: str, v: float) -> float:
        """0 at the start, 1 at the optimum, on a log scale, for the paired constants."""
        return math.log(max(v, 1e-12) / self.start0[k]) / math.log(self.opt[k] / self.start0[k])

    def true(self, consts: dict[str, float]) -> float:
        special = {k for p in [*self.pairs, self.redundant] for k in p}
        value = BASE
        for k, v in consts.items():
            if k not in special:
                value += self.curv[k] * math.log(max(v, 1e-12) / self.opt[k]) ** 2
        if self.start_at_optimum:
            return value + sum(
                self.curv["K29"] * math.log(max(consts[k], 1e-12) / self.opt[k]) ** 2
                for k in special
            )
        h = self.pair_gain
        for a, b in self.pairs:  # both together, or worse than neither
            x, y = self._pos(a, consts[a]), self._pos(b, consts[b])
            value += h * ((1 - (x + y) / 2) ** 2 + 2 * (x - y) ** 2)
        x, y = (self._pos(k, consts[k]) for k in self.redundant)
        best = max(1 - (1 - min(x, 1.5)) ** 2, 1 - (1 - min(y, 1.5)) ** 2)
        return value + h * (1 - best)

    def source(self, consts: dict[str, float]) -> str:
        lines = ['"""Synthetic train.py (hard objective): only its constants matter."""', ""]
        lines += [f"{k} = {consts[k]!r}" for k in self.names]
        lines += ["", "", "def main():", "    pass", ""]
        return "\n".join(lines)


OBJECTIVES = {
    "smooth": Objective,
    "easy": Objective,
    "hard": HardObjective,
}  # easy: smooth's old name
# The hard objective's defaults: its 30 constants share this headroom (most of it in a few,
# each about one noise std), a campaign needs a day, as real ones do, and autoresearch's rule
# on one GPU closes about a third of the headroom in it: the target.
HARD_HEADROOM, HARD_HOURS, HARD_TARGET = 0.2, 24.0, 0.3


def constants_of(source: str, names=None) -> dict[str, float]:
    names = set(names or CONSTANTS)
    out = {}
    for node in pyast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if node.targets[0].id in names:
                out[node.targets[0].id] = node.value.value
    return out


class Sim:
    """One simulated campaign of one real strategy; call run(), then read the counters."""

    def __init__(
        self,
        strategy: str,
        workers: int,
        obj: Objective,
        noise: float,
        horizon: float,
        seed: int,
        jitter: float = 0.02,
        target_frac: float = 0.5,
        islands: int = 4,
        migrate: int = 8,
        gate_k: float = 2.0,
        confirm_k: float = 2.0,
        budget_s: float = 300.0,
    ):
        self.strategy, self.n, self.obj, self.sigma = strategy, workers, obj, noise
        self.horizon, self.seed, self.jitter, self.budget_s = horizon, seed, jitter, budget_s
        # "rounds-nostack": rounds confirming only each round's best (the stack's baseline);
        # "async-unpaired" (any strategy): fresh seeds, the unpaired gate (--no-pairing)
        base, _, variant = strategy.partition("-")
        self.digests = variant != "nodigest"  # "-nodigest": runs report no rng digest
        k = min(islands, max(2, workers)) if base == "population" else 1
        self.cfg = CampaignConfig.build(
            tag="sim",
            target=TARGET_FILE,
            strategy=base,
            stack=variant != "nostack",
            paired=variant != "unpaired",
            hours=horizon * budget_s / 3600,
            seed=seed,
            islands=k,
            migrate_every=migrate * k,
            noise_multiple=gate_k,
            confirm_multiple=confirm_k,
        )
        self.truth: dict[str, float] = {}
        self.shape_keys: dict[str, str] = {}
        start, opt = obj.true(obj.start()), BASE
        self.start_true = start
        self.target = opt + (1 - target_frac) * (start - opt)
        self.t_target: float | None = None
        self.final = start
        self.merges = self.worse = self.trials = self.copies = self.worse_copies = 0
        self.busy = 0.0
        self.noise_est: float | None = None

    def draws(self, spec) -> str:
        """What a run's initialization drew: its commit's shape constants (see with_shapes)."""
        if spec.commit_sha not in self.shape_keys:
            consts = constants_of(self.repo.read_blob(spec.commit_sha, TARGET_FILE), self.obj.names)
            key = repr([consts.get(k) for k in self.obj.shapes])
            self.shape_keys[spec.commit_sha] = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.shape_keys[spec.commit_sha]

    def true(self, sha: str) -> float:
        if sha not in self.truth:
            source = self.repo.read_blob(sha, TARGET_FILE)
            self.truth[sha] = self.obj.true(constants_of(source, getattr(self.obj, "names", None)))
        return self.truth[sha]

    def run(self) -> Sim:
        self.repo = MemoryRepo({TARGET_FILE: self.obj.source(self.obj.start())})
        camp = Campaign(self.cfg, repo=self.repo, ledger=MemoryLedger(), say=lambda m: None)
        strategy = build_strategy(self.cfg, self.n)
        camp.setup("cpu", f"{self.budget_s:g}s", self.n, strategy.lines, strategy.settings())
        pipeline = start_pipeline(
            camp, [(MutateProposer(seed=self.seed), 1.0)], self.n, inline=True
        )
        shapes = getattr(self.obj, "shapes", ())
        ex = SimExecutor(
            self.n,
            self.score,
            duration=self.budget_s,
            jitter=self.jitter,
            seed=self.seed,
            digest=self.draws if shapes and self.digests else None,
        )
        self.camp, self.ex = camp, ex
        Driver(camp, ex, pipeline, strategy, clock=ex.now).run()
        self.watch()
        rows = camp.rows
        self.trials = sum(1 for r in rows if r["val_bpb"] is not None)
        merged = [r for r in rows if r["merged"]]
        self.merges = len(merged)
        self.worse = sum(
            1 for r in merged if self.true(r["commit_sha"]) > self.true(r["parent_sha"])
        )
        self.copies = len(camp.moves)
        self.worse_copies = sum(1 for m in camp.moves if self.true(m["new"]) > self.true(m["old"]))
        self.final = self.true(camp.incumbent)
        self.busy = ex.busy_fraction()
        self.noise_est = camp.noise()
        return self

    def watch(self) -> None:
        """The answer's true value now: record when it first reaches the target."""
        if self.t_target is None and self.true(self.camp.incumbent) <= self.target:
            self.t_target = self.ex.now() / self.budget_s

    def score(self, spec, rng) -> float:
        self.watch()  # the branch as it stood until this trial finished
        share = getattr(self.obj, "seed_share", 0.0)
        if not share:
            return self.true(spec.commit_sha) + rng.gauss(0, self.sigma)
        import random as _random  # a seed effect every run at this seed shares

        if getattr(self.obj, "shapes", ()):  # half of it the batch order's, half the init's
            half = self.sigma * math.sqrt(share / 2)
            shared = _random.Random(f"seed-{spec.seed}").gauss(0, half)
            shared += _random.Random(f"seed-{spec.seed}-{self.draws(spec)}").gauss(0, half)
        else:
            shared = _random.Random(f"seed-{spec.seed}").gauss(0, self.sigma * math.sqrt(share))
        return self.true(spec.commit_sha) + shared + rng.gauss(0, self.sigma * math.sqrt(1 - share))


@dataclass
class Args:
    noise: float = 0.015
    headroom: float = 0.045
    start_at_optimum: bool = False
    shapes: int = 0
    hours: float = 8.0
    budget_minutes: float = 5.0
    jitter: float = 0.02
    target: float = 0.5
    repeats: int = 20
    # The reference of every ratio is a median time to target, and one GPU's times are
    # heavy-tailed (on hard: a quarter of campaigns under 5.4 h, a quarter over 22 h), so its
    # median over 20 seeds moved between 8.3 and 20.6 h with the seeds drawn. Its campaigns
    # are the cheapest to simulate: many more seeds pin the denominator down.
    reference_repeats: int = 200
    workers: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    strategies: list[str] = field(
        default_factory=lambda: ["greedy", "rounds", "async", "population"]
    )
    islands: int = 4
    migrate: int = 8
    gate_k: float = 2.0
    confirm_k: float = 2.0
    seed: int = 0
    objective: str = "smooth"


CONFIG_KEYS = ("strategy", "N")


def simulate(args, job: tuple[str, int, int]) -> dict:
    """One seed of one configuration."""
    strategy, n, rep = job
    obj = OBJECTIVES[args.objective](args.headroom, args.start_at_optimum)
    if args.shapes:
        obj.with_shapes(args.shapes)
    s = Sim(
        strategy,
        n,
        obj,
        args.noise,
        args.hours * 60 / args.budget_minutes,
        seed=args.seed * 100_003 + rep,
        jitter=args.jitter,
        target_frac=args.target,
        islands=args.islands,
        migrate=args.migrate,
        gate_k=args.gate_k,
        confirm_k=args.confirm_k,
        budget_s=args.budget_minutes * 60,
    ).run()
    return dict(
        strategy=strategy,
        N=n,
        seed=rep,
        t_target=s.t_target,
        start_true=s.start_true,
        final_true=s.final,
        merges=s.merges,
        worse=s.worse,
        trials=s.trials,
        busy=s.busy,
        copies=s.copies,
        worse_copies=s.worse_copies,
        noise_est=s.noise_est,
    )


def _times(g) -> list[float]:
    """A configuration's times to target, inf where a seed never reached it."""
    return sorted(math.inf if v is None or v != v else v for v in g["t_target"])


BOOTSTRAP = 2000  # resamples of the seeds behind each interval


def boot_medians(times: list[float], seed: int = 0):
    """BOOTSTRAP medians of `times` resampled with replacement (a median over 20 seeds of a
    heavy-tailed time to target is itself noisy: greedy's over 20 seeds ranged 8-21 h)."""
    import numpy as np

    t = np.asarray(times, dtype=float)
    pick = np.random.default_rng(seed).integers(0, len(t), size=(BOOTSTRAP, len(t)))
    return np.median(t[pick], axis=1)


def ratio_interval(ref: list[float], times: list[float], level: float = 0.9):
    """The bootstrap interval of median(ref) / median(times): 0 where a resample of `times`
    never reaches the target, inf where only the reference's never does."""
    import numpy as np

    a, b = boot_medians(ref, 1), boot_medians(times, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(np.isinf(b), 0.0, a / b)
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarize(runs: list[dict], unit_h: float):
    import pandas as pd

    df = pd.DataFrame(runs)
    headroom = df["start_true"] - BASE
    df["closed"] = (df["start_true"] - df["final_true"]) / headroom.where(headroom > 0)
    rows, times = [], {}
    for key, g in df.groupby(list(CONFIG_KEYS), sort=False):
        t = times[key] = _times(g)
        rows.append(
            {
                **dict(zip(CONFIG_KEYS, key, strict=True)),
                "seeds": len(t),
                "t_target_h": statistics.median(t) * unit_h,
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
    ref = tab[(tab["strategy"] == "greedy") & (tab["N"] == 1)]
    if len(ref):
        greedy = ref.iloc[0]
        tab["speedup"] = greedy["t_target_h"] / tab["t_target_h"]
        bounds = [ratio_interval(times[("greedy", 1)], times[k]) for k in times]
        tab["speedup_lo"], tab["speedup_hi"] = zip(*bounds, strict=True)
        tab["gap_vs_greedy"] = (tab["final_true"] - BASE) / (greedy["final_true"] - BASE)
    return tab


def fmt(tab) -> str:
    t = tab.copy()
    t["t_target_h"] = [("never" if not math.isfinite(v) else f"{v:.2f}") for v in t["t_target_h"]]
    if "speedup" in t:
        t["speedup"] = [
            "-" if v != v or v == 0 else "inf" if v == math.inf else f"{v:.2f}"
            for v in t["speedup"]
        ]
    return t.to_string(
        index=False, float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    )


def headline(tab, n: int = 16) -> str:
    """One line anyone can re-check: the best gated strategy at its default settings (no
    variant) at N=16, its speed-up against greedy at N=1 and its truly-worse merges per
    campaign, named (the product's default, --strategy rounds, is named when it is not)."""
    from cluster.config import SearchSettings

    default = SearchSettings().strategy
    if "speedup" not in tab:
        return f"speedup N={n}: - worse/campaign: - (greedy at N=1 not run)"
    rows = tab[(tab["N"] == n) & (tab["strategy"] != "greedy")]
    rows = rows[~rows["strategy"].str.contains("-")]
    if not len(rows):
        return f"speedup N={n}: - worse/campaign: - (no gated strategy at N={n} run)"
    rows = rows.assign(_sp=rows["speedup"].fillna(0.0)).sort_values(
        ["_sp", "worse"], ascending=[False, True]
    )
    r = rows.iloc[0]
    text = "never" if not r["_sp"] else f"{r['_sp']:.2f}"
    line = f"speedup N={n}: {text} worse/campaign: {r['worse']:.2f} ({r['strategy']}"
    if "speedup_lo" in r:
        line += f"; 90% interval {_x(r['speedup_lo'])}-{_x(r['speedup_hi'])}"
    mine = rows[rows["strategy"] == default]
    if r["strategy"] != default and len(mine):
        d = mine.iloc[0]
        line += f"; the default {default}: {d['_sp']:.2f}x, {d['worse']:.2f} worse"
    return line + ")"


def summary_table(tab) -> str:
    """Speed-up to target against autoresearch's rule on one GPU (greedy, N=1), strategy by
    N, with truly-worse merges per campaign and busy fractions: the one table that says
    whether N GPUs pay."""
    if "speedup" not in tab:
        return "(no greedy N=1 run: add greedy to --strategies and 1 to --workers)"
    lines = []
    ns = sorted(set(tab["N"]))
    lines.append("speed-up vs greedy N=1 (truly-worse merges per campaign)")
    lines.append("strategy".ljust(16) + "".join(f"N={n}".rjust(16) for n in ns))
    for name, g in tab.groupby("strategy", sort=False):
        cells = []
        for n in ns:
            row = g[g["N"] == n]
            if not len(row):
                cells.append("-".rjust(16))
                continue
            r = row.iloc[0]
            cells.append(f"{_x(r['speedup'])} ({r['worse']:.2f})".rjust(16))
        busy = ", ".join(f"{b:.2f}" for b in g.sort_values("N")["busy"])
        lines.append(str(name).ljust(16) + "".join(cells) + f"   busy {busy}")
    if "speedup_lo" in tab:
        lines.append("90% bootstrap intervals of the speed-up (seeds resampled)")
        for name, g in tab.groupby("strategy", sort=False):
            cells = []
            for n in ns:
                row = g[g["N"] == n]
                r = row.iloc[0] if len(row) else None
                text = "-" if r is None else f"{_x(r['speedup_lo'])}-{_x(r['speedup_hi'])}"
                cells.append(text.rjust(16))
            lines.append(str(name).ljust(16) + "".join(cells))
    greedy = tab[(tab["strategy"] == "greedy") & (tab["N"] == 1)].iloc[0]
    lines.append(
        f"greedy N=1 (the reference): {greedy['t_target_h']:.2f} h, median of "
        f"{greedy['seeds']} seeds ({greedy['reached']} reached the target)"
    )
    return "\n".join(lines)


def _x(v: float) -> str:
    """A speed-up for the tables: never (0, nan), inf, or 1.23x."""
    return "never" if v == 0 or v != v else "inf" if v == math.inf else f"{v:.2f}x"


def main(argv: list[str] | None = None) -> None:
    d = Args()
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--noise", type=float, default=d.noise, help="std of a measured val_bpb")
    ap.add_argument(
        "--headroom",
        type=float,
        default=None,
        help=f"true improvement per constant at start (default {d.headroom:g}; the hard "
        f"objective's is the total over its constants, default {HARD_HEADROOM:g})",
    )
    ap.add_argument(
        "--start-at-optimum", action="store_true", help="no real headroom: changes only hurt"
    )
    ap.add_argument(
        "--shapes",
        type=int,
        default=d.shapes,
        help="hard: K constants that change what initialization draws, so a change of one "
        "shares only the batch order with its parent at a seed (compare STRATEGY-nodigest)",
    )
    ap.add_argument(
        "--hours",
        type=float,
        default=None,
        help=f"simulated wall clock (default {d.hours:g}; {HARD_HOURS:g} for --objective hard)",
    )
    ap.add_argument("--budget-minutes", type=float, default=d.budget_minutes, help="one trial")
    ap.add_argument("--jitter", type=float, default=d.jitter, help="log-normal std of a trial time")
    ap.add_argument(
        "--target",
        type=float,
        default=None,
        help=f"fraction of headroom to close (default {d.target:g}; {HARD_TARGET:g} for hard)",
    )
    ap.add_argument("--repeats", type=int, default=d.repeats)
    ap.add_argument(
        "--reference-repeats",
        type=int,
        default=d.reference_repeats,
        help="seeds of greedy at N=1, the reference of every speed-up (cheap: one worker)",
    )
    ap.add_argument("--workers", type=int, nargs="+", default=d.workers)
    ap.add_argument("--strategies", nargs="+", default=d.strategies)
    ap.add_argument("--islands", type=int, default=d.islands)
    ap.add_argument("--migrate", type=int, default=d.migrate, help="results per island")
    ap.add_argument("--gate-k", type=float, default=d.gate_k, help="Gate.noise_multiple (screen)")
    ap.add_argument("--confirm-k", type=float, default=d.confirm_k, help="Gate.confirm_multiple")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--objective",
        choices=sorted(OBJECTIVES),
        default=d.objective,
        help="smooth: 6 separable constants (easy is its old name); hard: 30, as a real campaign",
    )
    ap.add_argument(
        "--summary", action="store_true", help="only the speed-up against greedy at N=1"
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes, one seed of one configuration each (default: the cores)",
    )
    ap.add_argument("--csv", type=Path, default=None, help="also write per-seed results here")
    args = ap.parse_args(argv)
    hard = args.objective == "hard"
    args.objective = "smooth" if args.objective == "easy" else args.objective
    if args.headroom is None:
        args.headroom = HARD_HEADROOM if hard else d.headroom
    if args.hours is None:
        args.hours = HARD_HOURS if hard else d.hours
    if args.target is None:
        args.target = HARD_TARGET if hard else d.target
    if args.shapes and not hard:
        ap.error("--shapes applies to --objective hard")
    if not 0 <= args.shapes <= 7:
        ap.error("--shapes: 0 to 7 (every third of the 20 free constants)")
    t0 = time.time()
    cfgs = [("greedy", 1)] if "greedy" in args.strategies else []
    cfgs += [(s, n) for s in args.strategies for n in args.workers if (s, n) != ("greedy", 1)]

    def seeds(st: str, n: int) -> int:
        ref = (st, n) == ("greedy", 1)
        return max(args.repeats, args.reference_repeats) if ref else args.repeats

    jobs = [(st, n, rep) for st, n in cfgs for rep in range(seeds(st, n))]
    runs: list[dict] = []

    def progress(run: dict) -> None:
        runs.append(run)
        if len(runs) % max(1, len(jobs) // 20) == 0 or len(runs) == len(jobs):
            print(f"  {len(runs)}/{len(jobs)} runs, {time.time() - t0:.0f}s", file=sys.stderr)

    if args.jobs > 1:  # one seed of one configuration per task: the long ones do not queue
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        with ProcessPoolExecutor(args.jobs) as pool:
            for run in pool.map(partial(simulate, args), jobs, chunksize=1):
                progress(run)
    else:
        for job in jobs:
            progress(simulate(args, job))
    obj = OBJECTIVES[args.objective](args.headroom, args.start_at_optimum)
    start = obj.true(obj.start())
    target = BASE + (1 - args.target) * (start - BASE)
    tab = summarize(runs, args.budget_minutes / 60)
    if args.csv:
        import pandas as pd

        pd.DataFrame(runs).to_csv(args.csv, index=False)
    if args.summary:
        print(
            f"objective {args.objective}, {args.repeats} seeds "
            f"({seeds('greedy', 1)} for greedy N=1), {time.time() - t0:.0f}s"
        )
        print(summary_table(tab))
        print(headline(tab))
        return
    print(
        f"objective {args.objective}: {len(getattr(obj, 'names', CONSTANTS))} constants, "
        f"noise {args.noise:g}, headroom {args.headroom:g} "
        f"(start {start:.3f}, optimum {BASE:.3f}, target {target:.3f}), "
        f"{args.hours:g} h of {args.budget_minutes:g}-min trials, {args.repeats} seeds, "
        f"gate k {args.gate_k:g}/{args.confirm_k:g}; "
        f"{sum(r['trials'] for r in runs)} simulated trials in {time.time() - t0:.0f}s"
    )
    print(
        "t_target_h: median simulated hours to close the target (never: under half the seeds); "
        "final_true/closed/merges/worse: means; worse_frac: truly-worse merges / merges; "
        "speedup, gap_vs_greedy: against greedy at N=1 (autoresearch's rule on one GPU)"
    )
    print(fmt(tab))
    print(headline(tab))


if __name__ == "__main__":
    main()
