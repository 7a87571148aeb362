"""Confines one trial process: the launcher the referee puts in front of trainer.harness.

    python -m trainer.confine SPEC_JSON -- CMD...      (started by trainer/referee.py)

The candidate's code must hold no privilege over its own confinement, see only what it needs
and reach nothing the driver, an actor or git will later run. Two mechanisms, best first:

- `namespaces` (unprivileged user namespaces): new user, mount, PID, network, IPC and UTS
  namespaces. The trial gets a root of its own, built on an empty tmpfs: the Python
  installation, the libraries and the code it runs bound read-only, its scratch directory the
  only writable place, a fresh /proc, a minimal /dev (plus the GPU device nodes on GPU nodes),
  no data files, no home, and a network namespace holding only its own loopback. The old root
  is detached, so there is nothing beneath a mount to uncover. The launcher then drops to an
  unprivileged uid (the caller's own, or nobody's when the caller is root), clears every
  capability including the bounding set, sets no_new_privs and execs: the process that runs
  train.py has no capability in any namespace, so it cannot unmount, remount or re-map what
  it was given, and mounts it inherited are locked for any namespace it creates.
- `landlock` (Linux 5.13+, no namespaces needed): the same filesystem view as access rules
  (read-only code and libraries, a writable scratch, nothing else: no data, no home, no other
  process's /proc), TCP bind/connect denied (ABI 4+), signals and abstract unix sockets scoped
  to the trial (ABI 6+), an unprivileged uid when the caller is root, no_new_privs.

`available()` says which of the two this node can give; the referee records it per trial.
Nothing here runs in the referee's process except `available()`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import os
import platform
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

NOBODY = 65534  # the uid a trial runs as when the referee is root

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 28, 47, 4
SECURE_ALL_LOCKED = 0x2F  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off, each locked
_SYSCALLS = {  # (pivot_root, capset) by machine; landlock's numbers are the same everywhere
    "x86_64": (155, 126),
    "aarch64": (41, 91),
}
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def _syscall(name: str) -> int:
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise OSError(errno.ENOSYS, f"no syscall table for {platform.machine()}")
    return table[("pivot_root", "capset").index(name)]


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            src.encode() if src else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {src} on {target}",
    )


# ----------------------------------------------------------------------------- namespaces


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _kept_flags(path: str) -> int:
    """Flags of the mount holding `path` that a bind remount inside a user namespace must keep
    (the kernel locks them: clearing one fails with EPERM)."""
    f = os.statvfs(path).f_flag
    out = MS_NOSUID | MS_NODEV
    for st_bit, ms in ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME)):
        if f & st_bit:
            out |= ms
    if f & os.ST_NODIRATIME:
        out |= MS_NODIRATIME
    if f & getattr(os, "ST_RELATIME", 4096):
        out |= MS_RELATIME
    return out


def _mkpoint(target: str, like: str) -> None:
    """A mount point at `target` of the kind (file or directory) of `like`."""
    if os.path.isdir(like):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()


def _bind(host: str, new: str, writable: bool, dev: bool = False) -> None:
    src = "/oldroot" + host
    if not os.path.lexists(src):
        return
    if os.path.islink(src) and not dev:  # e.g. /lib -> usr/lib on merged-usr systems
        os.makedirs(os.path.dirname(new), exist_ok=True)
        if not os.path.lexists(new):
            os.symlink(os.readlink(src), new)
        return
    _mkpoint(new, src)
    _mount(src, new, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | _kept_flags(src)
    if dev:
        flags &= ~MS_NODEV
    if not writable:
        flags |= MS_RDONLY
    _mount(None, new, None, flags)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP


def _build_root(spec: dict) -> None:
    """In the new mount namespace: a tmpfs root holding only what the spec names."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    os.makedirs("/tmp/newroot")
    os.makedirs("/tmp/oldroot")
    _check(_libc.syscall(_syscall("pivot_root"), b"/tmp", b"/tmp/oldroot"), "pivot_root to build")
    os.chdir("/")
    _mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    # /dev: a few harmless nodes, the GPU's when it has one, and a private shm.
    os.makedirs("/newroot/dev")
    _mount("tmpfs", "/newroot/dev", "tmpfs", MS_NOSUID, "mode=0755")
    os.makedirs("/newroot/dev/shm")
    _mount("tmpfs", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=1g")
    for name in ("null", "zero", "full", "random", "urandom", *spec.get("dev", [])):
        _bind(f"/dev/{name}", f"/newroot/dev/{name}", writable=True, dev=True)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"/newroot/dev/{name}")
    os.makedirs("/newroot/proc", exist_ok=True)
    _mount("proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs("/newroot/tmp", exist_ok=True)
    _mount("tmpfs", "/newroot/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=512m")
    for p in spec["ro"]:
        _bind(p, "/newroot" + p, writable=False)
    for p in spec["rw"]:
        _bind(p, "/newroot" + p, writable=True)
    os.chdir("/newroot")
    _check(_libc.syscall(_syscall("pivot_root"), b".", b"."), "pivot_root into the trial root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    # The root itself is read-only: the trial writes only its scratch, /tmp and /dev/shm.
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_privileges(uid: int, gid: int) -> None:
    """Become `uid` with no capability and no way back (bounding set, securebits, no_new_privs)."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    # uid 0 gets no capability from an exec, and a setuid keeps what capset then clears.
    _check(_libc.prctl(PR_SET_SECUREBITS, SECURE_ALL_LOCKED, 0, 0, 0), "securebits")
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header = struct.pack("II", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = ctypes.create_string_buffer(24)  # two zeroed {effective, permitted, inheritable}
    _check(_libc.syscall(_syscall("capset"), header, data), "capset to nothing")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _wait_and_exit(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _enter_namespaces(spec: dict) -> None:
    """Unshare everything; returns in PID 1 of the new namespaces, inside the new root.

    The id maps are written by the parent, still in the outer namespace: only a process with
    CAP_SETUID there may map more than its own uid (root maps itself, to build the root, and
    the trial's uid). The parent and the child between them only wait; the trial sees neither.
    """
    uid, gid = spec["uid"], spec["gid"]
    outer_uid, outer_gid = os.getuid(), os.getgid()
    if outer_uid == 0:
        os.setgroups([])  # no supplementary groups follow the trial
        maps = (f"0 0 1\n{uid} {uid} 1\n", f"0 0 1\n{gid} {gid} 1\n")
    else:
        maps = (f"{outer_uid} {outer_uid} 1\n", f"{outer_gid} {outer_gid} 1\n")
    ready_r, ready_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    child = os.fork()
    if child:
        _close(spec.get("status_fd"))
        os.close(ready_w)
        os.close(mapped_r)
        if os.read(ready_r, 1) == b"u":
            try:
                _write(f"/proc/{child}/uid_map", maps[0])
                _write(f"/proc/{child}/setgroups", "deny")
                _write(f"/proc/{child}/gid_map", maps[1])
                os.write(mapped_w, b"m")
            except OSError as e:
                os.write(mapped_w, f"id maps: {e}".encode()[:200])
        os.close(mapped_w)
        _wait_and_exit(child)
    os.close(ready_r)
    os.close(mapped_w)
    _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    ok = _libc.unshare(flags) == 0
    err = ctypes.get_errno()
    os.write(ready_w, b"u" if ok else b"x")
    os.close(ready_w)
    if not ok:
        raise OSError(err, f"unshare: {os.strerror(err)}")
    answer = os.read(mapped_r, 256)
    if answer != b"m":
        raise OSError(errno.EPERM, answer.decode(errors="replace") or "no id maps written")
    pid = os.fork()  # the grandchild is PID 1 of the new PID namespace
    if pid:
        _close(spec.get("status_fd"))
        _wait_and_exit(pid)
    _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    _build_root(spec)
    socket.sethostname("trial")
    _loopback_up()
    # No namespace of its own below this one: nothing to gain there, and nothing to try.
    for name in ("user", "mnt"):
        _write(f"/proc/sys/user/max_{name}_namespaces", "0")


# ----------------------------------------------------------------------------- landlock

# Filesystem rights by the ABI version that introduced them.
_FS_RIGHTS = {1: (1 << 13) - 1, 2: 1 << 13, 3: 1 << 14, 5: 1 << 15}  # REFER, TRUNCATE, IOCTL_DEV
_READ = 1 | 4 | 8  # EXECUTE, READ_FILE, READ_DIR
_DEV = 2 | 4 | (1 << 15)  # WRITE_FILE, READ_FILE, IOCTL_DEV


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers, 0 when it has none."""
    ret = _libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(ret, 0)


def _landlock(spec: dict) -> None:
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock is not available on this kernel")
    handled_fs = sum(v for k, v in _FS_RIGHTS.items() if k <= abi)
    handled_net = 3 if abi >= 4 else 0  # BIND_TCP, CONNECT_TCP
    scoped = 3 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET, SIGNAL
    attr = struct.pack("QQQ", handled_fs, handled_net, scoped)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    fd = _check(
        _libc.syscall(LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(size), ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )

    def allow(path: str, rights: int) -> None:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                rights &= 2 | 4 | 1 | (1 << 14) | (1 << 15)  # file rights only
            rule = struct.pack("=Qi", rights & handled_fs, pfd)
            _check(
                _libc.syscall(LANDLOCK_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(1), rule, 0),
                f"landlock rule for {path}",
            )
        finally:
            os.close(pfd)

    for p in spec["ro"]:
        allow(p, _READ)
    for p in spec["rw"]:
        allow(p, handled_fs)
    for name in ("null", "zero", "full", "random", "urandom", *spec.get("dev", [])):
        allow(f"/dev/{name}", _DEV)
    allow(f"/proc/{os.getpid()}", _READ)  # its own /proc entry, no other process's
    for name in ("cpuinfo", "meminfo", "stat"):
        allow(f"/proc/{name}", _READ)
    if os.getuid() == 0:
        os.setgroups([])
    # The uid stays (root's files may be all the interpreter can be read from), without a
    # single capability: the rules above decide what it reaches.
    _drop_privileges(os.getuid(), os.getgid())
    _check(
        _libc.syscall(LANDLOCK_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)),
        "landlock_restrict_self",
    )
    os.close(fd)


# ----------------------------------------------------------------------------- entry points


@functools.cache
def available() -> tuple[str, ...]:
    """The mechanisms that work on this node, best first ("namespaces", "landlock")."""
    out = []
    probe = [sys.executable, "-S", "-m", "trainer.confine"]
    for mode in ("namespaces", "landlock"):
        uid = trial_uid() if mode == "namespaces" else os.getuid()
        spec = {"mode": mode, "ro": python_paths(), "rw": [], "uid": uid, "gid": uid}
        try:
            proc = subprocess.run(
                [*probe, json.dumps(spec), "--", sys.executable, "-S", "-c", "print('ok')"],
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
                env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0 and proc.stdout.strip() == "ok":
            out.append(mode)
    return tuple(out)


def trial_uid() -> int:
    return NOBODY if os.getuid() == 0 else os.getuid()


def python_paths() -> list[str]:
    """What any Python process needs to start: the interpreter, its library, the system's
    shared libraries and the few files of /etc the loader and libc read."""
    import site
    import sysconfig

    paths = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        *site.getsitepackages(),
        *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
    }
    system = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"]
    etc = [
        "ld.so.cache",
        "ld.so.conf",
        "ld.so.conf.d",
        "localtime",
        "nsswitch.conf",
        "passwd",
        "group",
        "hosts",
        "alternatives",
    ]
    return sorted({os.path.realpath(p) for p in paths if os.path.exists(p)} | set(system)) + [
        f"/etc/{e}" for e in etc
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m trainer.confine SPEC_JSON -- CMD...")
    spec, cmd = json.loads(argv[0]), argv[2:]
    try:
        if spec["mode"] == "namespaces":
            _enter_namespaces(spec)
            os.chdir(spec.get("cwd", "/"))
            _drop_privileges(spec["uid"], spec["gid"])
        elif spec["mode"] == "landlock":
            _landlock(spec)
            os.chdir(spec.get("cwd", "/"))
        else:
            raise ValueError(f"unknown confinement {spec['mode']!r}")
    except OSError as e:  # said on the status pipe, which the trial cannot write or fake
        msg = f"confinement {spec['mode']} failed: {e}"
        if spec.get("status_fd") is not None:
            os.write(spec["status_fd"], msg.encode()[:4000])
        print(msg, file=sys.stderr, flush=True)
        os._exit(121)
    if spec.get("status_fd") is not None:
        os.set_inheritable(spec["status_fd"], False)  # closed by the exec: success
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
