"""The LLM proposer a user can leave running overnight, against tests/fake_llm.py over a real
socket: backoff that honours the provider, spend that matches its bill, a cap that ends the
campaign and holds over a resume, and errors a user can read before any GPU time is spent.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from cluster.campaign import CampaignError
from cluster.driver import run_campaign
from cluster.ledger import read_spend, spend_totals
from cluster.proposers.base import ProposalContext
from cluster.proposers.llm import LLMProposer
from cluster.report import make_report
from cluster.rundir import RunDir

from conftest import PLANTED, campaign_config, make_repo
from fake_llm import DOUBLE_LR, TRAIN_PY, Reply, fake_llm_fixture  # noqa: F401 (fixture)

MODEL = "openai/fake-model"
PRICES = {MODEL: (2.0, 10.0)}  # $ per 1M prompt / completion tokens


@pytest.fixture(autouse=True)
def dummy_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")


def _ctx() -> ProposalContext:
    return ProposalContext("c0ffee1234", TRAIN_PY, "trainer/train.py")


def _proposer(server, **kw) -> LLMProposer:
    p = LLMProposer(
        models=[(MODEL, 1.0)], api_base=server.api_base, price_table=PRICES, timeout=5, **kw
    )
    p.retry_base_delay = 0.01
    p.backoff_base = 0.05
    return p


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_retry_after_is_waited_out(fake_llm):
    server = fake_llm(Reply(status=429, retry_after=1.0), DOUBLE_LR)
    [proposal] = _proposer(server).propose(_ctx(), 1)
    assert proposal.error is None
    assert len(server.times) == 2 and _gaps(server.times)[0] >= 0.95  # not the 0.01 s backoff


def test_a_model_answering_garbage_is_asked_less_and_less_often_and_the_console_hears(fake_llm):
    server = fake_llm(default="I would rather not.")
    said: list[str] = []
    p = _proposer(server)
    p.say = said.append
    for _ in range(6):
        [proposal] = p.propose(_ctx(), 1)
        assert proposal.error.startswith("unusable answer")
    gaps = _gaps(server.times)
    for k, gap in enumerate(gaps):  # 0.05 s doubling, jitter 0.75-1.25
        assert gap >= 0.75 * 0.05 * 2**k - 0.01, gaps
    assert gaps[-1] > 4 * gaps[0]
    assert any(
        "5 unusable answers or failed requests in a row from openai/fake-model" in s
        and "no edit found" in s
        for s in said
    ), said
    # A usable answer ends the streak: the next request is not held back.
    server.script.append(Reply(DOUBLE_LR))
    p._cool.clear()
    [good] = p.propose(_ctx(), 1)
    assert good.error is None and p._unusable[MODEL] == 0


def test_failed_requests_back_off_too(fake_llm):
    server = fake_llm(404, 404, default=DOUBLE_LR)
    p = _proposer(server)
    first = p.propose(_ctx(), 1)[0]
    assert "404" in first.error or "NotFound" in first.error
    p.propose(_ctx(), 1)
    p.propose(_ctx(), 1)
    gaps = _gaps(server.times)
    assert gaps[0] >= 0.75 * 0.05 and gaps[1] >= 0.75 * 0.1, gaps


def test_every_billed_answer_is_reported_whatever_becomes_of_it(fake_llm):
    server = fake_llm(
        Reply("no edit here", prompt_tokens=700, completion_tokens=30),
        Reply(DOUBLE_LR, prompt_tokens=1000, completion_tokens=100),
        500,
        default=Reply(DOUBLE_LR, prompt_tokens=900, completion_tokens=90),
    )
    bills: list[dict] = []
    p = _proposer(server)
    p.on_bill = bills.append
    p.preflight()
    for _ in range(3):
        p.propose(_ctx(), 1)
    totals = spend_totals(bills)
    assert totals["prompt_tokens"] == server.billed["prompt_tokens"]
    assert totals["completion_tokens"] == server.billed["completion_tokens"]
    assert totals["answers"] == server.billed["answers"] == 4  # the 500 is not billed
    assert totals["total_cost"] == pytest.approx(p.total_cost)
    assert [b["what"] for b in bills][0] == "preflight check"


def test_reaching_the_cap_is_said_once_even_when_other_proposers_go_on(fake_llm):
    server = fake_llm(default=Reply(DOUBLE_LR, prompt_tokens=1000, completion_tokens=100))
    said: list[str] = []
    p = _proposer(server, max_cost=0.005)  # $0.003 an answer: the second reaches it
    p.say = said.append
    for _ in range(3):
        p.propose(_ctx(), 1)
    assert len(server.requests) == 2 and p.exhausted
    assert said == [
        "LLM spend cap reached: $0.0060 spent of --max-llm-cost $0.005: the llm "
        "proposer asks nothing more"
    ]


def _run_cli(repo, *args, env=None):
    base = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "--tag", "night", "--repo", str(repo)]
        + ["--proposer", "llm", "--device", "cpu", "--budget", "20steps", *args],
        env={**base, "RAY_ADDRESS": "local", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_llm_setup_errors_are_one_line_exit_2_before_ray_and_leave_no_run_dir(tmp_path, fake_llm):
    repo = make_repo(tmp_path / "repo")
    server = fake_llm()
    key = {"OPENAI_API_KEY": "sk-test-dummy"}
    cases = {
        "missing key": (["--model", "openai/gpt-4o"], {}, "OPENAI_API_KEY"),
        "wrong url": (
            ["--model", MODEL, "--api-base", server.api_base.removesuffix("/v1") + "/nope"],
            key,
            "/nope",
        ),
        "server down": (
            ["--model", MODEL, "--api-base", f"http://127.0.0.1:{_free_port()}/v1"],
            key,
            "does not answer",
        ),
        "unpriced cap": (
            ["--model", MODEL, "--api-base", server.api_base, "--max-llm-cost", "1"],
            key,
            "--llm-price",
        ),
        "bad price": (
            ["--model", MODEL, "--api-base", server.api_base, "--llm-price", "oops"],
            key,
            "MODEL=IN,OUT",
        ),
    }
    for name, (args, env, needle) in cases.items():
        out = _run_cli(repo, *args, env=env)
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr, (name, out.stderr)
        assert not (repo / "runs" / "night").exists(), name
        assert "Ray" not in out.stderr, (name, out.stderr)  # refused before Ray started


def _edit(source: str, name: str, value: float, desc: str) -> str:
    line = re.search(rf"^{name} = .*$", source, re.M).group(0)
    new = re.sub(r"= [0-9.e-]+", f"= {value!r}", line, count=1)
    return f"DESCRIPTION: {desc}\n\ntrainer/train.py\n<<<<<<< SEARCH\n{line}\n=======\n{new}\n>>>>>>> REPLACE\n"


@pytest.mark.slow
def test_the_cap_ends_the_campaign_its_spend_is_the_providers_bill_and_a_resume_keeps_it(
    tmp_path, ray_cluster, fake_llm, monkeypatch, capsys
):
    monkeypatch.setattr(LLMProposer, "retry_base_delay", 0.01)
    monkeypatch.setattr(LLMProposer, "backoff_base", 0.05)
    repo = make_repo(tmp_path / "repo", **PLANTED)
    src = (repo / "trainer" / "train.py").read_text()
    usage = dict(prompt_tokens=1000, completion_tokens=100)  # $0.003 an answer
    answers = [
        Reply(_edit(src, name, value, f"{name} to {value}"), **usage)
        for name, value in [
            ("LEARNING_RATE", 0.002),
            ("EMBEDDING_LR", 0.01),
            ("UNEMBEDDING_LR", 0.002),
            ("LEARNING_RATE", 0.001),
            ("EMBEDDING_LR", 0.005),
            ("UNEMBEDDING_LR", 0.001),
        ]
    ]
    server = fake_llm(Reply("garbage", **usage), *answers, default=Reply("nothing", **usage))
    kw = dict(
        workers=2,
        per_round=2,
        rounds=20,
        proposer="llm",
        model=[MODEL],
        api_base=server.api_base,
        llm_price=["openai/fake-model=2,10"],
        max_llm_cost=0.01,
        hours=0.2,  # a backstop: a cap that does not end the campaign fails, not hangs
    )
    camp = run_campaign(campaign_config(repo, "cap", **kw))
    out = capsys.readouterr().out
    assert "LLM spend cap reached" in out and "--max-llm-cost $0.01" in out, out
    assert "the campaign ends" in out
    files = RunDir(repo / "runs" / "cap")
    spend = spend_totals(read_spend(files.llm_calls))
    # The bill: every answer the server sent, preflight and garbage included, to the token.
    assert spend["prompt_tokens"] == server.billed["prompt_tokens"]
    assert spend["completion_tokens"] == server.billed["completion_tokens"]
    assert 0.01 <= spend["total_cost"] < 0.01 + 2 * 0.003 + 0.001
    assert camp.rows and camp.rows[-1]["round"] < 20
    _, md = make_report(files.path)
    report = md.read_text()
    assert f"${spend['total_cost']:.4f}" in report
    asked = len(server.requests)
    # A resume with the same cap: it was spent by the earlier run; nothing is asked.
    with pytest.raises(CampaignError, match="LLM spend cap reached"):
        run_campaign(campaign_config(repo, "cap", **kw))
    assert len(server.requests) == asked
