"""A campaign's settings: what `autoresearch run` was asked, and what a resume must keep."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

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
    budget: str | None = None  # canonical (parsed by the CLI); default: by device
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


def locked_diffs(tag: str, saved: dict, settings: dict) -> None:
    """Refuse to resume a campaign with settings that would make its rows incomparable."""
    diffs = [
        f"{k}: campaign has {saved.get(k)!r}, this run asks {v!r}"
        for k, v in settings.items()
        if _canonical(k, saved.get(k)) != _canonical(k, v)
    ]
    if diffs:
        raise CampaignError(
            f"campaign {tag} was started with other settings, and its results "
            "would not be comparable:\n  "
            + "\n  ".join(diffs)
            + "\nRerun with the original settings, or start a new --tag."
        )


def config_from_dict(d: dict) -> CampaignConfig:
    names = {f.name for f in fields(CampaignConfig)}
    return CampaignConfig(**{k: v for k, v in d.items() if k in names})


def _canonical(key: str, value):
    """A budget saved before budgets were parsed at the edge ("5m") equals "300s"."""
    if key != "budget" or not isinstance(value, str):
        return value
    from trainer.budget import Budget

    try:
        return str(Budget.parse(value))
    except ValueError:
        return value
