"""autoresearch's side of the referee: its summary block, and its unmodified repos.

`format_summary` prints autoresearch's `---` block for a trial (so their log tools keep
working); `parse_summary` reads one back. `run_autoresearch_protocol` runs an unmodified
autoresearch repo (`python train.py` at its root) and parses its summary; that metric is
computed by code the candidate may have edited, so it is marked self-reported.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainer import pyast
from trainer import sandbox as _sandbox
from trainer.results import TrialResult

_SUMMARY_KEYS = (
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
)


def format_summary(r: TrialResult, budget: str = "", seed: int | None = None) -> str:
    """autoresearch's summary block, then our fields; `grep "^val_bpb:"` keeps working, and
    finds nothing for a failed trial (crash, timeout, invalid), whose `status:` and `error:`
    lines say why."""
    vals = {
        "val_bpb": r.val_bpb,
        "training_seconds": r.training_seconds,
        "total_seconds": r.total_seconds,
        "peak_vram_mb": r.peak_vram_mb,
        "mfu_percent": r.mfu,
        "total_tokens_M": r.total_tokens_M,
        "num_steps": r.num_steps,
        "num_params_M": r.num_params_M,
    }
    lines = ["---"]
    for k in _SUMMARY_KEYS:
        if k == "val_bpb" and (r.status != "ok" or r.val_bpb is None):
            continue  # autoresearch's convention: no val_bpb line means the run failed
        v = vals[k]
        if v is None:
            v = 0
        lines.append(
            f"{k + ':':<18}{v:.6f}"
            if k == "val_bpb"
            else f"{k + ':':<18}{v:.2f}"
            if isinstance(v, float)
            else f"{k + ':':<18}{v}"
        )
    lines.append(f"{'status:':<18}{r.status}")
    if budget:
        lines.append(f"{'budget:':<18}{budget}")
    if seed is not None:
        lines.append(f"{'seed:':<18}{seed}")
    lines.append(f"{'device:':<18}{r.gpu_name or 'cpu'}")
    if r.self_reported:
        lines.append(f"{'metric:':<18}self-reported (protocol=autoresearch)")
    if r.confinement:
        lines.append(f"{'confinement:':<18}{r.confinement}")
    if r.error:
        lines.append(f"{'error:':<18}{r.error.strip().splitlines()[0][:200]}")
    return "\n".join(lines)


def parse_summary(text: str) -> dict[str, float]:
    """The `key: value` numbers of the last `---` summary block in a log."""
    block = text.rsplit("\n---\n", 1)[-1] if "\n---\n" in text else text
    out = {}
    for m in re.finditer(r"^(\w+):\s+([-+0-9.eE]+)\s*$", block, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


# What an autoresearch trial may read besides its code: the protocol's data (prepare.py keeps
# it in ~/.cache/autoresearch) and a warmed Hugging Face cache (upstream fetches its attention
# kernel from the hub; a confined trial has no network, so it must be there already).
PROTOCOL_CACHES = (".cache/autoresearch", ".cache/huggingface/hub")  # not the hub's token


# Never shown to a trial, whatever a prepare.py names: where credentials live.
PRIVATE = (".ssh", ".ray", ".config", ".aws", ".gnupg", ".netrc", ".docker", ".kube", ".local")


def named_caches(prepare_source: str) -> list[str]:
    """The directories under the home that a prepare.py names as literals (relative to the
    home): `os.path.join(os.path.expanduser("~"), ".cache", "x")`, `Path.home() / ".cache"
    / "x"`, `"~/.cache/x"`. Its data may live elsewhere than upstream's ~/.cache/autoresearch."""
    try:
        tree = pyast.parse(prepare_source)
    except (SyntaxError, ValueError):
        return []
    out, inner = [], set()

    def home_call(n: ast.AST) -> bool:
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            if n.func.attr == "expanduser" and n.args and isinstance(n.args[0], ast.Constant):
                return n.args[0].value == "~"
            return n.func.attr == "home" and not n.args
        return False

    for n in ast.walk(tree):
        parts: list[str] | None = None
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "join":
            if n.args and home_call(n.args[0]):
                rest = n.args[1:]
                if all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in rest):
                    parts = [a.value for a in rest]
        elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and id(n) not in inner:
            chain, left = [], n
            while isinstance(left, ast.BinOp) and isinstance(left.op, ast.Div):
                if not (isinstance(left.right, ast.Constant) and isinstance(left.right.value, str)):
                    break
                chain.insert(0, left.right.value)
                left = left.left
                inner.add(id(left))  # `Path.home() / ".cache"` inside the longer path
            else:
                if home_call(left):
                    parts = chain
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("~/"):
            parts = [n.value[2:]]
        if parts:
            rel = os.path.normpath(os.path.join(*parts))
            top = rel.split(os.sep)[0]
            if rel not in (".", "", ".cache") and top != ".." and top not in PRIVATE:
                out.append(rel)
    # The outermost of nested names (CACHE_DIR, then CACHE_DIR/data) is enough.
    out = sorted(set(out))
    return [r for r in out if not any(r.startswith(o + os.sep) for o in out if o != r)]


