"""A campaign's settings: what `autoresearch run` was asked, and what a resume must keep."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

# Settings a resumed campaign must keep: changing them would compare apples with oranges.
LOCKED = ("budget", "gpu_type", "dataset", "vocab_size", "target", "protocol", "device_kind")
MAX_REQUEUES = 2


class CampaignError(RuntimeError):
    """A problem the user must fix; the message says what and how."""


_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_tag(tag: str) -> str:
    """A tag names a folder (runs/TAG) and a git branch (autoresearch/TAG): letters, digits,
    `.`, `_` and `-`, starting with a letter or digit, at most 64, no `..`, not `.lock`."""
    if not _TAG.fullmatch(tag) or ".." in tag or tag.endswith((".", ".lock")):
        raise CampaignError(
            f"--tag {tag!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (it names runs/TAG/ and the branch autoresearch/TAG), e.g. --tag dec01"
        )
    return tag


def _flag(name: str | None = None, conv=None, **kw):
    """A setting: `name` is its flat name (the `autoresearch run` option's dest, and the
    keyword of CampaignConfig.build) when it differs from the field's; `conv` turns what the
    CLI parsed into what the campaign keeps."""
    return field(metadata={"flag": name, "conv": conv}, **kw)


def _workers(v):
    return None if v in (None, "auto") else v


def parse_prices(items) -> dict[str, tuple[float, float]]:
    """--llm-price MODEL=IN,OUT (repeatable), or such a dict already."""
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items or []:
        model, _, pair = item.rpartition("=")
        try:
            prompt, completion = (float(x) for x in pair.split(","))
        except ValueError:
            raise CampaignError(
                f"--llm-price {item!r}: use MODEL=IN,OUT, $ per million prompt and completion "
                "tokens, e.g. openai/my-model=3,15"
            ) from None
        if not model:
            raise CampaignError(f"--llm-price {item!r} names no model (MODEL=IN,OUT)")
        out[model] = (prompt, completion)
    return out


@dataclass
class TrialSettings:
    """What one trial is; the referee runs every trial of a campaign with these."""

    target: str = "trainer/train.py"  # --protocol autoresearch: train.py (see build)
    budget: str | None = _flag(conv=lambda b: str(b) if b else None, default=None)  # canonical
    dataset: str = "builtin"
    vocab_size: int | None = None
    device: str = "auto"
    sandbox: str = "auto"
    threads: int | None = None  # CPU threads per trial (default: the cores over the workers)
    protocol: str = "referee"
    timeout: float | None = _flag("trial_timeout", default=None)  # hard kill, s


@dataclass
class SearchSettings:
    """How the driver searches: the strategy, its proposers, its gate, when it stops."""

    strategy: str = "rounds"
    proposer: str = "mutate"
    rounds: int | None = None
    trials: int | None = None
    hours: float | None = None
    noise_multiple: float = 2.0
    confirm_multiple: float = 2.0
    replicates: int | None = None  # incumbent runs before the first round (default: workers, >= 4)
    per_round: int | None = None  # candidates per round (default: workers)
    proposals_ahead: int | None = None
    seed: int = 0
    paired: bool = True  # candidates run at a seed of their parent's; the gate judges pairs
    stack: bool = True  # rounds: confirm the round's screened winners on different lines as one
    islands: int = _flag(conv=lambda k: max(2, k), default=4)  # population: K lines (>= 2)
    migrate_every: int | None = None  # population: exploit every M results (default 2 x workers)


@dataclass
class ClusterSettings:
    """Where trials run."""

    workers: int | None = _flag(conv=_workers, default=None)  # None: every GPU (of gpu_type)
    gpu_type: str | None = None
    address: str | None = None
    clone_root: str | None = None


@dataclass
class LLMSettings:
    """The llm proposer: litellm model strings, endpoint, spend and time limits."""

    models: list[str] = _flag("model", conv=lambda m: list(m or []), default_factory=list)
    api_base: str | None = None
    max_cost: float | None = _flag("max_llm_cost", default=None)
    timeout: float = _flag("llm_timeout", default=120.0)
    prices: dict[str, tuple[float, float]] = _flag(
        "llm_price", conv=parse_prices, default_factory=dict
    )  # model -> ($ per 1M prompt tokens, $ per 1M completion tokens)
    program: Path | None = None  # research program shown to the model (default: program.md)


SECTIONS = {
    "trial": TrialSettings,
    "search": SearchSettings,
    "cluster": ClusterSettings,
    "llm": LLMSettings,
}


@dataclass
class CampaignConfig:
    """A campaign's settings in four sections; `build` takes them flat, by option name."""

    tag: str
    repo: Path = Path(".")
    runs_dir: Path | None = None
    trial: TrialSettings = field(default_factory=TrialSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    llm: LLMSettings = field(default_factory=LLMSettings)

    @classmethod
    def build(cls, tag: str, repo: Path = Path("."), runs_dir: Path | None = None, **flat):
        """From flat settings named as `autoresearch run`'s options (`per_round`,
        `trial_timeout`, `model`, ...); an unknown name is a TypeError."""
        parts: dict[str, dict] = {name: {} for name in SECTIONS}
        for section, kind in SECTIONS.items():
            for f in fields(kind):
                name = f.metadata.get("flag") or f.name
                if name in flat:
                    conv = f.metadata.get("conv")
                    value = flat.pop(name)
                    parts[section][f.name] = conv(value) if conv else value
        if flat:
            raise TypeError(f"unknown campaign setting(s): {', '.join(sorted(flat))}")
        if parts["trial"].get("target") is None:  # the protocol's file, unless given
            auto = parts["trial"].get("protocol") == "autoresearch"
            parts["trial"]["target"] = "train.py" if auto else "trainer/train.py"
        built = {name: SECTIONS[name](**kw) for name, kw in parts.items()}
        return cls(tag=tag, repo=repo, runs_dir=runs_dir, **built)

    @classmethod
    def from_args(cls, args) -> CampaignConfig:
        """From `autoresearch run`'s parsed options: every setting the namespace has."""
        names = [f.metadata.get("flag") or f.name for k in SECTIONS.values() for f in fields(k)]
        flat = {n: getattr(args, n) for n in names if hasattr(args, n)}
        return cls.build(args.tag, args.repo, getattr(args, "runs_dir", None), **flat)


def locked_diffs(tag: str, saved: dict, settings: dict) -> None:
    """Refuse to resume a campaign with settings that would make its rows incomparable."""
    diffs = [
        f"{k}: campaign has {saved.get(k)!r}, this run asks {v!r}"
        for k, v in settings.items()
        if _canonical(k, saved.get(k)) != _canonical(k, v)
    ]
    refuse_incomparable(f"campaign {tag} was started", diffs)


def refuse_incomparable(what: str, diffs: list[str]) -> None:
    """Raise, listing the settings that differ, if any do."""
    if diffs:
        raise CampaignError(
            f"{what} with other settings, and its results would not be comparable:\n  "
            + "\n  ".join(diffs)
            + "\nRerun with the original settings, or start a new --tag."
        )


def _canonical(key: str, value):
    """A budget saved before budgets were parsed at the edge ("5m") equals "300s"."""
    return canonical_budget(value) if key == "budget" else value


def canonical_budget(value):
    if not isinstance(value, str):
        return value
    from trainer.budget import Budget

    try:
        return str(Budget.parse(value))
    except ValueError:
        return value
