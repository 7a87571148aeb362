"""TrialActor: one per GPU (or per CPU share); turns a TrialSpec into a TrialResult.

It holds no campaign state the driver cannot rebuild: a node-local clone of the research
repo (made from a git bundle the driver sends once, so no shared filesystem is needed), the
prepared data, and nothing else. For each trial it fetches the candidate's commits, checks
out the exact sha in a fresh worktree, runs the referee there, returns the metrics, the GPU
name and the log, and removes the worktree.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import ray

from cluster.gitops import Clone
from cluster.records import TrialSpec
from trainer.results import TrialResult


class TrialActor:
    def __init__(
        self,
        tag: str,
        base_sha: str,
        dataset: str,
        vocab_size: int | None,
        device: str,
        threads: int | None,
        sandbox: str,
        clone_root: str | None = None,
        untrusted: bool = True,
    ):
        from trainer.prepare import cache_root

        self.tag, self.base_sha = tag, base_sha
        root = Path(clone_root) if clone_root else cache_root() / "clones"
        # One clone per campaign per Ray node, shared by that node's actors (file-locked).
        node = ray.get_runtime_context().get_node_id()[:12]
        self.clone = Clone(root / f"{tag}-{base_sha[:12]}" / f"{node}.git")
        self.dataset, self.vocab_size = dataset, vocab_size
        self.device, self.threads, self.sandbox = device, threads, sandbox
        self.untrusted = untrusted  # proposals written by an LLM or a person, not by mutate
        self.data: Path | None = None
        self.memory_limit_mb = self._memory_share()

    def _memory_share(self) -> float:
        """This trial's share of the node's RAM: one slot per GPU, or per CPU share."""
        from trainer.sandbox import memory_share_mb

        me = ray.get_runtime_context().get_node_id()
        res = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == me), {})
        slots = int(res.get("GPU", 0)) or max(1, int(res.get("CPU", 1)) // (self.threads or 1))
        return memory_share_mb(slots)

    def describe(self, base_bundle: bytes) -> dict:
        """Where this actor runs and on what: checked by the driver against the campaign.

        The clone is made here and re-checked per trial, not in __init__: a restarted actor
        (on another node, say) re-clones from the bundle its next call carries."""
        from trainer.confine_spec import (
            NO_CONFINEMENT,
            describe_confinement,
            resolve_confinement,
        )
        from trainer.prepare import prepare
        from trainer.referee import resolve_device

        confinement = resolve_confinement(self.sandbox)  # raises for an unavailable one
        if confinement == "none" and self.sandbox == "auto" and self.untrusted:
            raise RuntimeError(
                f"{socket.gethostname()} cannot confine trials ({describe_confinement()}), so "
                "it will not run proposals from llm or queue, which are untrusted code. "
                f"`--sandbox off` would run them with {NO_CONFINEMENT}"
            )
        self.clone.ensure(base_bundle)

        self.data = prepare(self.dataset, self.vocab_size)
        device = resolve_device(self.device)
        gpu = ""
        if device.startswith("cuda"):
            import torch

            gpu = torch.cuda.get_device_name()
        ctx = ray.get_runtime_context()
        return {
            "node": socket.gethostname(),
            "node_id": ctx.get_node_id(),
            "device": device,
            "gpu_name": gpu,
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "confinement": confinement,
        }

    def run(
        self, spec: TrialSpec, commits: bytes, base_bundle: bytes, hard_timeout: float | None = None
    ) -> tuple[TrialResult, str]:
        """Run one trial; returns its result and its log text. Never raises for the trial."""
        from trainer.budget import Budget
        from trainer.protocol import run_autoresearch_protocol
        from trainer.referee import TrialConfig, run_trial

        if self.data is None:
            self.describe(base_bundle)
        started = time.time()
        cancelled = ray.get_runtime_context().is_canceled
        with tempfile.TemporaryDirectory(prefix=f"ar-{spec.trial_id}-") as tmp:
            wt, log = Path(tmp) / "wt", Path(tmp) / "trial.log"
            t0 = time.monotonic()
            try:
                self.clone.ensure(base_bundle)
                if commits:
                    self.clone.fetch(commits, spec.commit_sha)
                self.clone.add_worktree(spec.commit_sha, wt)
                parents = self._parent_keys(spec)
            except Exception as e:  # a checkout problem is the infrastructure's, not the trial's
                return TrialResult(
                    status="lost",
                    error=f"checkout failed: {e}",
                    started=started,
                    ended=time.time(),
                    node=socket.gethostname(),
                ), ""
            checkout_s = time.monotonic() - t0
            try:
                if spec.protocol == "autoresearch":
                    result = run_autoresearch_protocol(
                        wt,
                        log,
                        timeout=hard_timeout,
                        threads=self.threads,
                        cancelled=cancelled,
                        sandbox=self.sandbox,
                        device=self.device,
                    )
                else:
                    cfg = TrialConfig(
                        data=self.data,
                        budget=Budget.parse(spec.budget),
                        seed=spec.seed,
                        device=self.device,
                        threads=self.threads,
                        sandbox=self.sandbox,
                        hard_timeout=hard_timeout,
                        memory_limit_mb=self.memory_limit_mb,
                        cache_parents=parents,
                        prestart=True,  # the next trial's process starts during scoring
                    )
                    result = run_trial(wt / spec.target, cfg, log, cancelled=cancelled)
                text = log.read_text(errors="replace") if log.exists() else ""
            finally:
                t1 = time.monotonic()
                self.clone.remove_worktree(wt)
        # What the actor itself added around the referee (dispatch and return: the driver's).
        result.extra["actor"] = {
            "checkout_s": round(checkout_s, 3),
            "cleanup_s": round(time.monotonic() - t1, 3),
            "started": started,
        }
        result.node = socket.gethostname()
        return result, text[-200_000:]

    def _parent_keys(self, spec: TrialSpec) -> tuple[str, ...]:
        """The compile-cache partition of the code this candidate was derived from: its
        parent's train.py (trainer/compile_cache.py says why a trial may read no other)."""
        from cluster.gitops import GitError, read_blob
        from trainer.compile_cache import source_key

        if not spec.parent_sha or spec.parent_sha == spec.commit_sha:
            return ()
        try:
            return (source_key(read_blob(self.clone.path, spec.parent_sha, spec.target)),)
        except GitError:
            return ()

    def ping(self) -> int:
        return os.getpid()


def actor_class(num_gpus: float, num_cpus: float, accelerator_type: str | None):
    """The remote actor class with this campaign's resource shape.

    max_restarts=-1 brings a dead actor back (a new process, same clone); max_task_retries=0
    because the driver, not Ray, decides to re-run a lost trial and records the loss.
    """
    opts = {"num_gpus": num_gpus, "num_cpus": num_cpus, "max_restarts": -1, "max_task_retries": 0}
    if accelerator_type:
        opts["accelerator_type"] = accelerator_type
    if not num_gpus:
        opts["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}
    return ray.remote(**opts)(TrialActor)