SEED_CALLS = ("manual_seed", "seed", "manual_seed_all")


def _literal_assign(source: str, name: str) -> float | None:
    """The number a module-level `NAME = <literal>` gives, or None."""
    try:
        tree = pyast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            if isinstance(value, int | float) and not isinstance(value, bool):
                return value
    return None


def budget_of(prepare_source: str | None, train_source: str | None) -> str | None:
    """The time budget an autoresearch repo fixes: prepare.py's `TIME_BUDGET = <seconds>`
    (or train.py's own), as "300s"; None when neither states it as a number."""
    for source in (prepare_source, train_source):
        value = _literal_assign(source, "TIME_BUDGET") if source else None
        if value is not None and value > 0:
            return f"{value:g}s"
    return None


def repo_budget(repo: Path, target: str = "train.py") -> str | None:
    """budget_of the files of a checkout."""

    def read(name: str) -> str | None:
        path = Path(repo) / name
        return path.read_text(errors="replace") if path.is_file() else None

    return budget_of(read("prepare.py"), read(target))


def repo_seed(source: str) -> int | None:
    """The seed a train.py sets (`torch.manual_seed(42)`, `mx.random.seed(42)`, ...: the first
    seeding call with an integer literal, in source order); None when it sets none."""
    try:
        tree = pyast.parse(source)
    except (SyntaxError, ValueError):
        return None
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and n.args
        and isinstance(n.args[0], ast.Constant)
        and type(n.args[0].value) is int
        and (
            (isinstance(n.func, ast.Attribute) and n.func.attr in SEED_CALLS)
            or (isinstance(n.func, ast.Name) and n.func.id in SEED_CALLS)
        )
    ]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    return calls[0].args[0].value if calls else None


def protocol_fixes(repo: Path, flag: str) -> str:
    """Why `flag` cannot apply under protocol=autoresearch (the CLI refuses it)."""
    if flag == "--budget":
        budget = repo_budget(repo)
        what = f"TIME_BUDGET = {budget[:-1]} (seconds)" if budget else "its training time"
        return (
            f"does not apply under --protocol autoresearch: the repo's prepare.py fixes {what}, "
            "and train.py enforces it; edit and commit it there to change the budget"
        )
    return (
        "does not apply under --protocol autoresearch: train.py sets its own seed (the ledger "
        "records it); edit train.py to change it"
    )


def default_timeout(budget: str | None) -> float:
    """The hard kill for a trial of this budget: autoresearch's own rule is "a run over 10
    minutes (of a 5-minute budget) is killed"; twice the budget plus five minutes of
    start-up and evaluation keeps that, and bounds a repo whose budget is not stated."""
    seconds = float(budget[:-1]) if budget and budget.endswith("s") else 300.0
    return 2 * seconds + 300.0


