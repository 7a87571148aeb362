"""The `mutate` proposer: no LLM; perturbs the UPPER_CASE numeric constants of train.py.

It parses the incumbent with `ast`, picks one (sometimes two) module-level constants such as
`LEARNING_RATE = 0.002`, and rewrites only that literal in the source, so comments and
layout survive. Seeded, so a campaign's proposals are reproducible.
"""

from __future__ import annotations

import ast
import random

from cluster.patches import make_patch
from cluster.proposers.base import ProposalContext
from cluster.records import Proposal

FLOAT_FACTORS = (0.5, 0.7, 0.8, 1.25, 1.4, 2.0)
INT_STEPS = (-1, 1, 0.5, 2.0)  # +-1, or halve/double


def numeric_constants(source: str) -> list[tuple[str, ast.Constant]]:
    """Module-level `NAME = number` assignments with UPPER_CASE names, in source order."""
    out = []
    for node in ast.parse(source).body:
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


def _perturb(value: int | float, rng: random.Random) -> int | float:
    if isinstance(value, float):
        if value == 0.0:
            return rng.choice((1e-4, 1e-3, 0.01, 0.1))
        return float(f"{value * rng.choice(FLOAT_FACTORS):.4g}")
    step = rng.choice(INT_STEPS)
    new = value + step if step in (-1, 1) else round(value * step)
    return max(1, int(new)) if value >= 1 else int(new)


def _replace_literal(source: str, node: ast.Constant, new: int | float) -> str:
    lines = source.splitlines(keepends=True)
    line = lines[node.lineno - 1]
    lines[node.lineno - 1] = line[: node.col_offset] + repr(new) + line[node.end_col_offset :]
    return "".join(lines)


class MutateProposer:
    """Perturbs constants; `skip_prefixes` leaves alone knobs that do not apply (e.g. GPU_)."""

    name = "mutate"

    def __init__(self, seed: int = 0, skip_prefixes: tuple[str, ...] = (), max_changes: int = 2):
        self.rng = random.Random(seed)
        self.skip_prefixes = skip_prefixes
        self.max_changes = max_changes

    def propose(self, ctx: ProposalContext, n: int) -> list[Proposal]:
        consts = [
            (name, node)
            for name, node in numeric_constants(ctx.incumbent_source)
            if not name.startswith(self.skip_prefixes)
        ]
        if not consts:
            return []
        out = []
        for _ in range(n):
            k = 1 if self.max_changes < 2 or self.rng.random() < 0.75 else 2
            picks = self.rng.sample(consts, min(k, len(consts)))
            source, changes = ctx.incumbent_source, []
            # Rewrite bottom-up so earlier offsets stay valid.
            for name, node in sorted(
                picks, key=lambda p: (p[1].lineno, p[1].col_offset), reverse=True
            ):
                new = _perturb(node.value, self.rng)
                if new == node.value:
                    continue
                source = _replace_literal(source, node, new)
                changes.append(f"{name} {node.value!r} -> {new!r}")
            if not changes:
                continue
            out.append(
                Proposal(
                    parent_sha=ctx.incumbent_sha,
                    proposer=self.name,
                    patch=make_patch(ctx.incumbent_source, source, ctx.target),
                    description=", ".join(reversed(changes)),
                )
            )
        return out
