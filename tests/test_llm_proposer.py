"""The LLM proposer over a real socket: litellm talks to tests/fake_llm.py on 127.0.0.1.

Each test scripts the fake model's replies (edit answers, HTTP errors, delays) and checks what
LLMProposer and cluster.validate make of them, as the driver would use them.

Run: pytest tests/test_llm_proposer.py -q
"""

from __future__ import annotations

import time

import pytest

from cluster.proposers.base import ProposalContext
from cluster.proposers.llm import CredentialsError, LLMProposer, build_prompt
from cluster.validate import validate

from fake_llm import DOUBLE_LR, TRAIN_PY, Reply, fake_llm_fixture  # noqa: F401 (fixture fake_llm)

TARGET = "trainer/train.py"
MODEL = "openai/fake-model"
PRICES = {MODEL: (2.0, 10.0)}  # USD per 1M prompt / completion tokens
DEEPER = (
    DOUBLE_LR.replace("double the learning rate", "one more layer")
    .replace("LR = 0.003  # AdamW learning rate", "DEPTH = 2  # transformer layers")
    .replace("LR = 0.006  # AdamW learning rate", "DEPTH = 3  # transformer layers")
)


@pytest.fixture(autouse=True)
def dummy_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")


def make_ctx(**kw) -> ProposalContext:
    return ProposalContext(
        incumbent_sha="c0ffee1234", incumbent_source=TRAIN_PY, target=TARGET, **kw
    )


def make_proposer(server, **kw) -> LLMProposer:
    kw.setdefault("models", [(MODEL, 1.0)])
    kw.setdefault("price_table", PRICES)
    kw.setdefault("timeout", 5)
    proposer = LLMProposer(api_base=server.api_base, program="Make val_bpb lower.", **kw)
    proposer.retry_base_delay = 0.01
    return proposer


def history() -> list[dict]:
    """A small ledger: two incumbent replicates, a kept change, a discard and two failures."""
    base = {"kind": "baseline", "status": "keep", "parent_sha": "", "commit_sha": "aaa"}
    return [
        {**base, "val_bpb": 1.500},
        {**base, "val_bpb": 1.510},
        {"kind": "candidate", "status": "keep", "parent_sha": "aaa", "commit_sha": "c0ffee1234",
         "val_bpb": 1.450, "description": "use RMSNorm before attention", "merged": True},
        {"kind": "candidate", "status": "discard", "parent_sha": "c0ffee1234", "commit_sha": "d1",
         "val_bpb": 1.452, "description": "GELU instead of ReLU"},
        {"kind": "candidate", "status": "crash", "parent_sha": "c0ffee1234", "commit_sha": "d2",
         "description": "bigger heads",
         "error": "Traceback (most recent call last):\nRuntimeError: shape '[16, 256, 3, 2, 96]' is invalid"},
        {"kind": "candidate", "status": "invalid", "parent_sha": "c0ffee1234", "commit_sha": "",
         "description": "tweak warmup", "error": "SEARCH block 1 not found in trainer/train.py"},
    ]  # fmt: skip


def test_good_edit_becomes_a_valid_proposal_with_tokens_and_cost(fake_llm):
    server = fake_llm(Reply(DOUBLE_LR, prompt_tokens=1500, completion_tokens=120))
    proposer = make_proposer(server)
    [proposal] = proposer.propose(make_ctx(), 1)
    assert proposal.error is None
    assert (proposal.description, proposal.model, proposal.proposer) == (
        "double the learning rate",
        MODEL,
        "llm",
    )
    assert "+LR = 0.006" in proposal.patch and proposal.parent_sha == "c0ffee1234"
    assert (proposal.prompt_tokens, proposal.completion_tokens) == (1500, 120)
    assert proposal.cost == pytest.approx((1500 * 2.0 + 120 * 10.0) / 1e6)
    assert proposer.total_cost == pytest.approx(proposal.cost)
    assert validate(proposal, make_ctx(), set()).error is None
    body = server.requests[0]["body"]
    assert body["model"] == "fake-model" and body["temperature"] == 0.8
    assert server.prompts() == [proposer.last_prompt]


