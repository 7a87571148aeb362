"""The model file: the trial exports its graph here, and the referee loads it as hostile data.

    export_model(model, example, out_dir)      in the sandboxed trial (trainer/harness.py)
    forward = load_model(out_dir, batch=, seq_len=, vocab_size=, device=)   in the referee

The trial writes graph.json (torch.export's JSON graph, functionalized), weights.bin (raw
tensor bytes) and weights.json (their index). The referee never unpickles and never calls
torch's export deserializer, which falls back to a full `torch.load` and resolves any
"torch.xxx" target by name: it reads each file through a size cap, refusing links (a link to
the validation split would smuggle it in as weights), parses JSON only, and runs the graph
with its own interpreter (trainer/interpreter.py), whose ops come from an allowlist
(trainer/allowlist.py). The signature must be one int64 (batch, seq_len) input to one
floating (batch, seq_len, vocab) output, with no mutation; every declared shape must be
static and bounded before a pass on fake tensors computes the real ones; every call starts
from the weights as loaded, so no call leaves state for the next. Any violation raises
GraphRejected with a message the proposer can learn from. check_model, the causality and
batch-independence probes, lives in trainer/probes.py and is re-exported here.
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._export.serde.serialize import serialize

from trainer.interpreter import (
    DTYPE_CODES,
    DTYPES,
    GraphRejected,
    Limits,
    Node,
    as_int,
    compile_node,
    member,
    refs,
    reject,
    run,
    shape_pass,
)
from trainer.probes import ProbeReport, check_model

__all__ = [
    "GraphRejected",
    "Limits",
    "LoadedModel",
    "ProbeReport",
    "check_model",
    "export_model",
    "load_model",
]

GRAPH_FILE, INDEX_FILE, WEIGHTS_FILE = "graph.json", "weights.json", "weights.bin"
MODEL_FILES = (GRAPH_FILE, INDEX_FILE, WEIGHTS_FILE)
ALIGN = 64  # byte alignment of each tensor in weights.bin
MAX_INDEX_BYTES = 16 * 2**20
DEFAULT_LIMITS = Limits()
WEIGHT_KINDS = {"parameter", "buffer", "tensor_constant"}


def export_model(model: torch.nn.Module, example: torch.Tensor, out_dir: Path) -> None:
    """Export `model` on `example` (int64 (B, T)) into out_dir as graph, index and weights."""
    with torch.no_grad():
        program = torch.export.export(model, (example,)).run_decompositions({})
    art = serialize(
        program,
        serialize_state_dict=False,
        serialize_constants=False,
        serialize_example_inputs=False,
    )
    out_dir = Path(out_dir)
    (out_dir / GRAPH_FILE).write_bytes(art.exported_program)
    tensors = {**program.state_dict, **program.constants}
    index, offset = {}, 0
    with open(out_dir / WEIGHTS_FILE, "wb") as f:
        for spec in program.graph_signature.input_specs:
            if spec.target is None:  # the token input
                continue
            t = tensors[spec.target].detach().to("cpu").contiguous()
            dtype = str(t.dtype).removeprefix("torch.")
            index[spec.arg.name] = {"dtype": dtype, "shape": list(t.shape), "offset": offset}
            f.write(t.reshape(-1).view(torch.uint8).numpy())
            pad = -t.nbytes % ALIGN
            f.write(b"\0" * pad)
            offset += t.nbytes + pad
    (out_dir / INDEX_FILE).write_text(json.dumps(index))


@dataclass
class GraphStats:
    nodes: int
    ops: list[str]
    weight_bytes: int
    peak_bytes: int  # the shape pass's bound on one forward's memory
    work: float  # FLOPs of matmul-like ops plus elements written by the others, per forward
    matmul_flops: float  # FLOPs of the matmul-like ops alone (attention included), per forward
    read_seconds: float  # files and JSON
    check_seconds: float  # structure, metadata, the shape pass and weights onto the device


class LoadedModel:
    """A checked graph as a function: (batch, seq_len) int64 tokens -> logits on `device`.

    Each call starts from the weights as loaded: a kernel that writes into an input its
    schema calls read-only (aten.batch_norm's running statistics do) cannot carry state from
    one call to the next, so what the probes saw is what scoring gets.
    """

    def __init__(self, nodes, weights, names, shape, device, stats):
        self.nodes, self.stats = nodes, stats
        self.device = torch.device(device)
        self.weights = {k: w.clone() for k, w in weights.items()}
        self._pristine = [(self.weights[k], w) for k, w in weights.items()]
        self.input_name, self.output_name = names
        self.input_shape = shape

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tuple(tokens.shape) != self.input_shape or tokens.dtype != torch.int64:
            raise ValueError(f"expected int64 tokens of shape {self.input_shape}")
        env = {**self.weights, self.input_name: tokens.to(self.device)}
        with torch.no_grad():
            for weight, pristine in self._pristine:
                weight.copy_(pristine)
            run(self.nodes, env, self.device)
        return env[self.output_name]


def _read(dir_fd: int, name: str, cap: int) -> bytearray:
    try:  # O_NONBLOCK: a FIFO must not hang the referee before fstat sees it
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        reject(f"the model file {name} cannot be opened ({e.strerror}); it must be a plain file")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            reject(f"the model file {name} must be a plain file, not a link, directory or pipe")
        if st.st_size > cap:
            reject(f"the model file {name} is {st.st_size} bytes, over the referee's cap of {cap}")
        buf = bytearray(st.st_size)
        view, got = memoryview(buf), 0
        while got < len(buf) and (n := os.readv(fd, [view[got:]])):
            got += n
        if got != len(buf) or os.read(fd, 1):
            reject(f"the model file {name} changed while the referee read it")
    finally:
        os.close(fd)
    return buf


def _json(buf: bytearray, name: str):
    try:
        return json.loads(buf)
    except (ValueError, RecursionError) as e:
        reject(f"the model file {name} is not valid JSON: {str(e)[:200]}")


def _declared(value, name: str) -> tuple[tuple[int, ...], torch.dtype]:
    where = f"the metadata of {name}"
    sizes = tuple(as_int(s, where) for s in member(value, "sizes", list, where))
    code = member(value, "dtype", int, where)
    if code not in DTYPE_CODES or min(sizes, default=0) < 0:
        reject(f"the exported graph declares {name} with a dtype or shape the referee refuses")
    return sizes, DTYPE_CODES[code]


def _signature(gm: dict) -> tuple[list[str], list[str], str]:
    """(input names in order, weight names, the output's name); rejects any other shape."""
    sig = member(gm, "signature", dict, "the graph")
    order, weights, users = [], [], []
    for spec in member(sig, "input_specs", list, "the signature"):
        kind, v = next(iter(spec.items())) if isinstance(spec, dict) and len(spec) == 1 else ("", 0)
        arg = member(v, "arg", dict, f"a {kind} input")
        if kind in WEIGHT_KINDS:
            weights.append(member(arg, "name", str, f"a {kind} input"))
        elif kind == "user_input":
            users.append(member(member(arg, "as_tensor", dict, kind), "name", str, kind))
        else:
            reject(f"the exported graph takes a {kind} input: only weights and the tokens allowed")
        order.append(weights[-1] if kind in WEIGHT_KINDS else users[-1])
    if len(set(order)) != len(order):
        reject("the exported graph names two of its inputs alike")
    if len(users) != 1:
        reject(f"the model must take one input, the tokens; the exported graph takes {len(users)}")
    outs = member(sig, "output_specs", list, "the signature")
    kinds = [next(iter(o), "?") if isinstance(o, dict) else "?" for o in outs]
    if kinds != ["user_output"]:
        reject(
            "the model must return one logits tensor and mutate no buffer or input; the "
            f"exported graph's outputs are {kinds}"
        )
    arg = member(outs[0]["user_output"], "arg", dict, "the output")
    return order, weights, member(member(arg, "as_tensor", dict, "the output"), "name", str, "")


def _load_weights(dir_fd: int, names: list[str], declared: dict, limits: Limits):
    """The weights as CPU tensors over the bytes of weights.bin, checked against the graph."""
    index = _json(_read(dir_fd, INDEX_FILE, MAX_INDEX_BYTES), INDEX_FILE)
    if not isinstance(index, dict) or set(index) != set(names):
        reject(f"{INDEX_FILE} must list exactly the graph's {len(names)} weights")
    buf = _read(dir_fd, WEIGHTS_FILE, limits.max_weight_bytes)
    weights, total = {}, 0
    for name in names:
        entry = index[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
            reject(f"{INDEX_FILE} has no dtype for {name}")
        dtype = DTYPES.get(entry["dtype"])
        shape = tuple(as_int(s, name) for s in member(entry, "shape", list, name))
        offset = member(entry, "offset", int, name)
        nbytes = math.prod(shape) * dtype.itemsize if dtype else -1
        total += nbytes
        if (shape, dtype) != declared[name] or offset % ALIGN or offset < 0:
            reject(f"{INDEX_FILE} describes {name} differently from the graph")
        if offset + nbytes > len(buf) or total > limits.max_weight_bytes:
            reject(f"{INDEX_FILE} points {name} outside {WEIGHTS_FILE} or over the weight cap")
        if not nbytes:
            t = torch.zeros(shape, dtype=dtype)
        elif dtype is torch.bool:  # a bool byte other than 0 or 1 is undefined behaviour
            t = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=offset) != 0
        else:
            t = torch.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset)
        weights[name] = t.view(shape)
    return weights, total


def _size_problem(name: str, shape: tuple, dtype: torch.dtype, limits: Limits) -> None:
    size = math.prod(shape) * max(dtype.itemsize, 4 if dtype.is_floating_point else 1)
    if size > limits.max_tensor_bytes:
        reject(
            f"the exported graph declares {name} of shape {shape} ({size / 2**30:.3g} GiB), "
            f"over the referee's cap of {limits.max_tensor_bytes / 2**30:.3g} GiB per tensor"
        )


def _compile(nodes_json: list, declared: dict, values: dict, keep: set, limits: Limits):
    """The checked nodes, each with the values it is the last to read (never those in keep)."""
    nodes: list[Node] = []
    last: dict[str, int] = {}
    for i, raw in enumerate(nodes_json):
        node = compile_node(raw, f"node {i}")
        if node is None:
            continue
        for name in refs(node):
            if name not in declared:
                reject(f"aten.{node.name} (node {i}) reads {name!r}, which no earlier node makes")
            last[name] = len(nodes)
        for out in node.outputs:
            for name in out if isinstance(out, list) else [out] if out else []:
                if name in declared:
                    reject(f"aten.{node.name} (node {i}) redefines {name!r}")
                declared[name] = _declared(values.get(name), name)
                _size_problem(name, *declared[name], limits)
                last[name] = len(nodes)
        nodes.append(node)
    for name, i in last.items():
        if name not in keep:
            nodes[i].free.append(name)
    return nodes


def load_model(
    out_dir: Path,
    *,
    batch: int,
    seq_len: int,
    vocab_size: int,
    device: str,
    limits: Limits = DEFAULT_LIMITS,
) -> LoadedModel:
    """The graph the trial exported to out_dir, checked, as a function of the tokens.

    Raises GraphRejected, before any op runs on real data, for anything the referee refuses.
    The function's `.stats` says what was loaded and what reading and checking it cost.
    """
    t0 = time.perf_counter()
    try:
        dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        reject(f"the model directory cannot be opened ({e.strerror})")
    try:
        doc = _json(_read(dir_fd, GRAPH_FILE, limits.max_graph_bytes), GRAPH_FILE)
        read = time.perf_counter() - t0
        gm = member(doc, "graph_module", dict, "the file")
        graph = member(gm, "graph", dict, "the graph module")
        symbolic = ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values")
        if doc.get("range_constraints") or any(graph.get(k) for k in symbolic):
            reject("the exported graph has symbolic shapes or custom objects; export it static")
        order, weight_names, output = _signature(gm)
        inputs = member(graph, "inputs", list, "the graph")
        names = [member(member(a, "as_tensor", dict, "an input"), "name", str, "") for a in inputs]
        outputs = member(graph, "outputs", list, "the graph")
        if names != order or outputs != [{"as_tensor": {"name": output}}]:
            reject("the exported graph's inputs or outputs disagree with its signature")
        (token,) = set(order) - set(weight_names)
        values = member(graph, "tensor_values", dict, "the graph")
        raw_nodes = member(graph, "nodes", list, "the graph")
        if len(raw_nodes) > limits.max_nodes:
            reject(
                f"the exported graph has {len(raw_nodes)} nodes, over the cap of {limits.max_nodes}"
            )
        declared = {n: _declared(values.get(n), n) for n in order}
        if declared[token] != ((batch, seq_len), torch.int64):
            reject(
                f"the model must take int64 tokens of shape {(batch, seq_len)}; the exported "
                f"graph takes {declared[token]}"
            )
        nodes = _compile(raw_nodes, declared, values, {output, *weight_names}, limits)
        shape, dtype = declared.get(output, ((), torch.int64))
        if shape != (batch, seq_len, vocab_size) or not dtype.is_floating_point:
            reject(
                f"the model must return floating logits of shape {(batch, seq_len, vocab_size)}; "
                f"the exported graph returns {shape} {dtype}"
            )
        t1 = time.perf_counter()
        weights, weight_bytes = _load_weights(dir_fd, weight_names, declared, limits)
        read += time.perf_counter() - t1
    finally:
        os.close(dir_fd)
    inputs = [(n, declared[n]) for n in order]
    peak, work, matmul = shape_pass(nodes, inputs, declared, limits, device)
    weights = {k: w.to(device) for k, w in weights.items()}
    total = time.perf_counter() - t0
    stats = GraphStats(
        nodes=len(nodes),
        ops=sorted({n.name for n in nodes}),
        weight_bytes=weight_bytes,
        peak_bytes=peak,
        work=work,
        matmul_flops=matmul,
        read_seconds=read,
        check_seconds=total - read,
    )
    return LoadedModel(nodes, weights, (token, output), (batch, seq_len), device, stats)
