"""What a trial costs besides training, MFU per GPU model, and the node's compile cache.

The compile cache is tested as an attack: a trial that passes rewrites the entries it was
seeded with, plants new ones and links, and tries the node cache directly; none of it
reaches what a trial of other code reads next.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from trainer.compile_cache import CompileCache, source_key
from trainer.mfu import mfu, peak_flops, training_flops_per_token
from trainer.phases import NAMES

from conftest import TEST_VOCAB, TRAIN_PY, inject, tiny_train_source, trial


@pytest.mark.parametrize(
    "name, flops",
    [
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA GeForce RTX 4090", 165.2e12),
        ("NVIDIA B200", 2250e12),
    ],
)
def test_peak_flops_match_the_most_specific_gpu_model(name, flops):
    assert peak_flops(name) == flops


def test_mfu_is_none_off_a_known_gpu_and_a_share_of_the_peak_on_one():
    assert peak_flops("Tesla T4") is None and mfu(1e9, 10**5, 1.0, "") is None
    assert mfu(1e9, 10**5, 1.0, "NVIDIA H100 PCIe") == round(100 * 1e14 / 756e12, 2)


def test_flops_per_token_are_counted_from_the_exported_graph_as_autoresearch_does(tmp_path):
    """6 x non-embedding parameters (the untied head included) + 12 x layers x width x T."""
    from trainer.graph import export_model, load_model

    spec = importlib.util.spec_from_file_location("train_flops", TRAIN_PY)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    vocab, width, depth, seq = 512, 64, 2, 128
    model = train.GPT(vocab, width, depth, seq).eval()
    export_model(model, torch.zeros(4, seq, dtype=torch.long), tmp_path)
    forward = load_model(tmp_path, batch=4, seq_len=seq, vocab_size=vocab, device="cpu")
    counted = training_flops_per_token(forward.stats.matmul_flops, 4 * seq)
    non_embedding = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    assert counted == pytest.approx(6 * non_embedding + 12 * depth * width * seq, rel=1e-6)


def test_publishing_adds_only_plain_new_files_and_never_replaces(tmp_path):
    cache = CompileCache(tmp_path / "node")
    key = source_key("a")
    part = cache.partition(key)
    (part / "fxgraph").mkdir(parents=True)
    (part / "fxgraph" / "entry").write_text("honest")
    trial_dir = tmp_path / "trial"
    (trial_dir / "fxgraph").mkdir(parents=True)
    (trial_dir / "fxgraph" / "entry").write_text("poisoned")
    (trial_dir / "fxgraph" / "new").write_text("kernel")
    (trial_dir / "fxgraph" / "link").symlink_to(tmp_path / "node" / key / "fxgraph" / "entry")
    (trial_dir / "secret").write_text("s")
    os.link(trial_dir / "secret", trial_dir / "fxgraph" / "hardlink")
    (trial_dir / "bad name;rm").write_text("x")
    counts = cache.publish(trial_dir, key)
    assert (part / "fxgraph" / "entry").read_text() == "honest"
    assert (part / "fxgraph" / "new").read_text() == "kernel"
    for refused in ("fxgraph/link", "fxgraph/hardlink", "secret", "bad name;rm"):
        assert not os.path.lexists(part / refused), refused
    assert counts["added"] == 1 and counts["refused"] == 4


NODE_ATTACK = """
import os, pathlib
cache = pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
entry = cache / "fxgraph" / "ab" / "entry"
print("SEEDED", entry.read_text(), flush=True)
entry.write_text("poisoned")
(cache / "fxgraph" / "ab" / "planted").write_text("evil")
(cache / "fxgraph" / "ab" / "link").symlink_to("/etc/passwd")
try:
    pathlib.Path({node!r}, "entry").write_text("poisoned")
    print("NODE WRITTEN", flush=True)
except OSError as e:
    print("NODE REFUSED", type(e).__name__, flush=True)
"""


@pytest.fixture(scope="module")
def attack(tmp_path_factory, data):
    """A parent's published entry, and a passing child trial that attacks the cache."""
    parent = tiny_train_source()
    cache = CompileCache.for_node()
    part = cache.partition(source_key(parent))
    (part / "fxgraph" / "ab").mkdir(parents=True, exist_ok=True)
    (part / "fxgraph" / "ab" / "entry").write_text("honest")
    child = inject(parent, NODE_ATTACK.format(node=str(part / "fxgraph" / "ab")))
    tmp = tmp_path_factory.mktemp("attack")
    result = trial(tmp, data, child, cache_parents=(source_key(parent),))
    return dict(parent=parent, child=child, cache=cache, result=result, log=tmp / "trial.log")


