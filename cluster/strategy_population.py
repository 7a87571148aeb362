"""`population`: K islands, each with its own incumbent, sharing the workers (cf. PBT).

Each island i keeps its incumbent on `autoresearch/TAG-island-i` (git cannot hold both
`autoresearch/TAG` and `autoresearch/TAG/i`); all start at the base commit. The machinery is
the async strategy's, run against one island at a time (Campaign.island picks the branch that
`incumbent`, `make_spec`, `commit_proposal` and `Driver.merge` use): a free worker takes the
next trial from the islands in turn; a candidate carries its island, is proposed on (or
re-based onto) that island's incumbent, and is gated and confirmed against that island's runs.
Noise is pooled over every island (the gate reads all rows).

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

import json
import statistics
import time
from contextlib import contextmanager

from cluster import gitops
from cluster.campaign import _atomic_json, island_branch
from cluster.strategy_async import AsyncStrategy


class PopulationStrategy(AsyncStrategy):
    def __init__(self, cfg, driver, workers: int):
        super().__init__(cfg, driver, workers)
        self.k = max(2, cfg.islands or 4)
        self.every = max(1, cfg.migrate_every or 2 * workers)
        self.turn = 0  # the island the next fresh candidate goes to
        self.results = 0  # rows since the last exploit step
        rows = self.camp.rows
        # candidates judged on each island since its last merge or reset
        self.since = {i: 0 for i in range(self.k)}
        self.merges = {
            i: sum(1 for r in rows if r.get("merged") and r["island"] == i) for i in range(self.k)
        }
        self.log = self.camp.run_dir / "islands.jsonl"
        self._branches()

    # ------------------------------------------------------------------ islands

    def _branches(self) -> None:
        """Create missing island branches; finish a merge a killed driver recorded but did not
        make (the island's last merged row, unless a migration moved the island after it)."""
        camp = self.camp
        moves = []
        if self.log.exists():
            moves = [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]
        for i in range(self.k):
            ref = f"refs/heads/{island_branch(camp.cfg.tag, i)}"
            head = gitops.rev_parse(camp.repo, island_branch(camp.cfg.tag, i))
            if not head:
                gitops.set_ref(camp.repo, ref, camp.base_sha)
                head = camp.base_sha
            won = [r for r in camp.rows if r.get("merged") and r["island"] == i]
            if not won or any(m["island"] == i and m["time"] > won[-1]["recorded"] for m in moves):
                continue
            want = won[-1]["commit_sha"]
            if head != want and gitops.is_ancestor(camp.repo, head, want):
                gitops.set_ref(camp.repo, ref, want, head)
                camp._say(f"island {i}: completed an interrupted merge {head[:10]} -> {want[:10]}")

    @contextmanager
    def on(self, island: int | None):
        camp, was = self.camp, self.camp.island
        camp.island = island
        try:
            yield
        finally:
            camp.island = was

    def head(self, i: int) -> str:
        with self.on(i):
            return self.camp.incumbent

    def mean(self, i: int) -> float | None:
        runs = self.camp.runs_of(self.head(i))
        return statistics.fmean(runs) if runs else None

    def best(self) -> int | None:
        scored = [(m, i) for i in range(self.k) if (m := self.mean(i)) is not None]
        return min(scored)[1] if scored else None

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        camp = self.camp
        if camp.requeue:  # lost when the driver stopped: re-run on their own island
            camp._say(f"re-running {len(camp.requeue)} trial(s) lost when the driver stopped")
            lost = {r["trial_id"]: r for r in camp.rows if r["status"] == "lost"}
            for s in camp.requeue:
                spec = camp.make_spec(s.kind, s.commit_sha, s.parent_sha, island=s.island)
                was = lost.get(s.trial_id) or {}
                keys = ("proposer", "model", "description", "island")
                self._queue(spec, {k: was.get(k) for k in keys} if s.kind != "baseline" else None)
            camp.requeue = []
        with self.on(0):  # every island starts at the base: measure it once
            super().run()
        self.sync_main()

    def measure_noise(self) -> None:
        super().measure_noise()
        self.sync_main()

    def next_spec(self, stopping: bool):
        """Island by island in turn: the first with something to run gives the next trial
        (follow-ups and re-runs carry their own island and are judged there)."""
        for k in range(self.k):
            i = (self.turn + k) % self.k
            with self.on(i):
                spec = super().next_spec(stopping)
            if spec is not None:
                if spec.island == i:
                    self.turn = (i + 1) % self.k
                return spec
        return None

    def _still_useful(self, spec) -> bool:
        with self.on(spec.island or 0):
            return super()._still_useful(spec)

    def rerun(self, win: dict):
        with self.on(win.get("island") or 0):
            return super().rerun(win)

    def combine(self, a: dict, b: dict):
        with self.on(a.get("island") or 0):
            return super().combine(a, b)

    def screen(self, row: dict) -> None:
        with self.on(row.get("island") or 0):
            super().screen(row)

    def near_miss(self, row: dict) -> None:
        with self.on(row.get("island") or 0):
            super().near_miss(row)

    def decide(self, spec, result):
        with self.on(spec.island):
            verdict = super().decide(spec, result)
        if verdict == "merge":
            # Driver.merge runs next and moves camp.branch: point it at this island
            self.camp.island = spec.island
        return verdict

    def arrived(self, row: dict) -> None:
        camp, i = self.camp, row.get("island") or 0
        camp.island = None
        if row.get("merged"):
            self.merges[i] += 1
            self.since[i] = 0
            self.sync_main()
        with self.on(i):
            super().arrived(row)
        if row["kind"] == "candidate" and row["val_bpb"] is not None:
            self.since[i] += 1
        self.results += 1
        if self.results >= self.every:
            self.results = 0
            self.exploit()
        self.write_state()

    # ------------------------------------------------------------------ exploit / explore

    def exploit(self) -> None:
        """The bottom islands (and stagnant ones) copy the best island's incumbent."""
        camp, gate = self.camp, self.camp.gate
        b = self.best()
        noise, dof = gate.noise_dof(camp.rows)
        if b is None or not noise:
            return
        top, top_mean = self.head(b), self.mean(b)
        need = gate.threshold(noise, len(camp.runs_of(top)), gate.noise_multiple, dof)
        ranked = sorted(
            (i for i in range(self.k) if i != b),
            key=lambda i: -(self.mean(i) if self.mean(i) is not None else float("inf")),
        )
        for i in ranked[: max(1, self.k // 4)]:
            m = self.mean(i)
            if self.head(i) != top and (m is None or m - top_mean > need):
                self.reset(
                    i,
                    b,
                    f"mean {m:.4f} trails {top_mean:.4f} by more than {need:.4f}"
                    if m is not None
                    else "not measured",
                )
        for i in range(self.k):
            if i != b and self.since[i] >= self.every and self.head(i) != top:
                self.reset(i, b, f"stagnant: no merge in its last {self.since[i]} candidates")

    def reset(self, i: int, src: int, why: str) -> None:
        camp = self.camp
        old, new = self.head(i), self.head(src)
        gitops.set_ref(camp.repo, f"refs/heads/{island_branch(camp.cfg.tag, i)}", new, old)
        self.since[i] = 0
        camp._say(f"MIGRATE island {src} -> island {i}: {old[:10]} -> {new[:10]} ({why})")
        with open(self.log, "a") as f:
            f.write(
                json.dumps(dict(time=time.time(), island=i, source=src, old=old, new=new, why=why))
                + "\n"
            )
        self.driver.refresh_pipeline()

    def sync_main(self) -> None:
        """The campaign branch follows the best island's (confirmed) incumbent."""
        camp = self.camp
        b = self.best()
        if b is None:
            return
        want = self.head(b)
        with self.on(None):
            have = camp.incumbent
            if have != want:
                gitops.set_ref(camp.repo, f"refs/heads/{camp.main_branch}", want, have)
                camp._say(f"{camp.main_branch} -> {want[:10]} (best island {b})")
        self.write_state()

    def write_state(self) -> None:
        islands = []
        for i in range(self.k):
            sha = self.head(i)
            runs = self.camp.runs_of(sha)
            islands.append(
                dict(
                    island=i,
                    branch=island_branch(self.camp.cfg.tag, i),
                    sha=sha,
                    mean=statistics.fmean(runs) if runs else None,
                    runs=len(runs),
                    merges=self.merges[i],
                )
            )
        _atomic_json(self.camp.run_dir / "islands.json", islands)
