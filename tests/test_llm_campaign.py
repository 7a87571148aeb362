"""A campaign whose proposals all come from a fake LLM over a real socket (issue: LLM proposer)."""

from __future__ import annotations

import re

import pytest

from cluster import gitops
from cluster.driver import run_campaign
from cluster.proposers.llm import LLMProposer

from conftest import PLANTED, campaign_config, make_repo
from fake_llm import Reply, fake_llm_fixture  # noqa: F401

pytestmark = pytest.mark.slow


def edit(source: str, name: str, value: float, desc: str, path: str = "trainer/train.py") -> str:
    line = re.search(rf"^{name} = .*$", source, re.M).group(0)
    new = re.sub(r"= [0-9.e-]+", f"= {value!r}", line, count=1)
    return (
        f"DESCRIPTION: {desc}\n\n{path}\n<<<<<<< SEARCH\n{line}\n=======\n{new}\n>>>>>>> REPLACE\n"
    )


def test_llm_campaign_merges_good_edits_and_records_bad_answers(
    tmp_path, ray_cluster, fake_llm, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-for-local-server")
    monkeypatch.setattr(LLMProposer, "retry_base_delay", 0.01)
    monkeypatch.setattr(LLMProposer, "backoff_base", 0.05)  # garbage answers wait 2 s otherwise
    repo = make_repo(tmp_path / "repo", **PLANTED)
    src = (repo / "trainer" / "train.py").read_text()
    good = edit(src, "LEARNING_RATE", 0.002, "raise the matrix learning rate 5x")
    reads_val = (
        "DESCRIPTION: peek at the validation split\n\ntrainer/train.py\n<<<<<<< SEARCH\n"
        "def train(ctx):\n=======\ndef train(ctx):\n"
        '    open("/root/.cache/autoresearch-cluster/builtin-v512/eval/val.bin", "rb").read()\n'
        ">>>>>>> REPLACE\n"
    )
    server = fake_llm(
        good,
        "Sorry, I cannot help with that.",
        edit(src, "LEARNING_RATE", 0.002, "edit the evaluator instead", "trainer/prepare.py"),
        reads_val,
        good.replace("raise the matrix learning rate 5x", "same edit again"),
        429,
        edit(src, "EMBEDDING_LR", 0.01, "raise the embedding learning rate 5x"),
        Reply(delay=4.0),  # times out (llm_timeout 1.5 s) and is retried
        edit(src, "UNEMBEDDING_LR", 0.002, "raise the head learning rate 5x"),
        default="I have no further ideas.",
    )
    cfg = campaign_config(
        repo,
        "llm",
        workers=2,
        per_round=3,
        proposals_ahead=6,
        rounds=1,
        proposer="llm",
        model=["openai/fake-model"],
        api_base=server.api_base,
        llm_timeout=1.5,
    )
    camp = run_campaign(cfg)
    rows = camp.ledger.rows()
    cands = [r for r in rows if r["kind"] == "candidate"]
    errors = " | ".join(r["error"] or "" for r in cands if r["status"] == "invalid")
    assert "trainer/prepare.py" in errors  # an edit to another file
    assert "val.bin" in errors  # reads validation data
    assert "duplicate" in errors
    assert "Sorry" in errors or "no edit" in errors.lower() or "DESCRIPTION" in errors
    ran = {r["description"] for r in cands if r["val_bpb"] is not None}
    # The same edit came twice, concurrently: whichever validated first ran, the other is the
    # duplicate. The two after a 429 and after a timeout ran too.
    same = {"raise the matrix learning rate 5x", "same edit again"}
    assert len(ran & same) == 1
    assert ran - same == {"raise the embedding learning rate 5x", "raise the head learning rate 5x"}
    assert all(r["proposer"] == "llm" and r["model"] == "openai/fake-model" for r in cands)
    assert all((r["prompt_tokens"] or 0) > 0 for r in cands if r["val_bpb"] is not None)
    merged = [r for r in rows if r["merged"]]
    assert merged and gitops.rev_parse(repo, "autoresearch/llm") == merged[-1]["commit_sha"]
    assert len(server.requests) >= 9  # every scripted answer was asked for, retries included
    # The model was told what is in flight and what failed (prompts carry the campaign state).
    assert any("Noise" in p or "noise" in p for p in server.prompts())
