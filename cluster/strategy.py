"""The Strategy protocol: what a search strategy decides, and nothing else (cf. Ray Tune's
Searcher / TrialScheduler).

The driver (cluster/loop.py) owns the only loop. While a worker is free it asks
`next_trial(view)` for the next trial to run (None: nothing now); as each trial finishes it
asks `on_result(view, row)` for a Verdict on the row before recording it; it stops when no
trial is running and `done(view)` says so, then calls `close(view)`. Resume is the driver's:
trials a killed driver left running are recorded `lost` and queued on their line's follow-ups
before the strategy is asked for anything, so every strategy judges them as if never
interrupted. The view (cluster/loop.py `View`) reads the campaign (rows, noise, lines,
incumbents, the clock) and does the few things a strategy may do: make a spec, queue a
follow-up, take proposals committed as candidates, say something.

A strategy in a few dozen lines (cluster/strategy_greedy.py is one):

    class Greedy:
        name, lines = "greedy", 1
        def next_trial(self, view):
            line = view.lines[0]
            return view.pop_follow_up(line) or next(iter(view.take(line, 1)), None)
        def on_result(self, view, row):
            ...  # Verdict.MERGE if row.val_bpb beats the incumbent's mean
        def done(self, view): return view.limits.reached()
        def close(self, view): pass

Register it in STRATEGIES below; `--strategy NAME` then runs it. A strategy that judges
candidates through cluster/tactics.py (screen, confirm, top_up) sets `pairs = True`: its
candidates then run at a seed of their parent's runs and the gate may judge paired
differences (cluster/gate.py); without it every trial runs at a fresh seed.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cluster.loop import View
    from cluster.records import TrialSpec
    from cluster.rows import TrialRow


class Verdict(str, Enum):
    """What a finished trial means. A failed trial keeps its failure status whatever it says."""

    KEEP = "keep"  # recorded keep (an incumbent replicate)
    DISCARD = "discard"  # recorded discard
    FOLLOW_UP = "follow_up"  # recorded discard; the strategy queued follow-ups (a confirmation)
    MERGE = "merge"  # recorded keep, and the row's line moves to its commit

    @property
    def status(self) -> str:
        return "keep" if self in (Verdict.KEEP, Verdict.MERGE) else "discard"


class Strategy(Protocol):
    name: str
    lines: int  # lines of search it keeps (population: K islands)

    def settings(self) -> dict:
        """Settings a resumed campaign must keep for this strategy (locked in config.json)."""
        ...

    def next_trial(self, view: View) -> TrialSpec | None: ...

    def on_result(self, view: View, row: TrialRow) -> Verdict: ...

    def done(self, view: View) -> bool: ...

    def close(self, view: View) -> None: ...


STRATEGIES = {
    "rounds": "cluster.strategy_rounds:Rounds",
    "async": "cluster.strategy_async:Async",
    "population": "cluster.strategy_population:Population",
    "greedy": "cluster.strategy_greedy:Greedy",
}


def build_strategy(cfg, workers: int) -> Strategy:
    import importlib

    if cfg.search.strategy not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {cfg.search.strategy!r}; available: {', '.join(STRATEGIES)}"
        )
    module, name = STRATEGIES[cfg.search.strategy].split(":")
    return getattr(importlib.import_module(module), name)(cfg, workers)
