"""Runs a campaign end to end: Ray, the worker pool, the proposal pipeline, the strategy.

`run_campaign(cfg)` is what `autoresearch run` calls. It connects to Ray (local, or the
cluster at --address), sizes the pool to the GPUs (or CPU cores), checks every worker's GPU
type, then runs the driver's loop (cluster/loop.py) with the chosen strategy
(cluster/strategy.py) on the pool.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import statistics
import sys
import threading
import time

import ray

from cluster import gitops
from cluster.campaign import Campaign, CampaignConfig, CampaignError
from cluster.lock import hold_campaign
from cluster.loop import Driver
from cluster.pipeline import ProposalPipeline
from cluster.pool import WorkerPool, check_gpu_type, cluster_gpus, default_cpu_workers
from cluster.proposers import build_proposers
from cluster.strategy import build_strategy
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


def resolve(cfg: CampaignConfig) -> dict:
    gpus = cluster_gpus(cfg.cluster.gpu_type)
    if cfg.cluster.gpu_type:
        check_gpu_type(cfg.cluster.gpu_type)
    total_cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    device_kind = "cpu" if cfg.trial.device == "cpu" or gpus == 0 else "cuda"
    workers = cfg.cluster.workers or (gpus if gpus else default_cpu_workers())
    if workers < 1:
        raise CampaignError("--workers must be at least 1")
    # --workers auto on GPUs follows the cluster; CPU workers split the cores once, at start
    follow = cfg.cluster.workers is None and gpus > 0
    threads = (cfg.trial.threads or max(1, total_cpus // workers)) if device_kind == "cpu" else None
    return dict(
        device_kind=device_kind,
        workers=workers,
        threads=threads,
        gpus_per_trial=1 if gpus else 0,
        cpus_per_trial=0 if gpus else min(threads or 1, total_cpus),
        budget=cfg.trial.budget or default_budget(device_kind),
        follow=follow,
    )


def run_campaign(cfg: CampaignConfig) -> Campaign:
    camp = Campaign(cfg)
    try:
        with hold_campaign(camp.files.driver_lock, cfg.tag):  # one driver per tag
            _run(camp, cfg)
    except BaseException:
        if camp.created and not camp.files.ledger.exists() and not camp.files.llm_calls.exists():
            shutil.rmtree(camp.files.path, ignore_errors=True)  # a failed start leaves nothing
        raise
    return camp


def prepare_llm(camp: Campaign, proposers) -> None:
    """The llm proposer's spend carries over resumes, its bills go to runs/TAG/llm_calls.jsonl
    and its notices to the console; a cap it cannot apply is refused, and one cheap call
    checks that the server answers, all before Ray starts."""
    for p, _ in proposers:
        if p.name != "llm":
            continue
        if p.max_cost is not None and p.unpriced():
            raise CampaignError(
                f"--max-llm-cost cannot apply: litellm has no price for "
                f"{', '.join(p.unpriced())}, so every call would count $0. Give its prices with "
                "--llm-price MODEL=IN,OUT ($ per million prompt and completion tokens), or "
                "drop --max-llm-cost to run without a cap"
            )
        p.total_cost = camp.llm_spent()
        p.on_bill, p.say = camp.record_bill, camp.say
        if p.exhausted:
            raise CampaignError(
                f"{p.cap_text()} (this campaign's earlier runs spent it); raise --max-llm-cost "
                "to go on"
            )
        p.preflight()


CLEANUP_LIMIT_S = 60.0  # after a Ctrl-C, the longest the clean-up may take before we just exit


def exit_after(seconds: float = CLEANUP_LIMIT_S) -> None:
    """After a Ctrl-C: exit (130) in `seconds` if the clean-up (cancelling trials, Ray's own
    shutdown at exit) has not ended by then. A user who pressed Ctrl-C wants the prompt back;
    every finished trial is already an fsync'd ledger row, and a resume re-runs the rest."""

    def watchdog() -> None:
        time.sleep(seconds)
        print(
            f"clean-up still running after {seconds:g} s: exiting without waiting for it "
            "(the ledger holds every finished trial; resume re-runs the others)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(130)

    threading.Thread(target=watchdog, daemon=True, name="exit-after").start()


def _run(camp: Campaign, cfg: CampaignConfig) -> None:
    proposers = build_proposers(cfg, camp.repo)  # before Ray: a missing API key fails fast
    prepare_llm(camp, proposers)
    connect(cfg.cluster.address)
    plan = resolve(cfg)
    if cfg.trial.protocol == "autoresearch":  # the repo's budget, not ours (--budget refused)
        plan["budget"] = camp.protocol_budget()
    strategy = build_strategy(cfg, plan["workers"])
    camp.setup(
        plan["device_kind"], plan["budget"], plan["workers"], strategy.lines, strategy.settings()
    )
    for p, _ in proposers:  # knobs of the other device would be null changes
        if p.name == "mutate":
            p.for_device(plan["device_kind"])
    camp.say(
        f"campaign {cfg.tag}: {plan['workers']} workers ({plan['device_kind']}"
        f"{', ' + str(plan['threads']) + ' threads each' if plan['threads'] else ''}), "
        f"budget {camp.budget}, strategy {cfg.search.strategy}, proposer {cfg.search.proposer}, "
        f"branch {camp.branch} at {camp.incumbent[:10]}"
    )
    pool = WorkerPool(
        plan["workers"],
        gpus_per_trial=plan["gpus_per_trial"],
        cpus_per_trial=plan["cpus_per_trial"],
        accelerator_type=cfg.cluster.gpu_type,
        actor_args=dict(
            tag=cfg.tag,
            base_sha=camp.base_sha,
            base_bundle=gitops.bundle(camp.repo, camp.base_sha, None),
            dataset=cfg.trial.dataset,
            vocab_size=cfg.trial.vocab_size,
            device=cfg.trial.device if cfg.trial.device != "auto" else plan["device_kind"],
            threads=plan["threads"],
            sandbox=cfg.trial.sandbox,
            clone_root=cfg.cluster.clone_root,
            untrusted=any(p.name in ("llm", "queue") for p, _ in proposers),
        ),
        bundle_for=lambda sha: (
            b"" if sha == camp.base_sha else gitops.bundle(camp.repo, sha, camp.base_sha)
        ),
        trial_timeout=cfg.trial.timeout,
        follow=plan["follow"],
        say=camp.say,
    )
    pipeline = None
    busy = 0.0
    try:
        gpu_name = start_pool(camp, pool, cfg, plan)
        pipeline = start_pipeline(camp, proposers, cfg.search.proposals_ahead or plan["workers"])
        workers = WorkerCount(camp, pool, pipeline, fixed_ahead=bool(cfg.search.proposals_ahead))
        workers()
        Driver(camp, pool, pipeline, strategy, gpu_name=gpu_name, on_workers=workers).run()
    except KeyboardInterrupt:
        # The clean-up (cancel, stop the workers, Ray's own shutdown at exit) must not be cut
        # short by the next Ctrl-C into a traceback: it takes seconds; kill -9 still works.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        exit_after()
        camp.say(
            "interrupted: running trials are cancelled and will be re-run on resume "
            "(cleaning up; further Ctrl-C are ignored)"
        )
        pool.cancel_all()
    finally:
        if pipeline:
            pipeline.stop()
        busy = pool.busy_fraction()
        pool.shutdown()
    summarize(camp, busy)


def start_pool(camp: Campaign, pool: WorkerPool, cfg: CampaignConfig, plan: dict) -> str:
    """Start the workers that fit; all must report one GPU type. Returns its name."""
    infos = pool.start()
    names = sorted({i["gpu_name"] for i in infos})
    if len(names) > 1:
        raise CampaignError(
            f"workers run on different GPUs ({', '.join(names)}); pin one "
            "type with --gpu-type so every trial is comparable"
        )
    gpu_name = names[0] if names else ""
    pool.pin(gpu_name)
    if cfg.cluster.gpu_type and cfg.cluster.gpu_type not in gpu_name:
        raise CampaignError(f"--gpu-type {cfg.cluster.gpu_type} but workers report {gpu_name!r}")
    nodes = sorted({i["node"] for i in infos})
    held = ", ".join(sorted({i.get("confinement", "?") for i in infos}))
    camp.say(
        f"{len(infos)} workers ready on {len(nodes)} node(s)"
        f"{': ' + gpu_name if gpu_name else '; CPU trials share each machine'}"
        f"; trials confined by {held}"
        f"{'; following the cluster (--workers auto)' if plan['follow'] else ''}"
    )
    if pool.starting():
        camp.say(
            f"{pool.starting()} of {pool.target} workers wait for resources (the cluster "
            f"holds {pool.capacity()} now): their trials queue, and they join when it grows"
        )
    return gpu_name


def start_pipeline(camp: Campaign, proposers, ahead: int, inline: bool = False):
    """Proposals for every line, none repeating a source already tried."""
    seen = {
        source_hash(camp.source(r["commit_sha"]))
        for r in camp.rows
        if r.get("commit_sha") and r.get("kind") == "candidate"
    }
    seen |= {source_hash(camp.source(line.head)) for line in camp.lines}
    pipeline = ProposalPipeline(
        proposers, ahead, seed=camp.cfg.search.seed, inline=inline, on_change=camp.save_pending
    )
    contexts = {line.index: camp.context(line) for line in camp.lines}
    pipeline.start(contexts, seen, camp.load_pending())
    return pipeline


class WorkerCount:
    """Workers joined or left (queued ones placed, --workers auto following the cluster):
    record how many are asked for and ready, for `status`; size the pipeline to them."""

    def __init__(self, camp: Campaign, pool: WorkerPool, pipeline, fixed_ahead: bool):
        self.camp, self.pool, self.pipeline, self.fixed = camp, pool, pipeline, fixed_ahead
        self.last = (camp.workers, -1)

    def __call__(self) -> None:
        now = (self.pool.target, self.pool.ready())
        if now == self.last:
            return
        if now[0] != self.last[0] and not self.fixed:
            self.pipeline.resize(now[0])
        self.last = now
        config = self.camp.ledger.read_config() or {}
        self.camp.ledger.write_config({**config, "workers": now[0], "workers_ready": now[1]})


def summarize(camp: Campaign, busy: float = 0.0) -> None:
    rows = camp.rows
    ok = [r for r in rows if r.get("val_bpb") is not None and r["status"] in ("keep", "discard")]
    merged = [r for r in rows if r.get("merged")]
    base = [
        r["val_bpb"]
        for r in rows
        if r["kind"] == "baseline" and r["commit_sha"] == camp.base_sha and r["val_bpb"] is not None
    ]
    inc = camp.runs_of(camp.incumbent)
    rejected = sum(1 for r in rows if r["status"] == "invalid" and not r["commit_sha"])
    camp.say(
        f"done: {len(rows) - rejected} trials"
        f"{f' (and {rejected} rejected proposals)' if rejected else ''}, {len(merged)} merged; "
        "baseline "
        f"{statistics.fmean(base) if base else float('nan'):.4f} -> incumbent "
        f"{statistics.fmean(inc) if inc else float('nan'):.4f} at {camp.incumbent[:10]}; "
        f"noise {camp.noise() or float('nan'):.4f}; busy {busy:.0%}; "
        f"best single run {min((r['val_bpb'] for r in ok), default=float('nan')):.4f}. "
        f"Ledger: {camp.files.ledger}"
    )
