"""`population`: K lines of search (islands), each with its own incumbent, sharing the
workers (cf. PBT).

Island i keeps its incumbent on `autoresearch/TAG-island-i` (git cannot hold both
`autoresearch/TAG` and `autoresearch/TAG/i`); all start at the base commit. The search on
each is async's (cluster/strategy_async.py, run with lines=K): a free worker takes the next
trial from the islands in turn; a candidate is proposed for its own island's incumbent (the
pipeline keeps one context and one queue per island), and is gated and confirmed against
that island's runs. Noise is pooled over every island (the gate reads all rows).

Every --migrate-every M results, exploit: the bottom quarter of the islands (at least one)
whose incumbent mean is worse than the best island's by more than the screening threshold
is reset to the best island's incumbent; so is an island with no merge over its last M
candidates (stagnation). Proposers then explore from there. Each move is printed and appended
to runs/TAG/islands.jsonl with the old head (nothing is lost: every candidate keeps its ref).

The campaign branch `autoresearch/TAG` follows the best island incumbent (lowest mean over its
runs), so `git log autoresearch/TAG` and every existing reader see the final answer.
runs/TAG/islands.json holds each island's head, mean, runs and merges for `status`.
"""

from __future__ import annotations

import statistics

from cluster.strategy import Verdict
from cluster.strategy_async import Async


class Population:
    name = "population"
    pairs = True  # as async, whose machinery it runs

    def __init__(self, cfg, workers: int):
        self.cfg = cfg
        self.lines = max(2, cfg.search.islands or 4)
        self.every = max(1, cfg.search.migrate_every or 2 * workers)
        self.search = Async(cfg, workers, lines=self.lines)
        self.results = 0  # rows since the last exploit step
        self.published: list | None = None

    def settings(self) -> dict:
        return {
            "strategy": "population",
            "islands": self.cfg.search.islands,
            "migrate_every": self.cfg.search.migrate_every,
        }

    # ------------------------------------------------------------------ the protocol

    def next_trial(self, view):
        if self.results >= self.every:
            self.results = 0
            self.exploit(view)
        self.publish(view)
        return self.search.next_trial(view)

    def on_result(self, view, row) -> Verdict:
        self.results += 1
        return self.search.on_result(view, row)

    def done(self, view) -> bool:
        return self.search.done(view)

    def close(self, view) -> None:
        self.publish(view)

    # ------------------------------------------------------------------ islands

    def mean(self, view, line) -> float | None:
        runs = view.runs_of(line.head)
        return statistics.fmean(runs) if runs else None

    def best(self, view):
        scored = [(m, x.index) for x in view.lines if (m := self.mean(view, x)) is not None]
        return view.lines[min(scored)[1]] if scored else None

    def exploit(self, view) -> None:
        """The bottom islands (and stagnant ones) copy the best island's incumbent."""
        gate, top = view.gate, self.best(view)
        noise, dof = view.noise_dof()
        if top is None or not noise:
            return
        top_mean = self.mean(view, top)
        need = gate.threshold(noise, len(view.runs_of(top.head)), gate.noise_multiple, dof)

        def trailing(x):
            m = self.mean(view, x)
            return -(m if m is not None else float("inf"))

        ranked = sorted((x for x in view.lines if x is not top), key=trailing)
        for x in ranked[: max(1, self.lines // 4)]:
            m = self.mean(view, x)
            if x.head != top.head and (m is None or m - top_mean > need):
                why = (
                    f"mean {m:.4f} trails {top_mean:.4f} by more than {need:.4f}"
                    if m is not None
                    else "not measured"
                )
                view.reset(x, top, why)
        for x in view.lines:
            if x is not top and x.since_reset >= self.every and x.head != top.head:
                view.reset(x, top, f"stagnant: no merge in its last {x.since_reset} candidates")

    def publish(self, view) -> None:
        """The campaign branch follows the best island; islands.json says where each is."""
        top = self.best(view)
        if top is not None:
            view.follow(top.head, f"best island {top.index}")
        key = [(x.head, len(view.runs_of(x.head)), x.merges) for x in view.lines]
        if key == self.published:
            return
        self.published = key
        state = []
        for x in view.lines:
            runs = view.runs_of(x.head)
            state.append(
                dict(
                    island=x.index,
                    branch=x.branch,
                    sha=x.head,
                    mean=statistics.fmean(runs) if runs else None,
                    runs=len(runs),
                    merges=x.merges,
                )
            )
        view.write_lines(state)
