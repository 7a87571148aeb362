"""Which ops an exported model's graph may call when the referee runs it (trainer/graph.py).

The graph is the candidate's: every op in it runs in the referee's process, next to the
validation split. So only pure, deterministic ATen tensor ops are allowed, named below by
family and built from what real models export (trainer/train.py and the variants in
tests/test_graph.py). Each name admits only those overloads that, by their schema, mutate
nothing, return only tensors and take only tensors, numbers, bools, dtypes, devices, layouts
and memory formats (strings only where listed in STRING_ARGS); overloads tagged random or
with data-dependent output shapes are dropped. That excludes files (aten.from_file), printing
(aten._print), uninitialised memory (aten.empty*, new_empty*), randomness (rand*, normal,
bernoulli, dropout), in-place and out= variants, higher-order ops and anything outside
`aten`. What the schema cannot say is checked per call by `argument_problem` (no dropout in
attention, no batch-norm statistics updated in place, no trusted output sizes) and by the
interpreter (index bounds, output use).
"""

from __future__ import annotations

import re

import torch

FAMILIES = {
    "unary": "abs neg exp exp2 expm1 log log1p log2 log10 sqrt rsqrt square reciprocal sin cos "
    "tan tanh sinh cosh asin acos atan asinh acosh atanh sigmoid logit erf erfc erfinv sign "
    "sgn signbit floor ceil round trunc frac nan_to_num clamp clamp_min clamp_max clip "
    "bitwise_not logical_not isnan isinf isfinite positive",
    "activation": "relu relu6 gelu silu mish elu selu celu leaky_relu hardtanh hardsigmoid "
    "hardswish softplus log_sigmoid glu threshold softshrink hardshrink prelu _prelu_kernel",
    "binary": "add sub rsub mul div true_divide floor_divide remainder fmod pow float_power "
    "atan2 maximum minimum fmax fmin hypot copysign xlogy eq ne lt le gt ge logical_and "
    "logical_or logical_xor bitwise_and bitwise_or bitwise_xor where lerp addcmul addcdiv "
    "masked_fill",
    "reduction": "sum mean prod amax amin max min argmax argmin var std var_mean std_mean norm "
    "linalg_vector_norm logsumexp cumsum cumprod cummax cummin all any softmax log_softmax "
    "_softmax _log_softmax _safe_softmax topk sort argsort",
    "matmul": "linear matmul mm bmm addmm baddbmm mv dot outer einsum conv1d conv2d convolution",
    "norm": "layer_norm native_layer_norm rms_norm _fused_rms_norm group_norm native_group_norm "
    "batch_norm _native_batch_norm_legit_no_training",
    "attention": "scaled_dot_product_attention _scaled_dot_product_attention_math "
    "_scaled_dot_product_flash_attention _scaled_dot_product_flash_attention_for_cpu "
    "_scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention",
    "shape": "view _unsafe_view reshape permute transpose t contiguous clone expand expand_as "
    "unsqueeze squeeze flatten unflatten split split_with_sizes chunk unbind narrow slice "
    "select cat concat concatenate stack repeat repeat_interleave tile flip roll movedim "
    "swapaxes alias detach lift_fresh_copy tril triu pad constant_pad_nd view_as_complex "
    "view_as_real polar complex type_as to _to_copy",
    "indexing": "embedding index_select gather index take_along_dim",
    "factory": "arange zeros ones full zeros_like ones_like full_like new_zeros new_ones "
    "new_full scalar_tensor fill linspace",
    # Checks the exporter leaves in (`.float()` of a float tensor); the interpreter skips it,
    # because under autocast its dtype no longer holds.
    "assertion": "_assert_tensor_metadata",
}
SKIPPED = {"torch.ops.aten._assert_tensor_metadata.default"}

# (op name, argument) -> allowed values; any other string argument excludes the overload.
STRING_ARGS = {
    ("gelu", "approximate"): frozenset({"none", "tanh"}),
    ("div", "rounding_mode"): frozenset({"trunc", "floor"}),
    ("pad", "mode"): frozenset({"constant", "reflect", "replicate", "circular"}),
    ("conv1d", "padding"): frozenset({"same", "valid"}),
    ("conv2d", "padding"): frozenset({"same", "valid"}),
    ("einsum", "equation"): re.compile(r"[A-Za-z.,\->\s]{1,100}"),
}
# Random by tag only through dropout, which `argument_problem` pins to 0.
SEEDED_OK = set(FAMILIES["attention"].split())
# index.Tensor is tagged dynamic because of boolean masks; the interpreter admits integers only.
DYNAMIC_OK = {"index"}
# Multi-output attention and batch-norm kernels also return RNG state, saved statistics and
# scratch tensors (uninitialised on CUDA when unused) and sizes: only the first is usable.
FIRST_OUTPUT_ONLY = set(FAMILIES["attention"].split()) | {"_native_batch_norm_legit_no_training"}
# op name -> (index argument, indexed argument): bounds are checked before the op runs (an
# out-of-range index is a device-side assert on CUDA, which kills the referee's context).
INDEX_ARGS = {
    "embedding": ("indices", "weight"),
    "index_select": ("index", "self"),
    "gather": ("index", "self"),
    "take_along_dim": ("indices", "self"),
    "index": ("indices", "self"),
}

