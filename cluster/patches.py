"""Unified diffs of the target file: make one from two texts, apply one to a text.

Applying goes through `git apply` in a scratch directory, so what validates here is exactly
what the driver later commits. A patch whose every hunk matches the text exactly where it says
(what make_patch writes) is applied in Python first, with the same result and no process;
anything else (offsets, whitespace, a missing final newline) goes to git.
"""

from __future__ import annotations

import difflib
import functools
import re
import subprocess
import tempfile
from pathlib import Path


class PatchError(ValueError):
    """The patch does not apply to the text it claims to change."""


@functools.lru_cache(maxsize=1024)
def make_patch(old: str, new: str, path: str) -> str:
    """A `git apply`-able unified diff turning `old` into `new` at repo path `path`.
    Memoized: a random proposer rewrites the same few changes over and over."""
    if old == new:
        return ""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def touched_paths(patch: str) -> list[str]:
    """Repo paths a unified diff changes, from its `+++`/`---` headers (both sides)."""
    paths: list[str] = []
    for line in patch.splitlines():
        if line.startswith(("+++ ", "--- ")):
            name = line[4:].split("\t")[0].strip()
            if name == "/dev/null":
                continue
            if name.startswith(("a/", "b/")):
                name = name[2:]
            if name not in paths:
                paths.append(name)
    return paths


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _apply_exact(old: str, patch: str, path: str) -> str | None:
    """The patched text when every hunk matches at its stated line; else None (ask git)."""
    lines = patch.splitlines(keepends=True)
    if "\\ No newline" in patch or not old.endswith("\n"):
        return None
    if len(lines) < 3 or lines[0] != f"--- a/{path}\n" or lines[1] != f"+++ b/{path}\n":
        return None
    src, out, pos, i = old.splitlines(keepends=True), [], 0, 2
    while i < len(lines):
        m = _HUNK.match(lines[i])
        if not m:
            return None
        start = int(m.group(1)) - (0 if m.group(2) == "0" else 1)
        if start < pos:
            return None
        out += src[pos:start]
        pos, i = start, i + 1
        while i < len(lines) and not lines[i].startswith("@@"):
            tag, text = lines[i][:1], lines[i][1:]
            if tag in (" ", "-"):
                if pos >= len(src) or src[pos] != text:
                    return None
                pos += 1
                if tag == " ":
                    out.append(text)
            elif tag == "+":
                out.append(text)
            else:
                return None
            i += 1
    return "".join(out + src[pos:])


def apply_patch(old: str, patch: str, path: str) -> str:
    """Apply `patch` to `old` (the content of `path`) and return the new text."""
    if not patch.strip():
        return old
    exact = _apply_exact(old, patch, path)
    if exact is not None:
        return exact
    with tempfile.TemporaryDirectory(prefix="ar-patch-") as tmp:
        target = Path(tmp) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(old)
        for args in (["--recount"], ["--recount", "--ignore-whitespace"]):
            proc = subprocess.run(
                ["git", "apply", *args, "-"],
                cwd=tmp,
                input=patch.encode(),
                capture_output=True,
            )
            if proc.returncode == 0:
                return target.read_text()
        raise PatchError(proc.stderr.decode(errors="replace").strip() or "patch does not apply")


def merge3(base: str, ours: str, theirs: str) -> str:
    """Both changes of `ours` and `theirs` (each an edit of `base`) in one text.

    A line-level three-way merge: each side's edits are hunks over ranges of `base`'s lines;
    hunks of the two sides that replace disjoint ranges both apply, even on neighbouring
    lines (`EMBEDDING_LR = ...` and `UNEMBEDDING_LR = ...` on consecutive lines are two
    independent edits; `git merge-file` would call that a conflict). The same hunk on both
    sides applies once. Raises PatchError when the two edits change the same lines, or when
    one inserts lines at an edge of, or inside, what the other changes (their order would be
    a guess).
    """
    a, o, t = base.splitlines(True), ours.splitlines(True), theirs.splitlines(True)
    hunks = sorted(
        {*_hunks(a, o), *_hunks(a, t)}, key=lambda h: (h[0], h[1], h[2])
    )  # (start, end, new lines) over base; a hunk both sides made is one
    for (s1, e1, r1), (s2, e2, r2) in zip(hunks, hunks[1:], strict=False):
        overlap = s2 < e1 or (s2 == e1 and (s1 == e1 or s2 == e2))
        if overlap and (s1, e1, r1) != (s2, e2, r2):
            if s1 == e1 or s2 == e2:
                why = f"one inserts lines where the other changes line {max(s1, s2) + 1}"
            else:
                lines = f"line {s2 + 1}" if e1 - s2 == 1 else f"lines {s2 + 1}-{min(e1, e2)}"
                why = f"both change {lines}"
            raise PatchError(f"the two changes overlap: {why} of the incumbent")
    out, at = [], 0
    for start, end, lines in hunks:
        out += a[at:start]
        out += list(lines)
        at = end
    out += a[at:]
    return "".join(out)


def _hunks(base: list[str], new: list[str]) -> list[tuple[int, int, tuple[str, ...]]]:
    """`new` as edits of `base`: (start, end, replacement lines), ranges of base's lines."""
    matcher = difflib.SequenceMatcher(None, base, new, autojunk=False)
    return [
        (i1, i2, tuple(new[j1:j2]))
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]
