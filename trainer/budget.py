"""Training budgets and the clock that enforces them (owned by the referee, not train.py).

    Budget.parse("300s") | "5m" | "200steps" | "2Mtokens" | "1.2Mtokens" | "500ktokens"

`time` budgets count wall-clock seconds of training after a bounded warm-up (the first steps,
where torch.compile and allocator warm-up live, are excluded as autoresearch does, but never
more than `warmup_allowance` seconds). `steps` and `tokens` budgets are deterministic: for
tests and comparisons across hardware.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}

# GPU: autoresearch's five minutes. CPU: a token budget, deterministic given the seed (a
# wall-clock budget adds step-count jitter from whatever else the machine runs); 500k tokens
# is ~40 s of training solo on 2 cores, ~80 s for each of two 1-thread trials side by side.
CPU_DEFAULT_BUDGET = "500ktokens"
GPU_DEFAULT_BUDGET = "300s"


def default_budget(device: str) -> str:
    return GPU_DEFAULT_BUDGET if device.startswith("cuda") else CPU_DEFAULT_BUDGET


@dataclass(frozen=True)
class Budget:
    kind: str  # "time" | "steps" | "tokens"
    amount: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        s = str(text).strip().lower().replace("_", "")
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)", s)
        if m:
            mult = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
            return cls("time", float(m.group(1)) * mult)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmb]?)\s*(steps?|tokens?)", s)
        if m:
            n = float(m.group(1)) * _UNITS[m.group(2)]
            kind = "steps" if m.group(3).startswith("step") else "tokens"
            if n <= 0:
                raise ValueError(f"budget must be positive: {text!r}")
            return cls(kind, n)
        raise ValueError(
            f"cannot read budget {text!r}: use seconds (300s, 5m), steps (200steps) "
            "or tokens (2Mtokens, 500ktokens)"
        )

    def __str__(self) -> str:
        if self.kind == "time":
            return f"{self.amount:g}s"
        if self.kind == "steps":
            return f"{int(self.amount)}steps"
        return f"{self.amount / 1e6:g}Mtokens"


class BudgetClock:
    """Serves the budget to the batch server: says whether another batch is allowed.

    Call `next_batch(tokens)` before handing out each batch; it returns the progress in [0, 1)
    to give train.py for its schedules, or None once the budget is spent.
    """

    def __init__(self, budget: Budget, warmup_steps: int = 1, warmup_allowance: float = 30.0):
        self.budget = budget
        self.warmup_steps = warmup_steps
        self.warmup_allowance = warmup_allowance
        self.steps = 0
        self.tokens = 0
        self.first_batch_at: float | None = None
        self.clock_start: float | None = None
        self.ended_at: float | None = None

    def training_seconds(self, now: float | None = None) -> float:
        if self.clock_start is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else (now or time.monotonic())
        return max(0.0, end - self.clock_start)

    def next_batch(self, tokens: int) -> float | None:
        now = time.monotonic()
        if self.ended_at is not None:
            return None
        if self.first_batch_at is None:
            self.first_batch_at = now
        # The clock starts at the batch after warm-up, or when warm-up overruns its allowance.
        if self.clock_start is None and (
            self.steps >= self.warmup_steps or now - self.first_batch_at >= self.warmup_allowance
        ):
            self.clock_start = min(now, self.first_batch_at + self.warmup_allowance)
        b = self.budget
        if b.kind == "time":
            progress = self.training_seconds(now) / b.amount
        elif b.kind == "steps":
            progress = self.steps / b.amount
        else:
            progress = self.tokens / b.amount
        if progress >= 1.0 or (b.kind == "steps" and self.steps >= math.ceil(b.amount)):
            self.ended_at = now
            if self.clock_start is None:
                self.clock_start = self.first_batch_at
            return None
        self.steps += 1
        self.tokens += tokens
        return progress
