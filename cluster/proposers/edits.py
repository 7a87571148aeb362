"""Turn an LLM's answer into (description, new text of the target file), tolerantly.

Three answer forms are accepted, tried in this order:
  1. SEARCH/REPLACE edit blocks, aider style, with or without a filename line and code fences:
         trainer/train.py
         <<<<<<< SEARCH
         LR = 0.01
         =======
         LR = 0.02
         >>>>>>> REPLACE
     Blocks apply in order. A SEARCH text is matched exactly first, then ignoring trailing
     whitespace, then ignoring indentation (the replacement is re-indented to fit).
  2. A unified diff, applied with `git apply` (cluster.patches); if git refuses it (LLM diffs
     often have wrong line numbers), each hunk is applied as a SEARCH/REPLACE pair instead.
  3. The whole file in a ```python fence.
The description is a `DESCRIPTION:` line, else the first line of prose. An answer that edits
any file other than the target is rejected as a whole: half of an edit is not what was meant.
Failures raise ParseError with a message meant to be shown to the model next time.
"""

from __future__ import annotations

import re

from cluster.patches import PatchError, apply_patch

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\b.*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\b.*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_PATH = re.compile(r"^[\s`*#]*(?:file(?:name)?:\s*)?([\w.\-/\\]+\.\w+)[\s`*:]*$", re.IGNORECASE)
_DESCRIPTION = re.compile(r"^[\s*_#>-]*description[\s*_]*:[\s*_]*(.*)$", re.IGNORECASE)
_DESCRIPTION_HEADING = re.compile(r"^[\s*_#>-]*description[\s*_:]*$", re.IGNORECASE)
_HUNK = re.compile(r"^@@.*@@")
MAX_DESCRIPTION = 200


class ParseError(ValueError):
    """The answer holds no usable edit of the target file; the message says why."""


def parse_answer(answer: str, source: str, target: str) -> tuple[str, str]:
    """Parse `answer` into (one-line description, new text of `target` whose text is `source`)."""
    if not answer or not answer.strip():
        raise ParseError("the answer is empty")
    lines = answer.replace("\r\n", "\n").split("\n")
    description = _description(lines)
    if any(_SEARCH.match(line) for line in lines):
        new = _apply_blocks(_search_blocks(lines, target), source, target)
    elif _is_diff(lines):
        new = _apply_diff(lines, source, target)
    else:
        new = _whole_file(answer, source, target)
    if source.endswith("\n") and not new.endswith("\n"):
        new += "\n"
    return description, new


def describe(answer: str) -> str:
    """The answer's one-line description (also for answers whose edits do not parse)."""
    return _description(answer.replace("\r\n", "\n").split("\n"))


def _description(lines: list[str]) -> str:
    """A `DESCRIPTION:` line (or the line under a Description heading), else the first prose."""
    for i, line in enumerate(lines):
        m = _DESCRIPTION.match(line)
        if m and m.group(1).strip():
            return _clip(m.group(1))
        if _DESCRIPTION_HEADING.match(line):
            below = next((x for x in lines[i + 1 :] if x.strip()), "")
            if below and not _FENCE.match(below):
                return _clip(below)
    skipping = None  # the kind of non-prose region we are in: fence, block or diff
    for line in lines:
        if skipping in ("fence", "block"):
            closer = _FENCE if skipping == "fence" else _REPLACE
            skipping = None if closer.match(line) else skipping
            continue
        if skipping == "diff" and (not line.strip() or line[0] in " +-@\\"):
            continue
        skipping = None
        if _FENCE.match(line):
            skipping = "fence"
        elif _SEARCH.match(line):
            skipping = "block"
        elif line.startswith(("--- ", "diff --git")):
            skipping = "diff"
        elif line.strip() and not _PATH.match(line):
            return _clip(line.strip().strip("#*>-` "))
    return "(no description given)"


def _clip(text: str) -> str:
    text = " ".join(text.strip().strip("*_`\"'").split())
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 3] + "..."


def _is_target(name: str, target: str) -> bool:
    name = name.strip().strip("`*'\"").replace("\\", "/")
    if name.startswith(("a/", "b/")):
        name = name[2:]
    return name == target or target.endswith("/" + name) or name.endswith("/" + target)


def _filename_before(lines: list[str], index: int) -> str | None:
    """The filename line just above a SEARCH marker (skipping fences and blanks), if any."""
    for j in range(index - 1, max(-1, index - 4), -1):
        line = lines[j]
        if not line.strip() or _FENCE.match(line):
            continue
        m = _PATH.match(line)
        return m.group(1) if m else None
    return None


def _search_blocks(lines: list[str], target: str) -> list[tuple[str, str]]:
    blocks: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        number = len(blocks) + 1
        name = _filename_before(lines, i)
        if name and not _is_target(name, target):
            raise ParseError(f"edit block {number} changes {name}; only {target} may be changed")
        search: list[str] = []
        replace: list[str] = []
        part = search
        i += 1
        while i < len(lines) and not _REPLACE.match(lines[i]):
            if part is search and _DIVIDER.match(lines[i]):
                part = replace
            elif _SEARCH.match(lines[i]):
                raise ParseError(f"edit block {number} has no >>>>>>> REPLACE line")
            else:
                part.append(lines[i])
            i += 1
        if i == len(lines) or part is search:
            missing = "=======" if part is search else ">>>>>>> REPLACE"
            raise ParseError(f"edit block {number} has no {missing} line")
        blocks.append(("\n".join(search), "\n".join(replace)))
        i += 1
    return blocks


