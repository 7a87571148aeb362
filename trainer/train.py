"""The experimental surface: a compact GPT and its training loop. Proposals edit only this file.

Contract with the referee (trainer/referee.py): define `train(ctx)` and return the trained
torch.nn.Module, mapping (B, T) token ids to (B, T, vocab) logits. Get data only from
`ctx.batches(batch_size)`, which stops when the budget is spent; `ctx.progress` (0..1) drives
schedules. The referee exports the returned model and measures val_bpb itself.

Knobs are the UPPER_CASE constants below. CPU_/GPU_ pairs pick the model and batch size for
the device the trial runs on; the rest apply to both. The defaults are a sound, deliberately
plain starting point, so a campaign has real improvements to find.

Run one trial: `autoresearch trial --budget 200steps`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Model size: a 2-layer, 128-wide GPT learns something measurable in 60 s on 2 CPU cores.
CPU_DEPTH = 2  # transformer blocks
CPU_WIDTH = 128  # model dimension
CPU_BATCH_SIZE = 16  # sequences per step (x 256 tokens)
GPU_DEPTH = 8
GPU_WIDTH = 512
GPU_BATCH_SIZE = 64  # sequences per step (x 2048 tokens on climbmix)
HEAD_DIM = 64  # attention head size; heads = width // HEAD_DIM
MLP_RATIO = 4  # hidden width of the MLP, as a multiple of the model width
LOGIT_SOFTCAP = 0.0  # tanh cap on output logits, e.g. 15 (0 disables; costs 30% on CPU)

# Optimization (AdamW, linear warm-up then linear decay over the budget).
LEARNING_RATE = 0.002  # matrices
EMBEDDING_LR = 0.01  # token embedding table
UNEMBEDDING_LR = 0.002  # output head
WEIGHT_DECAY = 0.0
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.95
WARMUP_FRAC = 0.05  # fraction of the budget spent warming up the learning rate
WARMDOWN_FRAC = 0.5  # fraction of the budget at the end spent decaying it
FINAL_LR_FRAC = 0.0  # learning rate at the end, as a fraction of the peak
GRAD_CLIP = 1.0  # global gradient-norm clip (0 disables)


def _load_flash_attention():
    """FlashAttention-3 through the `kernels` package on Hopper; None means use SDPA."""
    try:
        if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
            return None
        from kernels import get_kernel

        return get_kernel("varunneal/flash-attention-3").flash_attn_func
    except Exception:
        return None


_FA3 = None


def attention(q, k, v):
    """Causal attention on (B, H, T, D). FA3 while training when available; SDPA otherwise,
    and always for evaluation so the exported graph holds only standard ops."""
    if _FA3 is not None and torch.is_grad_enabled():
        out = _FA3(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def rotary(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.heads = max(1, width // HEAD_DIM)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.fc = nn.Linear(width, MLP_RATIO * width, bias=False)
        self.fc_out = nn.Linear(MLP_RATIO * width, width, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (C,))).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        q, k = F.rms_norm(q, (q.shape[-1],)), F.rms_norm(k, (k.shape[-1],))  # QK-norm
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        y = attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.fc_out(F.relu(self.fc(F.rms_norm(x, (C,)))).square())


class GPT(nn.Module):
    def __init__(self, vocab_size: int, width: int, depth: int, max_seq_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, vocab_size, bias=False)
        head_dim = width // self.blocks[0].heads
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 1.0 if name == "embed.weight" else width**-0.5
                nn.init.normal_(p, std=std)
            if name.endswith(("proj.weight", "fc_out.weight")) or name == "head.weight":
                nn.init.zeros_(p)  # residual branches and the head start as identity / uniform

    def forward(self, idx):
        T = idx.shape[1]
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = F.rms_norm(self.embed(idx), (self.embed.embedding_dim,))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(F.rms_norm(x, (x.shape[-1],))).float()
        if LOGIT_SOFTCAP > 0:
            logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        return logits


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_FRAC:
        return (progress + 1e-3) / WARMUP_FRAC
    if progress > 1.0 - WARMDOWN_FRAC:
        frac = (1.0 - progress) / WARMDOWN_FRAC
        return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * frac
    return 1.0


def train(ctx):
    global _FA3
    cuda = ctx.is_cuda
    depth, width = (GPU_DEPTH, GPU_WIDTH) if cuda else (CPU_DEPTH, CPU_WIDTH)
    batch_size = GPU_BATCH_SIZE if cuda else CPU_BATCH_SIZE
    model = GPT(ctx.vocab_size, width, depth, ctx.seq_len).to(ctx.device)
    groups = [
        {"params": [model.embed.weight], "lr": EMBEDDING_LR},
        {"params": [model.head.weight], "lr": UNEMBEDDING_LR},
        {"params": [p for p in model.blocks.parameters()], "lr": LEARNING_RATE},
    ]
    for g in groups:
        g["initial_lr"] = g["lr"]
    opt = torch.optim.AdamW(
        groups, betas=(ADAM_BETA1, ADAM_BETA2), weight_decay=WEIGHT_DECAY, fused=cuda
    )
    step_model = model
    if cuda:
        _FA3 = _load_flash_attention()
        torch.backends.cuda.matmul.allow_tf32 = True
        step_model = torch.compile(model)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cuda)
    model.train()
    for step, (x, y) in enumerate(ctx.batches(batch_size)):
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_multiplier(ctx.progress)
        with autocast:
            logits = step_model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {step}")
            ctx.log(step, loss_value)
    return model
