"""Where a campaign keeps its commits: a git repository, or (for the simulator) memory.

The driver needs six things of version control: resolve a ref, move a ref (only if it still
points where we think), read the target file at a commit, commit a new version of it on a
parent, ask whether one commit descends from another, and list checked-out branches. `GitRepo`
does them with git (cluster/gitops.py); `MemoryRepo` does them in dictionaries, so the search
simulator (benchmarks/search_sim.py) runs the real strategies over thousands of commits in
seconds. Both raise `gitops.GitError` for a file missing at a commit or a ref that moved.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from cluster import gitops


class Repo(Protocol):
    path: Path | None

    def rev_parse(self, ref: str) -> str | None: ...
    def set_ref(self, ref: str, new: str, old: str | None = None) -> None: ...
    def read_blob(self, sha: str, path: str) -> str: ...
    def commit_file(self, parent: str, path: str, content: str, message: str) -> str: ...
    def is_ancestor(self, a: str, b: str) -> bool: ...
    def checked_out_branches(self) -> list[str]: ...
    def uncommitted(self, path: str) -> bool: ...


class GitRepo:
    """A real repository; every call is one or a few git commands."""

    def __init__(self, path: Path):
        self.path = gitops.repo_root(path)

    def rev_parse(self, ref: str) -> str | None:
        return gitops.rev_parse(self.path, ref)

    def set_ref(self, ref: str, new: str, old: str | None = None) -> None:
        gitops.set_ref(self.path, ref, new, old)

    def read_blob(self, sha: str, path: str) -> str:
        return gitops.read_blob(self.path, sha, path)

    def commit_file(self, parent: str, path: str, content: str, message: str) -> str:
        return gitops.commit_file(self.path, parent, path, content, message)

    def is_ancestor(self, a: str, b: str) -> bool:
        return gitops.is_ancestor(self.path, a, b)

    def checked_out_branches(self) -> list[str]:
        return gitops.checked_out_branches(self.path)

    def uncommitted(self, path: str) -> bool:
        """The checkout's `path` differs from HEAD (edited, staged, or never committed)."""
        return bool(gitops.git(self.path, "status", "--porcelain", "--", path).strip())


class MemoryRepo:
    """Commits and refs in dictionaries: {sha: (parent, {path: text})}, {ref: sha}."""

    def __init__(self, files: dict[str, str], branch: str = "main"):
        self.path = None
        self.commits: dict[str, tuple[str | None, dict[str, str]]] = {}
        self.refs: dict[str, str] = {}
        root = self._store(None, dict(files), "initial")
        self.refs[f"refs/heads/{branch}"] = root
        self.refs["HEAD"] = root

    def _store(self, parent: str | None, files: dict[str, str], message: str) -> str:
        blob = repr((parent, sorted(files.items()), message, len(self.commits)))
        sha = hashlib.sha1(blob.encode()).hexdigest()
        self.commits[sha] = (parent, files)
        return sha

    def _ref(self, ref: str) -> str:
        if ref in self.refs or ref.startswith("refs/") or ref == "HEAD":
            return ref
        return f"refs/heads/{ref}"

    def rev_parse(self, ref: str) -> str | None:
        if ref in self.commits:
            return ref
        return self.refs.get(self._ref(ref))

    def set_ref(self, ref: str, new: str, old: str | None = None) -> None:
        ref = self._ref(ref)
        if new not in self.commits:
            raise gitops.GitError(f"set_ref {ref}: no commit {new[:10]}")
        if old is not None and self.refs.get(ref) != old:
            raise gitops.GitError(f"set_ref {ref}: it moved from {old[:10]}")
        self.refs[ref] = new

    def read_blob(self, sha: str, path: str) -> str:
        try:
            return self.commits[sha][1][path]
        except KeyError:
            raise gitops.GitError(f"{path} not found at {sha[:10]}") from None

    def commit_file(self, parent: str, path: str, content: str, message: str) -> str:
        files = {**self.commits[parent][1], path: content}
        return self._store(parent, files, message)

    def is_ancestor(self, a: str, b: str) -> bool:
        sha: str | None = b
        while sha is not None:
            if sha == a:
                return True
            sha = self.commits[sha][0]
        return False

    def checked_out_branches(self) -> list[str]:
        return []

    def uncommitted(self, path: str) -> bool:
        return False