def _apply_blocks(blocks: list[tuple[str, str]], source: str, target: str) -> str:
    text = source
    for number, (search, replace) in enumerate(blocks, 1):
        if not search.strip():
            raise ParseError(
                f"SEARCH block {number} is empty; quote the exact lines of {target} to replace"
            )
        new = replace_once(text, search, replace)
        if new is None:
            first = next(line.strip() for line in search.split("\n") if line.strip())
            raise ParseError(
                f"SEARCH block {number} not found in {target} (it starts {first[:60]!r}); "
                "SEARCH text must be copied exactly from the current file"
            )
        text = new
    return text


def replace_once(text: str, search: str, replace: str) -> str | None:
    """Replace the first run of whole lines matching `search`; None if there is none.

    Lines are compared exactly, then ignoring trailing whitespace, then ignoring indentation;
    a match found the last way re-indents the replacement by the same offset.
    """
    lines = text.split("\n")
    want = _trim_blank(search.split("\n"))
    repl = _trim_blank(replace.split("\n"))
    for key in (_same, str.rstrip, str.strip):
        wanted = [key(s) for s in want]
        for start in range(len(lines) - len(want) + 1):
            window = lines[start : start + len(want)]
            if [key(s) for s in window] != wanted:
                continue
            shift = _indent(window) - _indent(want)
            new_lines = [_reindent(line, shift) for line in repl]
            return "\n".join(lines[:start] + new_lines + lines[start + len(want) :])
    return None


def _same(line: str) -> str:
    return line


def _trim_blank(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _indent(lines: list[str]) -> int:
    first = next((line for line in lines if line.strip()), "")
    return len(first) - len(first.lstrip())


def _reindent(line: str, shift: int) -> str:
    if shift >= 0 or not line.strip():
        return " " * shift + line if line.strip() else line
    cut = min(-shift, len(line) - len(line.lstrip()))
    return line[cut:]


def _is_diff(lines: list[str]) -> bool:
    has_header = any(
        a.startswith("--- ") and b.startswith("+++ ")
        for a, b in zip(lines, lines[1:], strict=False)
    )
    return has_header and any(_HUNK.match(line) for line in lines)


def _diff_lines(lines: list[str]) -> list[str]:
    """The diff proper: from the first header to the end of the last hunk, fences dropped."""
    start = next(i for i, line in enumerate(lines) if line.startswith(("diff --git", "--- ")))
    out: list[str] = []
    for line in lines[start:]:
        if _FENCE.match(line):
            break
        out.append(line)
    return out


def _apply_diff(lines: list[str], source: str, target: str) -> str:
    diff = _diff_lines(lines)
    for line in diff:
        if line.startswith(("--- ", "+++ ")):
            name = line[4:].split("\t")[0].strip()
            if name != "/dev/null" and not _is_target(name, target):
                raise ParseError(f"the diff changes {name}; only {target} may be changed")
    normalized = []
    for line in diff:
        if line.startswith("diff --git"):
            line = f"diff --git a/{target} b/{target}"
        elif line.startswith("--- "):
            line = f"--- a/{target}"
        elif line.startswith("+++ "):
            line = f"+++ b/{target}"
        normalized.append(line)
    try:
        return apply_patch(source, "\n".join(normalized).rstrip("\n") + "\n", target)
    except PatchError as exc:
        git_error = str(exc)
    text = source
    for number, (search, replace) in enumerate(_hunks(diff), 1):
        new = replace_once(text, search, replace) if search.strip() else None
        if new is None:
            raise ParseError(f"diff hunk {number} does not apply to {target}: {git_error}")
        text = new
    return text


def _hunks(diff: list[str]) -> list[tuple[str, str]]:
    hunks: list[tuple[list[str], list[str]]] = []
    for line in diff:
        if _HUNK.match(line):
            hunks.append(([], []))
        elif hunks and not line.startswith(("--- ", "+++ ", "\\")):
            old, new = hunks[-1]
            mark, body = line[:1], line[1:]
            if mark in (" ", ""):
                old.append(body)
                new.append(body)
            elif mark == "-":
                old.append(body)
            elif mark == "+":
                new.append(body)
    return [("\n".join(_trim_blank(o)), "\n".join(_trim_blank(n))) for o, n in hunks]


def _whole_file(answer: str, source: str, target: str) -> str:
    blocks = re.findall(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", answer, re.DOTALL)
    if not blocks:
        raise ParseError(
            "no edit found: answer with SEARCH/REPLACE blocks, a unified diff, "
            f"or the whole of {target} in a ```python block"
        )
    code = max(blocks, key=len)
    have = len(code.strip().splitlines())
    need = len(source.strip().splitlines())
    if have < need // 2:
        raise ParseError(
            f"the answer's code block has {have} lines but {target} has {need}: a fragment, "
            "not the whole file; use SEARCH/REPLACE blocks for partial edits"
        )
    return code
