"""Attacks on the model file and the graph the referee runs; each one wins against a referee
that calls torch.export.load and trusts the graph, and must lose against trainer/graph.py and
trainer/probes.py. Honest models (train.py's GPT and the variants a proposer would write)
load, match their eager logits and pass the probes."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._export.serde.serialize import serialize

import trainer.graph as graph
import trainer.train as train_py
from trainer.graph import GraphRejected, Limits, export_model, load_model
from trainer.prepare import evaluate_bpb, load_eval_data
from trainer.probes import check_model

V, T, B = 512, 64, 8  # the test vocabulary; probes on 64-token rows, 8 to a batch


@pytest.fixture(scope="module")
def val(data) -> np.ndarray:
    return load_eval_data(data)[0]


def gpt() -> nn.Module:
    """train.py's model, 1 x 64, with random weights (its zero-initialized head would make
    every probe trivially pass)."""
    torch.manual_seed(0)
    model = train_py.GPT(V, 64, 1, T)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


class GPT2(nn.Module):
    """Learned positions, LayerNorm, GELU, attention by hand with a tril mask, dropout (in
    eval), a tied head."""

    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, 32), nn.Embedding(T, 32)
        self.ln1, self.ln2 = nn.LayerNorm(32), nn.LayerNorm(32)
        self.qkv, self.fc, self.drop = nn.Linear(32, 96), nn.Linear(32, 128), nn.Dropout(0.1)
        self.out = nn.Linear(128, 32)
        self.register_buffer("mask", torch.tril(torch.ones(T, T)).view(1, 1, T, T))
        self.head = nn.Linear(32, V, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx):
        b, t = idx.shape
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))
        q, k, v = (z.view(b, t, 2, 16).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(32, 2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(16)
        att = self.drop(att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf")).softmax(-1))
        x = x + (att @ v).transpose(1, 2).contiguous().view(b, t, 32)
        return self.head(self.ln2(x + self.out(F.gelu(self.fc(x), approximate="tanh"))))


class Llama(nn.Module):
    """RMSNorm by hand, complex rotary, SwiGLU, SDPA with a boolean mask, einsum head."""

    def __init__(self):
        super().__init__()
        self.emb, self.wqkv = nn.Embedding(V, 32), nn.Linear(32, 96, bias=False)
        self.w1, self.w3, self.w2 = nn.Linear(32, 64), nn.Linear(32, 64), nn.Linear(64, 32)
        self.out = nn.Linear(32, V, bias=False)
        angles = torch.outer(torch.arange(T).float(), 1e-4 ** (torch.arange(0, 16, 2) / 16))
        self.register_buffer("freqs", torch.polar(torch.ones_like(angles), angles))

    def rope(self, x):
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(z * self.freqs[: x.shape[1], None]).flatten(3).type_as(x)

    def forward(self, idx):
        b, t = idx.shape
        x = self.emb(idx)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        q, k, v = self.wqkv(h).view(b, t, 3, 2, 16).unbind(2)
        q, k = self.rope(q), self.rope(k)
        causal = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril()
        y = F.scaled_dot_product_attention(*(z.transpose(1, 2) for z in (q, k, v)), causal)
        x = x + y.transpose(1, 2).reshape(b, t, 32)
        x = x + self.w2(F.silu(self.w1(x)) * self.w3(x))
        return 30 * torch.tanh(torch.einsum("btc,vc->btv", x, self.out.weight) / 30)


class Misc(nn.Module):
    """A token shift with F.pad, a causal depthwise conv, ALiBi in a float mask, shared KV."""

    def __init__(self):
        super().__init__()
        self.emb, self.conv = nn.Embedding(V, 32), nn.Conv1d(32, 32, 3, groups=32)
        self.mix = nn.Parameter(torch.full((32,), 0.5))
        self.q, self.kv, self.out = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, V)

    def forward(self, idx):
        b, t = idx.shape
        x = self.emb(idx)
        x = torch.lerp(x, F.pad(x, (0, 0, 1, 0))[:, :-1], torch.sigmoid(self.mix))
        x = x + self.conv(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)
        q = self.q(x).view(b, t, 2, 16).transpose(1, 2)
        k, v = (
            z.transpose(1, 2).expand(b, 2, t, 16) for z in self.kv(x).view(b, t, 1, 32).chunk(2, -1)
        )
        i = torch.arange(t, device=idx.device)
        mask = torch.full((t, t), float("-inf"), device=idx.device).triu(1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask - (i[:, None] - i).abs() * 0.1)
        return self.out(F.layer_norm(F.mish(x + y.transpose(1, 2).reshape(b, t, 32)), (32,)))


class Leak(nn.Module):
    """An honest-looking bigram model plus `leak` x one-hot(next token) at chosen positions."""

    def __init__(self, every: int = 1, shift: int = 1, mix_rows: bool = False):
        super().__init__()
        self.emb, self.every, self.shift, self.mix_rows = nn.Embedding(V, V), every, shift, mix_rows
        self.register_buffer("eye", torch.eye(V))

    def forward(self, idx):
        logits = self.emb(idx)
        if self.mix_rows:  # each row also sees the next row of its batch
            return logits + 0.5 * self.emb(torch.roll(idx, -1, dims=0))
        future = F.embedding(torch.roll(idx, -self.shift, dims=1), self.eye)
        where = torch.arange(idx.shape[1], device=idx.device) % self.every == self.every - 1
        return logits + 5.0 * future * where[None, :, None]


def export(model: nn.Module, path: Path, batch: int = B) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    export_model(model, torch.zeros(batch, T, dtype=torch.long), path)
    return path


def load(path: Path, **kw):
    return load_model(path, **{"batch": B, "seq_len": T, "vocab_size": V, "device": "cpu", **kw})


def edit_graph(path: Path, change) -> None:
    doc = json.loads((path / graph.GRAPH_FILE).read_text())
    change(doc["graph_module"]["graph"], doc)
    (path / graph.GRAPH_FILE).write_text(json.dumps(doc))


def rejected_before_any_op(path: Path, monkeypatch, match: str) -> None:
    """load_model refuses `path` with a message matching `match`, before even the pass on
    fake tensors runs any op."""

    def no_ops(*a, **k):
        raise AssertionError("an op ran before the graph was rejected")

    monkeypatch.setattr(graph, "shape_pass", no_ops)
    with pytest.raises(GraphRejected, match=match):
        load(path)


def copy_of(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in graph.MODEL_FILES:
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


@pytest.fixture(scope="module")
def honest_dir(tmp_path_factory) -> Path:
    return export(gpt(), tmp_path_factory.mktemp("honest"))


def first_node(g: dict, op: str) -> dict:
    return next(n for n in g["nodes"] if n["target"] == f"torch.ops.aten.{op}")


# --------------------------------------------------------------------------- honest models


@pytest.mark.parametrize("make", [gpt, GPT2, Llama, Misc], ids=lambda m: m.__name__)
def test_honest_models_load_match_eager_and_pass_the_probes(tmp_path, val, make):
    torch.manual_seed(0)
    model = make().eval()
    forward = load(export(model, tmp_path))
    x = torch.from_numpy(val[: B * T].astype(np.int64)).view(B, T)
    with torch.no_grad():
        assert torch.allclose(forward(x), model(x), atol=1e-5)
    report = check_model(forward, val, seq_len=T, batch=B, device="cpu")
    assert report.future_change < 1e-5 and report.row_change < 1e-5
    assert report.forwards == 1 + 2 * 3 + 2 * (T // B) - 1
    assert forward.stats.nodes > 5 and forward.stats.check_seconds > 0 and report.seconds > 0


def test_each_call_starts_from_the_loaded_weights(honest_dir, val):
    forward = load(honest_dir)
    x = torch.from_numpy(val[: B * T].astype(np.int64)).view(B, T)
    before = forward(x).clone()
    for w in forward.weights.values():  # as a kernel writing into its inputs would
        w.add_(1)
    assert torch.equal(forward(x), before)


def test_softcapped_gpt_scores_as_its_eager_self(tmp_path, val, monkeypatch):
    monkeypatch.setattr(train_py, "LOGIT_SOFTCAP", 15.0)
    model = gpt()
    forward = load(export(model, tmp_path))
    assert "tanh" in forward.stats.ops
    kw = dict(seq_len=T, batch_size=B, eval_tokens=40 * T)
    assert evaluate_bpb(forward, val, np.ones(V, dtype=np.int64), **kw) == pytest.approx(
        evaluate_bpb(model, val, np.ones(V, dtype=np.int64), **kw), rel=1e-6
    )


def test_scoring_batches_are_shuffled_rows_each_scored_once(val):
    seen = []

    def record(x):
        seen.append(x.clone())
        return torch.zeros(*x.shape, V)

    rows = 21
    evaluate_bpb(
        record, val, np.ones(V, dtype=np.int64), seq_len=T, batch_size=B, eval_tokens=rows * T
    )
    windows = {tuple(val[i * T : (i + 1) * T]): i for i in range(rows)}
    batches = [[windows[tuple(r.tolist())] for r in x] for x in seen]
    scored = [i for b in batches[:-1] for i in b] + batches[-1][: rows % B]
    assert sorted(scored) == list(range(rows))
    assert batches[0] != list(range(B))  # not consecutive windows
    assert len(set(batches[-1])) == B  # the short last batch is padded with other rows


# --------------------------------------------------------------------------- the probes


@pytest.mark.parametrize(
    "model, message",
    [
        (Leak(), "reads future tokens"),
        (Leak(every=16), "reads future tokens"),  # leaks at positions 15, 31, ... only
        (Leak(shift=-1), "at position 0 changed"),  # roll wraps the last token to the front
        (Leak(mix_rows=True), "mixes rows of a batch"),
    ],
    ids=["next-token", "every-16th", "wrap-around", "row-mixer"],
)
def test_leaky_models_are_caught_by_the_probes(tmp_path, val, model, message):
    forward = load(export(model, tmp_path))
    with pytest.raises(GraphRejected, match=message):
        check_model(forward, val, seq_len=T, batch=B, device="cpu")


def test_cheaper_probes_sharing_real_rows_still_cover_every_position(tmp_path, val):
    forward = load(export(Leak(every=16), tmp_path))
    with pytest.raises(GraphRejected, match="reads future tokens"):
        check_model(forward, val, seq_len=T, batch=B, device="cpu", cuts_per_row=4)
    honest = check_model(
        load(export(gpt(), tmp_path / "gpt")), val, seq_len=T, batch=B, device="cpu", cuts_per_row=4
    )
    assert honest.forwards == 1 + 2 * 3 + T // B + T // B // 4 - 1


def test_non_causal_attention_is_caught(tmp_path, val, monkeypatch):
    monkeypatch.setattr(
        train_py, "attention", lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    )
    forward = load(export(gpt(), tmp_path))
    with pytest.raises(GraphRejected, match=r"reads future tokens: .* at position \d+ changed by"):
        check_model(forward, val, seq_len=T, batch=B, device="cpu")


def test_a_leak_shrunk_by_scaled_down_logits_is_still_seen(val):
    leak = Leak()

    def tiny(x):  # logits / 1000: the leak moves logits by 0.005, log-probs by about as much
        return leak(x) / 1000

    with pytest.raises(GraphRejected, match="reads future tokens"):
        check_model(tiny, val, seq_len=T, batch=B, device="cpu")


# --------------------------------------------------------------------------- the model file


class Payload:
    """A pickle that, when loaded, creates a marker file: code execution in the referee."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickles_are_never_unpickled(tmp_path, honest_dir):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(live)))
    assert live.exists()  # the payload works: torch.load(weights_only=False) would run it
    marker = tmp_path / "marker"
    for name in graph.MODEL_FILES:
        path = copy_of(honest_dir, tmp_path / f"in-{name}")
        torch.save({"w": Payload(marker)}, path / name)
        with pytest.raises(GraphRejected, match="not valid JSON|outside weights.bin"):
            load(path)
    old_format = tmp_path / "pt2"  # what harness.py writes today, with a planted pickle
    old_format.mkdir()
    (old_format / "model.pt2").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(GraphRejected, match="graph.json cannot be opened"):
        load(old_format)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target, arg, match",
    [
        ("torch.ops.aten.from_file.default", {"as_string": "/etc/passwd"}, "aten.from_file"),
        ("torch.os.system", {"as_string": "touch MARKER"}, "torch.os.system, which is not"),
        ("torch.load", {"as_string": "MARKER"}, "not an ATen tensor op"),
        ("#my_extension.evil", {"as_string": "touch MARKER"}, "not an ATen tensor op"),
        ("torch.ops.higher_order.cond", {"as_string": "MARKER"}, "not an ATen tensor op"),
        ("torch.ops.aten._print.default", {"as_string": "MARKER"}, "aten._print"),
        ("torch.ops.aten.empty.memory_format", {"as_ints": [B, T, V]}, "uninitialised memory"),
        ("torch.ops.aten.empty_like.default", {"as_tensor": {"name": "idx"}}, "uninitialised"),
        ("torch.ops.aten.rand.default", {"as_ints": [B, T, V]}, "it is random"),
        ("torch.ops.aten.add_.Tensor", {"as_tensor": {"name": "idx"}}, "in place"),
        ("torch.ops.aten.copy_.default", {"as_tensor": {"name": "p_embed_weight"}}, "in place"),
    ],
)
def test_a_node_calling_a_forbidden_target_is_rejected_unresolved(
    tmp_path, honest_dir, monkeypatch, target, arg, match
):
    path = copy_of(honest_dir, tmp_path / "m")
    marker = tmp_path / "MARKER"
    monkeypatch.chdir(tmp_path)

    def plant(g, _):
        node = g["nodes"][3]
        node["target"] = target
        node["inputs"] = [{"name": "self", "arg": arg, "kind": 1}]

    edit_graph(path, plant)
    rejected_before_any_op(path, monkeypatch, match)
    assert not marker.exists()


