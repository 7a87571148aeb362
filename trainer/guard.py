"""Static check that a train.py does not reach into the referee (first of several layers).

The sandbox hides the evaluation data and the evaluator never runs candidate code; this
check rejects the honest-mistake and the obvious-cheat cases before any GPU time is spent,
with a message the proposer can learn from.

    referee_violations(source) -> ["line 3: imports the referee module trainer.prepare", ...]
"""

from __future__ import annotations

import ast
import functools
from collections import Counter

from trainer import pyast

REFEREE_MODULES = (
    "trainer.prepare",
    "trainer.referee",
    "trainer.harness",
    "trainer.budget",
    "trainer.sandbox",
    "trainer.guard",
    "prepare",
)
REFEREE_NAMES = ("evaluate_bpb", "load_eval_data", "BudgetClock")
# Substrings of string literals that only make sense when reading the referee's files.
SUSPECT_STRINGS = (
    "val.bin",
    "eval/",
    "manifest.json",
    "token_bytes",
    "autoresearch-cluster",
    "AUTORESEARCH_CACHE",
    "/proc/",
    ".cache",
)


@functools.lru_cache(maxsize=16)
def _nodes(source: str) -> tuple[ast.AST, ...]:
    """Every node of the source's tree (ast.walk's order), walked once for both checks."""
    return tuple(ast.walk(pyast.parse(source)))


def referee_violations(source: str) -> list[str]:
    """Reasons (with line numbers) why this train.py reaches into the referee; [] if none."""
    try:
        nodes = _nodes(source)
    except SyntaxError as e:
        return [f"line {e.lineno}: does not parse: {e.msg}"]
    out: list[str] = []
    for node in nodes:
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import | ast.ImportFrom):
            for mod in _imported_modules(node):
                if _is_referee(mod):
                    out.append(f"line {line}: imports the referee module {mod}")
        elif isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in REFEREE_NAMES:
                out.append(f"line {line}: refers to the evaluator ({name})")
            if name in ("__import__", "import_module") and isinstance(
                node, ast.Name | ast.Attribute
            ):
                out.append(f"line {line}: imports modules dynamically ({name})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for s in SUSPECT_STRINGS:
                if s in node.value:
                    out.append(f"line {line}: mentions {s!r}, a path of the referee's data")
                    break
    return list(dict.fromkeys(out))


# Calls that set (or draw) a random generator's seed. The referee seeds torch, numpy and random
# before train.py runs; a candidate that re-seeds would leave the seed pairing rests on.
SEEDERS = frozenset(
    {
        "manual_seed",
        "manual_seed_all",
        "seed",
        "seed_all",
        "set_rng_state",
        "setstate",
        "set_state",
        "default_rng",
        "RandomState",
        "SeedSequence",
    }
)


def reseeding(source: str, incumbent: str) -> list[str]:
    """Reasons why this train.py re-seeds a random generator where the incumbent does not
    (a call to manual_seed, seed, set_rng_state, default_rng, ... beyond the incumbent's)."""

    allowed = Counter(name for name, _ in _seeder_calls(incumbent))
    out = []
    for name, line in _seeder_calls(source):
        if allowed[name] > 0:
            allowed[name] -= 1
            continue
        out.append(
            f"line {line}: re-seeds a random generator ({name}); the referee sets the seed "
            "(candidates are compared with their parent at the same seed)"
        )
    return out


@functools.lru_cache(maxsize=16)
def _seeder_calls(text: str) -> tuple[tuple[str, int], ...]:
    """(name, line) of each call of a SEEDERS name (remembered: every candidate of an
    incumbent is checked against the incumbent's)."""
    try:
        nodes = _nodes(text)
    except SyntaxError:
        return ()
    out = []
    for node in nodes:
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in SEEDERS:
                out.append((name, node.lineno))
    return tuple(out)


def _imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement names (`from trainer import x` names trainer.x)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.module == "trainer":
        return [f"trainer.{a.name}" for a in node.names]
    return [node.module or ""]


def _is_referee(mod: str) -> bool:
    return any(mod == m or mod.startswith(m + ".") for m in REFEREE_MODULES)


# ----------------------------------------------------------------------------- autoresearch

PROTOCOL_MODULE = "prepare"  # karpathy/autoresearch: the fixed file that holds the evaluator
EVALUATOR = "evaluate_bpb"
BUDGET_NAME = "TIME_BUDGET"
METRIC_TEXT = "val_bpb"  # the summary line a grep for the result reads
# Imports and attributes that reach a function's globals, code or module table: the ways a
# train.py could swap the evaluator without naming it.
DYNAMIC_MODULES = ("importlib", "builtins", "ctypes", "inspect", "types", "marshal", "pickle")
DYNAMIC_NAMES = ("exec", "eval", "compile", "globals", "__builtins__", "__import__")
# Called on the protocol's module or one of its names, these reach into it by name.
DYNAMIC_CALLS = ("setattr", "delattr", "getattr", "vars")
# Attributes that are dynamic only on one module (`model.modules()` is everyday PyTorch).
DYNAMIC_MODULE_ATTRS = {
    "sys": ("modules",),
    "gc": ("get_referrers", "get_referents", "get_objects"),
}
DYNAMIC_ATTRS = (
    "__dict__",
    "__globals__",
    "__code__",
    "__closure__",
    "__defaults__",
    "__kwdefaults__",
    "__subclasses__",
    "__builtins__",
    "__getattribute__",
    "f_globals",
    "f_locals",
    "f_back",
    "gi_frame",
    "tb_frame",
    "import_module",
)


def protocol_violations(source: str, incumbent: str) -> list[str]:
    """Why this train.py breaks autoresearch's contract (protocol=autoresearch); [] if none.

    That train.py imports `prepare` and calls its `evaluate_bpb` is the protocol. What it may
    not do: import our referee's modules; rebind, redefine or shadow what it imports from
    `prepare` (or `TIME_BUDGET`, or the name the evaluator's result is bound to); touch
    `prepare`'s attributes or files; reach functions through globals, code objects or the
    module table; or change a statement that makes the measurement: the evaluator call, a
    line that prints `val_bpb`, a loop test on `TIME_BUDGET`, a binding of a protected name.
    Those must appear in the candidate exactly as in the incumbent (anywhere, any number of
    times the incumbent has them). Static and best-effort: the metric stays self-reported.
    """
    try:
        tree = pyast.parse(source)
    except SyntaxError as e:
        return [f"line {e.lineno}: does not parse: {e.msg}"]
    try:
        base = pyast.parse(incumbent)
    except (SyntaxError, ValueError):
        base = pyast.parse("")
    mods, names, evaluators = _protocol_imports(tree)
    m2, n2, e2 = _protocol_imports(base)
    mods, evaluators = mods | m2, evaluators | e2
    protected = names | n2 | mods | evaluators | {EVALUATOR, BUDGET_NAME}
    protected |= _metric_names(tree, mods, evaluators) | _metric_names(base, mods, evaluators)
    aliases = {  # `import sys as s`: s.modules is sys.modules
        a.asname or a.name: a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
    }
    out: list[str] = []
    for node in ast.walk(tree):
        out += _protocol_node(node, mods, protected, aliases)
    out += _fixed_changes(tree, base, mods, evaluators, protected)
    return list(dict.fromkeys(out))


def _protocol_imports(tree: ast.AST) -> tuple[set[str], set[str], set[str]]:
    """(module aliases of `prepare`, local names imported from it, local names of its evaluator)."""
    mods, names, evaluators = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PROTOCOL_MODULE:
                    mods.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom) and node.module == PROTOCOL_MODULE:
            for a in node.names:
                local = a.asname or a.name
                names.add(local)
                if a.name == EVALUATOR:
                    evaluators.add(local)
    return mods, names, evaluators


