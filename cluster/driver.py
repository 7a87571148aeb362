"""Runs a campaign end to end: Ray, the worker pool, the proposal pipeline, the strategy.

`run_campaign(cfg)` is what `autoresearch run` calls. It connects to Ray (local, or the
cluster at --address), sizes the pool to the GPUs (or CPU cores), checks every worker's GPU
type, then hands control to the strategy, which decides what to run and what to merge.
"""

from __future__ import annotations

import logging
import os
import statistics
import time

import ray

from cluster import gitops
from cluster.campaign import MAX_REQUEUES, Campaign, CampaignConfig, CampaignError
from cluster.pipeline import ProposalPipeline
from cluster.pool import WorkerPool, check_gpu_type, cluster_gpus, default_cpu_workers
from cluster.proposers import build_proposers
from cluster.records import TrialResult, TrialSpec
from cluster.validate import source_hash
from trainer.budget import default_budget

log = logging.getLogger(__name__)


def connect(address: str | None) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=False)
    address = address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address:
        ray.init(address=address, **kwargs)
    else:  # a new local Ray, never someone else's that happens to run on this machine;
        # token auth is on by default in Ray 2.60; no dashboard
        ray.init(address="local", include_dashboard=False, **kwargs)


class Driver:
    """Shared machinery the strategies use: dispatch, record, requeue, merge."""

    def __init__(self, camp: Campaign, pool: WorkerPool, pipeline: ProposalPipeline, gpu_name: str):
        self.camp, self.pool, self.pipeline, self.gpu_name = camp, pool, pipeline, gpu_name
        self.requeues: dict[str, int] = {}
        self.waiting_since: float | None = None
        self.ready = 0  # workers ready, as last written to config.json

    def refresh_pipeline(self) -> None:
        self.pipeline.update(self.camp.context())

    def run_specs(self, specs: list[TrialSpec], on_row=None) -> list[dict]:
        """Run trials on free workers, record each row as it lands; re-run lost ones."""
        camp, queue, rows = self.camp, list(specs), []
        camp._journal()
        while queue or self.pool.busy():
            self.check_alive(bool(queue))
            while queue and self.pool.idle():
                spec = queue.pop(0)
                self.pool.submit(spec)
            self.note_in_flight()
            self.say_waiting(len(queue))
            got, again = self.poll(5.0, on_row)
            rows += got
            queue += again
        return rows

    def check_alive(self, queued: bool) -> None:
        """Queued work with no worker idle, busy or coming back can never run."""
        pool = self.pool
        if queued and not (pool.idle() or pool.busy() or pool.recovering() or pool.starting()):
            raise CampaignError("no trial worker is left alive to run the queued trials")

    def say_waiting(self, queued: int) -> None:
        """Queued trials and no worker to run them: say why, once a minute."""
        pool, now = self.pool, time.monotonic()
        if not queued or pool.idle() or pool.busy():
            self.waiting_since = None
            return
        if self.waiting_since is not None and now - self.waiting_since < 60:
            return
        self.waiting_since = now
        self.camp._say(
            f"{queued} trial(s) wait for a worker: {pool.starting()} not placed yet (no free "
            f"GPU/CPU for them: `ray status`), {pool.recovering()} restarting after a failure"
        )

    def note_in_flight(self) -> None:
        """Tell the proposers what is running, so they do not propose it again."""
        self.pipeline.in_flight(
            [
                (self.camp.inflight.get(s.trial_id, {}).get("proposal") or {}).get(
                    "description", ""
                )
                for _, s, _, _ in self.pool.pending.values()
            ]
        )

    def poll(self, timeout: float, on_row=None) -> tuple[list[dict], list[TrialSpec]]:
        """Record the trials that finish within `timeout` s (without dispatching anything).

        Returns their rows and, for lost trials still under MAX_REQUEUES, the specs that re-run
        them (already journaled): the caller decides when they run. Used by run_specs, and by
        strategies that keep their own queue (async)."""
        camp, rows, again = self.camp, [], []
        results = list(self.pool.results(timeout=timeout))
        self.follow_pool()
        for spec, result, text, _ in results:
            entry = camp.inflight.pop(spec.trial_id, {})
            result = self._check_gpu(result)
            row = self.decide(spec, entry.get("proposal"), result, text, on_row)
            rows.append(row)
            camp._journal()
            if result.status == "lost" and self.requeues.get(spec.commit_sha, 0) < MAX_REQUEUES:
                self.requeues[spec.commit_sha] = self.requeues.get(spec.commit_sha, 0) + 1
                spec2 = camp.make_spec(spec.kind, spec.commit_sha, spec.parent_sha, spec.island)
                camp.inflight[spec2.trial_id]["proposal"] = entry.get("proposal")
                camp._say(
                    f"{spec.trial_id} lost ({result.error[:80]}); re-running as {spec2.trial_id}"
                )
                again.append(spec2)
                camp._journal()
        return rows, again

    def follow_pool(self) -> None:
        """Workers joined or left (queued ones placed, --workers auto following the cluster):
        record how many are asked for and ready, for `status`."""
        camp, n, ready = self.camp, self.pool.target, self.pool.ready()
        if (n, ready) == (camp.workers, self.ready):
            return
        if n != camp.workers and not camp.cfg.proposals_ahead:
            self.pipeline.resize(n)
        camp.workers, self.ready = n, ready
        config = camp.ledger.read_config() or {}
        camp.ledger.write_config({**config, "workers": n, "workers_ready": ready})

    def _check_gpu(self, r: TrialResult) -> TrialResult:
        if r.status == "ok" and self.gpu_name and r.gpu_name != self.gpu_name:
            r.status = "invalid"
            r.error = f"ran on {r.gpu_name or 'cpu'}; this campaign compares {self.gpu_name} only"
        return r

    def decide(self, spec: TrialSpec, proposal, result: TrialResult, text: str, on_row) -> dict:
        camp = self.camp
        status = None
        if result.status == "ok" and spec.kind == "baseline":
            status = "keep"
        if on_row is not None and result.status == "ok":
            status = on_row(spec, result) or status
        merged = status == "merge"
        if merged:
            status = "keep"
        row = camp.record(spec, proposal, result, status=status, merged=merged, log_text=text)
        self.report(row)
        if merged:
            self.merge(spec.commit_sha, row)
        return row

    def merge(self, sha: str, row: dict) -> None:
        camp = self.camp
        old = camp.incumbent
        if not gitops.is_ancestor(camp.repo, old, sha):
            raise CampaignError(
                f"refusing to move {camp.branch}: {sha[:10]} does not descend "
                f"from the incumbent {old[:10]}"
            )
        gitops.set_ref(camp.repo, f"refs/heads/{camp.branch}", sha, old)
        camp._say(
            f"MERGED {row['trial_id']}: {camp.branch} -> {sha[:10]} "
            f"(val_bpb {row['val_bpb']:.4f}) {row['description']}"
        )
        self.refresh_pipeline()

    def report(self, row: dict) -> None:
        camp = self.camp
        bpb = f"{row['val_bpb']:.4f}" if row["val_bpb"] is not None else "   -  "
        extra = ""
        if row["val_bpb"] is not None and row.get("incumbent_bpb") and row["kind"] != "baseline":
            gain = row["incumbent_bpb"] - row["val_bpb"]
            sigma = f" = {gain / row['noise']:.1f} sigma" if row.get("noise") else ""
            extra = f" gain {gain:+.4f}{sigma}"
        err = (
            f" [{row['error'].splitlines()[0][:100]}]"
            if row.get("error") and row["status"] in ("crash", "timeout", "invalid", "lost")
            else ""
        )
        camp._say(
            f"{row['trial_id']} r{row['round']} {row['kind']:<9} {row['status']:<7} "
            f"{bpb}{extra} {row['description'][:70]}{err}"
        )


