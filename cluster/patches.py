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

    A three-way merge by `git merge-file`; raises PatchError when the two edits touch the same
    or adjacent lines (git calls that a conflict), so only changes to different parts stack.
    """
    with tempfile.TemporaryDirectory(prefix="ar-merge-") as tmp:
        names = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            (Path(tmp) / name).write_text(text)
            names.append(name)
        proc = subprocess.run(
            ["git", "merge-file", "-p", "--quiet", *names], cwd=tmp, capture_output=True
        )
    if proc.returncode != 0:
        why = f"{proc.returncode} conflicting hunk(s)" if proc.returncode > 0 else "merge failed"
        raise PatchError(f"the two changes overlap: {why} {proc.stderr.decode().strip()}".strip())
    return proc.stdout.decode()
