"""The referee holds against adversarial train.py variants; honest trials are scored truly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer import confine
from trainer.protocol import format_summary, parse_summary

from conftest import ROOT, inject, tiny_train_source, trial

pytestmark = pytest.mark.slow
needs_ns = pytest.mark.skipif(
    "namespaces" not in confine.available(), reason="user namespaces unavailable on this machine"
)


@pytest.fixture(scope="module")
def honest(tmp_path_factory, data):
    return trial(tmp_path_factory.mktemp("honest"), data, tiny_train_source())


def test_honest_trial_reports_true_metric_and_summary(honest):
    assert honest.status == "ok", honest.error
    assert 1.0 < honest.val_bpb < 8.0
    assert honest.num_steps == 15
    assert honest.total_tokens_M == pytest.approx(15 * 8 * 256 / 1e6)
    summary = format_summary(honest, budget="15steps", seed=0)
    assert summary.startswith("---\nval_bpb:")
    assert parse_summary(summary)["val_bpb"] == pytest.approx(honest.val_bpb)


def test_same_seed_same_metric(tmp_path, data, honest):
    again = trial(tmp_path, data, tiny_train_source())
    assert again.val_bpb == pytest.approx(honest.val_bpb, abs=1e-4)


def test_printed_fake_metric_is_ignored(tmp_path, data, honest):
    source = inject(tiny_train_source(), 'print("---\\nval_bpb:          0.100000", flush=True)\n')
    r = trial(tmp_path, data, source)
    assert "val_bpb:          0.100000" in Path(r.log_path).read_text()
    assert r.status == "ok"
    assert r.val_bpb == pytest.approx(honest.val_bpb, abs=1e-4)


def test_monkeypatching_the_evaluator_is_rejected(tmp_path, data):
    source = inject(
        tiny_train_source(),
        """
        import trainer.prepare as P
        P.evaluate_bpb = lambda *a, **k: 0.1
    """,
    )
    r = trial(tmp_path, data, source)
    assert r.status == "invalid"
    assert "trainer.prepare" in r.error


@needs_ns
def test_obfuscated_rewrite_of_the_referee_fails_and_changes_nothing(tmp_path, data, honest):
    prepare_py = ROOT / "trainer" / "prepare.py"
    before = prepare_py.read_bytes()
    source = inject(
        tiny_train_source(),
        """
        import sys, os
        pkg = sys.modules["trainer"].__file__
        with open(os.path.join(os.path.dirname(pkg), "prep" + "are.py"), "a") as f:
            f.write("\\ndef evaluate_bpb(*a, **k):\\n    return 0.1\\n")
    """,
    )
    r = trial(tmp_path, data, source)
    assert prepare_py.read_bytes() == before
    assert r.status == "crash"
    assert "Read-only file system" in r.error


def test_reading_validation_data_by_path_is_rejected(tmp_path, data):
    source = inject(
        tiny_train_source(),
        f"""
        secret = open({str(data / "eval" / "val.bin")!r}, "rb").read()
    """,
    )
    r = trial(tmp_path, data, source)
    assert r.status == "invalid"
    assert "val.bin" in r.error


def test_training_past_the_budget_is_killed(tmp_path, data):
    source = tiny_train_source().replace(
        "    return model\n",
        """    import itertools
    for _ in itertools.count():  # keep training on the last batch, forever
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model
""",
    )
    r = trial(tmp_path, data, source, budget="5steps")
    assert r.status == "timeout"
    assert "after its budget ended" in r.error
    assert r.val_bpb is None


def test_a_hanging_trial_is_killed_at_the_deadline(tmp_path, data):
    source = inject(tiny_train_source(), "import time\ntime.sleep(3600)\n")
    r = trial(tmp_path, data, source, hard_timeout=8.0)
    assert r.status == "timeout"
    assert r.total_seconds < 30


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("mode", ["off", pytest.param("on", marks=needs_ns)])
def test_a_child_that_escapes_the_process_group_dies_with_the_trial(tmp_path, data, mode):
    marker = "4242.123" if mode == "off" else "4243.123"
    source = inject(
        tiny_train_source(),
        f"""
        import subprocess
        subprocess.Popen(["sh", "-c", "setsid sleep {marker} & sleep {marker}"],
                         start_new_session=True)
    """,
    )
    r = trial(tmp_path, data, source, sandbox=mode)
    assert r.status == "ok", r.error
    assert _processes_with(marker) == []


def test_trials_see_no_secrets(tmp_path, data, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-should-not-leak")
    source = inject(tiny_train_source(), "import os\nprint('ENV', dict(os.environ), flush=True)\n")
    r = trial(tmp_path, data, source, budget="2steps")
    log = Path(r.log_path).read_text()
    assert "ENV {" in log
    assert "should-not-leak" not in log


def test_a_crashing_trial_reports_its_traceback(tmp_path, data):
    source = inject(tiny_train_source(), "raise RuntimeError('boom from train.py')\n")
    r = trial(tmp_path, data, source)
    assert r.status == "crash"
    assert "boom from train.py" in r.error


def test_a_trial_that_hogs_memory_is_killed_alone(tmp_path, data):
    source = inject(
        tiny_train_source(), "hog = bytearray(1500 * 2**20)\nimport time\ntime.sleep(60)\n"
    )
    r = trial(tmp_path, data, source, memory_limit_mb=800)
    assert r.status == "crash"
    assert "over its share of 800 MiB" in r.error


def test_a_trial_that_fills_the_disk_is_stopped_alone(tmp_path, data):
    source = inject(
        tiny_train_source(),
        """
        with open("big.bin", "wb") as f:
            for _ in range(64):
                f.write(b"x" * 2**20)
    """,
    )
    r = trial(tmp_path, data, source, max_file_bytes=8 * 2**20)
    assert r.status == "crash"
    assert "File too large" in r.error
