"""The referee's interpreter of an exported graph's JSON: checks each node, then runs it.

A node becomes a call of an allowlisted ATen op (trainer/allowlist.py) only after its target,
every argument and every output passed the checks here; targets are looked up in the
allowlist, never resolved by name, and arguments are tensor references or plain constants.
`shape_pass` first runs the whole graph on fake tensors of the scoring device (meta kernels,
chosen as that device would choose them), which computes every value's real shape and dtype
without allocating memory, and rejects a graph whose values disagree with their declared
metadata or go over the referee's limits (largest tensor, peak live memory, work). `run`
executes the same nodes eagerly on the scoring device, checking index bounds first so that
an out-of-range index cannot trip a device-side assert in the referee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch._export.serde.serialize import (
    _SERIALIZE_TO_TORCH_DTYPE,
    _SERIALIZE_TO_TORCH_MEMORY_FORMAT,
)
from torch._subclasses.fake_tensor import FakeTensorMode

from trainer.allowlist import (
    ALLOWED,
    FIRST_OUTPUT_ONLY,
    INDEX_ARGS,
    SKIPPED,
    argument_problem,
    refusal,
)

DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    + (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    + (torch.complex64, torch.complex128)
}
DTYPE_CODES = {k: v for k, v in _SERIALIZE_TO_TORCH_DTYPE.items() if v in DTYPES.values()}
_STRIDED = 7  # torch.strided in the serializer's Layout enum
_MATMUL_K = {"linear": "input", "matmul": "self", "mm": "self", "bmm": "self", "mv": "self"}
_MATMUL_K |= {"dot": "self", "addmm": "mat1", "baddbmm": "batch1"}


class GraphRejected(ValueError):
    """The exported model is not something the referee will run; the message says why."""


@dataclass(frozen=True)
class Limits:
    max_graph_bytes: int = 16 * 2**20
    max_weight_bytes: int = 8 * 2**30
    max_nodes: int = 20_000
    max_tensor_bytes: int = 4 * 2**30  # any one value (at >= 4 bytes per float: autocast)
    max_live_bytes: int = 24 * 2**30  # weights and values alive at once, at the peak
    max_work: float = 1e15  # per forward: matmul FLOPs plus elements written by other ops


def reject(msg: str):
    raise GraphRejected(msg[:1000])  # it may quote the candidate's strings


def member(d, key: str, typ: type, where: str):
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        reject(f"the exported graph is malformed: {where} has no {typ.__name__} {key!r}")
    return v


class _Ref:
    """A tensor argument: the name of a value in the graph, as opposed to a constant."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_DEVICE = object()  # a device argument: the device the graph runs on, whatever it says
_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def as_int(v, where: str) -> int:
    if isinstance(v, dict) and set(v) == {"as_int"}:
        v = v["as_int"]  # a SymInt that is a plain int
    if not isinstance(v, int) or isinstance(v, bool) or not -(2**63) <= v < 2**63:
        reject(f"{where} takes a symbolic or out-of-range integer; export with static shapes")
    return v


def _float(v, where: str) -> float:
    v = _FLOATS.get(v, v) if isinstance(v, str) else v
    if not isinstance(v, int | float) or isinstance(v, bool):
        reject(f"{where} takes a float argument the referee cannot read")
    return float(v)


def _tensor_ref(v, where: str) -> _Ref:
    return _Ref(member(v, "name", str, where))


def _optional_tensor(v, where: str) -> _Ref | None:
    if isinstance(v, dict) and set(v) == {"as_none"}:
        return None
    if isinstance(v, dict) and set(v) == {"as_tensor"}:
        return _tensor_ref(v["as_tensor"], where)
    reject(f"the exported graph is malformed: {where} has an optional tensor {str(v)[:80]}")


