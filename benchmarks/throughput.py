"""CPU tokens/s of our trainer against a plain minimal PyTorch GPT loop of the same size.

    python benchmarks/throughput.py [--steps 60] [--threads 2]

Three measurements in one run, same shapes (batch 16 x 256, vocab 2048, 2 layers, width 128):
  plain    a minimal nanoGPT-style model (LayerNorm, GELU MLP, SDPA) and AdamW, in-process,
           on random tokens
  model    our trainer/train.py model and optimizer, in-process (no referee)
  trial    our trainer through the referee: subprocess, batches over a pipe, budget clock
           (tokens / training_seconds as the referee measures them)
Ratios against `plain` say what our model costs and what the referee costs on top.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
B, T, V, D, L = 16, 256, 2048, 128, 2


class PlainBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x):
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, 2, D // 2).unbind(2)
        y = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class PlainGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.blocks = nn.Sequential(*[PlainBlock() for _ in range(L)])
        self.ln, self.head = nn.LayerNorm(D), nn.Linear(D, V, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(T))
        return self.head(self.ln(self.blocks(x)))


def loop_tokens_per_s(model: nn.Module, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        x = torch.randint(0, V, (B, T), generator=g)
        y = torch.randint(0, V, (B, T), generator=g)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * B * T / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = loop_tokens_per_s(PlainGPT(), args.steps)

    spec = importlib.util.spec_from_file_location("train", ROOT / "trainer" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    ours = loop_tokens_per_s(train.GPT(V, train.CPU_WIDTH, train.CPU_DEPTH, T), args.steps)

    from trainer.budget import Budget
    from trainer.prepare import prepare
    from trainer.referee import TrialConfig, run_trial

    cfg = TrialConfig(
        data=prepare("builtin"), budget=Budget.parse(f"{args.steps}steps"), threads=args.threads
    )
    with tempfile.TemporaryDirectory() as tmp:
        r = run_trial(ROOT / "trainer" / "train.py", cfg, Path(tmp) / "log")
    assert r.status == "ok", r.error
    trial = r.total_tokens_M * 1e6 / r.training_seconds
    print(f"threads {args.threads}, {args.steps} steps of {B}x{T} tokens")
    print(f"plain minimal GPT loop : {plain:8.0f} tokens/s  (1.00)")
    print(f"our model, in-process  : {ours:8.0f} tokens/s  ({ours / plain:.2f})")
    print(
        f"our trainer via referee: {trial:8.0f} tokens/s  ({trial / plain:.2f}); trial wall "
        f"{r.total_seconds:.1f}s for {r.training_seconds:.1f}s of training"
    )


if __name__ == "__main__":
    main()
