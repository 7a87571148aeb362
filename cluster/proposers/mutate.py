"""The `mutate` proposer: no LLM; perturbs the UPPER_CASE numeric constants of train.py.

It parses the incumbent with `ast`, picks one (sometimes two) module-level constants such as
`LEARNING_RATE = 0.002`, and rewrites only that literal in the source, so comments and
layout survive. Seeded, so a campaign's proposals are reproducible.

It learns from the ledger: a constant whose earlier single-constant changes gained (in noise
units, against the parent's mean) is picked more often and mostly in the direction that
gained; one whose changes only lost is picked less, and the other way. With no history it
picks uniformly.

It does not repeat itself: a change already run, queued or in flight on the incumbent (by
its description in the ledger and in flight) is drawn again, and once the first n draws of a
call repeat, the next ones look further (any factor in [0.5, 2], steps of 2-3), so a wide
campaign does not run out of fresh proposals when the small neighbourhood is spent. It leaves
alone constants that change nothing measured (read only by print or logging calls),
and keeps a dimension or batch size that is a multiple of 8 (>= 16) one, a power of two one.
"""

from __future__ import annotations

import ast
import functools
import math
import random
import re
import statistics
from collections import defaultdict

from cluster.patches import make_patch
from cluster.proposers.base import ProposalContext
from cluster.records import Proposal
from trainer import pyast

FLOAT_FACTORS = (0.5, 0.7, 0.8, 1.25, 1.4, 2.0)
INT_STEPS = (-1, 1, 0.5, 2.0)  # +-1, or halve/double
WIDE_INT_STEPS = (-3, -2, 2, 3, 0.75, 1.5)


def numeric_constants(source: str) -> list[tuple[str, ast.Constant]]:
    """Module-level `NAME = number` assignments with UPPER_CASE names, in source order."""
    out = []
    for node in pyast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
            and isinstance(node.value, ast.Constant)
            and type(node.value.value) in (int, float)
        ):
            out.append((node.targets[0].id, node.value))
    return out


_CHANGE = re.compile(r"^([A-Z][A-Z0-9_]*) (\S+) -> (\S+)$")


def evidence(history: list[dict], noise: float | None) -> dict[str, dict[int, float]]:
    """For each constant, the mean gain in noise units of its single-constant changes, split by
    direction (+1 up, -1 down), from the campaign's candidate rows of this proposer."""
    return _Ledger().update(history).evidence(noise)


class _Ledger:
    """What the proposer reads of a campaign's rows, taken in as they are appended (`update`):
    each commit's successful runs, this proposer's single-constant changes, and the changes
    tried on each parent. Re-reading the whole ledger on every call made a long campaign
    quadratic (a simulated day at 16 workers spent a fifth of its time in `evidence`)."""

    def __init__(self):
        self.generation = 0  # counts the histories it was built from
        self._reset()

    def _reset(self) -> None:
        self.seen = 0
        self.tail: dict | None = None  # the last row taken in: a history that lost it is new
        self.runs: dict[str, list[float]] = defaultdict(list)
        self.changes: list[tuple[str, int, str, float]] = []  # name, direction, parent, val_bpb
        self.tried: dict[str, set[str]] = defaultdict(set)  # parent sha -> descriptions

    def update(self, history: list[dict]) -> _Ledger:
        if len(history) < self.seen or (self.seen and history[self.seen - 1] != self.tail):
            self._reset()  # not the history this was built from
            self.generation += 1
        for r in history[self.seen :]:
            if r.get("description"):
                self.tried[r.get("parent_sha")].add(r["description"])
            if r.get("val_bpb") is None:
                continue
            if r.get("status") in ("keep", "discard"):
                self.runs[r["commit_sha"]].append(float(r["val_bpb"]))
            if r.get("kind") != "candidate" or r.get("proposer") != "mutate":
                continue
            m = _CHANGE.match(r.get("description") or "")
            if not m:
                continue
            try:
                old, new = float(m.group(2)), float(m.group(3))
            except ValueError:
                continue
            if old != new:
                direction = 1 if new > old else -1
                parent = r.get("parent_sha") or ""
                self.changes.append((m.group(1), direction, parent, r["val_bpb"]))
        self.seen = len(history)
        self.tail = history[-1] if history else None
        return self

    def evidence(self, noise: float | None) -> dict[str, dict[int, float]]:
        """`evidence` of the rows taken in, with the noise as it is now (a change counts once
        its parent has a run)."""
        if not noise:
            return {}
        means: dict[str, float] = {}
        gains: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for name, direction, parent, val in self.changes:
            if parent not in means:
                runs = self.runs.get(parent)
                means[parent] = statistics.fmean(runs) if runs else math.nan
            mean = means[parent]
            if mean == mean:  # not nan: the parent has a run
                gains[name][direction].append((mean - val) / noise)
        return {
            name: {d: statistics.fmean(v) for d, v in dirs.items()} for name, dirs in gains.items()
        }


