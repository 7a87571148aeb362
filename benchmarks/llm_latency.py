"""Proposal latency of the LLM proposer against the local fake OpenAI server (tests/fake_llm.py).

Measures what the proposer itself costs per call, with the model's thinking time taken out:
prompt building, litellm's HTTP round trip over 127.0.0.1, answer parsing and the patch, then
cluster.validate on the result (a `git apply` in a scratch directory). The incumbent is the
real trainer/train.py with a realistic ledger digest, so `--print-prompt` shows the prompt a
real campaign sends, with its size in tokens.

Run: python benchmarks/llm_latency.py [--calls 20] [--batch 4] [--print-prompt]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-dummy")

from cluster.proposers.base import ProposalContext  # noqa: E402
from cluster.proposers.llm import LLMProposer, litellm  # noqa: E402  (imported offline-safe)
from cluster.validate import validate  # noqa: E402

from fake_llm import TRAIN_PY, FakeLLM  # noqa: E402

TARGET = "trainer/train.py"


def realistic_context(source: str) -> ProposalContext:
    """A campaign a few rounds in: replicates, two kept changes, discards and failures."""
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "trainer/train.py", line 88, in forward\n'
        "    q, k, v = self.qkv(F.rms_norm(x, (C,))).view(B, T, 3, self.heads, C // self.heads)"
        ".unbind(2)\n"
        "RuntimeError: shape '[16, 256, 3, 1, 192]' is invalid for input of size 2359296"
    )
    base = {"kind": "baseline", "status": "keep", "parent_sha": "", "commit_sha": "9e1f0a2"}
    rows = [{**base, "val_bpb": v} for v in (1.712, 1.705, 1.719, 1.708)]
    rows += [
        {"kind": "candidate", "status": "keep", "parent_sha": "9e1f0a2", "commit_sha": "4b7c1d9",
         "val_bpb": 1.668, "description": "raise LEARNING_RATE to 0.004 and EMBEDDING_LR to 0.02"},
        {"kind": "candidate", "status": "discard", "parent_sha": "9e1f0a2", "commit_sha": "71aa0e3",
         "val_bpb": 1.711, "description": "MLP_RATIO 4 -> 3 to trade width for speed"},
        {"kind": "candidate", "status": "crash", "parent_sha": "9e1f0a2", "commit_sha": "c3d2e11",
         "description": "HEAD_DIM 64 -> 192 for fewer, wider heads", "error": traceback},
        {"kind": "confirm", "status": "keep", "parent_sha": "9e1f0a2", "commit_sha": "4b7c1d9",
         "val_bpb": 1.671},
        {"kind": "candidate", "status": "keep", "parent_sha": "4b7c1d9", "commit_sha": "e5f6a7b",
         "val_bpb": 1.641, "description": "WARMDOWN_FRAC 0.5 -> 0.7: decay over more of the budget"},
        {"kind": "candidate", "status": "discard", "parent_sha": "4b7c1d9", "commit_sha": "0d9c8b7",
         "val_bpb": 1.664, "description": "ADAM_BETA2 0.95 -> 0.99"},
        {"kind": "candidate", "status": "invalid", "parent_sha": "e5f6a7b", "commit_sha": "",
         "description": "cosine schedule",
         "error": "unusable answer: SEARCH block 1 not found in trainer/train.py (it starts "
         "'def lr_multiplier(progress):'); SEARCH text must be copied exactly from the current file"},
    ]  # fmt: skip
    return ProposalContext(
        incumbent_sha="e5f6a7b",
        incumbent_source=source,
        target=TARGET,
        program=(ROOT / "program.md").read_text(),
        history=rows,
        in_flight=["GRAD_CLIP 1.0 -> 0.5", "CPU_DEPTH 2 -> 3 with CPU_WIDTH 128 -> 112"],
        noise=0.006,
        round=3,
    )


def edit_answer(source: str) -> str:
    """A valid SEARCH/REPLACE answer: double the first non-zero float constant of the file."""
    matches = re.finditer(r"^([A-Z_]+) = (\d+\.\d+)(.*)$", source, re.M)
    m = next((m for m in matches if float(m.group(2)) != 0.0), None)
    assert m, "no non-zero float constant in train.py"
    name, value, rest = m.groups()
    new_line = f"{name} = {float(value) * 2!r}{rest}"
    return (
        f"DESCRIPTION: double {name}\n\n{TARGET}\n```python\n<<<<<<< SEARCH\n{m.group(0)}\n"
        f"=======\n{new_line}\n>>>>>>> REPLACE\n```\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="also time propose(ctx, BATCH)")
    parser.add_argument("--print-prompt", action="store_true")
    args = parser.parse_args()

    train_py = ROOT / TARGET
    source = train_py.read_text() if train_py.exists() else TRAIN_PY
    ctx = realistic_context(source)
    server = FakeLLM(default=edit_answer(source)).start()
    proposer = LLMProposer(
        models=[("openai/fake-model", 1.0)],
        api_base=server.api_base,
        price_table={"openai/fake-model": (3.0, 15.0)},
    )
    try:
        proposer.propose(ctx, 1)  # warm-up: litellm's lazy imports cost ~1 s once
        per_call, per_validate = [], []
        for _ in range(args.calls):
            start = time.perf_counter()
            [proposal] = proposer.propose(ctx, 1)
            per_call.append(time.perf_counter() - start)
            assert proposal.error is None, proposal.error
            start = time.perf_counter()
            assert validate(proposal, ctx, set()).error is None, proposal.error
            per_validate.append(time.perf_counter() - start)
        per_batch = []
        for _ in range(5):
            start = time.perf_counter()
            assert len(proposer.propose(ctx, args.batch)) == args.batch
            per_batch.append(time.perf_counter() - start)
    finally:
        server.close()

    def ms(xs: list[float]) -> str:
        return (
            f"mean {statistics.fmean(xs) * 1e3:.1f} ms, median {statistics.median(xs) * 1e3:.1f} ms"
        )

    messages = [{"role": "user", "content": proposer.last_prompt}]
    tokens = litellm.token_counter(model="gpt-4o", messages=messages)
    print(f"train.py: {train_py if train_py.exists() else 'test fixture'} ({len(source)} chars)")
    print(f"propose(ctx, 1), {args.calls} calls: {ms(per_call)}")
    print(f"validate(proposal), {args.calls} calls: {ms(per_validate)}")
    print(f"propose(ctx, {args.batch}), 5 batches: {ms(per_batch)}")
    print(f"prompt: {len(proposer.last_prompt)} chars, {tokens} tokens (gpt-4o tokenizer)")
    if args.print_prompt:
        print("-" * 80)
        print(proposer.last_prompt)


if __name__ == "__main__":
    main()
