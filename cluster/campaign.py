"""The campaign's state: its lines of search, the ledger, the in-flight journal, commits.

    autoresearch run --tag TAG [--workers N|auto] [--budget 300s] [--proposer mutate] ...

A Campaign is what the driver (cluster/loop.py) acts on and what survives it: the branches of
its lines (cluster/lines.py; the campaign branch `autoresearch/<tag>` for one line), every
trial in the ledger as it finishes, and the trials in flight in runs/<tag>/inflight.json. It
commits proposals on their own refs, records rows (one constructor: cluster/rows.py), and
moves a line's branch only by fast-forward to a commit the gate accepted. All state is
rebuilt from the ledger, the branches and the journal, so rerunning the same command after a
crash resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from cluster import resume
from cluster.config import (  # noqa: F401 (re-exported: where readers look)
    LOCKED,
    MAX_REQUEUES,
    CampaignConfig,
    CampaignError,
    check_tag,
    locked_diffs,
)
from cluster.gate import Gate, RowIndex, comparable
from cluster.gitops import GitError
from cluster.ledger import Ledger, append_spend, atomic_json, read_spend, spend_totals
from cluster.lines import Line, branches, island_branch  # noqa: F401 (re-export)
from cluster.proposers.base import ProposalContext
from cluster.records import Proposal, TrialResult, TrialSpec
from cluster.repo import GitRepo, Repo
from cluster.rows import TrialRow
from cluster.rundir import RunDir

log = logging.getLogger(__name__)


# The paired test waits for this many degrees of freedom in the noise of pairs. Student's t
# widens the gate for fewer, but one degree of freedom is two differences, and when they
# happen to agree (3% of the time within 4% of each other) the estimate is a few hundredths
# of the truth: the gate would then ask almost nothing of every candidate until the next merge.
PAIR_DOF_MIN = 3


class Campaign:
    def __init__(
        self,
        cfg: CampaignConfig,
        repo: Repo | None = None,
        ledger=None,
        say=None,
    ):
        """`repo` and `ledger` default to git at cfg.repo and runs/<tag>/ in it; the
        simulator passes a MemoryRepo and a MemoryLedger (then nothing is written)."""
        check_tag(cfg.tag)
        self.cfg = cfg
        self.git = repo or GitRepo(cfg.repo)
        self.repo = self.git.path  # the checkout, or None in memory
        if cfg.trial.protocol == "autoresearch" and cfg.trial.target != "train.py":
            raise CampaignError(
                f"--target {cfg.trial.target}: --protocol autoresearch runs `python train.py` "
                "at the repo's root, so the target is train.py (leave --target out)"
            )
        if self.repo is not None and not (self.repo / cfg.trial.target).exists():
            hint = "pass --target"
            if cfg.trial.protocol != "autoresearch" and (self.repo / "train.py").exists():
                hint = "an autoresearch repo (train.py at its root)? pass --protocol autoresearch"
            raise CampaignError(f"{cfg.trial.target} not found in {self.repo}; {hint}")
        if cfg.trial.protocol == "autoresearch" and cfg.trial.budget:
            from trainer.protocol import protocol_fixes

            raise CampaignError(f"--budget {protocol_fixes(self.repo or Path('.'), '--budget')}")
        self.files = None
        self.created = False
        if ledger is None:
            self.files = RunDir((cfg.runs_dir or self.repo / "runs") / cfg.tag)
            self.created = not self.files.path.exists()  # a failed start removes what it made
            self.files.path.mkdir(parents=True, exist_ok=True)
        self.run_dir = self.files.path if self.files else None
        self.ledger = ledger or Ledger(self.run_dir)
        self.main_branch = f"autoresearch/{cfg.tag}"
        self.gate = Gate(cfg.search.noise_multiple, cfg.search.confirm_multiple)
        self.rows: list[dict] = self.ledger.rows()
        self.used_ids = self.ledger.trial_ids()  # with a torn last line's, so none is reused
        self.inflight: dict[str, dict] = {}
        self.lines: list[Line] = []
        self.requeue: list[tuple[TrialSpec, dict | None]] = []
        self.moves: list[dict] = []  # line resets made by this driver
        self.round = 0
        self.budget = cfg.trial.budget or ""
        self.base_sha = ""
        self.t0 = time.monotonic()
        self._say = say
        self._sources: dict[str, str] = {}
        self._index = RowIndex()
        self._last_id: int | None = None
        self._pair_uses: dict[str, int] = {}  # a parent run's trial id -> candidates paired on it
        # Paired comparisons (cluster/gate.py): the Driver turns them on for a strategy that
        # judges pairs (`pairs = True`), unless a seed cannot be set or --no-pairing.
        self.pairing = False
        path = cfg.llm.program or (self.repo / "program.md" if self.repo else None)
        self.program = Path(path).read_text() if path and Path(path).exists() else ""

    # ------------------------------------------------------------------ reading

    @property
    def branch(self) -> str:
        return self.main_branch

    @property
    def incumbent(self) -> str:
        """The campaign branch's commit (with several lines, the strategy points it at one)."""
        sha = self.git.rev_parse(self.main_branch)
        assert sha, "campaign branch vanished"
        return sha

    def source(self, sha: str) -> str:
        if sha not in self._sources:
            self._sources[sha] = self.git.read_blob(sha, self.cfg.trial.target)
        return self._sources[sha]

    def incumbent_source(self) -> str:
        return self.source(self.incumbent)

    def index(self) -> RowIndex:
        """The gate's view of the rows, brought up to date (they only grow)."""
        return self._index.update(self.rows)

    def runs_by_commit(self) -> dict[str, list[float]]:
        return self.index().runs

    def runs_of(self, sha: str) -> list[float]:
        return self.index().runs.get(sha, [])

    def noise_dof(self) -> tuple[float | None, int]:
        return self.index().noise_dof()

    def noise(self) -> float | None:
        return self.noise_dof()[0]

    def pair_noise_dof(self) -> tuple[float | None, int]:
        return self.index().pair_noise_dof()

    def row(self, trial_id: str | None) -> dict | None:
        """The ledger row of a trial id (None: no such row yet)."""
        return self.index().by_id.get(trial_id or "")

    def partner(self, trial_id: str | None) -> dict | None:
        """The run a trial was paired with, if it finished with a score (a partner that was
        still queued or running when paired may since have crashed or been lost)."""
        r = self.row(trial_id)
        ok = r is not None and r["val_bpb"] is not None and r["status"] in ("keep", "discard")
        return r if ok else None

    def merged_from(self, sha: str) -> str | None:
        """The commit a merge moved from to `sha` (None: never merged: the start)."""
        return self.index().merged_from.get(sha)

    def pairing_allowed(self) -> bool:
        """A seed can be given (under protocol=autoresearch train.py fixes its own)."""
        return self.cfg.search.paired and self.cfg.trial.protocol != "autoresearch"

    def seed_runs(self, sha: str) -> list[dict]:
        """The commit's unselected successful runs (replicates, confirmations), oldest first:
        the runs a candidate on it may be paired with."""
        return list(self.index().seed_rows.get(sha, []))

    def pair_for(self, parent: str, avoid=()) -> dict | None:
        """The parent's run to pair a new trial with: an unselected run at a seed not in
        `avoid`, or a replicate of it still queued or running, the least used so far (ties:
        the lowest trial id), so candidates spread over the parent's seeds and the choice
        does not depend on which replicate finished first. The confirmation that merged the
        parent comes last: the gate picked it for its value, so a pair with it is biased
        (and does not count towards the noise of pairs). A partner that fails leaves its
        trial to the unpaired test."""
        if not self.pairing:
            return None
        runs = {r["trial_id"]: r for r in self.seed_runs(parent)}
        for tid, entry in self.inflight.items():
            spec = entry.get("spec") or {}
            if spec.get("kind") == "baseline" and spec.get("commit_sha") == parent:
                runs.setdefault(tid, {"trial_id": tid, "seed": spec.get("seed")})
        avoid = set(avoid)
        options = [r for r in runs.values() if r["seed"] is not None and r["seed"] not in avoid]
        if not options:
            return None
        best = min(
            options,
            key=lambda r: (
                bool(r.get("merged")),  # its merging confirmation only if nothing else
                self._pair_uses.get(r["trial_id"], 0),
                r["trial_id"],
            ),
        )
        self._pair_uses[best["trial_id"]] = self._pair_uses.get(best["trial_id"], 0) + 1
        return best

    def context(self, line: Line) -> ProposalContext:
        return ProposalContext(
            incumbent_sha=line.head,
            incumbent_source=self.source(line.head),
            target=self.cfg.trial.target,
            program=self.program,
            history=list(self.rows),
            in_flight=[
                (v.get("proposal") or {}).get("description") or "" for v in self.inflight.values()
            ],
            noise=self.noise(),
            round=self.round,
            island=line.index,
            protocol=self.cfg.trial.protocol,
        )

    def _next_id(self) -> str:
        if self._last_id is None:  # every id is made here after the ledger is read
            nums = [
                int(t[1:])
                for t in [*(r["trial_id"] for r in self.rows), *self.inflight, *self.used_ids]
                if t and t[0] == "t" and t[1:].isdigit()
            ]
            self._last_id = max(nums, default=0)
        self._last_id += 1
        return f"t{self._last_id:04d}"

    # ------------------------------------------------------------------ start / resume

    def setup(
        self,
        device_kind: str,
        budget: str,
        workers: int,
        lines: int = 1,
        strategy_settings: dict | None = None,
    ) -> None:
        """Create or resume the campaign: locked settings, the lines' branches, lost trials."""
        saved = self.ledger.read_config()
        self.budget, self.workers = budget, workers
        settings = {
            "budget": budget,
            "gpu_type": self.cfg.cluster.gpu_type,
            "dataset": self.cfg.trial.dataset,
            "vocab_size": self.cfg.trial.vocab_size,
            "target": self.cfg.trial.target,
            "protocol": self.cfg.trial.protocol,
            "device_kind": device_kind,
            **(strategy_settings or {}),
        }
        resume.check_rows(self.cfg.tag, self.rows, settings)
        if saved:
            locked_diffs(self.cfg.tag, saved, settings)
            self.base_sha = saved["base_sha"]
        else:  # a new campaign, or one whose config.json was lost: its ledger says where from
            head = resume.base_of(self.rows) or self.git.rev_parse(self.main_branch)
            if not head:
                head = self.git.rev_parse("HEAD")
                resume.refuse_uncommitted(self.git, self.cfg.trial.target, head)
            if not head:
                raise CampaignError(
                    f"{self.repo} has no commits; commit {self.cfg.trial.target} first"
                )
            self.base_sha = head
            self.ledger.write_config(
                {
                    **settings,
                    "base_sha": head,
                    "tag": self.cfg.tag,
                    "repo": str(self.repo),
                    "strategy": self.cfg.search.strategy,
                    "created": time.time(),
                }
            )
        self.ledger.write_config(
            {
                **(self.ledger.read_config() or {}),
                "workers": workers,
                "max_llm_cost": self.cfg.llm.max_cost,  # this driver's cap (status shows it)
            }
        )
        if not self.git.rev_parse(self.main_branch):
            self.git.set_ref(f"refs/heads/{self.main_branch}", self.base_sha)
        names = branches(self.cfg.tag, lines)
        resume.refuse_checked_out(self.git, [self.main_branch, *names])
        moves = resume.moves(self.files.islands_log) if self.files else []
        for i, name in enumerate(names):
            merges = sum(1 for r in self.rows if r.get("merged") and (r.get("island") or 0) == i)
            self.lines.append(
                Line(i, name, resume.head(self.git, name, self.base_sha), merges=merges)
            )
            want = resume.unfinished_merge(self.git, self.lines[-1], self.rows, moves, lines)
            if want:
                have = self.lines[-1].head
                self._move(self.lines[-1], want, have, merged=False)
                self.say(f"{name}: completed an interrupted merge {have[:10]} -> {want[:10]}")
        # Trials a killed driver left: running ones are recorded lost; useful ones run again.
        if self.files:
            heads = {line.head for line in self.lines}
            for spec, proposal, why in resume.lost(self.files.journal, self.rows):
                self.used_ids.add(spec.trial_id)
                if why:  # it was running; one only queued never ran, and is not a row
                    self.record(spec, proposal, TrialResult(status="lost", error=why))
                if spec.commit_sha in heads or spec.parent_sha in heads:
                    self.requeue.append((spec, proposal))
            atomic_json(self.files.journal, {})
        self.round = max((r.get("round") or 0 for r in self.rows), default=0)

    # ------------------------------------------------------------------ recording

    def paired_test(self, parent: str) -> bool:
        """Whether a paired run on `parent` is judged on its paired difference: the campaign
        pairs, the noise of pairs is measured (on PAIR_DOF_MIN degrees of freedom at least),
        and it asks a smaller gain than the unpaired test would (k x pair noise x t against
        k x noise x sqrt(1 + 1/m) x t, m = the parent's runs). It depends on the campaign's
        estimates, never on the run being judged."""
        pair_noise, pair_dof = self.pair_noise_dof()
        noise, dof = self.noise_dof()
        runs = self.runs_of(parent)
        if not (self.pairing and pair_noise and noise and runs and pair_dof >= PAIR_DOF_MIN):
            return False
        return self.gate.pair_threshold(pair_noise, 1.0, pair_dof) < self.gate.threshold(
            noise, len(runs), 1.0, dof
        )

    def draft(self, spec: TrialSpec, proposal: dict | None, result: TrialResult) -> TrialRow:
        """The row a finished trial makes, before the strategy's verdict sets its status.
        Its `incumbent_bpb` and `noise` are what it is judged against: the parent's run at
        its seed and the noise of pairs when paired (paired_test), else the parent's mean and
        the noise of a run (always for replicates)."""
        partner = self.partner(spec.paired_with)
        if (
            spec.kind != "baseline"
            and partner is not None
            and comparable(result.rng, partner.get("rng"))
            and self.paired_test(spec.parent_sha)
        ):
            return TrialRow.build(
                spec,
                proposal,
                result,
                noise=self.pair_noise_dof()[0],
                incumbent_bpb=partner["val_bpb"],
            )
        # The mean of the commit the trial was run against (async: maybe no longer the incumbent)
        inc = self.runs_of(spec.parent_sha) or self.runs_of(self.lines[spec.island or 0].head)
        return TrialRow.build(
            spec,
            proposal,
            result,
            noise=self.noise(),
            incumbent_bpb=sum(inc) / len(inc) if inc else None,
        )

    def append(self, row: TrialRow, log_text: str = "") -> dict:
        if log_text and self.files:
            self.files.logs.mkdir(exist_ok=True)
            self.files.log(row.trial_id).write_text(log_text)
            row.log_path = str(self.files.log(row.trial_id))
        d = row.to_dict()
        self.ledger.append(d)
        self.rows.append(d)
        tid = d["trial_id"]
        if self._last_id is not None and tid[1:].isdigit():  # a resumed trial keeps its id
            self._last_id = max(self._last_id, int(tid[1:]))
        return d

    def record(self, spec: TrialSpec, proposal: dict | None, result: TrialResult) -> dict:
        """A trial no strategy judges (lost, invalid), recorded with its result's status."""
        return self.append(self.draft(spec, proposal, result))

    def journal(self) -> None:
        if self.files:
            atomic_json(self.files.journal, self.inflight)

    def make_spec(
        self,
        kind: str,
        commit: str,
        parent: str,
        line: Line | int = 0,
        proposal: dict | None = None,
        queued: bool = False,
        pair: dict | None = None,
    ) -> TrialSpec:
        """A trial, journaled. With `pair` (a ledger row of the parent) it runs at that row's
        seed and records it as `paired_with`; else at a fresh seed."""
        tid = self._next_id()
        spec = TrialSpec(
            trial_id=tid,
            round=self.round,
            island=line if isinstance(line, int) else line.index,
            kind=kind,
            parent_sha=parent,
            commit_sha=commit,
            patch="",
            seed=pair["seed"] if pair else self.trial_seed(tid, commit),
            budget=self.budget,
            target=self.cfg.trial.target,
            protocol=self.cfg.trial.protocol,
            paired_with=pair["trial_id"] if pair else None,
        )
        self.inflight[tid] = {"spec": asdict(spec), "proposal": proposal}
        if queued:
            self.inflight[tid]["queued"] = True
        return spec

    def trial_seed(self, tid: str, commit: str) -> int | None:
        """A fresh seed per trial; under protocol=autoresearch the one the commit's train.py
        sets (the repo fixes it: replicates then differ only by run-to-run variation)."""
        if self.cfg.trial.protocol == "autoresearch":
            from trainer.protocol import repo_seed

            return repo_seed(self.source(commit))
        return self.cfg.search.seed * 100_003 + int(tid[1:])

    def protocol_budget(self) -> str:
        """The budget an autoresearch repo fixes, read at the campaign's start commit."""
        from trainer.protocol import budget_of

        sha = self.git.rev_parse(self.main_branch) or self.git.rev_parse("HEAD")

        def read(path: str) -> str | None:
            try:
                return self.git.read_blob(sha, path)
            except GitError:  # no such file at that commit
                return None

        return budget_of(read("prepare.py"), read(self.cfg.trial.target)) or "set by train.py"

    def dispatched(self, spec: TrialSpec) -> None:
        self.inflight[spec.trial_id].pop("queued", None)

    def dropped(self, spec: TrialSpec) -> dict:
        """A queued trial that will not run after all; returns its journal entry."""
        return self.inflight.pop(spec.trial_id, {})

    def proposal_of(self, spec: TrialSpec) -> dict | None:
        return self.inflight.get(spec.trial_id, {}).get("proposal")

    def commit(self, p: Proposal, line: Line) -> TrialSpec:
        """Commit a validated proposal for the line's incumbent on its own ref."""
        from cluster.patches import apply_patch

        assert p.parent_sha == line.head, "a proposal runs on the incumbent it was written for"
        source = apply_patch(self.source(line.head), p.patch, self.cfg.trial.target)
        sha = self.git.commit_file(
            p.parent_sha,
            self.cfg.trial.target,
            source,
            f"{p.description}\n\nproposer: {p.proposer}" + (f" ({p.model})" if p.model else ""),
        )
        self._sources[sha] = source
        pair = self.pair_for(p.parent_sha)
        spec = self.make_spec("candidate", sha, p.parent_sha, line, asdict(p), pair=pair)
        self.git.set_ref(f"refs/autoresearch/{self.cfg.tag}/{spec.trial_id}", sha)
        return spec

    def record_invalid(self, p: Proposal, line: Line) -> dict:
        spec = TrialSpec(
            trial_id=self._next_id(),
            round=self.round,
            island=line.index,
            kind="candidate",
            parent_sha=p.parent_sha,
            commit_sha="",
            patch="",
            seed=0,
            budget=self.budget,
            target=self.cfg.trial.target,
        )
        row = self.record(spec, asdict(p), TrialResult(status="invalid", error=p.error or ""))
        self.say(f"{spec.trial_id} invalid proposal ({p.proposer}): {(p.error or '')[:120]}")
        return row

    def start_round(self, n: int | None = None) -> int:
        self.round = self.round + 1 if n is None else n
        return self.round

    # ------------------------------------------------------------------ moving branches

    def _move(self, line: Line, new: str, old: str, merged: bool) -> None:
        self.git.set_ref(f"refs/heads/{line.branch}", new, old)
        line.moved(new, merged)

    def merge(self, line: Line, sha: str, row: dict) -> None:
        """Fast-forward the line to a commit the gate accepted."""
        old = line.head
        if not self.git.is_ancestor(old, sha):
            raise CampaignError(
                f"refusing to move {line.branch}: {sha[:10]} does not descend "
                f"from the incumbent {old[:10]}"
            )
        self._move(line, sha, old, merged=True)
        self.say(
            f"MERGED {row['trial_id']}: {line.branch} -> {sha[:10]} "
            f"(val_bpb {row['val_bpb']:.4f}) {row['description']}"
        )

    def reset(self, line: Line, source: Line, why: str, now: float) -> None:
        """A line copies another line's incumbent (an exploit step), logged for resume."""
        old, new = line.head, source.head
        self._move(line, new, old, merged=False)
        self.say(
            f"MIGRATE island {source.index} -> island {line.index}: {old[:10]} -> "
            f"{new[:10]} ({why})"
        )
        move = dict(time=now, island=line.index, source=source.index, old=old, new=new)
        self.moves.append(move)
        if self.files:
            with open(self.files.islands_log, "a") as f:
                f.write(json.dumps({**move, "why": why}) + "\n")

    def follow(self, sha: str, why: str) -> None:
        """Point the campaign branch at a line's incumbent (the best of several lines)."""
        have = self.incumbent
        if have != sha:
            self.git.set_ref(f"refs/heads/{self.main_branch}", sha, have)
            self.say(f"{self.main_branch} -> {sha[:10]} ({why})")

    def save_pending(self, ready: dict[int, list[Proposal]]) -> None:
        if self.files:
            atomic_json(self.files.proposals, {i: [asdict(p) for p in q] for i, q in ready.items()})

    def load_pending(self) -> dict[int, list[tuple[Proposal, ProposalContext]]]:
        if not self.files:
            return {}
        return resume.pending(self.files.proposals, self.source, self.cfg.trial.target)

    def record_bill(self, entry: dict) -> None:
        """A billed LLM answer, into runs/TAG/llm_calls.jsonl (the campaign's spend)."""
        if self.files:
            entry = {"time": round(time.time(), 3), "round": self.round, **entry}
            append_spend(self.files.llm_calls, entry)

    def llm_spent(self) -> float:
        """What this campaign's LLM answers cost so far, over every driver that ran it (a
        ledger from before the spend log: its rows' costs)."""
        if not self.files:
            return 0.0
        return spend_totals(read_spend(self.files.llm_calls) or self.rows)["total_cost"]

    def write_lines(self, state: list[dict]) -> None:
        if self.files:
            atomic_json(self.files.islands, state)

    def say(self, msg: str) -> None:
        if self._say is not None:
            self._say(msg)
            return
        elapsed = time.monotonic() - self.t0
        print(f"[{self.cfg.tag} {elapsed:6.0f}s] {msg}", flush=True)
