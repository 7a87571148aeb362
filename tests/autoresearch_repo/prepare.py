"""Data, tokenizer and evaluation for the test's karpathy-shaped autoresearch repo.

The contract is karpathy/autoresearch's: `python prepare.py` once writes the data and the
tokenizer to ~/.cache/autoresearch; train.py imports MAX_SEQ_LEN, TIME_BUDGET, Tokenizer,
make_dataloader and evaluate_bpb from here, trains for TIME_BUDGET seconds and prints the
`---` summary. Sized for a CPU with no network: the text is this machine's own Python
standard library sources (real text, present everywhere), the tokenizer is byte-level, and
the budget is seconds instead of five minutes. Do not modify (the protocol fixes this file).
"""

import math
import os
import pickle
import sys

import torch

MAX_SEQ_LEN = 64  # context length
TIME_BUDGET = 4  # training time budget in seconds (karpathy's is 300)
EVAL_TOKENS = 8 * 1024  # tokens in the validation evaluation

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
DATA_DIR = os.path.join(CACHE_DIR, "data")
TOKENIZER_DIR = os.path.join(CACHE_DIR, "tokenizer")
TRAIN_BYTES = 400_000
VAL_BYTES = 64 * 1024


def _corpus() -> bytes:
    """The standard library's modules, in name order, until there is enough text."""
    stdlib = os.path.dirname(os.__file__)
    out, size = [], 0
    for name in sorted(os.listdir(stdlib)):
        if name.endswith(".py"):
            with open(os.path.join(stdlib, name), "rb") as f:
                out.append(f.read())
            size += len(out[-1])
        if size >= TRAIN_BYTES + VAL_BYTES:
            break
    return b"".join(out)


class Tokenizer:
    """Byte-level: one token per byte, so bits per byte is the loss in bits."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    @classmethod
    def from_directory(cls, tokenizer_dir=TOKENIZER_DIR):
        with open(os.path.join(tokenizer_dir, "tokenizer.pkl"), "rb") as f:
            return cls(pickle.load(f)["vocab_size"])

    def get_vocab_size(self) -> int:
        return self.vocab_size

    def encode(self, text: bytes) -> list[int]:
        return list(text)


def _tokens(split: str) -> torch.Tensor:
    with open(os.path.join(DATA_DIR, f"{split}.bin"), "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()


def make_dataloader(tokenizer, batch_size, seq_len, split):
    """Endless (x, y, epoch) batches of a split, in a fixed order."""
    data = _tokens(split)
    per_epoch = (len(data) - 1) // (batch_size * seq_len)
    epoch = 1
    while True:
        for i in range(per_epoch):
            chunk = data[i * batch_size * seq_len : (i + 1) * batch_size * seq_len + 1]
            x = chunk[:-1].view(batch_size, seq_len)
            y = chunk[1:].view(batch_size, seq_len)
            yield x, y, epoch
        epoch += 1


@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size):
    """Bits per byte on the first EVAL_TOKENS of the validation split."""
    data = _tokens("val")
    total_nats, total_bytes = 0.0, 0
    step = batch_size * MAX_SEQ_LEN
    for i in range(0, min(EVAL_TOKENS, len(data) - 1) - step + 1, step):
        x = data[i : i + step].view(batch_size, MAX_SEQ_LEN)
        y = data[i + 1 : i + step + 1].view(batch_size, MAX_SEQ_LEN)
        loss = model(x, y, reduction="none")
        total_nats += float(loss.sum())
        total_bytes += y.numel()
    return total_nats / (math.log(2) * total_bytes)


if __name__ == "__main__":
    os.makedirs(DATA_DIR, exist_ok=True)
    os.makedirs(TOKENIZER_DIR, exist_ok=True)
    text = _corpus()
    if len(text) < TRAIN_BYTES + VAL_BYTES:
        sys.exit("not enough text in the standard library")
    with open(os.path.join(DATA_DIR, "train.bin"), "wb") as f:
        f.write(text[:TRAIN_BYTES])
    with open(os.path.join(DATA_DIR, "val.bin"), "wb") as f:
        f.write(text[TRAIN_BYTES : TRAIN_BYTES + VAL_BYTES])
    with open(os.path.join(TOKENIZER_DIR, "tokenizer.pkl"), "wb") as f:
        pickle.dump({"vocab_size": 256}, f)
    print(f"wrote {TRAIN_BYTES} train and {VAL_BYTES} val bytes to {DATA_DIR}")
