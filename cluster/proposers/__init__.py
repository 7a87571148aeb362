"""Proposers turn campaign history into edits of the target file (see base.py).

--proposer mutate | queue:DIR | llm | llm=3,mutate=1   (name=weight, comma-separated)
"""

from __future__ import annotations

from pathlib import Path


def parse_spec(spec: str) -> list[tuple[str, float]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, weight = item.rpartition("=") if "=" in item else (item, "", "1")
        try:
            out.append((name, float(weight)))
        except ValueError:
            raise ValueError(f"bad proposer weight in {item!r}; use NAME=WEIGHT") from None
    if not out:
        raise ValueError(
            "no proposer given; use mutate, queue:DIR, llm or a mix like llm=3,mutate=1"
        )
    return out


def build_proposers(cfg, repo: Path) -> list:
    """Proposer objects with weights for a CampaignConfig; fails fast on missing credentials."""
    from cluster.proposers.mutate import MutateProposer
    from cluster.proposers.queue import QueueProposer

    out = []
    for name, weight in parse_spec(cfg.search.proposer):
        if name == "mutate":
            p = MutateProposer(seed=cfg.search.seed)
        elif name.startswith("queue:"):
            folder = Path(name.split(":", 1)[1])
            p = QueueProposer(folder if folder.is_absolute() else repo / folder)
        elif name == "llm":
            from cluster.proposers.llm import LLMProposer

            if not cfg.llm.models:
                raise ValueError(
                    "--proposer llm needs --model (a litellm model string, e.g. "
                    "anthropic/claude-sonnet-4-5 or openai/gpt-4o)"
                )
            program_path = cfg.llm.program or repo / "program.md"
            p = LLMProposer(
                models=[(m, 1.0) for m in cfg.llm.models],
                api_base=cfg.llm.api_base,
                max_cost=cfg.llm.max_cost,
                price_table=cfg.llm.prices,
                seed=cfg.search.seed,
                timeout=cfg.llm.timeout,
                program=Path(program_path).read_text() if Path(program_path).exists() else "",
            )
            p.check_credentials()
        else:
            raise ValueError(f"unknown proposer {name!r}; use mutate, queue:DIR or llm")
        out.append((p, weight))
    return out