def _perturb(
    value: int | float, rng: random.Random, direction: int = 0, wide: bool = False
) -> int | float:
    """A new value for a constant; `direction` +1/-1 asks for a larger/smaller one; `wide`
    draws from a continuum instead of the few usual steps."""
    if isinstance(value, float):
        if value == 0.0:
            return rng.choice((1e-4, 1e-3, 0.01, 0.1)) if direction >= 0 else 0.0
        if wide:
            up = direction > 0 or (direction == 0 and rng.random() < 0.5)
            factor = math.exp(rng.uniform(0.05, math.log(2.0)))
            new = value * (factor if up else 1 / factor)
            if 0.0 < value < 1.0 <= new:
                new = 1.0 - (1.0 - value) * rng.uniform(0.4, 0.9)
            return float(f"{new:.3g}")
        factors = [f for f in FLOAT_FACTORS if direction == 0 or (f > 1) == (direction > 0)]
        new = value * rng.choice(factors)
        if 0.0 < value < 1.0 <= new:  # a fraction or a beta: scale its distance to 1 instead
            new = 1.0 - (1.0 - value) * rng.choice((0.5, 0.7, 0.8))
        return float(f"{new:.4g}")
    if value >= 16 and value % 8 == 0:  # a dimension or a batch: keep it aligned (64 -> 63 breaks)
        pow2 = value & (value - 1) == 0
        pool = ((0.25, 4.0) if wide else (0.5, 2.0)) if pow2 else (0.5, 0.75, 1.25, 1.5, 2.0)
        factors = [f for f in pool if direction == 0 or (f > 1) == (direction > 0)]
        return max(8, int(round(value * rng.choice(factors) / 8)) * 8)
    pool = WIDE_INT_STEPS if wide else INT_STEPS
    steps = [s for s in pool if direction == 0 or (s > 0 and s >= 1) == (direction > 0)]
    step = rng.choice(steps)
    new = value + step if isinstance(step, int) else round(value * step)
    return max(1, int(new)) if value >= 1 else int(new)


_OUTPUT_CALLS = {"print", "info", "debug", "warning", "log", "write", "set_postfix"}


@functools.lru_cache(maxsize=64)
def inert_constants(source: str) -> frozenset[str]:
    """Constants that change nothing a trial measures: read, and only inside print or logging
    calls (an MFU denominator, a log interval). Perturbing them wastes a run. One never read by
    name is kept: code may read it another way (globals(), a harness reading the module)."""
    tree = pyast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    useful: set[str] = set()
    shown: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            up = parents.get(node)
            while up is not None and not _output_call(up):
                up = parents.get(up)
            (shown if up is not None else useful).add(node.id)
    return frozenset(n for n, _ in numeric_constants(source) if n in shown and n not in useful)