def _argument(a, where: str):
    """One serialized argument as a constant or _Ref (or a list of them); anything else,
    such as symbolic values, graphs, custom objects or operators, is rejected."""
    if not isinstance(a, dict) or len(a) != 1:
        reject(f"the exported graph is malformed: {where} has an argument {str(a)[:80]}")
    ((kind, v),) = a.items()
    simple = {"as_int": as_int, "as_sym_int": as_int, "as_float": _float}
    if kind in simple:
        return simple[kind](v, where)
    if kind in ("as_ints", "as_sym_ints", "as_floats", "as_bools") and isinstance(v, list):
        if kind == "as_bools":
            return v if all(isinstance(x, bool) for x in v) else reject(f"{where}: bad bools")
        one = _float if kind == "as_floats" else as_int
        return [one(x, where) for x in v]
    if kind == "as_none":
        return None
    if kind == "as_bool" and isinstance(v, bool):
        return v
    if kind == "as_string" and isinstance(v, str):
        return v  # allowed only where argument_problem says so
    if kind == "as_tensor":
        return _tensor_ref(v, where)
    if kind == "as_tensors" and isinstance(v, list):
        return [_tensor_ref(x, where) for x in v]
    if kind == "as_optional_tensors" and isinstance(v, list):
        return [_optional_tensor(x, where) for x in v]
    if kind == "as_optional_tensor":
        return _optional_tensor(v, where)
    code = v if isinstance(v, int) and not isinstance(v, bool) else None
    if kind == "as_scalar_type" and code in DTYPE_CODES:
        return DTYPE_CODES[code]
    if kind == "as_memory_format" and code in _SERIALIZE_TO_TORCH_MEMORY_FORMAT:
        return _SERIALIZE_TO_TORCH_MEMORY_FORMAT[code]
    if kind == "as_layout" and code == _STRIDED:
        return torch.strided
    if kind == "as_device" and isinstance(v, dict) and v.get("type") in ("cpu", "cuda"):
        return _DEVICE
    reject(f"{where} takes a {kind} argument, which the referee does not accept")


@dataclass
class Node:
    name: str  # aten op name, for messages
    op: torch._ops.OpOverload
    args: list  # positional, as constants and _Refs
    kwargs: dict
    named: dict  # every argument by schema name (for bounds checks)
    outputs: list  # per return: a name, a list of names (Tensor[]), or None (unused)
    free: list = field(default_factory=list)  # values last used here


def compile_node(node, where: str) -> Node | None:
    """The checked call a serialized node makes; None for a check the referee skips."""
    target = member(node, "target", str, where)
    op = ALLOWED.get(target)
    if op is None:
        reject(refusal(target))
    name = target.split(".")[3]
    where = f"aten.{name} ({where})"
    schema = op._schema
    named = {}
    for inp in member(node, "inputs", list, where):
        arg = member(inp, "name", str, where)
        if arg in named or arg not in {a.name for a in schema.arguments}:
            reject(f"{where} has an argument {arg!r} its schema does not")
        named[arg] = _argument(inp.get("arg"), where)
    problem = argument_problem(name, named)
    if problem:
        reject(problem)
    args, kwargs = [], {}
    for a in schema.arguments:
        if a.name not in named:
            continue
        if a.kwarg_only or len(args) < schema.arguments.index(a):
            kwargs[a.name] = named[a.name]
        else:
            args.append(named[a.name])
    outs = member(node, "outputs", list, where)
    if len(outs) != len(schema.returns):
        reject(f"{where} declares {len(outs)} outputs; its schema returns {len(schema.returns)}")
    bound = []
    for i, out in enumerate(outs):
        if (i > 0 and name in FIRST_OUTPUT_ONLY) or (isinstance(out, dict) and "as_none" in out):
            bound.append(None)
        elif isinstance(out, dict) and "as_tensors" in out:
            names = member(out, "as_tensors", list, where)
            bound.append([member(x, "name", str, where) for x in names])
        else:
            value = out.get("as_tensor") if isinstance(out, dict) else None
            bound.append(member(value, "name", str, where))
    return None if target in SKIPPED else Node(name, op, args, kwargs, named, bound)


