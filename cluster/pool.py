"""The worker pool: starts TrialActors, keeps them busy, and turns Ray failures into results.

The driver hands the pool TrialSpecs; the pool sends each to a free actor with the git bundle
of its commit, waits with `ray.wait`, and yields (spec, result, log) as trials finish. An actor
that dies mid-trial (killed process, lost node) yields a `lost` result; Ray restarts the
actor and the driver decides whether to re-run the trial.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.trial_actor import actor_class
from cluster.records import TrialResult, TrialSpec

log = logging.getLogger(__name__)


@dataclass
class WorkerInfo:
    handle: object
    index: int
    info: dict = field(default_factory=dict)
    busy_seconds: float = 0.0


class ResourceError(RuntimeError):
    pass


def cluster_gpus(gpu_type: str | None) -> int:
    """GPUs the running cluster has (of `gpu_type`, when given)."""
    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        if gpu_type and f"accelerator_type:{gpu_type}" not in res:
            continue
        total += int(res.get("GPU", 0))
    return total


def check_gpu_type(gpu_type: str) -> None:
    have = sorted(
        {
            k.split(":", 1)[1]
            for n in ray.nodes()
            if n.get("Alive")
            for k in n.get("Resources", {})
            if k.startswith("accelerator_type:")
        }
    )
    if gpu_type not in have:
        raise ResourceError(
            f"no GPU of type {gpu_type} in the cluster; it has "
            f"{', '.join(have) or 'no typed GPUs'} (`ray status` lists them). "
            "Pick one of those with --gpu-type, or add nodes of that type."
        )


class WorkerPool:
    def __init__(
        self,
        n: int,
        *,
        gpus_per_trial: float,
        cpus_per_trial: float,
        accelerator_type: str | None,
        actor_args: dict,
        bundle_for: Callable[[str], bytes],
        trial_timeout: float | None,
    ):
        cls = actor_class(gpus_per_trial, cpus_per_trial, accelerator_type)
        self.base = ray.put(actor_args.pop("base_bundle"))  # held here: every call passes it
        self.workers = [WorkerInfo(cls.remote(**actor_args), i) for i in range(n)]
        self.free = list(range(n))
        self.pending: dict = {}  # ObjectRef -> (worker index, spec, t_dispatch, wall time)
        self.pings: dict = {}  # ObjectRef of a ping -> index of a worker whose actor died
        self.bundle_for = bundle_for
        self.trial_timeout = trial_timeout
        self.started = time.monotonic()

    def describe(self, timeout: float = 600) -> list[dict]:
        """Wait for every actor to be placed and prepared; returns their descriptions."""
        refs = [w.handle.describe.remote(self.base) for w in self.workers]
        try:
            infos = ray.get(refs, timeout=timeout)
        except GetTimeoutError as e:
            raise ResourceError(
                f"{len(self.workers)} trial workers did not all start within {timeout:.0f}s: "
                "the cluster may lack the GPUs/CPUs asked for (`ray status`), or "
                "`autoresearch prepare` is slow on a node"
            ) from e
        for w, info in zip(self.workers, infos, strict=True):
            w.info = info
        return infos

    def idle(self) -> int:
        return len(self.free)

    def busy(self) -> int:
        return len(self.pending)

    def submit(self, spec: TrialSpec) -> None:
        i = self.free.pop(0)
        commits = self.bundle_for(spec.commit_sha)
        ref = self.workers[i].handle.run.remote(spec, commits, self.base, self.trial_timeout)
        self.pending[ref] = (i, spec, time.monotonic(), time.time())

    def recovering(self) -> int:
        return len(self.pings)

    def _check_pings(self, ready: list) -> None:
        """Workers whose actor died come back once Ray has restarted them (maybe elsewhere)."""
        for ref in [r for r in ready if r in self.pings]:
            i = self.pings.pop(ref)
            try:
                ray.get(ref)
                self.free.append(i)
            except RayActorError:  # not back yet (no capacity, node still dead): ask again
                self.pings[self.workers[i].handle.ping.remote()] = i

    def results(self, timeout: float) -> Iterator[tuple[TrialSpec, TrialResult, str, int]]:
        """Trials that finished within `timeout` seconds: (spec, result, log, worker index)."""
        refs = list(self.pending) + list(self.pings)
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        # Collect everything else already done too, without waiting.
        if ready:
            more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ready = list(dict.fromkeys(ready + more))
        self._check_pings(ready)
        for ref in [r for r in ready if r in self.pending]:
            i, spec, t0, dispatched = self.pending.pop(ref)
            self.workers[i].busy_seconds += time.monotonic() - t0
            try:
                result, text = ray.get(ref)
                self.free.append(i)
            except RayActorError as e:
                # Do not hand this worker more work until its actor answers again.
                self.pings[self.workers[i].handle.ping.remote()] = i
                result, text = (
                    TrialResult(
                        status="lost", error=f"worker died: {_first(e)}", ended=time.time()
                    ),
                    "",
                )
            except RayTaskError as e:  # a bug on our side of the actor, not the candidate's
                self.free.append(i)
                result, text = (
                    TrialResult(
                        status="lost", error=f"worker error: {_first(e)}", ended=time.time()
                    ),
                    "",
                )
            result.extra["dispatched"] = dispatched
            yield spec, result, text, i

    def busy_fraction(self) -> float:
        wall = (time.monotonic() - self.started) * max(1, len(self.workers))
        running = sum(time.monotonic() - p[2] for p in self.pending.values())
        return (sum(w.busy_seconds for w in self.workers) + running) / wall if wall else 0.0

    def cancel_all(self) -> None:
        for ref in list(self.pending):
            ray.cancel(ref)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w.handle)


def _first(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def default_cpu_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