_PLAIN_KINDS = {
    "TensorType",
    "IntType",
    "SymIntType",
    "FloatType",
    "BoolType",
    "NumberType",
    "DeviceObjType",
}


def _innermost(t) -> str:
    while t.kind() in ("OptionalType", "ListType"):
        t = t.getElementType()
    return t.kind()


def _admits(name: str, overload: str, op: torch._ops.OpOverload) -> bool:
    schema = op._schema
    try:  # TorchScript-only overloads (einsum.sublist, to.prim_dtype) have no kernels
        torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
    except RuntimeError:
        return False
    if name in SEEDED_OK and overload != "default":  # e.g. a quantized flash attention
        return False
    tags = set(op.tags)
    if schema.is_mutable or torch.Tag.inplace_view in tags:
        return False
    if torch.Tag.nondeterministic_seeded in tags and name not in SEEDED_OK:
        return False
    if (
        torch.Tag.dynamic_output_shape in tags or torch.Tag.data_dependent_output in tags
    ) and name not in DYNAMIC_OK:
        return False
    returns = [_innermost(r.type) for r in schema.returns]
    if name in FAMILIES["assertion"].split():
        return not returns
    if returns[:1] != ["TensorType"] or (
        name not in FIRST_OUTPUT_ONLY and any(r != "TensorType" for r in returns)
    ):
        return False
    for arg in schema.arguments:
        kind = _innermost(arg.type)
        if kind == "StringType" and (name, arg.name) in STRING_ARGS:
            continue
        if kind not in _PLAIN_KINDS:
            return False
    return True


def _build() -> dict[str, torch._ops.OpOverload]:
    ops = {}
    for family in FAMILIES.values():
        for name in family.split():
            packet = getattr(torch.ops.aten, name, None)
            for overload in packet.overloads() if packet is not None else ():
                op = getattr(packet, overload)
                if _admits(name, overload, op):
                    ops[f"torch.ops.aten.{name}.{overload}"] = op
    return ops


# "torch.ops.aten.<name>.<overload>" -> the op; graph targets are looked up here, never
# resolved by name.
ALLOWED = _build()

_REASONS = (
    (re.compile(r"(from_file|_print|save|load|storage)"), "it touches files or the console"),
    (re.compile(r"(^|_)empty"), "its output is uninitialised memory"),
    (re.compile(r"(rand|normal|bernoulli|multinomial|dropout|uniform|poisson)"), "it is random"),
)


def refusal(target: str) -> str:
    """Why `target` may not run in the referee, for a message the proposer learns from."""
    if not target.startswith("torch.ops.aten."):
        return (
            f"the exported graph calls {target}, which is not an ATen tensor op "
            "(only torch.ops.aten ops are allowed: no Python, extension or higher-order ops)"
        )
    name, _, overload = target.removeprefix("torch.ops.").rpartition(".")
    short = name.removeprefix("aten.")
    reason = next((why for pattern, why in _REASONS if pattern.search(short)), "")
    if not reason and (overload.endswith("out") or short.endswith("_")):
        reason = "it writes into a tensor in place"
    return (
        f"the exported graph calls {name}.{overload}, which is not a pure tensor op the "
        f"referee allows{f' ({reason})' if reason else ''}"
    )


def argument_problem(name: str, args: dict) -> str | None:
    """What makes this call of an allowed op unsafe (random, or an unknown string); or None."""
    for arg, value in args.items():
        if not isinstance(value, str):
            continue
        allowed = STRING_ARGS.get((name, arg), ())
        ok = allowed.fullmatch(value) if isinstance(allowed, re.Pattern) else value in allowed
        if not ok:
            return (
                f"the exported graph calls aten.{name} with {arg}={value!r}, which is not allowed"
            )
    said = f"the exported graph calls aten.{name} with"
    if name in SEEDED_OK and args.get("dropout_p", 0.0) != 0.0:
        return f"{said} dropout_p={args['dropout_p']}: scoring is not random"
    if args.get("return_debug_mask"):
        return f"{said} return_debug_mask=True"
    if name == "repeat_interleave" and args.get("output_size") is not None:
        return f"{said} output_size: a size it trusts, not checks (out-of-bounds on CUDA)"
    if name == "batch_norm" and args.get("training") is not False:
        return f"{said} training=True: it would update its running statistics in place"
    return None
