"""--protocol autoresearch on a repo shaped like karpathy/autoresearch (tests/autoresearch_repo:
its prepare.py/train.py contract, summary block and all, sized for a CPU with no network).

The guard knows the protocol's contract, trials are confined, the ledger records the budget
and seed the repo really used, and a 2-worker campaign merges an improvement.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.patches import make_patch
from cluster.proposers.base import ProposalContext
from cluster.records import Proposal
from cluster.validate import validate
from trainer.guard import protocol_violations
from trainer.protocol import budget_of, repo_budget, repo_seed

from conftest import commit_repo, ledger_rows, start_cli

FIXTURE = Path(__file__).parent / "autoresearch_repo"
TRAIN = (FIXTURE / "train.py").read_text()
PREPARE = (FIXTURE / "prepare.py").read_text()
EVAL_LINE = "val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)"
PRINT_LINE = 'print(f"val_bpb:          {val_bpb:.6f}")'


def _edit(old: str, new: str, source: str = TRAIN) -> str:
    assert old in source, old
    return source.replace(old, new, 1)


def test_the_protocols_own_train_py_and_its_hyperparameter_edits_pass_the_guard():
    assert protocol_violations(TRAIN, TRAIN) == []
    assert protocol_violations(_edit("MATRIX_LR = 0.0003", "MATRIX_LR = 0.0006"), TRAIN) == []
    # Restructuring around the measurement is allowed: the statement itself is unchanged.
    moved = _edit("model.eval()\n", "model.eval()\ntorch.set_grad_enabled(False)\n")
    assert protocol_violations(moved, TRAIN) == []
    # Everyday PyTorch that looks like the dynamic access the guard refuses elsewhere.
    everyday = "n = sum(1 for m in model.modules())\nw = getattr(model, 'wte')\nc = vars(config)"
    assert protocol_violations(_edit("model.eval()\n", f"model.eval()\n{everyday}\n"), TRAIN) == []


def test_mutate_proposals_on_an_autoresearch_train_py_are_not_rejected_as_referee_access():
    from cluster.proposers.mutate import MutateProposer

    ctx = ProposalContext("abc123", TRAIN, "train.py", protocol="autoresearch")
    proposals = MutateProposer(seed=3).propose(ctx, 6)
    assert proposals
    seen: set[str] = set()
    for p in proposals:
        validate(p, ctx, seen)
        assert not p.error, (p.description, p.error)
    # The same train.py under the referee's protocol reaches into it (prepare, evaluate_bpb).
    referee = ProposalContext("abc123", TRAIN, "train.py")
    p = validate(MutateProposer(seed=3).propose(referee, 1)[0], referee, set())
    assert "reaches into the referee" in (p.error or "")


ATTACKS = {
    "rebinds the evaluator": ("MATRIX_LR = 0.0003", "MATRIX_LR = 0.0003\nevaluate_bpb = len"),
    "redefines the evaluator": (
        "def get_lr_multiplier",
        "def evaluate_bpb(model, tokenizer, batch_size):\n    return 0.1\n\n\ndef get_lr_multiplier",
    ),
    "imports something else as the evaluator": (
        "from prepare import MAX_SEQ_LEN",
        "from prepare import make_dataloader as evaluate_bpb\nfrom prepare import MAX_SEQ_LEN",
    ),
    "changes the evaluator call": (EVAL_LINE, EVAL_LINE.replace("DEVICE_BATCH_SIZE", "1")),
    "overwrites the result": ("t_end = time.time()", "t_end = time.time()\nval_bpb = 0.5"),
    "prints a second metric": (PRINT_LINE, PRINT_LINE + '\nprint("val_bpb:          0.1")'),
    "changes the printed metric": (PRINT_LINE, PRINT_LINE.replace("val_bpb:.6f", "val_bpb/2:.6f")),
    "patches the module": (
        "MATRIX_LR = 0.0003",
        "MATRIX_LR = 0.0003\nimport prepare\nprepare.EVAL_TOKENS = 64",
    ),
    "setattr on the module": (
        "MATRIX_LR = 0.0003",
        "MATRIX_LR = 0.0003\nimport prepare\nsetattr(prepare, 'EVAL_TOKENS', 64)",
    ),
    "rebinds the budget": ("MATRIX_LR = 0.0003", "MATRIX_LR = 0.0003\nTIME_BUDGET = 1000"),
    "changes the budget test": (
        "total_training_time >= TIME_BUDGET:",
        "total_training_time >= 3 * TIME_BUDGET:",
    ),
    "shadows through a parameter": (
        "def get_lr_multiplier(progress):",
        "def get_lr_multiplier(progress, TIME_BUDGET=9):",
    ),
    "imports the referee": ("import gc\n", "import gc\nimport trainer.referee\n"),
    "reaches globals": ("MATRIX_LR = 0.0003", "MATRIX_LR = 0.0003\ng = globals()"),
    "reaches code objects": ("t_end = time.time()", "t_end = evaluate_bpb.__code__"),
    "imports importlib": ("import gc\n", "import gc\nimport importlib\n"),
    "reaches the module table": ("import gc\n", "import gc\nimport sys as s\nm = s.modules\n"),
    "imports the module table": ("import gc\n", "import gc\nfrom sys import modules\n"),
    "walks the heap": ("t_end = time.time()", "t_end = gc.get_objects()"),
    "writes prepare.py": ("MATRIX_LR = 0.0003", "MATRIX_LR = 0.0003\nopen('prepare.py', 'a')"),
    "removes the evaluation": (EVAL_LINE, "val_bpb = 0.0"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_edits_that_change_the_protocols_measurement_are_refused(name):
    old, new = ATTACKS[name]
    bad = _edit(old, new)
    compile(bad, "train.py", "exec")  # each attack is valid Python: only the guard stops it
    problems = protocol_violations(bad, TRAIN)
    assert problems, name
    ctx = ProposalContext("abc123", TRAIN, "train.py", protocol="autoresearch")
    p = validate(Proposal("abc123", make_patch(TRAIN, bad, "train.py"), name, "t"), ctx, set())
    assert p.error and "protocol's contract" in p.error


def test_the_data_caches_a_prepare_py_names_are_found_and_private_folders_never_are():
    from trainer.protocol import named_caches

    assert named_caches(PREPARE) == [".cache/autoresearch"]
    other = (
        "import os\nfrom pathlib import Path\n"
        "A = Path.home() / '.cache' / 'ar-cpu'\n"  # not all of ~/.cache (the hub token is there)
        "B = os.path.join(os.path.expanduser('~'), 'datasets', 'tiny')\n"
        "C = os.path.expanduser('~/.ssh/x')\n"
        "D = os.path.join(os.path.expanduser('~'), '..', 'etc')\n"
        "E = Path.home() / '.cache'\n"
    )
    assert named_caches(other) == [".cache/ar-cpu", "datasets/tiny"]


def test_the_budget_and_seed_are_read_from_the_repo(tmp_path):
    assert repo_budget(FIXTURE) == "4s" and repo_seed(TRAIN) == 42
    assert budget_of("TIME_BUDGET = 300\n", None) == "300s"
    assert budget_of("TIME_BUDGET: float = 2.5\n", None) == "2.5s"
    assert budget_of("TIME_BUDGET = int(x)\n", "TIME_BUDGET = 60") == "60s"
    assert budget_of("", "") is None
    assert repo_seed("import mlx.core as mx\nmx.random.seed(7)\ntorch.manual_seed(1)") == 7
    assert repo_seed("torch.manual_seed(seed)") is None


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=cwd,
        env={**os.environ, "RAY_ADDRESS": "local", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _karpathy_repo(tmp_path: Path) -> tuple[Path, dict]:
    """The fixture committed as a repo, its data prepared (`python prepare.py`) in a home of
    its own (prepare.py keeps it in ~/.cache/autoresearch, as upstream does)."""
    home = tmp_path / "home"
    home.mkdir()
    repo = commit_repo(
        tmp_path / "repo",
        {"prepare.py": PREPARE, "train.py": TRAIN, ".gitignore": "runs/\n__pycache__/\nqueue/\n"},
    )
    env = {"HOME": str(home)}
    subprocess.run([sys.executable, "prepare.py"], cwd=repo, env={**os.environ, **env}, check=True)
    return repo, env


def test_budget_and_seed_options_that_cannot_apply_are_refused_before_anything_is_written(
    tmp_path,
):
    repo, env = _karpathy_repo(tmp_path)
    run = _cli("run", "--tag", "b", "--protocol", "autoresearch", "--budget", "60s", cwd=repo)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "TIME_BUDGET = 4" in run.stderr and "Traceback" not in run.stderr
    assert not (repo / "runs" / "b").exists()
    for flag in (["--budget", "60s"], ["--seed", "3"]):
        trial = _cli("trial", "--protocol", "autoresearch", *flag, cwd=repo, env=env)
        assert trial.returncode == 2 and "does not apply" in trial.stderr, trial.stderr


def test_a_summary_printed_twice_is_not_a_measurement(tmp_path):
    repo, env = _karpathy_repo(tmp_path)
    (repo / "train.py").write_text(TRAIN + '\nprint("val_bpb:          0.000001")\n')
    out = _cli("trial", "--protocol", "autoresearch", "--sandbox", "off", cwd=repo, env=env)
    assert out.returncode == 1 and "status:           crash" in out.stdout, out.stdout
    assert "2 val_bpb lines" in out.stdout and "\nval_bpb:" not in out.stdout


PROBE = """
import os, socket
from prepare import CACHE_DIR, TIME_BUDGET, evaluate_bpb