def _is_evaluator_call(node: ast.AST, mods: set[str], evaluators: set[str]) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Name):
        return f.id in evaluators or f.id == EVALUATOR
    return isinstance(f, ast.Attribute) and f.attr == EVALUATOR


def _mentions_metric(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Constant)
        and isinstance(n.value, str | bytes)
        and (
            METRIC_TEXT in n.value if isinstance(n.value, str) else METRIC_TEXT.encode() in n.value
        )
        for n in ast.walk(node)
    )


def _metric_names(tree: ast.AST, mods: set[str], evaluators: set[str]) -> set[str]:
    """Names the evaluator's result is bound to (`val_bpb = evaluate_bpb(...)`)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr) and node.value is not None:
            if any(_is_evaluator_call(n, mods, evaluators) for n in ast.walk(node.value)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    out |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return out


def _protocol_node(
    node: ast.AST, mods: set[str], protected: set[str], aliases: dict[str, str]
) -> list[str]:
    """What a single node does wrong, whatever the incumbent has."""
    line = getattr(node, "lineno", "?")
    out = []
    if isinstance(node, ast.Import | ast.ImportFrom):
        for mod in _imported_modules(node):
            if mod != PROTOCOL_MODULE and _is_referee(mod):
                out.append(f"line {line}: imports the referee module {mod}")
            if mod.split(".")[0] in DYNAMIC_MODULES:
                out.append(f"line {line}: imports {mod}, which can rewrite the evaluator")
        if isinstance(node, ast.ImportFrom):
            for a in node.names:  # `from sys import modules`
                if a.name in DYNAMIC_MODULE_ATTRS.get(node.module or "", ()):
                    out.append(
                        f"line {line}: imports {node.module}.{a.name}, which can "
                        "rewrite the evaluator"
                    )
        if isinstance(node, ast.ImportFrom) and node.module == PROTOCOL_MODULE:
            if any(a.name == "*" for a in node.names):
                out.append(f"line {line}: `from {PROTOCOL_MODULE} import *`; import names")
            for a in node.names:  # `import make_dataloader as evaluate_bpb` swaps the evaluator
                if a.asname and a.asname != a.name:
                    out.append(
                        f"line {line}: imports {a.name} as {a.asname}; import the protocol's "
                        "names under their own names"
                    )
        else:
            for a in node.names:
                local = a.asname or a.name.split(".")[0]
                if local in protected and a.name != PROTOCOL_MODULE:
                    out.append(f"line {line}: imports over {local}, which the protocol fixes")
    elif isinstance(node, ast.Name):
        if node.id in DYNAMIC_NAMES:
            out.append(f"line {line}: uses {node.id}, which can rewrite the evaluator")
    elif isinstance(node, ast.Attribute):
        owner = aliases.get(node.value.id, "") if isinstance(node.value, ast.Name) else ""
        if node.attr in DYNAMIC_ATTRS or node.attr in DYNAMIC_MODULE_ATTRS.get(owner, ()):
            out.append(f"line {line}: uses .{node.attr}, which can rewrite the evaluator")
        if (
            isinstance(node.ctx, ast.Store | ast.Del)
            and isinstance(node.value, ast.Name)
            and node.value.id in mods
        ):
            out.append(f"line {line}: rebinds {node.value.id}.{node.attr} (the protocol's module)")
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in DYNAMIC_CALLS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Name) and first.id in protected:
                out.append(f"line {line}: {node.func.id} on {first.id}, which the protocol fixes")
    elif isinstance(node, ast.arg) and node.arg in protected:
        out.append(f"line {line}: a parameter shadows {node.arg}, which the protocol fixes")
    elif isinstance(node, ast.Global | ast.Nonlocal):
        for n in node.names:
            if n in protected:
                out.append(f"line {line}: declares {n} global, which the protocol fixes")
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        # The protocol's data is the trial's to read (prepare.py does, in its process);
        # its fixed file and our referee's paths are not to be touched.
        for s in (f"{PROTOCOL_MODULE}.py", "autoresearch-cluster", "AUTORESEARCH_CACHE"):
            if s in node.value:
                out.append(f"line {line}: mentions {s!r}, a file the protocol fixes")
                break
    return out


def _fixed_statements(tree: ast.AST, mods, evaluators, protected) -> dict[str, list]:
    """The statements that make the measurement, by their code (positions left out)."""
    out: dict[str, list] = {}

    def add(key_node: ast.AST, at: ast.AST) -> None:
        out.setdefault(ast.dump(key_node), []).append(at)

    def binds(node: ast.AST) -> bool:
        return any(
            isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del) and n.id in protected
            for n in ast.walk(node)
        )

    compound = (ast.If, ast.While, ast.For, ast.AsyncFor, ast.With, ast.AsyncWith, ast.Try)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name in protected:
                add(node, node)
        elif isinstance(node, ast.If | ast.While):
            if _is_fixed_expr(node.test, mods, evaluators, protected):
                add(node.test, node)
        elif isinstance(node, ast.For | ast.AsyncFor):
            if binds(node.target) or _is_fixed_expr(node.iter, mods, evaluators, protected):
                add(ast.Tuple([node.target, node.iter]), node)
        elif isinstance(node, ast.With | ast.AsyncWith):
            if any(i.optional_vars is not None and binds(i.optional_vars) for i in node.items):
                add(ast.Tuple([i.context_expr for i in node.items]), node)
        elif isinstance(node, ast.stmt) and not isinstance(node, compound + (ast.Match,)):
            if (
                binds(node)
                or _mentions_metric(node)
                or any(_is_evaluator_call(n, mods, evaluators) for n in ast.walk(node))
            ):
                add(node, node)
    return out


def _is_fixed_expr(expr: ast.AST, mods, evaluators, protected) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id == BUDGET_NAME)
        or (isinstance(n, ast.Attribute) and n.attr == BUDGET_NAME)
        or _is_evaluator_call(n, mods, evaluators)
        for n in ast.walk(expr)
    ) or _mentions_metric(expr)


def _fixed_changes(tree, base, mods, evaluators, protected) -> list[str]:
    now = _fixed_statements(tree, mods, evaluators, protected)
    was = _fixed_statements(base, mods, evaluators, protected)
    out = []
    for key, nodes in now.items():
        for node in nodes[len(was.get(key, [])) :]:
            out.append(
                f"line {getattr(node, 'lineno', '?')}: changes a statement of the protocol's "
                f"measurement: `{_brief(node)}` (keep the incumbent's as it is)"
            )
    for key, nodes in was.items():
        for node in nodes[len(now.get(key, [])) :]:
            out.append(
                f"removes `{_brief(node)}` (incumbent line {getattr(node, 'lineno', '?')}), a "
                "statement of the protocol's measurement"
            )
    return out


def _brief(node: ast.AST) -> str:
    if isinstance(node, ast.If | ast.While):
        text = f"{'if' if isinstance(node, ast.If) else 'while'} {ast.unparse(node.test)}:"
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        text = f"def {node.name}"
    elif isinstance(node, ast.For | ast.AsyncFor | ast.With | ast.AsyncWith):
        text = ast.unparse(node).splitlines()[0]
    else:
        text = ast.unparse(node)
    return text if len(text) <= 100 else text[:97] + "..."