def test_symbolic_shapes_and_sympy_strings_are_rejected_unparsed(tmp_path, honest_dir, monkeypatch):
    marker = tmp_path / "MARKER"
    evil = f"__import__('os').system('touch {marker}')"
    path = copy_of(honest_dir, tmp_path / "ranges")
    edit_graph(path, lambda g, doc: doc.update(range_constraints={evil: {"min_val": 1}}))
    rejected_before_any_op(path, monkeypatch, "symbolic shapes")
    path = copy_of(honest_dir, tmp_path / "values")
    edit_graph(path, lambda g, doc: g["sym_int_values"].update(s0={"as_expr": {"expr_str": evil}}))
    rejected_before_any_op(path, monkeypatch, "symbolic shapes")
    path = copy_of(honest_dir, tmp_path / "sizes")

    def symbolic_size(g, _):
        g["tensor_values"]["idx"]["sizes"][0] = {"as_expr": {"expr_str": evil}}

    edit_graph(path, symbolic_size)
    rejected_before_any_op(path, monkeypatch, "symbolic or out-of-range integer")
    path = copy_of(honest_dir, tmp_path / "args")

    def symbolic_arg(g, _):
        first_node(g, "view.default")["inputs"][1]["arg"] = {"as_sym_ints": [{"as_name": "s0"}]}

    edit_graph(path, symbolic_arg)
    rejected_before_any_op(path, monkeypatch, "symbolic or out-of-range integer")
    assert not marker.exists()