def refs(node: Node) -> list[str]:
    """The values a node reads."""
    flat = [x for v in node.named.values() for x in (v if isinstance(v, list) else [v])]
    return [x.name for x in flat if isinstance(x, _Ref)]


def _resolve(v, env: dict, device):
    if isinstance(v, _Ref):
        return env[v.name]
    if v is _DEVICE:
        return device
    if isinstance(v, list):
        return [_resolve(x, env, device) for x in v]
    return v


def _index_ranges(node: Node, env: dict) -> list:
    """(index tensor, lowest, highest + 1) for each index argument of an indexing op."""
    a = {k: _resolve(v, env, None) for k, v in node.named.items()}
    index_arg, source_arg = INDEX_ARGS[node.name]
    idx, src = a[index_arg], a[source_arg]
    if node.name == "embedding":
        return [(idx, 0, src.shape[0])]
    if node.name == "index":
        return [(t, -src.shape[k], src.shape[k]) for k, t in enumerate(idx) if t is not None]
    n = src.numel() if a.get("dim") is None else src.shape[a["dim"]]
    return [(idx, -n, n)]


def run(nodes: list[Node], env: dict, device, observe=None) -> None:
    for node in nodes:
        if observe is None and node.name in INDEX_ARGS:
            for idx, low, high in _index_ranges(node, env):
                if idx.numel() and not (low <= int(idx.min()) and int(idx.max()) < high):
                    reject(f"aten.{node.name} got an index outside [{low}, {high}) on real tokens")
        args = [_resolve(a, env, device) for a in node.args]
        kwargs = {k: _resolve(v, env, device) for k, v in node.kwargs.items()}
        try:
            result = node.op(*args, **kwargs)
        except Exception as e:
            if observe is None:
                raise
            reject(f"the exported graph fails at aten.{node.name}: {type(e).__name__}: {e}"[:500])
        results = result if isinstance(result, tuple) else (result,)
        if observe is not None:
            observe(node, results)
        for names, value in zip(node.outputs, results, strict=True):
            if isinstance(names, list):
                env.update(zip(names, value, strict=True))
            elif names is not None:
                env[names] = value
        for name in node.free:
            del env[name]


def _is_matmul(name: str) -> bool:
    """Ops whose cost _cost counts as multiply-adds: the FLOPs MFU is measured by."""
    return (
        name in _MATMUL_K
        or name.startswith("conv")
        or "scaled_dot_product" in name
        or (name == "einsum")
    )


def _cost(node: Node, env: dict, out: torch.Tensor) -> float:
    """FLOPs of a matmul-like op (2 x outputs x contraction), else the elements it writes."""
    a = {k: _resolve(v, env, None) for k, v in node.named.items()}
    if node.name in _MATMUL_K:
        k = a[_MATMUL_K[node.name]].shape[-1]
    elif node.name.startswith("conv"):
        k = a["weight"][0].numel()
    elif "scaled_dot_product" in node.name:
        k = 2 * a["key"].shape[-2]
    elif node.name == "einsum":
        lhs, _, rhs = a["equation"].replace(" ", "").partition("->")
        sizes = {}
        for spec, t in zip(lhs.split(","), a["tensors"], strict=False):
            head, _, tail = spec.partition("...")
            dims = list(t.shape[: len(head)]) + (list(t.shape[-len(tail) :]) if tail else [])
            sizes.update(zip(head + tail, dims, strict=False))
        if not rhs:  # implicit output: the letters that appear once
            rhs = "".join(c for c in sizes if lhs.count(c) == 1)
        k = math.prod(n for c, n in sizes.items() if c not in rhs)
    else:
        return float(out.numel())
    return 2.0 * out.numel() * k


def _scaled_bytes(t: torch.Tensor, nbytes: int) -> int:
    """Bytes of `t` as if every float were at least 4 bytes: autocast may widen bf16 to fp32."""
    size = t.element_size()
    return nbytes * 4 // size if t.is_floating_point() and size < 4 else nbytes


