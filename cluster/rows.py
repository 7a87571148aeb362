"""One ledger row, typed: the schema of runs/<tag>/trials.jsonl in one place.

`TrialRow` is the row the driver appends for every trial (baselines, candidates,
confirmations, failures). Its fields, in order, are the ledger's columns: cluster.ledger,
cluster.export (dtypes and column order) and results.tsv derive theirs from it.

    row = TrialRow.build(spec, asdict(proposal), result, merged=True, noise=0.0007)
    ledger.append(row)                     # row.to_dict() is what lands in trials.jsonl
    row == TrialRow.from_dict(ledger.rows()[-1])

Status and Kind are str enums: `Status.KEEP == "keep"`, `json.dumps` writes "keep", and old
code that compares rows' plain strings keeps working.
"""

from __future__ import annotations

import time
import typing
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

if typing.TYPE_CHECKING:
    from cluster.records import TrialResult, TrialSpec


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value: Any, what: str = "ledger row") -> Any:
        """The member for `value` (a member or its string); ValueError naming the allowed ones."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            name = cls.__name__.lower()
            raise ValueError(f"{what} {name} {value!r} is not one of {allowed}") from None


class Status(_StrEnum):
    """A trial's outcome. keep/discard/crash are autoresearch's; the rest say why no metric."""

    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    LOST = "lost"


class Kind(_StrEnum):
    """Incumbent replicates (noise), candidates, and confirmation reruns."""

    BASELINE = "baseline"
    CANDIDATE = "candidate"
    CONFIRM = "confirm"


# Statuses without a usable metric: such rows are never ranked.
FAILED = (Status.CRASH, Status.TIMEOUT, Status.INVALID, Status.LOST)


@dataclass(kw_only=True)
class TrialRow:
    """One trial as the ledger holds it. Any field but trial_id, kind and status may be None."""

    trial_id: str
    round: int | None = None
    island: int | None = None
    kind: Kind
    parent_sha: str | None = None
    commit_sha: str | None = None
    proposer: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    description: str | None = None
    status: Status
    val_bpb: float | None = None
    seed: int | None = None
    paired_with: str | None = None  # trial id of the parent's run at the same seed (CRN)
    rng: str | None = None  # digest of the random numbers train.py drew (gate.comparable)
    budget: str | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    num_steps: int | None = None
    total_tokens_M: float | None = None
    num_params_M: float | None = None
    peak_vram_mb: float | None = None
    mfu: float | None = None
    gpu_name: str | None = None
    node: str | None = None
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    log_path: str | None = None
    self_reported: bool | None = None  # protocol=autoresearch: the metric came from train.py
    confinement: str | None = None  # what held the trial: namespaces, landlock or none
    merged: bool = False  # the campaign branch fast-forwarded to this commit because of this row
    noise: float | None = None  # the noise estimate (std of val_bpb) when the row was decided
    incumbent_bpb: float | None = None  # mean val_bpb of the parent it ran against, then
    dispatched: float | None = None  # when the driver sent it (with started/ended: overheads)
    recorded: float | None = None  # when the driver wrote this row

    def __setattr__(self, name: str, value: Any) -> None:
        # status and kind are always members: `row.status = "keep"` stores Status.KEEP, and
        # `row.status = "ok"` fails here, where the mistake is, not when the row is written.
        if name == "status":
            value = Status.parse(value)
        elif name == "kind":
            value = Kind.parse(value)
        object.__setattr__(self, name, value)

    @classmethod
    def build(
        cls,
        spec: TrialSpec,
        proposal: dict | None,
        result: TrialResult,
        *,
        status: Status | str | None = None,
        merged: bool = False,
        noise: float | None = None,
        incumbent_bpb: float | None = None,
        log_path: str = "",
        now: float | None = None,
    ) -> TrialRow:
        """The row for `spec` run as `result` (proposal: the Proposal as a dict, or None).

        status defaults to discard for a metric (the gate says keep) and to the result's own
        status (crash, timeout, invalid, lost) otherwise; `now` (default: the clock) stamps
        `recorded`, and `ended` when the result has none.
        """
        now = time.time() if now is None else now
        p = proposal or {}
        return cls(
            trial_id=spec.trial_id,
            round=spec.round,
            island=spec.island,
            kind=spec.kind,
            parent_sha=spec.parent_sha,
            commit_sha=spec.commit_sha,
            proposer=p.get("proposer"),
            model=p.get("model"),
            prompt_tokens=p.get("prompt_tokens"),
            completion_tokens=p.get("completion_tokens"),
            cost=p.get("cost"),
            description=p.get("description") or describe(spec),
            status=status or (Status.DISCARD if result.status == "ok" else result.status),
            val_bpb=result.val_bpb,
            seed=spec.seed,
            paired_with=spec.paired_with,
            rng=result.rng or None,
            budget=spec.budget,
            training_seconds=result.training_seconds,
            total_seconds=result.total_seconds,
            num_steps=result.num_steps,
            total_tokens_M=result.total_tokens_M,
            num_params_M=result.num_params_M,
            peak_vram_mb=result.peak_vram_mb,
            mfu=result.mfu,
            gpu_name=result.gpu_name,
            node=result.node,
            started=result.started,
            ended=result.ended or now,
            error=result.error,
            log_path=log_path or result.log_path,
            self_reported=result.self_reported,
            confinement=result.confinement,
            merged=merged,
            noise=noise,
            incumbent_bpb=incumbent_bpb,
            dispatched=result.extra.get("dispatched"),
            recorded=now,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-native (the enums as their plain strings), in FIELDS order."""
        d = {name: getattr(self, name) for name in FIELDS}
        d["kind"], d["status"] = self.kind.value, self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRow:
        """A row read back from a ledger of any age: missing fields take their defaults,
        unknown keys are ignored; an unknown status or kind, or none, is a ValueError."""
        missing = [name for name in _REQUIRED if d.get(name) is None]
        if missing:
            raise ValueError(f"ledger row {d.get('trial_id')!r} has no {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in _NAMES})


def describe(spec: TrialSpec) -> str:
    """The description of a trial no proposal describes (a replicate or a confirmation)."""
    seed = f"seed {spec.seed}" if spec.seed is not None else "train.py's own seed"
    if spec.kind == Kind.BASELINE:
        return f"incumbent replicate ({seed})"
    if spec.kind == Kind.CONFIRM:
        return f"confirmation run ({seed})"
    return ""


# The ledger's columns, in the order exports show them.
FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrialRow))
_NAMES = frozenset(FIELDS)
_REQUIRED = ("trial_id", "kind", "status")


def field_types() -> dict[str, type]:
    """Each field's value type with None taken out: str, int, float, bool, Status or Kind."""
    hints = typing.get_type_hints(TrialRow)
    out = {}
    for name in FIELDS:
        args = [a for a in typing.get_args(hints[name]) if a is not type(None)]
        out[name] = args[0] if args else hints[name]
    return out