@pytest.mark.parametrize(
    "arg, match",
    [
        ({"as_graph": {"graph": {}, "name": "g"}}, "as_graph argument"),
        ({"as_custom_obj": {"name": "obj", "class_fqn": "os.system"}}, "as_custom_obj"),
        ({"as_operator": "torch.os.system"}, "as_operator"),
        ({"as_string": "rm -rf /"}, "which is not allowed"),
        ({"as_int": 10**30}, "out-of-range integer"),
    ],
)
def test_arguments_other_than_tensors_and_plain_constants_are_rejected(
    tmp_path, honest_dir, monkeypatch, arg, match
):
    path = copy_of(honest_dir, tmp_path / "m")

    def plant(g, _):
        first_node(g, "view.default")["inputs"][1]["arg"] = arg

    edit_graph(path, plant)
    rejected_before_any_op(path, monkeypatch, match)


def test_random_attention_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(
        train_py,
        "attention",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True),
    )
    path = export(gpt(), tmp_path)
    rejected_before_any_op(path, monkeypatch, "dropout_p=0.1: scoring is not random")


def test_batch_norm_cannot_keep_state_across_calls(tmp_path, monkeypatch):
    """aten.batch_norm(training=True) updates its running statistics in place although its
    schema says it mutates nothing: a graph could count its calls and behave while probed."""

    class Norm(Leak):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(V)

        def forward(self, idx):
            return self.bn(self.emb(idx).transpose(1, 2)).transpose(1, 2)

    path = export(Norm().eval(), tmp_path)

    def training(g, _):
        node = first_node(g, "_native_batch_norm_legit_no_training.default")
        node["target"] = "torch.ops.aten.batch_norm.default"
        extra = {"training": {"as_bool": True}, "cudnn_enabled": {"as_bool": False}}
        node["inputs"] += [{"name": k, "arg": v, "kind": 1} for k, v in extra.items()]
        node["outputs"] = node["outputs"][:1]

    edit_graph(path, training)
    rejected_before_any_op(path, monkeypatch, "training=True: .* running statistics in place")


