"""One driver per campaign: an exclusive lock on runs/TAG/driver.lock while a driver runs.

    with hold_campaign(files.driver_lock, tag):
        ...  # only this process records trials, moves branches, writes the journal

The lock is `flock(2)` on an open file: the kernel drops it when the holder exits, however it
exits (SIGKILL, OOM, a lost terminal), so a killed driver's lock is never stale and the next
driver takes it over at once. The file keeps the holder's host, pid and start time, to name it
in the refusal. The lock works on local filesystems (and NFSv4); a run directory on a
filesystem without flock is refused rather than run unguarded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cluster.config import CampaignError


@contextlib.contextmanager
def hold_campaign(path: Path, tag: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CampaignError(_refusal(path, tag)) from None
        except OSError as e:
            raise CampaignError(f"cannot lock {path} ({e}); put runs/ on a local disk") from None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _refusal(path: Path, tag: str) -> str:
    try:
        holder = json.loads(path.read_text())
        who = f"pid {holder['pid']} on {holder['host']}, since " + time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        who = "another process"
    return (
        f"campaign {tag} is being run by {who}; two drivers on one tag would record each "
        f"other's trials as lost. Stop that driver first (`autoresearch status --tag {tag}` "
        "shows its progress), or start another --tag."
    )
