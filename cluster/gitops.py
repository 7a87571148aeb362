"""Git plumbing for the driver and the actors: commits without worktrees, bundles, worktrees.

The driver commits each candidate with a private index (`git commit-tree`), so it never needs
a checkout and never races a user's working tree. Commits travel to other nodes as git
bundles through Ray; each node fetches them into its own clone and checks out the exact sha
in a fresh worktree. Worktree add/remove is serialized per clone with a file lock, because
concurrent `git worktree add` fails at random.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path

from filelock import FileLock

IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}


# Every git command runs with hooks and the fsmonitor off: nothing in a repository's or a
# clone's config or hooks directory executes, whoever wrote it (defence in depth behind the
# trial's confinement, which cannot write there).
NO_HOOKS = {
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "core.hooksPath",
    "GIT_CONFIG_VALUE_0": os.devnull,
    "GIT_CONFIG_KEY_1": "core.fsmonitor",
    "GIT_CONFIG_VALUE_1": "false",
}


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, **IDENTITY, **NO_HOOKS, **(extra or {})}


_TRANSFER_LOCK = threading.Lock()  # one transfer ref per repo: bundles are built one at a time


class GitError(RuntimeError):
    pass


def git(repo: Path, *args: str, env: dict | None = None, input: bytes | None = None) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        input=input,
        env=_env(env),
    )
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip()
        raise GitError(f"git {' '.join(args[:3])}: {msg}")
    return proc.stdout.decode(errors="replace").strip()


def repo_root(path: Path) -> Path:
    try:
        return Path(git(Path(path), "rev-parse", "--show-toplevel"))
    except (GitError, FileNotFoundError) as e:
        raise GitError(
            f"{path} is not inside a git repository; a campaign needs one (`git init` and "
            "commit train.py, or pass --repo)"
        ) from e


def rev_parse(repo: Path, ref: str) -> str | None:
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except GitError:
        return None


def show(repo: Path, sha: str, path: str) -> str:
    return git(repo, "show", f"{sha}:{path}") + "\n"


def read_blob(repo: Path, sha: str, path: str) -> str:
    """Exact file content at a commit (keeps trailing newlines as they are)."""
    proc = subprocess.run(
        ["git", "show", f"{sha}:{path}"], cwd=repo, capture_output=True, env=_env()
    )
    if proc.returncode != 0:
        raise GitError(f"{path} not found at {sha[:10]}: {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


def commit_file(repo: Path, parent: str, path: str, content: str, message: str) -> str:
    """A new commit = parent with `path` replaced by `content`; returns its sha."""
    with tempfile.TemporaryDirectory(prefix="ar-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(repo, "read-tree", parent, env=env)
        blob = git(repo, "hash-object", "-w", "--stdin", input=content.encode())
        mode = "100644"
        listing = git(repo, "ls-tree", parent, "--", path)
        if listing:
            mode = listing.split()[0]
        git(repo, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
        tree = git(repo, "write-tree", env=env)
    return git(repo, "commit-tree", tree, "-p", parent, "-m", message)


def set_ref(repo: Path, ref: str, new: str, old: str | None = None) -> None:
    """Atomically point `ref` at `new` (only if it still points at `old`, when given)."""
    git(repo, "update-ref", ref, new, *([old] if old else []))


def is_ancestor(repo: Path, a: str, b: str) -> bool:
    proc = subprocess.run(["git", "merge-base", "--is-ancestor", a, b], cwd=repo, env=_env())
    return proc.returncode == 0


def checked_out_branches(repo: Path) -> list[str]:
    out = git(repo, "worktree", "list", "--porcelain")
    return [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith("branch ")]


def bundle(repo: Path, sha: str, base: str | None) -> bytes:
    """A git bundle holding `sha` and its history back to (not including) `base`."""
    with tempfile.TemporaryDirectory(prefix="ar-bundle-") as tmp:
        path = Path(tmp) / "b.bundle"
        ref = "refs/autoresearch/transfer"
        with _TRANSFER_LOCK:
            git(repo, "update-ref", ref, sha)
            try:
                spec = [ref] if base is None or base == sha else [ref, f"^{base}"]
                git(repo, "bundle", "create", "-q", str(path), *spec)
            finally:
                git(repo, "update-ref", "-d", ref)
        return path.read_bytes()


class Clone:
    """A node-local clone of the research repo, shared by the actors of one node."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock")

    def ensure(self, base_bundle: bytes) -> None:
        if (self.path / "HEAD").exists():  # made once per node; renamed into place when whole
            return
        with self.lock:
            if (self.path / "HEAD").exists():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=".clone-"))
            git(tmp, "init", "-q", "--bare")
            self._fetch_into(tmp, base_bundle)
            os.replace(tmp, self.path)

    def _fetch_into(self, repo: Path, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(suffix=".bundle") as f:
            f.write(data)
            f.flush()
            git(repo, "fetch", "-q", f.name, "+refs/autoresearch/transfer:refs/autoresearch/last")

    def fetch(self, data: bytes, sha: str) -> None:
        """Make `sha` present in the clone (no-op when it already is)."""
        if rev_parse(self.path, sha):
            return
        with self.lock:
            self._fetch_into(self.path, data)
        if not rev_parse(self.path, sha):
            raise GitError(f"commit {sha[:10]} missing after fetching its bundle")

    def add_worktree(self, sha: str, where: Path) -> Path:
        with self.lock:
            git(self.path, "worktree", "add", "--detach", "-f", str(where), sha)
        head = git(where, "rev-parse", "HEAD")
        if head != sha:
            raise GitError(f"worktree at {head[:10]}, expected {sha[:10]}")
        return where

    def remove_worktree(self, where: Path) -> None:
        with self.lock:
            try:
                git(self.path, "worktree", "remove", "--force", str(where))
            except GitError:
                pass
            git(self.path, "worktree", "prune")