def test_a_size_the_kernel_trusts_is_refused(tmp_path, honest_dir, monkeypatch):
    def trusted_size(g, _):  # repeat_interleave writes output_size elements, whatever it makes
        node = first_node(g, "embedding.default")
        node["target"] = "torch.ops.aten.repeat_interleave.self_int"
        node["inputs"] = [
            {"name": "self", "arg": {"as_tensor": {"name": "idx"}}, "kind": 1},
            {"name": "repeats", "arg": {"as_int": 2}, "kind": 1},
            {"name": "output_size", "arg": {"as_int": 4}, "kind": 2},
        ]

    path = copy_of(honest_dir, tmp_path / "m")
    edit_graph(path, trusted_size)
    rejected_before_any_op(path, monkeypatch, "output_size: a size it trusts")


def test_huge_intermediates_are_rejected_without_allocating(tmp_path, honest_dir, monkeypatch):
    def huge(g, _):  # a node making 1e12 floats, declared as such
        node = first_node(g, "view.default")
        node["inputs"][1]["arg"] = {"as_ints": [10**6, 10**6]}
        g["tensor_values"][node["outputs"][0]["as_tensor"]["name"]]["sizes"] = [
            {"as_int": 10**6},
            {"as_int": 10**6},
        ]

    path = copy_of(honest_dir, tmp_path / "declared")
    edit_graph(path, huge)
    rejected_before_any_op(path, monkeypatch, r"shape \(1000000, 1000000\).*over the referee's cap")
    monkeypatch.undo()

    def lying(g, _):  # declared small, computes 1e12: only the pass on fake tensors sees it
        node = first_node(g, "embedding.default")
        node["target"] = "torch.ops.aten.ones.default"
        node["inputs"] = [{"name": "size", "arg": {"as_ints": [10**6, 10**6]}, "kind": 1}]

    path = copy_of(honest_dir, tmp_path / "lying")
    edit_graph(path, lying)
    with pytest.raises(GraphRejected, match="declares embedding .* but it computes"):
        load(path)
    with pytest.raises(GraphRejected, match="over the referee's caps"):
        load(honest_dir, limits=Limits(max_work=1e3))