def resolve(cfg: CampaignConfig) -> dict:
    gpus = cluster_gpus(cfg.gpu_type)
    if cfg.gpu_type:
        check_gpu_type(cfg.gpu_type)
    total_cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    device_kind = "cpu" if cfg.device == "cpu" or gpus == 0 else "cuda"
    workers = cfg.workers or (gpus if gpus else default_cpu_workers())
    if workers < 1:
        raise CampaignError("--workers must be at least 1")
    # --workers auto on GPUs follows the cluster; CPU workers split the cores once, at start
    follow = cfg.workers is None and gpus > 0
    threads = max(1, total_cpus // workers) if device_kind == "cpu" else None
    return dict(
        device_kind=device_kind,
        workers=workers,
        threads=threads,
        gpus_per_trial=1 if gpus else 0,
        cpus_per_trial=0 if gpus else min(threads or 1, total_cpus),
        budget=cfg.budget or default_budget(device_kind),
        follow=follow,
    )


def run_campaign(cfg: CampaignConfig) -> Campaign:
    from cluster.strategies import build_strategy

    camp = Campaign(cfg)
    proposers = build_proposers(cfg, camp.repo)  # before Ray: a missing API key fails fast
    connect(cfg.address)
    plan = resolve(cfg)
    camp.budget = plan["budget"]
    camp.setup(plan["device_kind"], plan["budget"], plan["workers"])
    for p, _ in proposers:  # knobs of the other device would be null changes
        if p.name == "mutate":
            p.skip_prefixes = ("GPU_",) if plan["device_kind"] == "cpu" else ("CPU_",)
    camp._say(
        f"campaign {cfg.tag}: {plan['workers']} workers ({plan['device_kind']}"
        f"{', ' + str(plan['threads']) + ' threads each' if plan['threads'] else ''}), "
        f"budget {camp.budget}, strategy {cfg.strategy}, proposer {cfg.proposer}, "
        f"branch {camp.branch} at {camp.incumbent[:10]}"
    )
    pool = WorkerPool(
        plan["workers"],
        gpus_per_trial=plan["gpus_per_trial"],
        cpus_per_trial=plan["cpus_per_trial"],
        accelerator_type=cfg.gpu_type,
        actor_args=dict(
            tag=cfg.tag,
            base_sha=camp.base_sha,
            base_bundle=gitops.bundle(camp.repo, camp.base_sha, None),
            dataset=cfg.dataset,
            vocab_size=cfg.vocab_size,
            device=cfg.device if cfg.device != "auto" else plan["device_kind"],
            threads=plan["threads"],
            sandbox=cfg.sandbox,
            clone_root=cfg.clone_root,
            untrusted=any(p.name in ("llm", "queue") for p, _ in proposers),
        ),
        bundle_for=lambda sha: (
            b"" if sha == camp.base_sha else gitops.bundle(camp.repo, sha, camp.base_sha)
        ),
        trial_timeout=cfg.trial_timeout,
        follow=plan["follow"],
        say=camp._say,
    )
    pipeline = None
    try:
        infos = pool.start()
        names = sorted({i["gpu_name"] for i in infos})
        if len(names) > 1:
            raise CampaignError(
                f"workers run on different GPUs ({', '.join(names)}); pin one "
                "type with --gpu-type so every trial is comparable"
            )
        gpu_name = names[0] if names else ""
        pool.gpu_name = gpu_name
        pool.pin_type()
        if cfg.gpu_type and cfg.gpu_type not in gpu_name:
            raise CampaignError(f"--gpu-type {cfg.gpu_type} but workers report {gpu_name!r}")
        nodes = sorted({i["node"] for i in infos})
        held = ", ".join(sorted({i.get("confinement", "?") for i in infos}))
        camp._say(
            f"{len(infos)} workers ready on {len(nodes)} node(s)"
            f"{': ' + gpu_name if gpu_name else '; CPU trials share each machine'}"
            f"; trials confined by {held}"
            f"{'; following the cluster (--workers auto)' if plan['follow'] else ''}"
        )
        if pool.starting():
            camp._say(
                f"{pool.starting()} of {pool.target} workers wait for resources (the cluster "
                f"holds {pool.capacity()} now): their trials queue, and they join when it grows"
            )
        seen = {
            source_hash(gitops.read_blob(camp.repo, r["commit_sha"], cfg.target))
            for r in camp.rows
            if r.get("commit_sha") and r.get("kind") == "candidate"
        }
        seen.add(source_hash(camp.incumbent_source()))
        pipeline = ProposalPipeline(
            proposers, cfg.proposals_ahead or plan["workers"], seed=cfg.seed
        )
        pipeline.start(camp.context(), seen)
        driver = Driver(camp, pool, pipeline, gpu_name)
        driver.follow_pool()
        build_strategy(cfg, driver, plan["workers"]).run()
    except KeyboardInterrupt:
        camp._say("interrupted: running trials are cancelled and will be re-run on resume")
        pool.cancel_all()
    finally:
        if pipeline:
            pipeline.stop()
        camp.busy_fraction = pool.busy_fraction()
        pool.shutdown()
    summarize(camp)
    return camp


def summarize(camp: Campaign) -> None:
    rows = camp.rows
    ok = [r for r in rows if r.get("val_bpb") is not None and r["status"] in ("keep", "discard")]
    merged = [r for r in rows if r.get("merged")]
    base = [
        r["val_bpb"]
        for r in rows
        if r["kind"] == "baseline" and r["commit_sha"] == camp.base_sha and r["val_bpb"] is not None
    ]
    inc = camp.runs_of(camp.incumbent)
    camp._say(
        f"done: {len(rows)} trials, {len(merged)} merged; baseline "
        f"{statistics.fmean(base) if base else float('nan'):.4f} -> incumbent "
        f"{statistics.fmean(inc) if inc else float('nan'):.4f} at {camp.incumbent[:10]}; "
        f"noise {camp.noise() or float('nan'):.4f}; busy {getattr(camp, 'busy_fraction', 0):.0%}; "
        f"best single run {min((r['val_bpb'] for r in ok), default=float('nan')):.4f}. "
        f"Ledger: {camp.run_dir / 'trials.jsonl'}"
    )
