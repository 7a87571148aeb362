"""The referee's side of trainer/confine.py: which confinement a trial gets, the launcher
command that confines it, and the launcher's word on whether the confinement held.

Kept apart from confine.py, which is the launcher itself (run as `python -S -m
trainer.confine SPEC_JSON -- CMD...` in front of the harness): that file stays small and
self-contained, and everything here runs in the referee's process.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trainer import confine

SANDBOX_MODES = ("auto", "on", "namespaces", "landlock", "off")
NO_CONFINEMENT = (
    "no confinement: the trial runs as the referee's user with only an environment allowlist, "
    "its own process group and a file-size limit; it can read and write whatever that user "
    "can (other trials' files, the referee's code, ~/.ray/auth_token, /proc/<pid>/environ of "
    "the referee) and open network connections"
)


class ConfinementError(RuntimeError):
    pass


def resolve_confinement(mode: str) -> str:
    """The confinement a trial gets here: "namespaces", "landlock" or "none".

    auto: the best this node offers, "none" when it offers nothing (the driver then refuses
    untrusted proposers); on: the best, or an error; namespaces / landlock: that one, or an
    error; off: none.
    """
    if mode not in SANDBOX_MODES:
        raise ConfinementError(f"unknown sandbox {mode!r}; use one of {', '.join(SANDBOX_MODES)}")
    if mode == "off":
        return "none"
    have = confine.available()
    if mode in ("auto", "on") and have:
        return have[0]
    if mode == "auto":
        return "none"
    if mode in have:
        return mode
    raise ConfinementError(
        f"sandbox={mode} cannot confine trials on this node: "
        f"{describe_confinement()}. `--sandbox off` would run them with {NO_CONFINEMENT}"
    )


def describe_confinement() -> str:
    have = confine.available()
    if have:
        return "it offers " + " and ".join(have)
    return (
        "it offers neither unprivileged user namespaces (kernel.unprivileged_userns_clone, "
        "user.max_user_namespaces, or AppArmor's restrict_unprivileged_userns may forbid them) "
        f"nor Landlock (Linux 5.13+, landlock in the lsm= boot list; ABI {confine.landlock_abi()})"
    )


def gpu_devices() -> list[str]:
    return sorted(n for n in os.listdir("/dev") if n.startswith("nvidia"))


def launcher(
    cmd: list[str],
    *,
    mode: str,
    device: str,
    code_dir: Path,
    scratch: Path,
    owned: Sequence[Path] = (),
    status_fd: int,
    read_only: Sequence[Path] = (),
) -> list[str]:
    """`cmd` behind the confinement launcher, in `mode` ("namespaces" or "landlock").

    The trial sees the Python installation and `code_dir` read-only (on a GPU also /sys, the
    driver's /proc files and the GPU device nodes), `scratch` as its one writable place and its
    working directory, nothing else. Under namespaces it runs as an unprivileged uid, which
    is given `owned` (directories in scratch it must write, and what they hold). `read_only`
    adds paths it may read (autoresearch's data caches). The launcher reports a failure on
    `status_fd`; see read_status.
    """
    on_gpu = device.startswith("cuda")
    uid = confine.trial_uid() if mode == "namespaces" else os.getuid()
    gid = uid if uid != os.getuid() else os.getgid()
    spec = {
        "mode": mode,
        "ro": confine.python_paths()
        + [str(code_dir), *(str(p) for p in read_only)]
        + (["/sys", "/proc/driver/nvidia"] if on_gpu else []),
        "rw": [str(scratch)],
        "dev": gpu_devices() if on_gpu else [],
        "uid": uid,
        "gid": gid,
        "cwd": str(scratch),
        "status_fd": status_fd,
    }
    give_to_trial(mode, owned)
    # By path, isolated (-I: no PYTHON* variables, no script directory on sys.path): the
    # launcher needs nothing but the standard library, whatever the trial's PYTHONPATH is.
    script = str(Path(confine.__file__).resolve())
    return [sys.executable, "-I", "-S", script, json.dumps(spec), "--", *cmd]


def give_to_trial(mode: str, paths: Sequence[Path]) -> None:
    """Under namespaces as root, make `paths` and all they hold the trial's uid's, so it can
    write them (its scratch, the seeded copies of the compile cache)."""
    uid = confine.trial_uid() if mode == "namespaces" else os.getuid()
    if uid == os.getuid():
        return
    for d in paths:
        os.chown(d, uid, uid)
        for parent, dirs, files in os.walk(d):
            for name in dirs + files:
                os.chown(os.path.join(parent, name), uid, uid, follow_symlinks=False)


def read_status(fd: int, timeout: float = 60.0) -> str:
    """The launcher's word on the confinement, read from (and closing) our end of its status
    pipe: nothing (its end closed by the exec of the harness) means it holds; a message means
    it failed."""
    chunks, deadline = [], time.monotonic() + timeout
    late = f"the confinement launcher did not start the trial within {timeout:.0f}s"
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return late
            chunk = os.read(fd, 4096)
            if not chunk:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(chunk)
        return late
    finally:
        os.close(fd)