def test_wrong_signatures_are_rejected(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, V)

        def forward(self, idx, other):
            return self.emb(idx) + self.emb(other)

    path = tmp_path / "two"
    path.mkdir()
    x = torch.zeros(B, T, dtype=torch.long)
    program = torch.export.export(Two(), (x, x))  # export_model takes one example only
    (path / graph.GRAPH_FILE).write_bytes(serialize(program).exported_program)
    with pytest.raises(GraphRejected, match="must take one input, the tokens; .* takes 2"):
        load(path)

    class Wide(Leak):
        def forward(self, idx):
            return torch.cat([super().forward(idx), super().forward(idx)[..., :1]], -1)

    with pytest.raises(GraphRejected, match=r"logits of shape \(8, 64, 512\); .* \(8, 64, 513\)"):
        load(export(Wide(), tmp_path / "wide"))
    with pytest.raises(GraphRejected, match=r"int64 tokens of shape \(8, 64\); .* \(\(4, 64\)"):
        load(export(Leak(), tmp_path / "batch4", batch=4))

    class Pair(Leak):
        def forward(self, idx):
            return super().forward(idx), idx

    with pytest.raises(GraphRejected, match="one logits tensor"):
        load(export(Pair(), tmp_path / "pair"))

    class Counter(Leak):  # mutates a buffer on every call: state across calls
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, idx):
            self.calls += 1
            return super().forward(idx) * self.calls

    with pytest.raises(GraphRejected, match="mutate no buffer.*buffer_mutation"):
        load(export(Counter(), tmp_path / "counter"))