def shape_pass(
    nodes, inputs: list, declared: dict, limits: Limits, device: str
) -> tuple[int, float, float]:
    """Run the graph on fake tensors: real shapes, no memory. Returns (peak bytes, work,
    FLOPs of its matmul-like ops: 2 x outputs x contraction, attention included)."""
    holders: dict[int, int] = {}  # storage id -> live values on it
    sizes: dict[int, int] = {}
    owner: dict[str, int] = {}
    live, peak, work, matmul = 0, 0, 0.0, 0.0

    def hold(name: str, t: torch.Tensor) -> None:
        nonlocal live
        sid = t.untyped_storage()._cdata
        if sid not in sizes:
            sizes[sid] = _scaled_bytes(t, t.untyped_storage().nbytes())
            live += sizes[sid]
        holders[sid] = holders.get(sid, 0) + 1
        owner[name] = sid

    def release(name: str) -> None:
        nonlocal live
        sid = owner.pop(name)
        holders[sid] -= 1
        if not holders[sid]:
            live -= sizes.pop(sid)
            del holders[sid]

    # No fallback kernels: for an op without a meta kernel they would allocate real inputs.
    mode = FakeTensorMode(allow_fallback_kernels=False, allow_non_fake_inputs=False)
    with mode:
        env = {n: torch.empty(shape, dtype=dtype, device=device) for n, (shape, dtype) in inputs}
    for name, t in env.items():
        hold(name, t)

    def observe(node: Node, results) -> None:
        nonlocal peak, work, matmul
        if node.name in INDEX_ARGS:
            for idx, _, _ in _index_ranges(node, env):
                if idx.dtype not in (torch.int64, torch.int32):
                    reject(f"aten.{node.name} indexes with {idx.dtype}; only integer indices")
        transient = 0
        if "scaled_dot_product" in node.name:  # the math kernel's (B, H, Tq, Tk) scores
            q, k = env[node.named["query"].name], env[node.named["key"].name]
            transient = q.shape[:-1].numel() * k.shape[-2] * 4
        values = {}
        for names, value in zip(node.outputs, results, strict=True):
            if isinstance(names, list):
                if not isinstance(value, list) or len(value) != len(names):
                    reject(f"aten.{node.name} returns a different number of tensors than declared")
                values.update(zip(names, value, strict=True))
            elif names is not None:
                values[names] = value
            elif isinstance(value, torch.Tensor):
                transient += _scaled_bytes(value, value.untyped_storage().nbytes())
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                reject(f"aten.{node.name} does not return a tensor for {name}")
            if (tuple(value.shape), value.dtype) != declared[name]:
                reject(
                    f"the exported graph declares {name} = aten.{node.name}(...) as "
                    f"{declared[name]}, but it computes {tuple(value.shape)} {value.dtype}"
                )
            nbytes = _scaled_bytes(value, value.numel() * value.element_size())
            if nbytes > limits.max_tensor_bytes:
                reject(
                    f"aten.{node.name} makes a tensor of shape {tuple(value.shape)} "
                    f"({nbytes / 2**30:.1f} GiB), over the referee's cap of "
                    f"{limits.max_tensor_bytes / 2**30:.1f} GiB"
                )
            hold(name, value)
        if values:
            cost = _cost(node, env, next(iter(values.values())))
            work += cost
            matmul += cost if _is_matmul(node.name) else 0.0
        peak = max(peak, live + transient)
        for name in node.free:
            release(name)
        if peak > limits.max_live_bytes or work > limits.max_work:
            reject(
                f"one forward of the exported graph needs {peak / 2**30:.1f} GiB at its peak and "
                f"{work:.3g} operations, over the referee's caps of "
                f"{limits.max_live_bytes / 2**30:.0f} GiB and {limits.max_work:.3g}"
            )

    with torch.no_grad(), mode:
        try:
            run(nodes, env, torch.device(device), observe)
        except GraphRejected:
            raise
        except Exception as e:  # the graph's own shapes do not fit its ops
            reject(f"the exported graph fails on its own shapes: {type(e).__name__}: {e}"[:500])
    return peak, work, matmul
