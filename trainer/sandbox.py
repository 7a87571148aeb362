"""How an untrusted trial process is started, watched and killed (confinement: trainer/confine.py).

- Environment: an allowlist, so API keys and cloud credentials never reach train.py.
- Process tree: its own session/process group; the referee becomes a child subreaper so a
  grandchild that escapes with setsid() is re-parented to it and still gets killed.
- Limits: a file-size cap, death with its parent, a memory share watched by the referee.
- Watching: `watch` waits for the process against a hard deadline, a cancellation, its memory
  share and whatever else its caller checks; `tail` reads the end of its log.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# Only these variables reach a trial; everything else (OPENAI_API_KEY, AWS_*, HF_TOKEN, the
# Ray token, ...) is dropped.
ENV_ALLOW = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TERM",
    "TZ",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "PYTHONPATH",
    "VIRTUAL_ENV",
)


def trial_env(scratch: Path, threads: int | None, extra: dict[str, str] | None = None) -> dict:
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.update(
        HOME=str(scratch), TMPDIR=str(scratch), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1"
    )
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "AUTORESEARCH_THREADS"):
            env[k] = str(threads)
    env.update(extra or {})
    return env


def become_subreaper() -> None:
    """Orphaned descendants re-parent to this process instead of init (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


MAX_FILE_BYTES = 64 * 2**30  # default cap on any one file a trial writes (RLIMIT_FSIZE)


def child_limits(max_file_bytes: int = MAX_FILE_BYTES):
    """A preexec_fn: SIGKILL the child when the process that started it dies (a killed actor
    or driver must not leave trials running on a GPU), and cap the size of any file it
    writes so one runaway trial cannot fill the node's disk. Linux only."""
    import resource

    def apply() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PDEATHSIG
        except (OSError, AttributeError):
            pass
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        except (ValueError, OSError):
            pass

    return apply


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    kids, todo, seen = _children_map(), [pid], []
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_share_mb(workers_per_node: int) -> float:
    """A trial's fair share of this node's RAM (90% of it, split between its workers)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    return 0.9 * total / max(1, workers_per_node)


def kill_tree(proc: subprocess.Popen, spare: set[int] = frozenset()) -> None:
    """Kill the trial's process group and every descendant of ours it left behind."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(3):  # a forking process may add children while we sweep
        victims = [p for p in descendants(os.getpid()) if p not in spare]
        if not victims:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
        for pid in victims:  # reap only ours: waitpid(-1) would steal other Popens' statuses
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def watch(
    proc: subprocess.Popen,
    *,
    started: float,
    hard_timeout: float | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    memory_limit_mb: float | None = None,
    check: Callable[[float], str] | None = None,
    interval: float = 0.05,
) -> str:
    """Wait for `proc` to exit: "" when it exits by itself, else the reason to kill it.

    Every `interval` seconds: the resident memory of its tree (once a second) against
    `memory_limit_mb` (a reason starting "used "), `cancelled()` ("cancelled"), `hard_timeout`
    seconds after `started` (a time.monotonic() time), then `check(now)`, whose non-empty
    answer is the caller's own reason."""
    next_mem_check = 0.0
    while proc.poll() is None:
        now = time.monotonic()
        if memory_limit_mb and now >= next_mem_check:
            next_mem_check = now + 1.0
            rss = tree_rss_mb(proc.pid)
            if rss > memory_limit_mb:
                return f"used {rss:.0f} MiB of memory, over its share of {memory_limit_mb:.0f} MiB"
        if cancelled():
            return "cancelled"
        if hard_timeout is not None and now - started > hard_timeout:
            return f"hard deadline of {hard_timeout:.0f}s reached"
        reason = check(now) if check else ""
        if reason:
            return reason
        time.sleep(interval)
    return ""


def tail(path: Path, n: int = 3000) -> str:
    """The last `n` characters of a log ("" when it cannot be read)."""
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""
