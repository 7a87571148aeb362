"""Shared fixtures: prepared real data (Shakespeare, small vocab) and small train.py variants."""

from __future__ import annotations

import os
import re
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
