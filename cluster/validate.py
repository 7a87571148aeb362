"""The gate every proposal passes before it may cost GPU time, whoever proposed it.

`validate(proposal, ctx, seen)` checks, cheapest first, that the patch is non-empty, touches
only the target file, applies to the incumbent, changes more than comments and whitespace,
compiles, keeps the `train` entry point, is not a duplicate of a source already tried or in
flight, and does not reach into the referee (trainer.guard). A failure sets `proposal.error`
to a reason the driver records (status "invalid") and the LLM is shown next time; nothing
raises. `source_hash` is the normalized-text hash used for the duplicate check.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import tokenize

from cluster.patches import PatchError, apply_patch, touched_paths
from cluster.proposers.base import ProposalContext
from cluster.records import Proposal
from trainer import pyast


@functools.lru_cache(maxsize=4096)
def source_hash(source: str) -> str:
    """Hash of a Python source that ignores comments, blank lines and formatting.

    Parsable code is normalized by `ast.unparse`, so `LR = 1e-3  # faster` and `LR=0.001`
    hash the same; anything else falls back to tokenize (comments dropped, then blank lines
    and trailing whitespace) or, failing that, to its non-blank stripped lines. Memoized: a
    proposer repeating itself, and every check against the same incumbent, parse nothing.
    """
    try:
        normal = ast.unparse(pyast.parse(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        normal = _strip_comments(source)
        normal = "\n".join(line.rstrip() for line in normal.splitlines() if line.strip())
    return hashlib.sha256(normal.encode()).hexdigest()


def _strip_comments(source: str) -> str:
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type != tokenize.COMMENT
        ]
        return tokenize.untokenize(tokens)
    except (tokenize.TokenError, SyntaxError, ValueError):
        return source


class _Invalid(Exception):
    """A reason the proposal may not run."""


def validate(proposal: Proposal, ctx: ProposalContext, seen: set[str]) -> Proposal:
    """Set `proposal.error` if it may not run; else add its source hash to `seen`. Returns it."""
    if proposal.error:
        return proposal
    try:
        seen.add(_check(proposal, ctx, seen))
    except _Invalid as exc:
        proposal.error = str(exc)
    except Exception as exc:  # a source built to break a check is not shown to be safe
        proposal.error = f"the proposal could not be checked ({type(exc).__name__}: {exc})"
    return proposal


def _check(proposal: Proposal, ctx: ProposalContext, seen: set[str]) -> str:
    """The hash of the proposed source; raises _Invalid with the reason it may not run."""
    target = ctx.target
    if not proposal.patch.strip():
        raise _Invalid(f"empty patch: the proposal does not change {target}")
    paths = touched_paths(proposal.patch)
    others = [p for p in paths if p != target]
    if others:
        raise _Invalid(f"the patch changes {', '.join(others)}; only {target} may be changed")
    if not paths:
        raise _Invalid(f"the patch has no ---/+++ file headers naming {target}")
    try:
        new = apply_patch(ctx.incumbent_source, proposal.patch, target)
    except PatchError as exc:
        where = f"{target} at {ctx.incumbent_sha[:10]}"
        raise _Invalid(f"the patch does not apply to {where}: {_first_line(str(exc))}") from None
    new_hash = source_hash(new)
    if new_hash == source_hash(ctx.incumbent_source):
        raise _Invalid(f"the patch changes only comments or formatting of {target}")
    if new_hash in seen:
        raise _Invalid("duplicate of a change already tried or in flight (same normalized code)")
    try:  # from the source: a tree is a Python object to convert, and not thread-safe (pyast)
        compile(new, target, "exec")
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno else ""
        raise _Invalid(f"{target} does not compile: {exc.msg}{where}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, nesting too deep
        detail = str(exc) or "nested too deeply to parse"
        raise _Invalid(f"{target} does not compile: {type(exc).__name__}: {detail}") from None
    if _defines_train(ctx.incumbent_source) and not _defines_train(new):
        raise _Invalid("the patch removes train(ctx), the entry point the harness calls")
    violations = _referee_violations(new, ctx)
    if violations:
        autoresearch = ctx.protocol == "autoresearch"
        what = "breaks the protocol's contract" if autoresearch else "reaches into the referee"
        raise _Invalid(f"{what}: " + "; ".join(violations))
    return new_hash


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), text)[:300]


def _defines_train(source: str) -> bool:
    try:
        tree = pyast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "train"
        for node in tree.body
    )


def _referee_violations(source: str, ctx: ProposalContext) -> list[str]:
    """trainer.guard's static check: the referee's (nothing of it may be reached), or under
    protocol=autoresearch the protocol's contract against the incumbent (train.py imports
    prepare and calls its evaluator; it may not change how). Skipped only while that module
    does not exist; a guard that fails on some source rejects it: the check fails closed.
    """
    try:
        from trainer import guard
    except ModuleNotFoundError as exc:
        if exc.name in ("trainer.guard", "trainer"):
            return []
        raise
    try:
        if ctx.protocol == "autoresearch":
            return list(guard.protocol_violations(source, ctx.incumbent_source))
        return [
            *guard.referee_violations(source),
            *guard.reseeding(source, ctx.incumbent_source),
        ]
    except Exception as exc:  # any failure of the guard means "not shown to be safe"
        return [f"the referee check failed on this source ({type(exc).__name__}: {exc})"]