def test_prompt_holds_program_source_history_noise_failures_in_flight_and_format(fake_llm):
    server = fake_llm(DOUBLE_LR)
    ctx = make_ctx(history=history(), in_flight=["wider MLP (ratio 6)"], noise=0.006)
    make_proposer(server).propose(ctx, 1)
    [prompt] = server.prompts()
    assert prompt.startswith("Make val_bpb lower.")
    assert TRAIN_PY in prompt
    assert "use RMSNorm before attention: 1.5050 -> 1.4500 (gain +0.0550, +9.2 sigma)" in prompt
    assert "GELU instead of ReLU: 1.4500 -> 1.4520 (gain -0.0020, -0.3 sigma)" in prompt
    assert "a gain under about 0.0120 is indistinguishable from luck" in prompt
    assert "RuntimeError: shape '[16, 256, 3, 2, 96]' is invalid" in prompt
    assert "invalid: tweak warmup -- SEARCH block 1 not found" in prompt
    assert "- wider MLP (ratio 6)" in prompt.split("## In flight now")[1]
    assert "<<<<<<< SEARCH" in prompt.split("## Answer format")[1]


def test_the_digest_counts_a_merge_by_its_confirmation_and_leaves_out_transport_noise():
    """Rounds merge through a confirm row; the candidate row of that commit says discard.
    The digest calls it merged (with its measured gain), never a discard; a request the
    provider never answered is not the model's mistake; replicates in flight show nothing."""
    base = {"kind": "baseline", "status": "keep", "parent_sha": "aaa", "commit_sha": "aaa"}
    rows = [
        {**base, "val_bpb": 1.500},
        {**base, "val_bpb": 1.510},
        {"kind": "candidate", "status": "discard", "parent_sha": "aaa", "commit_sha": "win",
         "val_bpb": 1.440, "description": "raise the matrix LR 5x"},
        {"kind": "confirm", "status": "keep", "parent_sha": "aaa", "commit_sha": "win",
         "val_bpb": 1.446, "description": "raise the matrix LR 5x", "merged": True},
        {"kind": "candidate", "status": "invalid", "parent_sha": "win", "commit_sha": "",
         "description": "(no answer from the model)",
         "error": "openai/fake-model failed 5 times: InternalServerError: fake error 500"},
    ]  # fmt: skip
    prompt = build_prompt(make_ctx(history=rows, in_flight=["", "", "lower warmup"], noise=0.006))
    digest = prompt.split("## Where the campaign stands")[1].split("## In flight")[0]
    assert "(1 merged, 0 discarded, 0 failed or rejected)" in digest
    assert "raise the matrix LR 5x: 1.5050 -> 1.4430" in digest.split("### Merged changes")[1]
    assert "Recent discards" not in digest and "InternalServerError" not in digest
    flying = prompt.split("## In flight now")[1].split("##")[0]
    assert [x for x in flying.splitlines() if x.startswith("-")] == ["- lower warmup"]


def test_prompt_stays_bounded_with_a_long_history():
    rows = [
        {"kind": "candidate", "status": s, "parent_sha": "p", "commit_sha": f"c{i}",
         "val_bpb": 1.5, "description": f"idea {i} " + "x" * 500, "error": "E" * 5000}
        for i, s in enumerate(["discard", "crash", "keep"] * 400)
    ]  # fmt: skip
    short = build_prompt(make_ctx(history=rows[:3]))
    long = build_prompt(make_ctx(history=rows, in_flight=["y" * 1000] * 100))
    assert len(long) < len(TRAIN_PY) + 16_000
    assert len(long) > len(short)


def test_concurrent_requests_differ_in_temperature_and_angle(fake_llm):
    make_proposer(fake_llm(DOUBLE_LR)).propose(make_ctx(), 1)  # litellm's first call: ~1 s
    server = fake_llm(*[Reply(DOUBLE_LR, delay=0.5)] * 4)
    proposer = make_proposer(server)
    start = time.monotonic()
    proposals = proposer.propose(make_ctx(), 4)
    elapsed = time.monotonic() - start
    assert len(proposals) == 4 and all(p.error is None for p in proposals)
    assert elapsed < 1.6  # four 0.5 s answers in sequence would take 2 s
    temperatures = sorted(r["body"]["temperature"] for r in server.requests)
    assert temperatures == [0.6, 0.733, 0.867, 1.0]
    angles = {p.split("A suggested angle")[1].splitlines()[0] for p in server.prompts()}
    assert len(angles) == 4


def test_malformed_answer_is_a_proposal_with_an_error_and_its_cost(fake_llm):
    answer = "DESCRIPTION: tune it\nJust raise the learning rate a bit."
    server = fake_llm(Reply(answer, prompt_tokens=900, completion_tokens=30))
    [proposal] = make_proposer(server).propose(make_ctx(), 1)
    assert proposal.error.startswith("unusable answer: no edit found")
    assert proposal.description == "tune it" and proposal.patch == ""
    assert proposal.cost == pytest.approx((900 * 2.0 + 30 * 10.0) / 1e6)


