"""The worker pool: starts TrialActors, keeps them busy, and turns Ray failures into results.

The driver hands the pool TrialSpecs; the pool sends each to a free actor with the git bundle
of its commit, waits with `ray.wait`, and yields (spec, result, log) as trials finish. An actor
that dies mid-trial (killed process, lost node) yields a `lost` result; Ray restarts the
actor and the driver decides whether to re-run the trial.

The pool is elastic. A worker joins once its actor is placed and prepared, so `--workers N`
on fewer GPUs than N starts with the ones that fit and queues the rest of the work: the other
actors stay pending in Ray (an autoscaler sees their demand) and join when GPUs appear. With
`follow` (`--workers auto` on GPUs) the pool re-reads the cluster's GPUs every
FOLLOW_SECONDS and adds actors as it grows or retires surplus ones as it shrinks (not yet
placed first, then those whose node died, then idle ones; a busy one finishes its trial).
Only GPUs of the campaign's type count: --gpu-type, or the type of the first workers' nodes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.trial_actor import actor_class
from cluster.records import TrialResult, TrialSpec

log = logging.getLogger(__name__)

FOLLOW_SECONDS = 10.0  # how often `--workers auto` re-reads the cluster's GPUs
FOLLOW_PAUSE = 300.0  # after a worker had to be dropped, before following adds more
START_GRACE = 30.0  # after one worker is ready, how long start() waits for the others that fit
# A worker's states. Its GPU counts as the campaign's from ready to retired.
STARTING, FREE, BUSY, RECOVERING, RETIRED = "starting", "free", "busy", "recovering", "retired"


@dataclass
class WorkerInfo:
    handle: object
    index: int
    info: dict = field(default_factory=dict)
    busy_seconds: float = 0.0
    state: str = STARTING
    retire: bool = False  # busy when it became surplus: retired when its trial ends
    ready_at: float | None = None
    retired_at: float | None = None


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


def accelerator_types(node_ids: set[str] | None = None) -> set[str]:
    """The GPU types Ray labels the live nodes with (`accelerator_type:NAME`), of some nodes."""
    return {
        k.split(":", 1)[1]
        for n in ray.nodes()
        if n.get("Alive") and (node_ids is None or n.get("NodeID") in node_ids)
        for k in n.get("Resources", {})
        if k.startswith("accelerator_type:")
    }


def check_gpu_type(gpu_type: str) -> None:
    have = sorted(accelerator_types())
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
        follow: bool = False,
        say: Callable[[str], None] | None = None,
    ):
        self.cls = actor_class(gpus_per_trial, cpus_per_trial, accelerator_type)
        self.gpus_per_trial, self.cpus_per_trial = gpus_per_trial, cpus_per_trial
        self.accelerator_type = accelerator_type
        self.base = ray.put(actor_args.pop("base_bundle"))  # held here: every call passes it
        self.actor_args = actor_args
        self.target = n  # workers wanted: --workers N, or the cluster's GPUs when following
        self.follow, self.say = follow, say or (lambda msg: log.info(msg))
        self.follow_after = 0.0  # monotonic time before which following is paused
        self.workers: list[WorkerInfo] = []
        self.free: list[int] = []
        self.joining: dict = {}  # ObjectRef of describe() -> index of a worker not ready yet
        self.pending: dict = {}  # ObjectRef -> (worker index, spec, t_dispatch, wall time)
        self.pings: dict = {}  # ObjectRef of a ping -> index of a worker whose actor died
        self.bundle_for = bundle_for
        self.trial_timeout = trial_timeout
        self.gpu_name: str | None = None  # the first workers' GPU (pin)
        self.followed = time.monotonic()
        self._spawn(n)

    # ------------------------------------------------------------------ membership

    def _spawn(self, k: int) -> None:
        for _ in range(k):
            w = WorkerInfo(self.cls.remote(**self.actor_args), len(self.workers))
            self.workers.append(w)
            self.joining[w.handle.describe.remote(self.base)] = w.index

    def capacity(self) -> int:
        """Trial actors the cluster's resources could hold at once."""
        fits = []
        if self.gpus_per_trial:
            fits.append(cluster_gpus(self.accelerator_type) / self.gpus_per_trial)
        if self.cpus_per_trial:
            fits.append(ray.cluster_resources().get("CPU", 0) / self.cpus_per_trial)
        return int(min(fits)) if fits else self.target

    def start(self, timeout: float = 600) -> list[dict]:
        """Wait until the workers that fit in the cluster are placed and prepared.

        Returns the ready workers' descriptions. Workers beyond the cluster's capacity stay
        pending (`starting()`) and join later; a worker whose start fails raises
        ResourceError."""
        want = max(1, min(self.target, self.capacity()))
        deadline = time.monotonic() + timeout
        first = None
        while self.joining and self.ready() < want:
            now = time.monotonic()
            if now >= deadline or (first and now - first >= START_GRACE and self.ready()):
                break
            until = min(deadline, first + START_GRACE) if first else deadline
            ready, _ = ray.wait(list(self.joining), num_returns=1, timeout=until - now)
            self._joined(ready, strict=True)
            if self.ready() and first is None:
                first = time.monotonic()
        if not self.ready():
            raise ResourceError(
                f"none of {self.target} trial workers started within {timeout:.0f}s: "
                "the cluster may lack the GPUs/CPUs asked for (`ray status`), or "
                "`autoresearch prepare` is slow on a node"
            )
        return [w.info for w in self.workers if w.state in (FREE, BUSY)]

    def _joined(self, ready: list, strict: bool = False) -> None:
        for ref in [r for r in ready if r in self.joining]:
            i = self.joining.pop(ref)
            w = self.workers[i]
            try:
                info = ray.get(ref)
            except RayActorError:  # died while starting (its node went): Ray restarts it
                if w.state != RETIRED:
                    self.joining[w.handle.describe.remote(self.base)] = i
                continue
            except RayTaskError as e:
                if strict:
                    raise ResourceError(f"a trial worker failed to start: {_first(e)}") from e
                self._drop(w, f"failed to start: {_first(e)}")
                continue
            if w.state == RETIRED:
                continue
            if self.gpu_name is not None and info.get("gpu_name", "") != self.gpu_name:
                have = info.get("gpu_name") or "no GPU"
                self._drop(w, f"on {info.get('node')} has {have}, not {self.gpu_name or 'cpu'}")
                continue
            w.info, w.state, w.ready_at = info, FREE, time.monotonic()
            self.free.append(i)
            if not strict:
                self.say(f"worker {i} joined on {info.get('node')}: {self.ready()} ready")

    def pin(self, gpu_name: str) -> None:
        """The campaign's GPU (the first workers'): a worker that joins on another is dropped.
        Following with no --gpu-type: count and place only GPUs of the ready workers' type
        (Ray labels GPU nodes accelerator_type:NAME), so a node of another type that joins the
        cluster neither counts nor takes a worker that would be dropped for its GPU."""
        self.gpu_name = gpu_name
        if not self.follow or self.accelerator_type:
            return
        types = accelerator_types(
            {w.info.get("node_id") for w in self.workers if w.state in (FREE, BUSY)}
        )
        if len(types) == 1:
            self.accelerator_type = types.pop()
            self.cls = actor_class(self.gpus_per_trial, self.cpus_per_trial, self.accelerator_type)

    def _drop(self, w: WorkerInfo, why: str) -> None:
        """A worker that joined wrong is retired; following pauses so it is not re-made at once."""
        self.say(f"worker {w.index} {why}; dropped")
        self._retire(w)
        if self.follow:
            self.follow_after = time.monotonic() + FOLLOW_PAUSE

    def _retire(self, w: WorkerInfo) -> None:
        if w.state == RETIRED:
            return
        if w.index in self.free:
            self.free.remove(w.index)
        for table in (self.joining, self.pings):  # nothing more to wait for from it
            for ref in [r for r, i in table.items() if i == w.index]:
                del table[ref]
        w.state, w.retired_at = RETIRED, time.monotonic()
        ray.kill(w.handle)

    def live(self) -> list[WorkerInfo]:
        return [w for w in self.workers if w.state != RETIRED and not w.retire]

    def _follow(self) -> None:
        """--workers auto: one worker per GPU of the campaign's type in the cluster now."""
        now = time.monotonic()
        if not self.follow or now - self.followed < FOLLOW_SECONDS or now < self.follow_after:
            return
        self.followed = now
        want = max(1, self.capacity())
        live = self.live()
        if want == len(live):
            return
        self.say(f"the cluster now has {want} GPU(s) for trials: {len(live)} -> {want} workers")
        self.target = want
        if want > len(live):
            self._spawn(want - len(live))
            return
        order = {STARTING: 0, RECOVERING: 1, FREE: 2, BUSY: 3}
        for w in sorted(live, key=lambda w: order[w.state])[: len(live) - want]:
            if w.state == BUSY:
                w.retire = True
                continue
            self._retire(w)

    # ------------------------------------------------------------------ counts

    def ready(self) -> int:
        return sum(1 for w in self.workers if w.state in (FREE, BUSY))

    def idle(self) -> int:
        return len(self.free)

    def busy(self) -> int:
        return len(self.pending)

    def recovering(self) -> int:
        return len(self.pings)

    def starting(self) -> int:
        return len(self.joining)

    # ------------------------------------------------------------------ trials

    def submit(self, spec: TrialSpec) -> None:
        i = self.free.pop(0)
        w = self.workers[i]
        w.state = BUSY
        commits = self.bundle_for(spec.commit_sha)
        ref = w.handle.run.remote(spec, commits, self.base, self.trial_timeout)
        self.pending[ref] = (i, spec, time.monotonic(), time.time())

    def _release(self, i: int) -> None:
        w = self.workers[i]
        if w.retire:
            self._retire(w)
        else:
            w.state = FREE
            self.free.append(i)

    def _check_pings(self, ready: list) -> None:
        """Workers whose actor died come back once Ray has restarted them (maybe elsewhere)."""
        for ref in [r for r in ready if r in self.pings]:
            i = self.pings.pop(ref)
            try:
                ray.get(ref)
                self._release(i)
            except RayActorError:  # not back yet (no capacity, node still dead): ask again
                if self.workers[i].state != RETIRED:
                    self.pings[self.workers[i].handle.ping.remote()] = i

    def _lost(self, i: int) -> None:
        """Do not hand this worker more work until its actor answers again."""
        w = self.workers[i]
        if w.retire:
            self._retire(w)
            return
        w.state = RECOVERING
        self.pings[w.handle.ping.remote()] = i

    def results(self, timeout: float) -> Iterator[tuple[TrialSpec, TrialResult, str, int]]:
        """Trials that finished within `timeout` seconds: (spec, result, log, worker index).

        Also where workers join, come back, or (following the cluster) are added or retired."""
        self._follow()
        refs = list(self.pending) + list(self.pings) + list(self.joining)
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        # Collect everything else already done too, without waiting.
        if ready:
            more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ready = list(dict.fromkeys(ready + more))
        self._joined(ready)
        self._check_pings(ready)
        for ref in [r for r in ready if r in self.pending]:
            i, spec, t0, dispatched = self.pending.pop(ref)
            self.workers[i].busy_seconds += time.monotonic() - t0
            try:
                result, text = ray.get(ref)
                self._release(i)
            except RayActorError as e:
                self._lost(i)
                result, text = (
                    TrialResult(
                        status="lost", error=f"worker died: {_first(e)}", ended=time.time()
                    ),
                    "",
                )
            except RayTaskError as e:  # a bug on our side of the actor, not the candidate's
                self._release(i)
                result, text = (
                    TrialResult(
                        status="lost", error=f"worker error: {_first(e)}", ended=time.time()
                    ),
                    "",
                )
            result.extra["dispatched"] = dispatched
            yield spec, result, text, i

    def busy_fraction(self) -> float:
        """Time in trials over the time workers were ready (joined until retired)."""
        now = time.monotonic()
        held = sum(
            (w.retired_at or now) - w.ready_at for w in self.workers if w.ready_at is not None
        )
        running = sum(now - p[2] for p in self.pending.values())
        return (sum(w.busy_seconds for w in self.workers) + running) / held if held else 0.0

    def cancel_all(self) -> None:
        for ref in list(self.pending):
            ray.cancel(ref)

    def shutdown(self) -> None:
        for w in self.workers:
            if w.state != RETIRED:
                ray.kill(w.handle)


def _first(e: Exception) -> str:
    """The cause of a worker's error, not Ray's "ray::TrialActor.describe() (pid=...)" line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and str(cause).strip():
        return f"{type(cause).__name__}: {str(cause).strip()}"[:400]
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def default_cpu_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