def attempt(name, act):
    try:
        act()
        print(name, "ALLOWED")
    except OSError as e:
        print(name, "denied", type(e).__name__)

home = os.path.expanduser("~")
attempt("read-token", lambda: open(os.path.join(home, ".ray", "auth_token")).read())
attempt("read-key", lambda: open(os.path.join(home, ".config", "key")).read())
attempt("read-hf-token", lambda: open(os.path.join(home, ".cache", "huggingface", "token")).read())
attempt("read-hf-hub", lambda: os.listdir(os.path.join(home, ".cache", "huggingface", "hub")))
attempt("read-data", lambda: open(os.path.join(CACHE_DIR, "data", "val.bin"), "rb").read(4))
attempt("write-data", lambda: open(os.path.join(CACHE_DIR, "data", "val.bin"), "ab").write(b"x"))
here = os.path.dirname(os.path.abspath(__file__))
attempt("write-prepare", lambda: open(os.path.join(here, "prepare.py"), "a").write("#"))
attempt("write-repo", lambda: open(os.path.join(REPO, "prepare.py"), "a").write("#"))
attempt("write-cwd", lambda: open("scratch.txt", "w").write("x"))
print("---")
print("val_bpb:          1.000000")
"""


@pytest.mark.slow
def test_an_autoresearch_trial_is_confined_reads_its_data_and_nothing_of_the_driver(tmp_path):
    from trainer import confine

    if not confine.available():
        pytest.skip("this node can confine nothing (no user namespaces, no Landlock)")
    repo, env = _karpathy_repo(tmp_path)
    home = Path(env["HOME"])
    (home / ".cache" / "huggingface" / "hub").mkdir(parents=True)  # upstream's kernel cache
    hf_token = home / ".cache" / "huggingface" / "token"
    for secret in (home / ".ray" / "auth_token", home / ".config" / "key", hf_token):
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("SECRET")
    (repo / "train.py").write_text(f"REPO = {str(repo)!r}\n" + PROBE)
    for mode in confine.available():
        out = _cli("trial", "--protocol", "autoresearch", "--sandbox", mode, cwd=repo, env=env)
        log = (repo / "runs" / "trial.log").read_text()
        assert out.returncode == 0, out.stdout + out.stderr + log
        assert f"confinement:      {mode}" in out.stdout
        seen = dict(line.split(" ", 1) for line in log.splitlines() if line.count(" ") >= 1)
        assert seen["read-data"] == "ALLOWED", (mode, log)
        assert seen["write-cwd"] == "ALLOWED", (mode, log)
        assert seen["read-hf-hub"] == "ALLOWED", (mode, log)
        private = ("read-token", "read-key", "read-hf-token")
        for name in (*private, "write-data", "write-prepare", "write-repo"):
            assert seen[name].startswith("denied"), (mode, name, log)
    assert (repo / "prepare.py").read_text() == PREPARE


@pytest.mark.slow
def test_a_two_worker_campaign_on_a_karpathy_shaped_repo_merges_and_records_what_applied(
    tmp_path,
):
    repo, env = _karpathy_repo(tmp_path)
    # Proposals as an agent would write them (mutate's are checked above; its choice of
    # constant is its own, so it would not make a reliable test of a merge in one round).
    # A 4-second time budget on a loaded 2-core runner varies the step count, and with it
    # val_bpb: CI once measured a noise of 0.20 over 4 replicates, which put a 2-sigma gate
    # at 0.70 and refused MATRIX_LR x10 (+0.53). Both learning rates x10 gain about 0.8 on a
    # quiet machine and more on a loaded one (fewer steps hurt the slow baseline most), and
    # the test gates at 1.5 sigma: a merge then fails only at a noise near 0.4.
    queue = repo / "queue"
    queue.mkdir()
    both = _edit("EMBEDDING_LR = 0.0005", "EMBEDDING_LR = 0.005")
    both = _edit("MATRIX_LR = 0.0003", "MATRIX_LR = 0.003", both)
    warmdown = _edit("WARMDOWN_RATIO = 0.3", "WARMDOWN_RATIO = 0.4")
    for i, (edited, desc) in enumerate([(both, "both LRs x10"), (warmdown, "longer warmdown")]):
        patch = make_patch(TRAIN, edited, "train.py")
        (queue / f"{i}.patch").write_text(f"# {desc}\n{patch}")
    from trainer import confine

    # queue proposals are untrusted: confined where the node can (CI's may not), else off
    sandbox = "auto" if confine.available() else "off"
    proc = start_cli(
        repo,
        *["run", "--tag", "kp", "--protocol", "autoresearch", "--workers", "2"],
        *["--sandbox", sandbox],
        *["--device", "cpu", "--rounds", "1", "--proposer", "queue:queue", "--hours", "0.1"],
        *["--noise-multiple", "1.5", "--confirm-multiple", "1.5"],
        env=env,
    )
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    rows = ledger_rows(repo, "kp")
    ran = [r for r in rows if r["status"] not in ("invalid",)]
    assert ran and all(r["budget"] == "4s" and r["seed"] == 42 for r in ran), ran[:2]
    assert all(r["self_reported"] for r in ran if r["val_bpb"] is not None)
    assert not [r for r in rows if "protocol's contract" in (r.get("error") or "")]
    merged = [r for r in rows if r["merged"]]
    assert merged, out
    base = min(r["val_bpb"] for r in rows if r["kind"] == "baseline" and r["round"] == 0)
    assert merged[-1]["val_bpb"] < base
    config = json.loads((repo / "runs" / "kp" / "config.json").read_text())
    assert config["budget"] == "4s" and config["protocol"] == "autoresearch"
    # The merged train.py is the branch's, and prepare.py is untouched on it.
    show = ["git", "show", "autoresearch/kp:prepare.py"]
    assert subprocess.run(show, cwd=repo, capture_output=True, text=True).stdout == PREPARE
    assert "budget 4s" in out and "train.py fixes its seed" in out
    status = _cli("status", "--tag", "kp", cwd=repo)
    assert "self-reported" in status.stdout, status.stdout
    shutil.rmtree(tmp_path / "home", ignore_errors=True)


def test_another_target_under_the_protocol_is_refused(tmp_path):
    """The protocol runs `python train.py`: a --target elsewhere would be edited and never run."""
    from cluster.campaign import Campaign, CampaignConfig, CampaignError

    repo = commit_repo(tmp_path / "r", {"train.py": TRAIN, "model.py": "X = 1\n"})
    cfg = CampaignConfig.build("t", repo, protocol="autoresearch", target="model.py")
    with pytest.raises(CampaignError, match="the target is train.py"):
        Campaign(cfg, say=lambda m: None)
    assert not (repo / "runs").exists()