def run_autoresearch_protocol(
    repo: Path,
    log_path: Path,
    timeout: float | None = None,
    threads: int | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    sandbox: str = "auto",
    device: str = "cpu",
) -> TrialResult:
    """Run an unmodified autoresearch repo (`python train.py` at its root) and parse its summary.

    Its metric is computed by code the candidate may have edited, so it is marked
    self-reported; the deadline, the process-group kill and the environment still hold, and
    the trial is confined as the referee's are (trainer/confine.py): it reads a copy of the
    repo (read-only), the protocol's data caches (read-only), and writes only a scratch
    directory; nothing else of the node is visible to it. `sandbox="off"`, or a node that
    can confine nothing under "auto", runs it with only the environment allowlist.
    """
    from trainer.confine_spec import launcher, read_status, resolve_confinement

    mode = resolve_confinement(sandbox)
    budget = repo_budget(repo)
    timeout = timeout or default_timeout(budget)
    t_start, started = time.monotonic(), time.time()
    _sandbox.become_subreaper()
    spare = set(_sandbox.descendants(os.getpid()))
    with tempfile.TemporaryDirectory(prefix="ar-trial-") as tmp, open(log_path, "w") as logf:
        code, work = Path(tmp) / "code", Path(tmp) / "work"
        shutil.copytree(repo, code, ignore=shutil.ignore_patterns(".git", "runs", "__pycache__"))
        work.mkdir()
        env = _sandbox.trial_env(work, threads)
        home = Path(os.environ.get("HOME") or "/nonexistent")
        env["HOME"] = str(home)  # upstream reads ~/.cache/autoresearch
        env.update(
            HF_HUB_OFFLINE="1",
            XDG_CACHE_HOME=str(work / "cache"),
            TRITON_CACHE_DIR=str(work / "triton"),
            TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
        )
        cmd = [sys.executable, str(code / "train.py")]
        status_r = status_w = None
        if mode != "none":
            status_r, status_w = os.pipe()
            prepare = code / "prepare.py"
            named = named_caches(prepare.read_text(errors="replace")) if prepare.is_file() else []
            caches = [home / c for c in {*PROTOCOL_CACHES, *named} if (home / c).is_dir()]
            cmd = launcher(
                cmd,
                mode=mode,
                device=device,
                code_dir=code,
                scratch=work,
                owned=(work,),
                status_fd=status_w,
                read_only=caches,
            )
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_sandbox.child_limits(),
            pass_fds=(status_w,) if status_w is not None else (),
        )
        failed = ""
        if status_w is not None:
            os.close(status_w)
            failed = read_status(status_r)
        reason = (
            ""
            if failed
            else _sandbox.watch(
                proc, started=t_start, hard_timeout=timeout, cancelled=cancelled, interval=0.1
            )
        )
        _sandbox.kill_tree(proc, spare)
    common = dict(
        log_path=str(log_path),
        started=started,
        ended=time.time(),
        total_seconds=round(time.monotonic() - t_start, 2),
        self_reported=True,
        node=os.uname().nodename,
        confinement=mode,
    )
    if failed:
        return TrialResult(status="lost", error=failed, **common)
    if reason:
        status = "lost" if reason == "cancelled" else "timeout"
        return TrialResult(status=status, error=f"killed: {reason}", **common)
    text = _sandbox.tail(log_path, 200_000)
    summary = parse_summary(text)
    reported = len(re.findall(r"^val_bpb:", text, re.M))
    if proc.returncode != 0 or "val_bpb" not in summary:
        return TrialResult(
            status="crash",
            error=f"exit code {proc.returncode}\n{_sandbox.tail(log_path)}",
            **common,
        )
    if reported > 1:  # which one is the measurement? the protocol prints one summary
        return TrialResult(
            status="crash",
            error=f"train.py printed {reported} val_bpb lines; the protocol prints one summary",
            **common,
        )

    def get(k):
        return summary.get(k)

    return TrialResult(
        status="ok",
        val_bpb=get("val_bpb"),
        training_seconds=get("training_seconds"),
        num_steps=int(get("num_steps") or 0),
        total_tokens_M=get("total_tokens_M"),
        num_params_M=get("num_params_M"),
        peak_vram_mb=get("peak_vram_mb"),
        mfu=get("mfu_percent"),
        **common,
    )
