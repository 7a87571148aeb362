"""Training budgets and the clock that enforces them (owned by the referee, not train.py).

    Budget.parse("300s") | "5m" | "200steps" | "2Mtokens" | "1.2Mtokens" | "500ktokens"

`time` budgets count wall-clock seconds of training after a bounded warm-up (the first steps,
where torch.compile and allocator warm-up live, are excluded as autoresearch does, but never
more than `warmup_allowance` seconds, and they are served random tokens). `steps` and `tokens`
budgets are deterministic: for tests and comparisons across hardware; a token budget is never
exceeded, however large a batch is asked for.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}
# What Budget.parse accepts, as its errors (and so the CLI's) say.
FORMS = "seconds (60s, 300s, 5m), steps (200steps) or tokens (2Mtokens, 500ktokens)"

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
        """A budget from its text. ValueError, naming the accepted forms, for anything else:
        garbage, a zero or negative amount, a fraction of a step or of a token."""
        s = str(text).strip().lower().replace("_", "")
        if m := re.fullmatch(r"([-+]?\d+(?:\.\d+)?)\s*(s|sec|m|min|h)", s):
            kind = "time"
            n = float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
        elif m := re.fullmatch(r"([-+]?\d+(?:\.\d+)?)\s*([kmb]?)\s*(steps?|tokens?)", s):
            kind = "steps" if m.group(3).startswith("step") else "tokens"
            n = float(m.group(1)) * _UNITS[m.group(2)]
            if n > 0 and abs(n - round(n)) > 1e-6:
                raise ValueError(f"budget {text!r} is not a whole number of {kind}: use {FORMS}")
            n = float(round(n))
        else:
            raise ValueError(f"cannot read budget {text!r}: use {FORMS}")
        if not n > 0:
            raise ValueError(f"budget {text!r} is not positive: use {FORMS}")
        return cls(kind, n)

    def __str__(self) -> str:
        """The canonical text, which parses back to this budget (the defaults are canonical)."""
        if self.kind == "time":
            return f"{self.amount:.12g}s"
        if self.kind == "steps":
            return f"{int(self.amount)}steps"
        if self.amount < 1e3:
            return f"{int(self.amount)}tokens"
        if self.amount < 1e6:
            return f"{self.amount / 1e3:.12g}ktokens"
        return f"{self.amount / 1e6:.12g}Mtokens"


@dataclass(frozen=True)
class Grant:
    """The clock's answer to a batch request: how many rows, of what, at what progress."""

    rows: int  # 0: the budget is spent
    warmup: bool = False  # a warm-up batch: random tokens, not training data
    progress: float = 1.0


class BudgetClock:
    """The referee's own account of a trial's budget, asked before every batch is served.

    `grant(rows, cols)` answers each request. A batch never exceeds what is left of a token
    budget. Under a time budget the first `warmup_steps` batches (within `warmup_allowance`
    seconds) are excluded from the clock, for torch.compile and allocator warm-up, and are
    random tokens: time spent on them buys no training on the data. Every time is measured
    here, never taken from what the trial says about itself.
    """

    def __init__(self, budget: Budget, warmup_steps: int = 1, warmup_allowance: float = 30.0):
        self.budget = budget
        self.warmup_steps = warmup_steps if budget.kind == "time" else 0
        self.warmup_allowance = warmup_allowance
        self.steps = 0  # training batches served
        self.tokens = 0  # training tokens served
        self.warmup_batches = 0
        self.warmup_tokens = 0
        self.first_batch_at: float | None = None
        self.clock_start: float | None = None
        self.ended_at: float | None = None  # when a request found the budget spent
        self.exhausted_at: float | None = None  # when the last batch it allows was served
        self.intervals: list[float] = []  # seconds between training batch requests
        self.returned_at: float | None = None  # when the trial said train() returned
        self.last_request_at: float | None = None
        self.last_grant_at: float | None = None
        self.first_requests: list[float] = []  # the first 3 requests: the first step's time

    def deadline(self) -> float | None:
        """Under a time budget, when training must stop (known once the clock started)."""
        if self.budget.kind != "time" or self.clock_start is None:
            return None
        return self.clock_start + self.budget.amount

    def budget_end(self, now: float | None = None) -> float | None:
        """When the budget ran out: the time deadline, the serving of the last batch it
        allows, or the request that found it spent, whichever came first."""
        d = self.deadline()
        now = time.monotonic() if now is None else now
        ends = [t for t in (self.ended_at, self.exhausted_at) if t is not None]
        if d is not None and d <= now:
            ends.append(d)
        return min(ends) if ends else None

    def step_seconds(self) -> float:
        """The median time between training batches: what one honest last step may take."""
        if not self.intervals:
            return 0.0
        return sorted(self.intervals)[len(self.intervals) // 2]

    def training_seconds(self, now: float | None = None) -> float:
        if self.clock_start is None:
            return 0.0
        now = time.monotonic() if now is None else now
        ends = [t for t in (self.budget_end(now), self.returned_at, now) if t is not None]
        return max(0.0, min(ends) - self.clock_start)

    def overrun(self, now: float | None = None) -> float:
        """Seconds the trial went on after its budget ran out without returning its model."""
        now = time.monotonic() if now is None else now
        end = self.budget_end(now)
        if end is None:
            return 0.0
        stop = self.returned_at if self.returned_at is not None else now
        return max(0.0, stop - end)

    def progress(self, now: float) -> float:
        b = self.budget
        if b.kind == "time":
            return self.training_seconds(now) / b.amount
        if b.kind == "steps":
            return self.steps / b.amount
        return self.tokens / b.amount

    def returned(self) -> None:
        if self.returned_at is None:
            self.returned_at = time.monotonic()

    def grant(self, rows: int, cols: int) -> Grant:
        now = time.monotonic()
        self.last_request_at = now
        if len(self.first_requests) < 3:
            self.first_requests.append(now)
        if self.ended_at is not None or self.returned_at is not None:
            return Grant(0)
        if self.first_batch_at is None:
            self.first_batch_at = now
        if self.clock_start is None:
            in_warmup = (
                self.warmup_batches < self.warmup_steps
                and now - self.first_batch_at < self.warmup_allowance
            )
            if in_warmup:
                self.warmup_batches += 1
                self.warmup_tokens += rows * cols
                return Grant(rows, warmup=True, progress=0.0)
            self.clock_start = min(now, self.first_batch_at + self.warmup_allowance)
        b, progress = self.budget, self.progress(now)
        if b.kind == "tokens":
            rows = min(rows, int(b.amount - self.tokens) // cols)
        if (
            progress >= 1.0
            or rows <= 0
            or (b.kind == "steps" and self.steps >= math.ceil(b.amount))
        ):
            self.ended_at = now
            return Grant(0)
        if self.steps and self.last_grant_at is not None:
            self.intervals = [*self.intervals[-99:], now - self.last_grant_at]
        self.last_grant_at = now
        self.steps += 1
        self.tokens += rows * cols
        if (b.kind == "steps" and self.steps >= math.ceil(b.amount)) or (
            b.kind == "tokens" and b.amount - self.tokens < cols
        ):
            self.exhausted_at = now
        return Grant(rows, progress=progress)