def test_a_trial_reads_a_copy_of_its_parents_entries_and_cannot_reach_the_node_cache(attack):
    assert attack["result"].status == "ok", attack["result"].error
    log = attack["log"].read_text()
    assert "SEEDED honest" in log
    assert "NODE REFUSED" in log and "NODE WRITTEN" not in log


def test_what_a_passing_trial_writes_never_reaches_a_trial_of_other_code(attack, tmp_path):
    cache, parent = attack["cache"], attack["parent"]
    parent_part = cache.partition(source_key(parent))
    assert (parent_part / "fxgraph" / "ab" / "entry").read_text() == "honest"
    assert not (parent_part / "fxgraph" / "ab" / "planted").exists()
    # The next candidate derived from the same parent is seeded exactly as the referee does.
    sibling = tiny_train_source(LEARNING_RATE=0.003)
    seeded = tmp_path / "seeded"
    cache.seed(seeded, [source_key(parent), source_key(sibling)])
    assert (seeded / "fxgraph" / "ab" / "entry").read_text() == "honest"
    assert not (seeded / "fxgraph" / "ab" / "planted").exists()
    # What it planted went to its own code's partition only, without the link.
    own = cache.partition(source_key(attack["child"]))
    assert (own / "fxgraph" / "ab" / "planted").read_text() == "evil"
    assert not os.path.lexists(own / "fxgraph" / "ab" / "link")


def test_a_trial_reports_its_phases_adding_up_to_its_wall_time(attack):
    r = attack["result"]
    phases = r.extra["phases"]
    assert set(phases) == set(NAMES) and all(v is not None for v in phases.values()), phases
    assert sum(phases.values()) == pytest.approx(r.total_seconds, abs=0.05)
    assert phases["training"] == pytest.approx(r.training_seconds, abs=0.02)
    assert r.extra["eval_device"] == "cpu"
    width, vocab, seq = 64, TEST_VOCAB, 256  # tiny_train_source: 1 layer, 64 wide
    expected = 6 * (12 * width * width + width * vocab) + 12 * width * seq
    assert r.extra["flops_per_token"] == pytest.approx(expected, rel=1e-6)


def test_a_failed_trial_publishes_nothing(tmp_path, data):
    source = inject(
        tiny_train_source(),
        "import os, pathlib\n"
        "pathlib.Path(os.environ['TORCHINDUCTOR_CACHE_DIR'], 'x').write_text('x')\n"
        "raise RuntimeError('boom')\n",
    )
    r = trial(tmp_path, data, source)
    assert r.status == "crash"
    assert not CompileCache.for_node().partition(source_key(source)).exists()
    assert Path(tmp_path / "trial.log").exists()


def test_the_next_trial_runs_in_a_process_started_while_this_one_was_scored(tmp_path, data):
    from trainer import launch

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = trial(tmp_path / "a", data, tiny_train_source(), prestart=True)
    assert first.status == "ok" and not first.extra["prestarted"], first.error
    spare = launch._spare
    assert spare is not None and spare.proc.poll() is None
    second = trial(tmp_path / "b", data, tiny_train_source(LEARNING_RATE=0.003))
    assert second.status == "ok" and second.extra["prestarted"], second.error
    assert spare.proc.poll() is not None and not spare.scratch.exists()
    assert second.extra["phases"]["start"] is None  # started before the trial did
    assert "step " in (tmp_path / "b" / "trial.log").read_text()  # its output is its log's


def test_a_spare_started_for_other_settings_is_discarded(tmp_path, data):
    from trainer import launch

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = trial(tmp_path / "a", data, tiny_train_source(), prestart=True)
    spare = launch._spare
    second = trial(tmp_path / "b", data, tiny_train_source(), eval_batch=8)
    assert first.status == second.status == "ok" and not second.extra["prestarted"]
    spare.proc.wait(timeout=10)
    assert launch._spare is None and not spare.scratch.exists()
