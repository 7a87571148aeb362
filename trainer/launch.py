"""Starting a trial's process in two steps, so the next one can start while this one is scored.

    h = spawn(key, threads, max_file_bytes)   # confined harness: Python, torch, waits
    running = h.go(train_py, cfg, ...)         # its train.py, seed, budget, log: it runs
    prestart(key, ...) / adopt(key)            # one spare per referee process

`spawn` starts trainer/harness.py confined (trainer/confine_spec.py) in a fresh scratch
directory with everything that does not depend on the candidate: the interpreter, numpy,
torch and what train.py will import (torch.optim pulls in torch._dynamo: 2.5 s on CPU), and
the CUDA context on a GPU. It then waits on a socket. `go` copies the candidate's train.py
into the scratch, seeds its compile cache, and sends the seed, the budget and the trial's
log (as a file descriptor, which the harness makes its stdout) over that socket.

Until `go` the process has run only the referee's code, in the confinement it will run the
candidate in; a spare is spawned only after the previous trial's whole process tree was
killed, in a scratch directory of its own, so no trial can reach the next one through it.
A referee that starts a spare after each trial (TrialConfig.prestart, the TrialActor's
setting) hides process start and imports behind the previous trial's scoring.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainer import confine_spec, sandbox
from trainer.compile_cache import cache_env


@dataclass(frozen=True)
class LaunchKey:
    """Everything a harness is started with before it knows its candidate."""

    device: str
    confinement: str
    vocab_size: int
    seq_len: int
    bos_id: int
    eval_batch: int
    threads: int | None
    max_file_bytes: int


@dataclass
class Harness:
    """A started harness waiting for its trial, and the ends of its pipes the referee keeps."""

    key: LaunchKey
    proc: subprocess.Popen
    scratch: Path
    sock: socket.socket
    req_r: int
    data_w: int
    status_r: int | None
    early_log: Path  # what it printed before `go` (import warnings, a crash)
    closed: bool = field(default=False)

    @property
    def compile_dir(self) -> Path:
        return self.scratch / "compile"

    def go(self, train_py: Path, seed: int, budget: str, log_path: Path, header: str) -> str:
        """Hand it the candidate; "" when it runs, else why the confinement or start failed."""
        failed = confine_spec.read_status(self.status_r) if self.status_r is not None else ""
        self.status_r = None
        shutil.copyfile(train_py, self.scratch / "train.py")
        confine_spec.give_to_trial(self.key.confinement, [self.scratch])
        with open(log_path, "w") as logf:
            logf.write(header)
            logf.flush()
            msg = {"train_py": str(self.scratch / "train.py"), "seed": seed, "budget": budget}
            try:
                socket.send_fds(self.sock, [json.dumps(msg).encode() + b"\n"], [logf.fileno()])
            except OSError as e:
                failed = failed or f"the trial process did not take its trial: {e}"
        self.sock.close()
        return failed

    def discard(self) -> None:
        """Kill it unused, and remove its scratch."""
        self.close()

    def close(self) -> None:
        """Release what is left of it. A trial's process tree is killed by the referee before
        (sandbox.kill_tree); here only its own process group, if it still runs (a spare that
        ran nothing but our code, or a launch our side of it failed): never other processes
        of ours, which may include the next trial's spare or a local Ray."""
        if self.closed:
            return
        self.closed = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        for fd in (self.req_r, self.data_w, self.status_r):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.sock.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.early_log.unlink(missing_ok=True)

    def early_output(self) -> str:
        try:
            return self.early_log.read_text(errors="replace")
        except OSError:
            return ""


def spawn(key: LaunchKey) -> Harness:
    """Start a confined harness for `key`, in a fresh scratch directory, waiting for `go`."""
    code_dir = Path(__file__).resolve().parent  # not trainer.__file__: a repo may shadow it
    scratch = Path(tempfile.mkdtemp(prefix="ar-trial-"))
    out, compiled = scratch / "out", scratch / "compile"
    out.mkdir()
    compiled.mkdir()
    req_r, req_w = os.pipe()
    data_r, data_w = os.pipe()
    status_r, status_w = os.pipe() if key.confinement != "none" else (None, None)
    ours, theirs = socket.socketpair()
    cmd = [sys.executable, "-m", "trainer.harness"]
    for flag, value in (
        ("--out", out),
        ("--device", key.device),
        ("--vocab-size", key.vocab_size),
        ("--seq-len", key.seq_len),
        ("--bos-id", key.bos_id),
        ("--eval-batch", key.eval_batch),
        ("--req-fd", req_w),
        ("--data-fd", data_r),
        ("--go-fd", theirs.fileno()),
    ):
        cmd += [flag, str(value)]
    if status_w is not None:
        cmd = confine_spec.launcher(
            cmd,
            mode=key.confinement,
            device=key.device,
            code_dir=code_dir,
            scratch=scratch,
            owned=(scratch,),
            status_fd=status_w,
        )
    env = sandbox.trial_env(
        scratch, key.threads, {"PYTHONPATH": str(code_dir.parent), **cache_env(compiled)}
    )
    sandbox.become_subreaper()
    fd, early = tempfile.mkstemp(prefix="ar-harness-", suffix=".log")
    with os.fdopen(fd, "w") as logf:
        proc = subprocess.Popen(
            cmd,
            cwd=scratch,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=tuple(f for f in (req_w, data_r, status_w, theirs.fileno()) if f is not None),
            start_new_session=True,
            preexec_fn=sandbox.child_limits(key.max_file_bytes),
        )
    for f in (req_w, data_r, status_w):
        if f is not None:
            os.close(f)
    theirs.close()
    return Harness(key, proc, scratch, ours, req_r, data_w, status_r, Path(early))


_spare: Harness | None = None  # at most one per referee process: the next trial's


def adopt(key: LaunchKey) -> Harness | None:
    """The spare started for `key`, if it is still waiting; any other spare is discarded."""
    global _spare
    spare, _spare = _spare, None
    if spare is None:
        return None
    if spare.key == key and spare.proc.poll() is None:
        return spare
    spare.discard()
    return None


def prestart(key: LaunchKey) -> None:
    """Start the next trial's harness now (after this trial's processes were killed)."""
    global _spare
    if _spare is not None:
        _spare.discard()
    _spare = spawn(key)
