"""Attacks on the trial's confinement: each train.py here tries to reach what decides its score
or what runs outside it later, under every confinement this node offers. None succeeds.

Each attack prints a WON line when it gets through; the referee must keep every one of them
from printing it (and the files it aimed at must be unchanged).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from trainer import confine
from trainer.referee import ConfinementError, resolve_confinement

from conftest import ROOT, inject, tiny_train_source, trial

pytestmark = pytest.mark.slow
MODES = [
    pytest.param(m, marks=pytest.mark.skipif(m not in confine.available(), reason=f"no {m} here"))
    for m in ("namespaces", "landlock")
]


def attack(tmp_path: Path, data: Path, mode: str, code: str, **cfg):
    """Run `code` at the start of train(ctx), encoded so the static guard cannot see it."""
    hidden = base64.b64encode(textwrap.dedent(code).encode()).decode()
    code = f"import base64\nexec(base64.b64decode({hidden!r}).decode(), {{}})\n"
    r = trial(
        tmp_path, data, inject(tiny_train_source(), code), budget="3steps", sandbox=mode, **cfg
    )
    assert r.confinement == mode
    return r, Path(r.log_path).read_text()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", MODES)
def test_unmounting_or_new_namespaces_do_not_uncover_the_data(tmp_path, data, mode):
    """Today's main hid the split under a tmpfs the trial owned: umount2 uncovered it."""
    r, log = attack(
        tmp_path,
        data,
        mode,
        f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def umount_all():
            for _ in range(3):
                for line in open("/proc/self/mountinfo").read().splitlines()[::-1]:
                    libc.umount2(line.split()[4].encode(), 2)
        def try_read():
            for name in ("eval/val.bin", "train.bin", "token_bytes.npy"):
                try:
                    print("WON read", name, len(open({str(data)!r} + "/" + name, "rb").read()))
                except OSError as e:
                    print("denied", name, e)
        try:
            umount_all()
        except OSError as e:
            print("no mountinfo", e)
        try_read()
        caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd"))]
        print("caps", caps)
        if libc.unshare(0x10000000 | 0x00020000) == 0:  # a user + mount namespace of its own
            print("nested namespace made")
            try:
                umount_all()
            except OSError:
                pass
            try_read()
        """,
    )
    assert "WON" not in log
    assert "denied eval/val.bin" in log
    assert "CapEff:\\t0000000000000000" in log
    if mode == "namespaces":
        assert "nested namespace made" not in log
    assert r.status == "ok", r.error


@pytest.mark.parametrize("mode", MODES)
def test_the_evaluation_data_cannot_be_rewritten(tmp_path, data, mode):
    before = {n: digest(data / n) for n in ("eval/val.bin", "manifest.json", "train.bin")}
    _, log = attack(
        tmp_path,
        data,
        mode,
        f"""
        for name in ("eval/val.bin", "manifest.json", "train.bin"):
            try:
                with open({str(data)!r} + "/" + name, "r+b") as f:
                    f.write(b"\\0" * 64)
                print("WON wrote", name)
            except OSError as e:
                print("denied", name, e)
        """,
    )
    assert "WON" not in log
    assert {n: digest(data / n) for n in before} == before


@pytest.mark.parametrize("mode", MODES)
def test_no_code_can_be_planted_where_the_driver_actor_or_git_runs_it(tmp_path, data, mode):
    """The project's own package (imported by the next driver), a git repo's hooks and
    config (run by the next git command), the referee user's home (its shell, ~/.ray)."""
    repo = tmp_path / "repo"
    (repo / ".git" / "hooks").mkdir(parents=True)
    home = Path(os.path.expanduser("~"))
    targets = [
        ROOT / "cluster" / "zz_planted.py",
        ROOT / "trainer" / "zz_planted.py",
        repo / ".git" / "hooks" / "post-checkout",
        repo / ".git" / "config",
        home / ".zz_planted_rc",
    ]
    _, log = attack(
        tmp_path,
        data,
        mode,
        f"""
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "a") as f:
                    f.write("import os; os.system('touch /tmp/pwned')\\n")
                print("WON planted", path)
            except OSError as e:
                print("denied", path, e)
        """,
    )
    assert "WON" not in log
    planted = [t for t in targets if t.exists() and "pwned" in t.read_text()]
    for t in planted:
        t.unlink()
    assert planted == []


@pytest.mark.parametrize("mode", MODES)
def test_no_network_not_even_the_nodes_loopback(tmp_path, data, mode):
    """On a Ray node, 127.0.0.1 holds the dashboard's job API and the GCS."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    _, log = attack(
        tmp_path,
        data,
        mode,
        f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2)
            print("WON connected")
        except OSError as e:
            print("denied", e)
        """,
    )
    server.close()
    assert "WON" not in log
    assert accepted == []


@pytest.mark.parametrize("mode", MODES)
def test_the_referees_environment_and_files_are_out_of_reach(tmp_path, data, mode, monkeypatch):
    """Secrets in the referee's environment (read through /proc) and readable files of its
    user (a Ray token, a provider key in ~/.config)."""
    monkeypatch.setenv("ZZ_PROVIDER_KEY", "sk-must-not-leak")
    token = tmp_path / "auth_token"
    token.write_text("ray-token-must-not-leak")
    token.chmod(0o644)
    _, log = attack(
        tmp_path,
        data,
        mode,
        f"""
        import os
        for pid in os.listdir("/proc") if os.access("/proc", os.R_OK) else []:
            try:
                if b"must-not-leak" in open(f"/proc/{{pid}}/environ", "rb").read():
                    print("WON environ of", pid)
            except OSError:
                pass
        try:
            print("WON token", open({str(token)!r}).read())
        except OSError as e:
            print("denied token", e)
        """,
    )
    assert "WON" not in log
    assert "must-not-leak" not in log


def test_an_unknown_or_unavailable_confinement_is_refused_with_what_off_would_expose(monkeypatch):
    monkeypatch.setattr(confine, "available", lambda: ())
    assert resolve_confinement("auto") == "none"
    assert resolve_confinement("off") == "none"
    for mode in ("on", "namespaces", "landlock"):
        with pytest.raises(ConfinementError, match="--sandbox off"):
            resolve_confinement(mode)
    with pytest.raises(ConfinementError, match="unknown sandbox"):
        resolve_confinement("bwrap")


def test_a_trial_records_the_confinement_it_ran_under(tmp_path, data):
    r = trial(tmp_path, data, tiny_train_source(), budget="2steps", sandbox="auto")
    assert r.status == "ok", r.error
    assert r.confinement == (confine.available() or ("none",))[0]
    off = trial(tmp_path, data, tiny_train_source(), budget="2steps", sandbox="off")
    assert off.confinement == "none"


def test_a_hook_planted_in_a_nodes_clone_never_runs(tmp_path):
    """Git hooks run outside any sandbox: the actors' git commands run with hooks off."""
    from cluster.gitops import Clone, bundle, rev_parse

    from conftest import commit_repo

    repo = commit_repo(tmp_path / "repo", {"train.py": "x = 1\n"})
    sha = rev_parse(repo, "HEAD")
    clone = Clone(tmp_path / "clone.git")
    clone.ensure(bundle(repo, sha, None))
    marker = tmp_path / "hook-ran"
    hook = clone.path / "hooks" / "post-checkout"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    wt = clone.add_worktree(sha, tmp_path / "wt")
    assert (wt / "train.py").read_text() == "x = 1\n"
    clone.remove_worktree(wt)
    assert not marker.exists()