def test_edit_of_another_file_is_rejected(fake_llm):
    answer = "DESCRIPTION: fewer eval tokens\n--- a/trainer/prepare.py\n+++ b/trainer/prepare.py\n@@ -1 +1 @@\n-EVAL_TOKENS = 1000\n+EVAL_TOKENS = 10\n"
    server = fake_llm(answer)
    seen: set[str] = set()
    [proposal] = make_proposer(server).propose(make_ctx(), 1)
    validate(proposal, make_ctx(), seen)
    assert "trainer/prepare.py; only trainer/train.py may be changed" in proposal.error
    assert seen == set()


def test_duplicate_of_an_earlier_proposal_is_rejected(fake_llm):
    same_code = DOUBLE_LR.replace("  # AdamW learning rate\n>>>", "\n>>>")  # comment dropped
    server = fake_llm(DOUBLE_LR, same_code, DEEPER)
    proposer, ctx, seen = make_proposer(server), make_ctx(), set()
    proposals = [validate(p, ctx, seen) for p in proposer.propose(ctx, 3)]
    errors = sorted((p.description, p.error or "") for p in proposals)
    assert errors[0] == ("double the learning rate", "")
    assert errors[1][0] == "double the learning rate"
    assert errors[1][1].startswith("duplicate of a change already tried or in flight")
    assert errors[2] == ("one more layer", "")
    assert len(seen) == 2


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limit_or_server_error_then_success_is_retried(fake_llm, status):
    server = fake_llm(status, DOUBLE_LR)
    [proposal] = make_proposer(server).propose(make_ctx(), 1)
    assert proposal.error is None and "+LR = 0.006" in proposal.patch
    assert len(server.requests) == 2


def test_timeouts_are_retried_then_reported_without_raising(fake_llm):
    server = fake_llm(default=Reply(DOUBLE_LR, delay=5))
    proposer = make_proposer(server, timeout=0.3, max_retries=2)
    start = time.monotonic()
    [proposal] = proposer.propose(make_ctx(), 1)
    assert time.monotonic() - start < 4
    assert proposal.error.startswith("openai/fake-model failed 3 times: Timeout")
    assert len(server.requests) == 3
    assert proposal.cost == 0.0 and proposer.total_cost == 0.0


def test_authentication_error_is_not_retried(fake_llm):
    server = fake_llm(401, DOUBLE_LR)
    [proposal] = make_proposer(server).propose(make_ctx(), 1)
    assert proposal.error.startswith("openai/fake-model failed: AuthenticationError")
    assert len(server.requests) == 1


def test_cost_cap_stops_proposing(fake_llm):
    # Each answer costs (1000 * 2 + 100 * 10) / 1e6 = 0.003 USD.
    server = fake_llm(default=Reply(DOUBLE_LR, prompt_tokens=1000, completion_tokens=100))
    proposer = make_proposer(server, max_cost=0.005)
    assert len(proposer.propose(make_ctx(), 1)) == 1 and not proposer.exhausted
    assert len(proposer.propose(make_ctx(), 1)) == 1 and proposer.exhausted
    assert proposer.propose(make_ctx(), 3) == []
    assert len(server.requests) == 2
    assert proposer.total_cost == pytest.approx(0.006)


def test_models_are_mixed_by_weight_reproducibly_per_seed(fake_llm):
    server = fake_llm(default=DOUBLE_LR)
    models = [("openai/fake-a", 3.0), ("openai/fake-b", 1.0)]
    runs = []
    for _ in range(2):
        proposer = make_proposer(server, models=models, seed=7)
        runs.append([p.model for p in proposer.propose(make_ctx(), 12)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"openai/fake-a", "openai/fake-b"}
    assert runs[0].count("openai/fake-a") > runs[0].count("openai/fake-b")
    sent = sorted(r["body"]["model"] for r in server.requests[:12])
    assert sent == sorted(m.removeprefix("openai/") for m in runs[0])


def test_missing_key_is_a_clear_error_before_any_request(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    proposer = LLMProposer(models=[("anthropic/claude-sonnet-4-5", 1.0)])
    with pytest.raises(
        CredentialsError,
        match="anthropic/claude-sonnet-4-5 is missing ANTHROPIC_API_KEY in the environment",
    ):
        proposer.check_credentials()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-dummy")
    proposer.check_credentials()


def test_self_hosted_server_needs_no_key(fake_llm, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    server = fake_llm(DOUBLE_LR)
    proposer = make_proposer(server)
    proposer.check_credentials()
    [proposal] = proposer.propose(make_ctx(), 1)
    assert proposal.error is None
    with pytest.raises(CredentialsError, match="OPENAI_API_KEY"):
        LLMProposer(models=[(MODEL, 1.0)]).check_credentials()
