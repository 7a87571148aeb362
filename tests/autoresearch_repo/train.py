"""
Autoresearch-shaped pretraining script for the tests: single device, single file.
Same contract as karpathy/autoresearch's train.py (imports prepare's constants, loader and
evaluator, trains for TIME_BUDGET, prints the summary), with a model small enough for a CPU.
Usage: python train.py
"""

import gc
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


@dataclass
class GPTConfig:
    sequence_len: int = 64
    vocab_size: int = 256
    n_layer: int = 1
    n_head: int = 2
    n_embd: int = 64


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.out = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        x = x + self.attn(F.rms_norm(x, (x.size(-1),)))
        return x + self.out(F.relu(self.fc(F.rms_norm(x, (x.size(-1),)))).square())


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = nn.Embedding(config.sequence_len, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx, targets=None, reduction="mean"):
        x = self.wte(idx) + self.pos(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(F.rms_norm(x, (x.size(-1),))).float()
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.view(-1), reduction=reduction
        )


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------
EMBEDDING_LR = 0.0005
MATRIX_LR = 0.0003
WEIGHT_DECAY = 0.0
WARMDOWN_RATIO = 0.3
DEPTH = 1
DEVICE_BATCH_SIZE = 16


def get_lr_multiplier(progress):
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    return max(0.0, (1.0 - progress) / WARMDOWN_RATIO)


t_start = time.time()
torch.manual_seed(42)
tokenizer = Tokenizer.from_directory()
config = GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=tokenizer.get_vocab_size(), n_layer=DEPTH)
model = GPT(config)
num_params = sum(p.numel() for p in model.parameters())
embeddings = [model.wte.weight, model.pos.weight]
matrices = [p for p in model.parameters() if all(p is not e for e in embeddings)]
optimizer = torch.optim.AdamW(
    [dict(params=embeddings, lr=EMBEDDING_LR), dict(params=matrices, lr=MATRIX_LR)],
    weight_decay=WEIGHT_DECAY,
)
for group in optimizer.param_groups:
    group["initial_lr"] = group["lr"]
train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
print(f"Time budget: {TIME_BUDGET}s")

total_training_time = 0.0
step = 0
while True:
    t0 = time.time()
    x, y, epoch = next(train_loader)
    loss = model(x, y)
    loss.backward()
    progress = min(total_training_time / TIME_BUDGET, 1.0)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * get_lr_multiplier(progress)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if math.isnan(loss.item()) or loss.item() > 100:
        print("FAIL")
        raise SystemExit(1)
    if step == 0:
        gc.collect()
        gc.freeze()
    if step > 0:
        total_training_time += time.time() - t0
    step += 1
    if step > 2 and total_training_time >= TIME_BUDGET:
        break

model.eval()
val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)
t_end = time.time()
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {t_end - t_start:.1f}")
print(f"peak_vram_mb:     {0.0:.1f}")
print(f"mfu_percent:      {0.0:.2f}")
print(f"total_tokens_M:   {step * DEVICE_BATCH_SIZE * MAX_SEQ_LEN / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
