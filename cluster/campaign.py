"""The campaign driver: one incumbent on `autoresearch/<tag>`, N parallel trials, a noise gate.

    autoresearch run --tag TAG [--workers N|auto] [--budget 300s] [--proposer mutate] ...

The driver is the only writer of the campaign branch and of runs/<tag>/. It measures the noise
with incumbent replicates, asks the proposal pipeline for candidates, commits each on its own
ref, runs them on the worker pool, records every trial in the ledger as it finishes, and
fast-forwards the branch to a candidate only after a confirmation run agrees (cluster/gate.py).
All state is rebuilt from the ledger, the branch and the in-flight journal, so rerunning the
same command after a crash resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cluster import gitops
from cluster.gate import Gate
from cluster.ledger import Ledger
from cluster.proposers.base import ProposalContext
from cluster.records import Proposal, TrialResult, TrialSpec

log = logging.getLogger(__name__)

# Settings a resumed campaign must keep: changing them would compare apples with oranges.
LOCKED = ("budget", "gpu_type", "dataset", "vocab_size", "target", "protocol", "device_kind")
MAX_REQUEUES = 2


class CampaignError(RuntimeError):
    """A problem the user must fix; the message says what and how."""


@dataclass
class CampaignConfig:
    tag: str
    repo: Path = Path(".")
    target: str = "trainer/train.py"
    program: Path | None = None
    budget: str | None = None  # default: trainer.budget.default_budget (300s GPU, tokens CPU)
    workers: int | None = None  # None: every GPU (of gpu_type), or the CPU default
    gpu_type: str | None = None
    strategy: str = "rounds"
    proposer: str = "mutate"
    rounds: int | None = None
    trials: int | None = None
    hours: float | None = None
    address: str | None = None
    dataset: str = "builtin"
    vocab_size: int | None = None
    device: str = "auto"
    sandbox: str = "auto"
    noise_multiple: float = 2.0
    confirm_multiple: float = 2.0
    replicates: int | None = None  # incumbent runs before the first round (default: workers, >= 4)
    per_round: int | None = None  # candidates per round (default: workers)
    proposals_ahead: int | None = None
    seed: int = 0
    trial_timeout: float | None = None
    protocol: str = "referee"
    models: list[str] = field(default_factory=list)  # llm proposer: litellm model strings
    api_base: str | None = None
    max_llm_cost: float | None = None
    llm_timeout: float = 120.0
    runs_dir: Path | None = None
    clone_root: str | None = None
    islands: int = 4  # population: K islands, each with its own incumbent branch (>= 2)
    migrate_every: int | None = None  # population: exploit every M results (default 2 x workers)


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Campaign:
    def __init__(self, cfg: CampaignConfig):
        self.cfg = cfg
        self.repo = gitops.repo_root(cfg.repo)
        if not (self.repo / cfg.target).exists():
            raise CampaignError(f"{cfg.target} not found in {self.repo}; pass --target")
        self.run_dir = (cfg.runs_dir or self.repo / "runs") / cfg.tag
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.run_dir)
        self.journal = self.run_dir / "inflight.json"
        self.main_branch = f"autoresearch/{cfg.tag}"
        # population: the island whose incumbent/branch the methods below use (None: the
        # campaign branch); set by the strategy around each operation
        self.island: int | None = None
        self.gate = Gate(cfg.noise_multiple, cfg.confirm_multiple)
        self.rows: list[dict] = self.ledger.rows()
        self.inflight: dict[str, dict] = {}
        self.t0 = time.monotonic()
        self.started_trials = 0

    # ------------------------------------------------------------------ state

    @property
    def branch(self) -> str:
        if self.island is None:
            return self.main_branch
        return island_branch(self.cfg.tag, self.island)

    @property
    def incumbent(self) -> str:
        sha = gitops.rev_parse(self.repo, self.branch)
        assert sha, "campaign branch vanished"
        return sha

    def island_heads(self) -> dict[int, str]:
        """population: island -> its incumbent (empty for the other strategies)."""
        if self.cfg.strategy != "population":
            return {}
        heads = {}
        for i in range(self.cfg.islands):
            sha = gitops.rev_parse(self.repo, island_branch(self.cfg.tag, i))
            if sha:
                heads[i] = sha
        return heads

    def incumbent_source(self) -> str:
        return gitops.read_blob(self.repo, self.incumbent, self.cfg.target)

    def runs_of(self, sha: str) -> list[float]:
        return self.gate.runs_by_commit(self.rows).get(sha, [])

    def noise(self) -> float | None:
        return self.gate.noise(self.rows)

    def _next_id(self) -> str:
        nums = [
            int(t[1:])
            for t in [*(r["trial_id"] for r in self.rows), *self.inflight]
            if t and t[0] == "t" and t[1:].isdigit()
        ]
        return f"t{max(nums, default=0) + 1:04d}"

    def context(self) -> ProposalContext:
        program = ""
        path = self.cfg.program or self.repo / "program.md"
        if Path(path).exists():
            program = Path(path).read_text()
        return ProposalContext(
            incumbent_sha=self.incumbent,
            incumbent_source=self.incumbent_source(),
            target=self.cfg.target,
            program=program,
            history=list(self.rows),
            in_flight=[v.get("description") or "" for v in self.inflight.values()],
            noise=self.noise(),
            round=self.round,
            island=self.island or 0,
        )

    # ------------------------------------------------------------------ start / resume

    def setup(self, device_kind: str, budget: str, workers: int) -> None:
        """Create or resume the campaign: check locked settings, the branch, lost trials."""
        saved = self.ledger.read_config()
        self.workers = workers
        settings = {
            "budget": budget,
            "gpu_type": self.cfg.gpu_type,
            "dataset": self.cfg.dataset,
            "vocab_size": self.cfg.vocab_size,
            "target": self.cfg.target,
            "protocol": self.cfg.protocol,
            "device_kind": device_kind,
        }
        locked = LOCKED
        if self.cfg.strategy == "population":
            settings.update(islands=self.cfg.islands, migrate_every=self.cfg.migrate_every)
            locked = (*LOCKED, "strategy", "islands", "migrate_every")
            settings["strategy"] = "population"
        if saved:
            diffs = [
                f"{k}: campaign has {saved.get(k)!r}, this run asks {settings[k]!r}"
                for k in locked
                if saved.get(k) != settings[k]
            ]
            if diffs:
                raise CampaignError(
                    f"campaign {self.cfg.tag} was started with other settings, and its results "
                    "would not be comparable:\n  "
                    + "\n  ".join(diffs)
                    + "\nRerun with the original settings, or start a new --tag."
                )
            self.base_sha = saved["base_sha"]
        else:
            head = gitops.rev_parse(self.repo, self.branch) or gitops.rev_parse(self.repo, "HEAD")
            if not head:
                raise CampaignError(f"{self.repo} has no commits; commit {self.cfg.target} first")
            self.base_sha = head
            self.ledger.write_config(
                {
                    **settings,
                    "base_sha": head,
                    "tag": self.cfg.tag,
                    "repo": str(self.repo),
                    "strategy": self.cfg.strategy,
                    "created": time.time(),
                }
            )
        self.ledger.write_config({**(self.ledger.read_config() or {}), "workers": self.workers})
        if not gitops.rev_parse(self.repo, self.branch):
            gitops.set_ref(self.repo, f"refs/heads/{self.branch}", self.base_sha)
        if self.branch in [
            b.removeprefix("refs/heads/") for b in gitops.checked_out_branches(self.repo)
        ]:
            raise CampaignError(
                f"{self.branch} is checked out in a worktree; the driver moves "
                "it, so check out another branch first (git switch -)"
            )
        if self.cfg.strategy != "population":  # islands: their branches are the state
            self._finish_interrupted_merge()
        self._recover_inflight()
        done = [r for r in self.rows if r.get("kind") == "candidate"]
        self.round = max((r.get("round") or 0 for r in self.rows), default=0)
        self.prior_candidates = len(done)

    def _finish_interrupted_merge(self) -> None:
        merged = [r for r in self.rows if r.get("merged")]
        if not merged:
            return
        want, have = merged[-1]["commit_sha"], self.incumbent
        if want != have:
            if not gitops.is_ancestor(self.repo, have, want):
                raise CampaignError(
                    f"{self.branch} is at {have[:10]}, which the ledger never "
                    f"merged (it expects {want[:10]}); was it moved by hand?"
                )
            gitops.set_ref(self.repo, f"refs/heads/{self.branch}", want, have)
            log.warning("completed an interrupted merge: %s -> %s", have[:10], want[:10])

    def _recover_inflight(self) -> None:
        """Trials running when a previous driver died: recorded `lost`, then run again."""
        self.requeue: list[TrialSpec] = []
        if not self.journal.exists():
            return
        recorded = {r["trial_id"] for r in self.rows}
        for tid, entry in json.loads(self.journal.read_text()).items():
            if tid in recorded:
                continue
            spec = TrialSpec(**entry["spec"])
            self.record(
                spec,
                entry.get("proposal"),
                TrialResult(
                    status="lost",
                    error="the driver stopped while this trial was "
                    + ("waiting for a worker" if entry.get("queued") else "running"),
                ),
            )
            heads = {self.incumbent, *self.island_heads().values()}
            if spec.commit_sha in heads or spec.parent_sha in heads:
                self.requeue.append(spec)
        _atomic_json(self.journal, {})

    # ------------------------------------------------------------------ recording

    def record(
        self,
        spec: TrialSpec,
        proposal: dict | None,
        result: TrialResult,
        status: str | None = None,
        merged: bool = False,
        log_text: str = "",
    ) -> dict:
        log_path = ""
        if log_text:
            logs = self.run_dir / "logs"
            logs.mkdir(exist_ok=True)
            (logs / f"{spec.trial_id}.log").write_text(log_text)
            log_path = str(logs / f"{spec.trial_id}.log")
        # The mean of the commit the trial was run against (async: maybe no longer the incumbent).
        inc = self.runs_of(spec.parent_sha) or self.runs_of(self.incumbent)
        p = proposal or {}
        row = {
            "trial_id": spec.trial_id,
            "round": spec.round,
            "island": spec.island,
            "kind": spec.kind,
            "parent_sha": spec.parent_sha,
            "commit_sha": spec.commit_sha,
            "proposer": p.get("proposer"),
            "model": p.get("model"),
            "prompt_tokens": p.get("prompt_tokens"),
            "completion_tokens": p.get("completion_tokens"),
            "cost": p.get("cost"),
            "description": p.get("description") or _describe(spec),
            "status": status or ("discard" if result.status == "ok" else result.status),
            "val_bpb": result.val_bpb,
            "seed": spec.seed,
            "budget": spec.budget,
            "training_seconds": result.training_seconds,
            "total_seconds": result.total_seconds,
            "num_steps": result.num_steps,
            "total_tokens_M": result.total_tokens_M,
            "num_params_M": result.num_params_M,
            "peak_vram_mb": result.peak_vram_mb,
            "mfu": result.mfu,
            "gpu_name": result.gpu_name,
            "node": result.node,
            "started": result.started,
            "ended": result.ended or time.time(),
            "error": result.error,
            "log_path": log_path or result.log_path,
            "self_reported": result.self_reported,
            "confinement": result.confinement,
            "merged": merged,
            "noise": self.noise(),
            "incumbent_bpb": sum(inc) / len(inc) if inc else None,
            "dispatched": result.extra.get("dispatched"),  # with started/ended: overheads
            "recorded": time.time(),
        }
        self.ledger.append(row)
        self.rows.append(row)
        return row

    def _journal(self) -> None:
        _atomic_json(self.journal, self.inflight)

    def make_spec(
        self, kind: str, commit: str, parent: str, island: int | None = None
    ) -> TrialSpec:
        tid = self._next_id()
        n = int(tid[1:])
        spec = TrialSpec(
            trial_id=tid,
            round=self.round,
            island=island if island is not None else (self.island or 0),
            kind=kind,
            parent_sha=parent,
            commit_sha=commit,
            patch="",
            seed=self.cfg.seed * 100_003 + n,
            budget=self.budget,
            target=self.cfg.target,
            protocol=self.cfg.protocol,
        )
        self.inflight[tid] = {"spec": asdict(spec), "proposal": None}
        return spec

    def commit_proposal(self, p: Proposal) -> TrialSpec:
        from cluster.patches import apply_patch

        source = apply_patch(self.incumbent_source(), p.patch, self.cfg.target)
        sha = gitops.commit_file(
            self.repo,
            p.parent_sha,
            self.cfg.target,
            source,
            f"{p.description}\n\nproposer: {p.proposer}" + (f" ({p.model})" if p.model else ""),
        )
        spec = self.make_spec("candidate", sha, p.parent_sha)
        gitops.set_ref(self.repo, f"refs/autoresearch/{self.cfg.tag}/{spec.trial_id}", sha)
        self.inflight[spec.trial_id]["proposal"] = asdict(p)
        return spec

    def record_invalid(self, p: Proposal) -> None:
        spec = TrialSpec(
            trial_id=self._next_id(),
            round=self.round,
            island=self.island or 0,
            kind="candidate",
            parent_sha=p.parent_sha,
            commit_sha="",
            patch="",
            seed=0,
            budget=self.budget,
            target=self.cfg.target,
        )
        self.record(spec, asdict(p), TrialResult(status="invalid", error=p.error or ""))
        self._say(f"{spec.trial_id} invalid proposal ({p.proposer}): {(p.error or '')[:120]}")

    def _say(self, msg: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{self.cfg.tag} {elapsed:6.0f}s] {msg}", flush=True)


def island_branch(tag: str, i: int) -> str:
    """`autoresearch/TAG-island-i`: git cannot hold both `a/b` and `a/b/c`."""
    return f"autoresearch/{tag}-island-{i}"


def _describe(spec: TrialSpec) -> str:
    if spec.kind == "baseline":
        return f"incumbent replicate (seed {spec.seed})"
    if spec.kind == "confirm":
        return f"confirmation run (seed {spec.seed})"
    return ""


def config_from_dict(d: dict) -> CampaignConfig:
    names = {f.name for f in fields(CampaignConfig)}
    return CampaignConfig(**{k: v for k, v in d.items() if k in names})