def _output_call(node: ast.AST) -> bool:
    """A print or logging call that does not report the metric (under --protocol autoresearch
    the printed `val_bpb:` line is the measurement, and what feeds it counts)."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    named = (isinstance(f, ast.Name) and f.id in _OUTPUT_CALLS) or (
        isinstance(f, ast.Attribute) and f.attr in _OUTPUT_CALLS
    )
    return named and not any(
        isinstance(c, ast.Constant) and isinstance(c.value, str) and "val_bpb" in c.value
        for c in ast.walk(node)
    )


def _replace_literal(source: str, node: ast.Constant, new: int | float) -> str:
    lines = source.splitlines(keepends=True)
    line = lines[node.lineno - 1]
    lines[node.lineno - 1] = line[: node.col_offset] + repr(new) + line[node.end_col_offset :]
    return "".join(lines)


def _weight(dirs: dict[int, float] | None) -> float:
    """How often to pick a constant: 1, up to 6 for one whose changes gained 2+ sigma."""
    if not dirs:
        return 1.0
    best = max(dirs.values())
    return 1.0 + 5.0 * min(1.0, max(0.0, best) / 2.0) if best > 0 else 0.5


def _direction(dirs: dict[int, float] | None, rng: random.Random) -> int:
    """+1/-1 to follow a direction that gained (4 times in 5), 0 for either."""
    if not dirs:
        return 0
    d, gain = max(dirs.items(), key=lambda kv: kv[1])
    if gain <= 0:
        return -d if len(dirs) == 1 and rng.random() < 0.8 else 0
    return d if rng.random() < 0.8 else 0


class MutateProposer:
    """Perturbs constants; `skip_prefixes` leaves alone knobs that do not apply (e.g. GPU_)."""

    name = "mutate"

    def __init__(self, seed: int = 0, skip_prefixes: tuple[str, ...] = (), max_changes: int = 2):
        self.rng = random.Random(seed)
        self.skip_prefixes = skip_prefixes
        self.max_changes = max_changes
        self._evidence: tuple = (None, {})
        self._ledger = _Ledger()
        self._made: dict[str, set[str]] = {}  # incumbent sha -> descriptions of its changes

    def for_device(self, kind: str) -> None:
        """Leave alone the knobs of the other device (GPU_ on CPU, CPU_ on GPU)."""
        self.skip_prefixes = ("GPU_",) if kind == "cpu" else ("CPU_",)

    def propose(self, ctx: ProposalContext, n: int) -> list[Proposal]:
        inert = inert_constants(ctx.incumbent_source)
        consts = [
            (name, node)
            for name, node in numeric_constants(ctx.incumbent_source)
            if not name.startswith(self.skip_prefixes) and name not in inert
        ]
        if not consts:
            return []
        self._ledger.update(ctx.history)
        key = (self._ledger.generation, self._ledger.seen, ctx.noise)
        if self._evidence[0] != key:
            self._evidence = (key, self._ledger.evidence(ctx.noise))
        ev = self._evidence[1]
        weights = [_weight(ev.get(name)) for name, _ in consts]
        tried = self._tried(ctx)
        out: list[Proposal] = []
        for attempt in range(4 * n):
            if len(out) >= n:
                break
            wide = attempt >= n  # the usual steps repeat themselves: look further
            k = 1 if self.max_changes < 2 or self.rng.random() < 0.75 else 2
            picks: list = []
            while len(picks) < min(k, len(consts)):
                pick = self.rng.choices(consts, weights)[0]
                if pick not in picks:
                    picks.append(pick)
            source, changes = ctx.incumbent_source, []
            # Rewrite bottom-up so earlier offsets stay valid.
            for name, node in sorted(
                picks, key=lambda p: (p[1].lineno, p[1].col_offset), reverse=True
            ):
                new = _perturb(node.value, self.rng, _direction(ev.get(name), self.rng), wide)
                if new == node.value:
                    continue
                source = _replace_literal(source, node, new)
                changes.append(f"{name} {node.value!r} -> {new!r}")
            description = ", ".join(reversed(changes))
            if not changes or description in tried:
                continue
            tried.add(description)
            out.append(
                Proposal(
                    parent_sha=ctx.incumbent_sha,
                    proposer=self.name,
                    patch=make_patch(ctx.incumbent_source, source, ctx.target),
                    description=description,
                )
            )
        return out

    def _tried(self, ctx: ProposalContext) -> set[str]:
        """Changes already run, queued or in flight on this incumbent (their descriptions),
        with those this proposer made for it; the set it is given grows with each draw."""
        inc = ctx.incumbent_sha
        made = self._made.pop(inc, set())
        self._made[inc] = made  # most recent last; incumbents long replaced are forgotten
        while len(self._made) > 64:
            self._made.pop(next(iter(self._made)))
        made |= self._ledger.tried.get(inc, set())  # propose took ctx.history in
        made |= {d for d in ctx.in_flight if d}
        return made
