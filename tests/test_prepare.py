"""Data preparation and the metric: real Shakespeare, a local BPE, a pinned validation split."""

from __future__ import annotations

import math
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

from trainer.budget import CPU_DEFAULT_BUDGET, GPU_DEFAULT_BUDGET, Budget, BudgetClock
from trainer.prepare import (
    SPECIAL_TOKENS,
    evaluate_bpb,
    load_eval_data,
    load_manifest,
    load_tokenizer,
    prepare,
)

from conftest import TEST_VOCAB


def test_prepared_splits_tokenizer_and_byte_table(data):
    m = load_manifest(data)
    assert m["vocab_size"] == TEST_VOCAB and m["train_tokens"] > 1_000_000
    enc = load_tokenizer(data)
    assert enc.n_vocab == TEST_VOCAB
    text = "To be, or not to be: that is the question."
    assert enc.decode(enc.encode_ordinary(text)) == text
    val, token_bytes, _ = load_eval_data(data)
    assert all(token_bytes[enc.encode_single_token(s)] == 0 for s in SPECIAL_TOKENS)
    # Bytes of the validation split = what the byte table says (BOS counts as 0).
    sample = val[:5000]
    decoded = enc.decode_bytes([t for t in sample.tolist() if t != m["bos_id"]])
    assert len(decoded) == token_bytes[sample].sum()


def test_validation_split_is_disjoint_from_training(data):
    enc = load_tokenizer(data)
    train = np.fromfile(data / "train.bin", dtype=np.uint16)
    val, _, _ = load_eval_data(data)
    val_text = enc.decode(val[1:3000].tolist())
    assert "MACBETH" in val_text.upper() or "TWELFTH" in val_text.upper() or "Duke" in val_text
    snippet = val[1000:1040].tobytes()
    assert snippet not in train.tobytes()  # 40 consecutive validation tokens never seen in train


def test_prepare_is_idempotent(data):
    before = (data / "manifest.json").stat().st_mtime_ns
    assert prepare("builtin", TEST_VOCAB) == data
    assert (data / "manifest.json").stat().st_mtime_ns == before


def _prepare_in_child(vocab: int, q) -> None:
    q.put(str(prepare("builtin", vocab)))


def test_concurrent_prepares_on_one_node_build_once(cache_dir, data):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(300, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    outs = {q.get(timeout=5) for _ in procs}
    assert len(outs) == 1 and all(p.exitcode == 0 for p in procs)
    assert load_manifest(outs.pop())["vocab_size"] == 300


def test_tampered_validation_data_is_refused(tmp_path, data):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    with open(copy / "eval" / "val.bin", "r+b") as f:
        f.write(b"\x00\x00")
    with pytest.raises(RuntimeError, match="does not match its manifest"):
        load_eval_data(copy)


def test_bpb_of_a_uniform_model_is_log2_vocab_per_byte(data):
    val, token_bytes, m = load_eval_data(data)
    seq, vocab = 128, m["vocab_size"]

    def uniform(x):
        return torch.zeros(*x.shape, vocab)

    n = 20 * seq
    bpb = evaluate_bpb(uniform, val, token_bytes, seq_len=seq, batch_size=7, eval_tokens=n)
    targets = val[1 : n + 1]
    counted = token_bytes[targets] > 0
    expected = counted.sum() * math.log2(vocab) / token_bytes[targets].sum()
    assert bpb == pytest.approx(expected, rel=1e-6)


def test_a_budget_is_positive_whole_and_readable_or_refused_with_the_accepted_forms():
    for bad in ("5 minutes", "abc", "", "0steps", "0s", "-5s", "1.5steps", "0.5tokens", "1e3s"):
        with pytest.raises(ValueError, match=r"use seconds \(60s, 300s.*200steps.*2Mtokens"):
            Budget.parse(bad)
    for text in ("300s", "5m", "0.5s", "200steps", "1.2Mtokens", "500ktokens", "1234567tokens"):
        assert Budget.parse(str(Budget.parse(text))) == Budget.parse(text)  # str is canonical
    assert [str(Budget.parse(d)) for d in (CPU_DEFAULT_BUDGET, GPU_DEFAULT_BUDGET)] == [
        CPU_DEFAULT_BUDGET,
        GPU_DEFAULT_BUDGET,
    ]


def test_budget_parsing_and_clock():
    assert Budget.parse("300s") == Budget("time", 300)
    assert Budget.parse("5m").amount == 300
    assert Budget.parse("200steps") == Budget("steps", 200)
    assert Budget.parse("1.2Mtokens") == Budget("tokens", 1.2e6)
    assert str(Budget.parse("2Mtokens")) == "2Mtokens"
    with pytest.raises(ValueError, match="cannot read budget"):
        Budget.parse("five minutes")
    clock = BudgetClock(Budget.parse("3steps"))
    assert [clock.grant(1, 10).progress for _ in range(3)] == [0.0, 1 / 3, 2 / 3]
    assert [clock.grant(1, 10).rows for _ in range(2)] == [0, 0]


def test_a_token_budget_is_never_exceeded_by_a_large_request():
    tokens = BudgetClock(Budget.parse("250ktokens"))
    first = tokens.grant(2**14, 256)  # 4.2M tokens asked at once
    assert first.rows * 256 <= 250_000
    while tokens.grant(64, 256).rows:
        pass
    assert 250_000 - 256 < tokens.tokens <= 250_000


def test_time_budget_warmup_batches_are_marked_and_not_counted():
    clock = BudgetClock(Budget.parse("60s"), warmup_steps=2, warmup_allowance=30)
    grants = [clock.grant(8, 16) for _ in range(3)]
    assert [g.warmup for g in grants] == [True, True, False]
    assert (clock.warmup_tokens, clock.tokens) == (2 * 8 * 16, 8 * 16)


def test_cache_location_is_overridable(cache_dir):
    from trainer.prepare import cache_root

    assert cache_root() == cache_dir
    assert os.environ["AUTORESEARCH_CACHE"] == str(cache_dir)
