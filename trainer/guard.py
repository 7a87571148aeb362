"""Static check that a train.py does not reach into the referee (first of several layers).

The sandbox hides the evaluation data and the evaluator never runs candidate code; this
check rejects the honest-mistake and the obvious-cheat cases before any GPU time is spent,
with a message the proposer can learn from.

    referee_violations(source) -> ["line 3: imports the referee module trainer.prepare", ...]
"""

from __future__ import annotations

import ast

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


def referee_violations(source: str) -> list[str]:
    """Reasons (with line numbers) why this train.py reaches into the referee; [] if none."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return [f"line {e.lineno}: does not parse: {e.msg}"]
    out: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            mods = names if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "trainer":
                mods = [f"trainer.{n}" for n in names]
            for mod in mods:
                if any(mod == m or mod.startswith(m + ".") for m in REFEREE_MODULES):
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
