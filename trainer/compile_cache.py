"""The node's compile cache: warm torch.compile for trials that no trial can poison for another.

    cache = CompileCache.for_node()                      # <AUTORESEARCH_CACHE>/compile
    env = cache.seed(scratch / "compile", [own, parent])  # before the trial starts
    cache.publish(scratch / "compile", own)               # after it passed, by the referee

Candidates usually differ from their parent by a few constants, so the kernels Inductor
generates (its FX-graph and AOTAutograd caches, and Triton's kernel cache, which Inductor keeps
under the same directory) repeat from trial to trial; a cold compile of the GPU model takes
tens of seconds, a warm one a few (on CPU a trivial function: 27 s cold, 4.5 s warm).

Cache entries are code: Inductor loads them with pickle and runs the kernels they hold. So:

- **A trial never sees the node cache.** It is not bound into the confinement; the referee
  copies the partitions the trial may read into the trial's scratch (`seed`) and points
  TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR there. Whatever the trial writes lands in its
  private copy, which is deleted with its scratch.
- **Partitions are keyed by source.** The node cache holds one partition per train.py source
  (the sha256 of its text). A trial reads the partition of its own source and of its
  parent's (the incumbent it was derived from), and only the referee writes, into the
  partition of the trial's own source. An entry a trial planted therefore runs only in later
  trials of the same code or of edits of it, which run that code's own choices anyway; it
  never reaches a trial of an unrelated candidate, whose kernels it could otherwise sabotage.
- **Only a trial that passed publishes** (status ok: it ran, exported a graph that loaded,
  passed the probes and was scored), and publishing only adds: an existing file is never
  replaced, only plain files are copied (no links, no devices, no hard-linked files, read
  through O_NOFOLLOW), names are checked, and the sizes are capped (per file, per trial and
  per partition), so a trial cannot fill the node's disk or alias a file the referee can read.

Under `--sandbox off` a trial runs as the referee's user with nothing confined, so it could
write the node cache directly; such nodes run only the `mutate` proposer's edits.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9._+-]{1,255}$")  # what Inductor and Triton name their files
MAX_FILE_BYTES = 256 * 2**20
MAX_PUBLISH_BYTES = 1 * 2**30  # what one trial may add
MAX_PARTITION_BYTES = 4 * 2**30
MAX_FILES = 20_000


def source_key(text: str) -> str:
    """The partition of a train.py source: the first 24 hex digits of its sha256."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_env(trial_dir: Path) -> dict[str, str]:
    """The environment that points Inductor and Triton at a trial's private cache."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(trial_dir),
        "TRITON_CACHE_DIR": str(Path(trial_dir) / "triton"),
    }


def _walk(root: Path):
    """(relative path, absolute path, lstat) of every entry under `root`, depth first, never
    following a link; at most MAX_FILES entries."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            count += 1
            if count > MAX_FILES:
                return
            path = Path(dirpath) / name
            yield path.relative_to(root), path, os.lstat(path)


def _copy_plain(src: Path, dst: Path, limit: int) -> int:
    """Copy one plain, singly linked file through O_NOFOLLOW to a temporary name beside
    `dst`, then link it into place only if `dst` does not exist yet. Bytes copied, 0 if
    refused or already there."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return 0
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > limit:
            return 0
        if dst.exists():
            return 0
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=dst.parent, prefix=".pub-", delete=False)
        try:
            with tmp:
                copied = 0
                while chunk := f.read(1 << 20):
                    copied += len(chunk)
                    if copied > limit:
                        return 0
                    tmp.write(chunk)
            os.chmod(tmp.name, 0o444)
            try:
                os.link(tmp.name, dst)  # fails if another referee published it meanwhile
            except FileExistsError:
                return 0
            return copied
        finally:
            os.unlink(tmp.name)


def _size(root: Path) -> int:
    return sum(st.st_size for _, _, st in _walk(root) if stat.S_ISREG(st.st_mode))


@dataclass(frozen=True)
class CompileCache:
    root: Path  # the node cache: one partition directory per source key

    @classmethod
    def for_node(cls) -> CompileCache:
        import torch

        from trainer.prepare import cache_root

        # Keyed by torch version too: a new torch compiles everything anew anyway.
        return cls(cache_root() / "compile" / f"torch-{torch.__version__}")

    def partition(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{24}", key):
            raise ValueError(f"not a source key: {key!r}")
        return self.root / key

    def seed(self, trial_dir: Path, keys: list[str]) -> dict[str, str]:
        """Fill `trial_dir` (empty, in the trial's scratch) with copies of the partitions of
        `keys`, and return the environment pointing the trial at it. Copies, not links: a
        file the trial could write through would be the node's."""
        trial_dir = Path(trial_dir)
        trial_dir.mkdir(parents=True, exist_ok=True)
        for key in dict.fromkeys(keys):
            part = self.partition(key)
            if not part.is_dir():
                continue
            for rel, path, st in _walk(part):
                if stat.S_ISREG(st.st_mode) and not (trial_dir / rel).exists():
                    (trial_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, trial_dir / rel, follow_symlinks=False)
        return cache_env(trial_dir)

    def publish(self, trial_dir: Path, key: str) -> dict[str, int]:
        """Add the plain files of a passed trial's cache that its partition lacks. Returns
        counts of files added and refused, and the bytes added."""
        part = self.partition(key)
        part.mkdir(parents=True, exist_ok=True)
        budget = min(MAX_PUBLISH_BYTES, MAX_PARTITION_BYTES - _size(part))
        added = refused = added_bytes = 0
        for rel, path, st in _walk(Path(trial_dir)):
            if stat.S_ISDIR(st.st_mode):
                continue
            if not all(NAME.match(p) for p in rel.parts) or rel.name.startswith(".pub-"):
                refused += 1
                continue
            if not stat.S_ISREG(st.st_mode) or (part / rel).exists():
                refused += not stat.S_ISREG(st.st_mode)
                continue
            if rel.parts[0] == "locks" or rel.suffix == ".lock":
                continue  # Inductor's lock files: state of one process, not cache entries
            n = _copy_plain(path, part / rel, min(MAX_FILE_BYTES, budget - added_bytes))
            if n:
                added, added_bytes = added + 1, added_bytes + n
            else:
                refused += 1
            if added_bytes >= budget:
                break
        return {"added": added, "refused": refused, "bytes": added_bytes}