def test_links_pipes_and_oversized_files_are_refused(tmp_path, honest_dir):
    secret = tmp_path / "val.bin"
    secret.write_bytes((honest_dir / graph.WEIGHTS_FILE).read_bytes())
    for kind in ("symlink", "hardlink", "fifo"):
        path = copy_of(honest_dir, tmp_path / kind)
        (path / graph.WEIGHTS_FILE).unlink()
        if kind == "symlink":
            (path / graph.WEIGHTS_FILE).symlink_to(secret)
        elif kind == "hardlink":
            os.link(secret, path / graph.WEIGHTS_FILE)
        else:
            os.mkfifo(path / graph.WEIGHTS_FILE)  # opening it for reading would block
        with pytest.raises(GraphRejected, match="weights.bin"):
            load(path)
    path = copy_of(honest_dir, tmp_path / "dir")
    (path / graph.GRAPH_FILE).unlink()
    (path / graph.GRAPH_FILE).mkdir()
    with pytest.raises(GraphRejected, match="graph.json must be a plain file"):
        load(path)
    link = tmp_path / "dirlink"
    link.symlink_to(honest_dir)
    with pytest.raises(GraphRejected, match="directory cannot be opened"):
        load(link)
    with pytest.raises(GraphRejected, match="over the referee's cap"):
        load(honest_dir, limits=Limits(max_graph_bytes=1000))
    path = copy_of(honest_dir, tmp_path / "nested")
    (path / graph.GRAPH_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(GraphRejected, match="not valid JSON"):
        load(path)


def test_the_weight_index_must_agree_with_the_graph_and_the_file(tmp_path, honest_dir):
    path = copy_of(honest_dir, tmp_path / "m")
    index = json.loads((path / graph.INDEX_FILE).read_text())
    name = next(iter(index))
    index[name]["offset"] = 2**40
    (path / graph.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(GraphRejected, match="outside weights.bin"):
        load(path)
    index[name] = {"dtype": "object", "shape": [1], "offset": 0}
    (path / graph.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(GraphRejected, match="differently from the graph"):
        load(path)


def test_an_out_of_range_index_is_refused_before_the_kernel(tmp_path, val):
    class Past(Leak):
        def forward(self, idx):
            return self.emb(idx + V)  # on CUDA: a device-side assert in the referee

    forward = load(export(Past(), tmp_path))
    with pytest.raises(GraphRejected, match=r"aten.embedding got an index outside \[0, 512\)"):
        forward(torch.zeros(B, T, dtype=torch.long))
