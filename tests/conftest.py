"""Shared fixtures: prepared real data (Shakespeare, small vocab) and small train.py variants."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = ROOT / "trainer" / "train.py"
TEST_VOCAB = 512  # small vocab: a 1-layer 64-wide model trains ~3x faster than at 2048


def set_constants(source: str, **values: float) -> str:
    """train.py source with UPPER_CASE constants replaced (each must exist)."""
    for name, value in values.items():
        source, n = re.subn(rf"^{name} = [^#\n]*", f"{name} = {value!r} ", source, flags=re.M)
        assert n == 1, f"{name} not found in train.py"
    return source


def tiny_train_source(**values: float) -> str:
    """The real train.py, shrunk so a trial takes seconds on a laptop CPU."""
    base = dict(CPU_DEPTH=1, CPU_WIDTH=64, CPU_BATCH_SIZE=8)
    return set_constants(TRAIN_PY.read_text(), **{**base, **values})


def inject(source: str, code: str) -> str:
    """train.py source with `code` inserted at the start of train(ctx)."""
    code = textwrap.indent(textwrap.dedent(code), "    ")
    return source.replace("def train(ctx):\n", "def train(ctx):\n" + code, 1)


def trial(tmp_path: Path, data: Path, source: str, budget: str = "15steps", **cfg):
    """Run `source` as train.py through the real referee, one thread."""
    from trainer.budget import Budget
    from trainer.referee import TrialConfig, run_trial

    path = tmp_path / "train.py"
    path.write_text(source)
    config = TrialConfig(data=data, budget=Budget.parse(budget), threads=1, **cfg)
    return run_trial(path, config, tmp_path / "trial.log")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A private data cache for the whole session (prepared once, ~10 s)."""
    path = Path(os.environ.get("AUTORESEARCH_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["AUTORESEARCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def data(cache_dir) -> Path:
    from trainer.prepare import prepare

    return prepare("builtin", TEST_VOCAB)


# A starting point with headroom: learning rates 5x too low, so raising them is a real gain.
PLANTED = dict(LEARNING_RATE=0.0004, EMBEDDING_LR=0.002, UNEMBEDDING_LR=0.0004)


def commit_repo(path: Path, files: dict[str, str]) -> Path:
    """A new git repo at `path` holding `files` (relative path -> text) in one commit."""
    from cluster.gitops import IDENTITY

    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "incumbent"]):
        subprocess.run(["git", *args], cwd=path, check=True, env={**os.environ, **IDENTITY})
    return path


def make_repo(path: Path, **constants) -> Path:
    """A research repo with a tiny trainer/train.py, committed."""
    files = {"trainer/train.py": tiny_train_source(**constants), ".gitignore": "runs/\n"}
    return commit_repo(path, files)


def start_cli(repo: Path, *args: str, env: dict | None = None, preexec_fn=None) -> subprocess.Popen:
    """`autoresearch <args>` in `repo`, in its own session (so `kill_driver` takes all it
    started); its Ray is its own (RAY_ADDRESS=local), not one another test left running."""
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=repo,
        env={**os.environ, "RAY_ADDRESS": "local", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started itself, as a crash or `kill -9` would."""
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def ledger_rows(repo: Path, tag: str) -> list[dict]:
    """The campaign's trials.jsonl as rows ([] before it exists)."""
    import json

    path = repo / "runs" / tag / "trials.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def campaign_config(repo: Path, tag: str, **kw):
    """A CampaignConfig for tests: 20-step CPU trials on the test vocabulary."""
    from cluster.campaign import CampaignConfig

    base = dict(
        tag=tag,
        repo=repo,
        budget="20steps",
        vocab_size=TEST_VOCAB,
        device="cpu",
        seed=1,
        trial_timeout=120,
    )
    return CampaignConfig.build(**{**base, **kw})


@pytest.fixture(scope="module")
def ray_cluster(data):
    """A local Ray with 2 fake GPUs for a test module (started after the data cache is set)."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
