"""A simulated executor: trials on a discrete-event clock, scored by a function, no Ray.

    ex = SimExecutor(workers=8, score=lambda spec, rng: value_of(spec.commit_sha) + noise)
    Driver(campaign, ex, pipeline, strategy, clock=ex.now).run()

Every trial takes `duration` (one budget unit) times a small log-normal jitter; `results`
advances the clock to the next finish (or by `timeout` when nothing runs, so a strategy
waiting for proposals still sees time pass). Nothing sleeps: a simulated 8-hour campaign on
16 workers runs in seconds, through the real driver loop, strategies, gate and proposers.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator

from cluster.records import TrialResult, TrialSpec


class SimExecutor:
    def __init__(
        self,
        workers: int,
        score: Callable[[TrialSpec, random.Random], float | None],
        duration: float = 300.0,
        jitter: float = 0.02,
        seed: int = 0,
        digest: Callable[[TrialSpec], str] | None = None,
    ):
        self.target = workers
        self.score, self.duration, self.jitter = score, duration, jitter
        self.digest = digest  # a run's `rng` (what its initialization drew), if modelled
        self.rng = random.Random(seed * 7919 + 1)  # measurement noise
        self.trng = random.Random(seed * 7919 + 2)  # trial durations
        self.t = 0.0
        self.heap: list[tuple[float, int, TrialSpec]] = []
        self.n = 0
        self.busy_time = 0.0

    def now(self) -> float:
        return self.t

    def idle(self) -> int:
        return self.target - len(self.heap)

    def busy(self) -> int:
        return len(self.heap)

    def recovering(self) -> int:
        return 0

    def starting(self) -> int:
        return 0

    def ready(self) -> int:
        return self.target

    def submit(self, spec: TrialSpec) -> None:
        assert self.idle() > 0, "submit with no idle worker"
        d = self.duration * math.exp(self.trng.gauss(0, self.jitter))
        self.busy_time += d
        self.n += 1
        heapq.heappush(self.heap, (self.t + d, self.n, spec))

    def results(self, timeout: float) -> Iterator[tuple[TrialSpec, TrialResult, str, int]]:
        if not self.heap:
            self.t += timeout
            return
        t, _, spec = heapq.heappop(self.heap)
        self.t = max(self.t, t)
        value = self.score(spec, self.rng)
        status = "ok" if value is not None else "crash"
        rng = self.digest(spec) if self.digest else ""
        yield spec, TrialResult(status=status, val_bpb=value, ended=self.t, rng=rng), "", 0

    def busy_fraction(self) -> float:
        return self.busy_time / (self.t * self.target) if self.t else 0.0
