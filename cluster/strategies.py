"""Strategies decide what runs next and what merges (cf. Tune's Searcher / TrialScheduler).

`rounds` (the shape autoresearch users know, N at a time): measure the incumbent's noise with
replicates, fan out N candidates against it, wait for all, screen the best through the gate,
confirm it beside a fresh incumbent run, merge, repeat.

`async` (cluster/strategy_async.py): every worker stays busy, results are gated as they
arrive, stale winners are re-run on the new incumbent, near-misses are combined.

`population` (cluster/strategy_population.py): K islands with their own incumbent branches
share the workers; the bottom islands copy the best every M results (PBT exploit/explore).
"""

from __future__ import annotations

import time

from cluster.campaign import CampaignConfig, CampaignError

STRATEGIES = ("rounds", "async", "population")  # cluster/strategy_{async,population}.py


class RoundsStrategy:
    def __init__(self, cfg: CampaignConfig, driver, workers: int):
        self.cfg, self.driver, self.camp = cfg, driver, driver.camp
        self.workers = workers
        # 4+ replicates: with 2, Student's t widens the gate 6x (one degree of freedom).
        self.replicates = max(2, cfg.replicates or max(4, workers))
        self.rounds_done = 0
        self.t_start = time.monotonic()

    @property
    def per_round(self) -> int:
        """--per-round, else the workers wanted now (they follow the cluster with auto)."""
        pool = getattr(self.driver, "pool", None)
        return self.cfg.per_round or getattr(pool, "target", None) or self.workers

    def should_stop(self) -> bool:
        cfg, camp = self.cfg, self.camp
        if cfg.rounds is not None and self.rounds_done >= cfg.rounds:
            return True
        if cfg.trials is not None:
            run = sum(1 for r in camp.rows if r["kind"] == "candidate") - camp.prior_candidates
            if run >= cfg.trials:
                return True
        return cfg.hours is not None and time.monotonic() - self.t_start >= cfg.hours * 3600

    def measure_noise(self) -> None:
        camp, inc = self.camp, self.camp.incumbent
        missing = self.replicates - len(camp.runs_of(inc))
        if camp.noise() is None:
            missing = max(missing, 1)
        if missing <= 0:
            return
        camp._say(f"measuring noise: {missing} incumbent replicate(s) with varied seeds")
        specs = [camp.make_spec("baseline", inc, inc) for _ in range(missing)]
        rows = self.driver.run_specs(specs)
        if not any(r["val_bpb"] is not None for r in rows):
            first = next((r for r in rows if r["status"] != "lost"), rows[-1])
            raise CampaignError(
                f"the incumbent {inc[:10]} itself does not train: {first['status']}: "
                f"{(first['error'] or '').strip()[-600:]}\nTry it alone with "
                f"`autoresearch trial`; full log: {first['log_path'] or '(none)'}"
            )

    def run(self) -> None:
        camp, driver = self.camp, self.driver
        if camp.requeue:
            camp._say(f"re-running {len(camp.requeue)} trial(s) lost when the driver stopped")
            specs = [camp.make_spec(s.kind, s.commit_sha, s.parent_sha) for s in camp.requeue]
            driver.run_specs(specs)
        while not self.should_stop():
            self.measure_noise()
            camp.round += 1
            driver.refresh_pipeline()
            specs = self.collect_candidates()
            if not specs:
                continue
            rows = driver.run_specs(specs)
            self.rounds_done += 1
            self.gate_round(rows)

    def collect_candidates(self) -> list:
        camp, driver = self.camp, self.driver
        specs, waited, t0 = [], 0.0, time.monotonic()
        while len(specs) < self.per_round and not self.should_stop():
            valid, invalid = driver.pipeline.take(self.per_round - len(specs), timeout=10.0)
            for p in invalid:
                camp.record_invalid(p)
            specs += [camp.commit_proposal(p) for p in valid if p.parent_sha == camp.incumbent]
            if specs and not valid:
                break  # run what we have rather than idle the workers
            waited = time.monotonic() - t0
            if not specs and not valid and not invalid and waited > 30:
                reason = driver.pipeline.last_error or "proposers have nothing new"
                camp._say(f"waiting for proposals ({reason})")
                t0 = time.monotonic()
        return specs

    def gate_round(self, rows: list[dict]) -> None:
        camp, gate = self.camp, self.camp.gate
        (noise, dof), inc_runs = gate.noise_dof(camp.rows), camp.runs_of(camp.incumbent)
        scored = sorted(
            (
                r
                for r in rows
                if r["kind"] == "candidate"
                and r["val_bpb"] is not None
                and r["status"] == "discard"
            ),
            key=lambda r: r["val_bpb"],
        )
        if not scored or not noise or not inc_runs:
            return
        best = scored[0]
        if not gate.promising(best["val_bpb"], inc_runs, noise, dof):
            need = gate.threshold(noise, len(inc_runs), gate.noise_multiple, dof)
            camp._say(
                f"round {camp.round}: best {best['trial_id']} {best['val_bpb']:.4f} does "
                f"not beat the incumbent by {need:.4f} ({gate.noise_multiple:g} x noise)"
            )
            return
        camp._say(
            f"round {camp.round}: {best['trial_id']} looks better; confirming with a fresh "
            "seed beside a fresh incumbent run"
        )
        inc = camp.incumbent
        confirm = camp.make_spec("confirm", best["commit_sha"], inc)
        camp.inflight[confirm.trial_id]["proposal"] = {
            k: best.get(k) for k in ("proposer", "model", "description")
        }
        replicate = camp.make_spec("baseline", inc, inc)

        def decide(spec, result):
            if spec.kind != "confirm":
                return None
            runs = camp.runs_of(inc)
            now, now_dof = gate.noise_dof(camp.rows)
            ok = gate.confirmed(result.val_bpb, runs, now or noise, now_dof or dof)
            return "merge" if ok and camp.incumbent == inc else "discard"

        # The replicate goes first so the confirmation is judged with it when both fit.
        self.driver.run_specs([replicate, confirm], on_row=decide)


def build_strategy(cfg: CampaignConfig, driver, workers: int):
    if cfg.strategy == "rounds":
        return RoundsStrategy(cfg, driver, workers)
    if cfg.strategy == "async":
        from cluster.strategy_async import AsyncStrategy

        return AsyncStrategy(cfg, driver, workers)
    if cfg.strategy == "population":
        from cluster.strategy_population import PopulationStrategy

        return PopulationStrategy(cfg, driver, workers)
    raise ValueError(f"unknown strategy {cfg.strategy!r}; available: {', '.join(STRATEGIES)}")
