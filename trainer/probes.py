"""Probes that a loaded model is causal and scores each row alone, run before it is scored.

    report = check_model(forward, val_tokens, seq_len=, batch=, device=)   # or GraphRejected

A model whose position t sees token t+1 (non-causal attention, a token shift the wrong way)
scores a val_bpb near 0; one that mixes the rows of a batch can read a neighbouring window.
The graph is a pure function once trainer/graph.py has checked it (no state, no randomness),
so what these probes see holds for scoring too. Both compare log-probabilities in float32,
so rescaling logits hides nothing, against an absolute bound of ATOL nats: a leak under it
gains at most that much per token. What they cannot see is a leak keyed on content that
none of the probed rows has (about 2 * seq_len of them); see check_model's cuts_per_row.

- Causality: for every position t, one row of a probe batch keeps its first t+1 tokens and
  takes the rest from another validation row; its log-probabilities at positions <= t must
  not move. Row i of probe batch j is cut at t = j*batch + i, each probe batch on rows of its
  own (by default), so every position is covered on real text a model cannot tell from
  scoring batches: 2 * seq_len / batch forwards.
- Batch independence: for each bit of the row index, the rows with that bit set (then clear)
  are replaced by other rows; the kept rows must not move. Any two rows differ in some bit,
  so any flow from one row to another is seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainer.interpreter import GraphRejected
from trainer.prepare import eval_autocast

ATOL = 1e-3  # nats: the largest change of a log-probability the probes let through
PROBE_SEED = 1


@dataclass
class ProbeReport:
    forwards: int
    seconds: float
    future_change: float  # largest change at positions <= t when only tokens after t changed
    row_change: float  # largest change of a row when only the other rows changed


def _change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max |a - b| over the vocabulary (the last axis); -inf against -inf counts as 0 (NaN
    log-probabilities were refused before)."""
    return (a - b).abs_().nan_to_num_(nan=0.0).amax(-1)


def check_model(
    forward: Callable[[torch.Tensor], torch.Tensor],
    val_tokens: np.ndarray,
    *,
    seq_len: int,
    batch: int,
    device: str,
    atol: float = ATOL,
    cuts_per_row: int = 1,
) -> ProbeReport:
    """Raise GraphRejected if `forward` reads future tokens or mixes rows; else a report.

    `cuts_per_row` > 1 probes each row at that many cut points (one forward of real rows
    shared by that many spliced ones): cheaper, but fewer distinct rows are probed.
    """
    t0 = time.perf_counter()
    rows = (len(val_tokens) - 1) // seq_len
    if rows < 2 * batch:
        raise ValueError(f"the probes need {2 * batch} validation rows of {seq_len}, got {rows}")
    windows = torch.from_numpy(val_tokens[: rows * seq_len].astype(np.int64)).view(rows, seq_len)
    order = torch.from_numpy(np.random.default_rng(PROBE_SEED).permutation(rows))
    forwards = 0

    def logprobs(x: torch.Tensor) -> torch.Tensor:
        nonlocal forwards
        forwards += 1
        with torch.no_grad(), eval_autocast(device):
            logits = forward(x.to(device))
        lp = torch.log_softmax(logits.float(), dim=-1)
        if lp.isnan().any():
            raise GraphRejected("the model produced NaN log-probabilities on validation text")
        return lp

    def batch_of(j: int, shift: int = 0) -> torch.Tensor:
        return windows[order[(j * batch + shift + torch.arange(batch)) % rows]]

    first = batch_of(0)
    base = logprobs(first)
    row_change = 0.0
    others = batch_of(1)
    for bit in range(math.ceil(math.log2(batch))):
        for keep in (0, 1):
            kept = torch.tensor([(i >> bit) & 1 == keep for i in range(batch)])
            x = torch.where(kept[:, None], first, others)
            change = _change(logprobs(x)[kept], base[kept]).amax(-1).to("cpu")
            worst = int(change.argmax())
            row_change = max(row_change, float(change[worst]))
            if row_change > atol:
                raise GraphRejected(
                    f"the model mixes rows of a batch: the log-probabilities of row "
                    f"{int(kept.nonzero()[worst])} changed by {row_change:.3g} when only other "
                    f"rows changed (allowed: {atol} nats); score each row on its own"
                )

    future_change = 0.0
    positions = torch.arange(seq_len)
    for j in range(math.ceil(seq_len / batch)):
        cut = j * batch + torch.arange(batch)  # row i keeps tokens 0..cut[i]
        real = batch_of(j // cuts_per_row)
        spliced = torch.where(positions > cut[:, None], batch_of(j, rows // 2), real)
        if j % cuts_per_row == 0 and j:
            base = logprobs(real)
        change = _change(logprobs(spliced), base).to("cpu")
        change = torch.where(positions <= cut[:, None], change, 0.0)
        row, pos = divmod(int(change.argmax()), seq_len)
        future_change = max(future_change, float(change[row, pos]))
        if future_change > atol:
            raise GraphRejected(
                f"the model reads future tokens: the log-probabilities at position {pos} "
                f"changed by {future_change:.3g} when only tokens after position "
                f"{int(cut[row])} changed (allowed: {atol} nats); make it causal"
            )
    return ProbeReport(forwards, time.perf_counter() - t0, future_change, row_change)
