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


def test_a_change_of_shape_draws_other_random_numbers_and_a_learning_rate_does_not(
    tmp_path, data, honest
):
    """The digest that decides whether a run and its partner at one seed are a pair
    (cluster.gate.comparable): the same draws for a learning rate, other ones for a shape
    (the initialization draws more) or for a draw of train.py's own."""
    assert honest.rng and honest.rng.count(":") == 1, honest.rng

    def run(name, source):
        (tmp_path / name).mkdir()
        r = trial(tmp_path / name, data, source)
        assert r.status == "ok", r.error
        return r.rng

    assert run("again", tiny_train_source()) == honest.rng
    assert run("lr", tiny_train_source(LEARNING_RATE=0.004)) == honest.rng
    assert run("shape", tiny_train_source(MLP_RATIO=2)) != honest.rng
    assert run("draw", inject(tiny_train_source(), "import torch\ntorch.rand(1)\n")) != honest.rng


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
    assert "Read-only file system" in r.error or "Permission denied" in r.error


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


def test_one_huge_batch_request_gets_no_more_than_the_token_budget(tmp_path, data):
    """On today's main, 2^22 tokens asked at the start of a 250k budget were served in full."""
    source = inject(
        tiny_train_source(),
        """
        got = 0
        for x, y in ctx.batches(16384, 256):  # 4.2M tokens per request
            got += x.numel()
        print("TOKENS", got, flush=True)
        return GPT(ctx.vocab_size, 64, 1, ctx.seq_len)
        """,
    )
    r = trial(tmp_path, data, source, budget="50ktokens")
    got = int(Path(r.log_path).read_text().split("TOKENS ")[1].split()[0])
    assert got <= 50_000
    assert r.total_tokens_M <= 0.05


def test_warmup_batches_under_a_time_budget_are_not_training_data(tmp_path, data):
    """The warm-up window is excluded from the clock; it must not buy free training."""
    import numpy as np

    source = inject(
        tiny_train_source(),
        """
        for x, y in ctx.batches(8):
            print("FIRST", " ".join(str(int(t)) for t in x[0, :24]), flush=True)
            break
        """,
    )
    r = trial(tmp_path, data, source, budget="3s")
    assert r.status == "ok", r.error
    first = [int(t) for t in Path(r.log_path).read_text().split("FIRST ")[1].split()[:24]]
    train = np.memmap(data / "train.bin", dtype=np.uint16, mode="r")
    hits = np.flatnonzero(train[: len(train) - 24] == first[0])
    assert not any((train[i : i + 24] == first).all() for i in hits)
    assert r.extra["warmup_tokens"] == 8 * 256


def test_training_on_after_the_budget_is_caught_whatever_the_trial_writes(tmp_path, data):
    """The overrun was judged from the trial's own stats file; the referee now times it."""
    source = tiny_train_source().replace(
        "    return model\n",
        """    import time
    t_end = time.monotonic() + 8
    while time.monotonic() < t_end:  # a second epoch on the last batch, off the clock
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    ctx.budget_ended_at = None  # what the stats file used to be built from
    return model
""",
    )
    r = trial(tmp_path, data, source, budget="5steps")
    assert r.status == "invalid"
    assert "after its budget ended" in r.error


def test_stopping_short_of_the_last_request_does_not_hide_an_overrun(tmp_path, data):
    """A trial that counts its own tokens never asks for the batch that finds the budget spent."""
    source = inject(
        tiny_train_source(),
        """
        import time
        model = GPT(ctx.vocab_size, 64, 1, ctx.seq_len)
        batches = ctx.batches(8)
        for _ in range(4):  # 4 x 8 x 256 = 8192 tokens: exactly the budget
            x, y = next(batches)
        t_end = time.monotonic() + 8
        while time.monotonic() < t_end:
            model(x).sum().backward()
        return model
        """,
    )
    r = trial(tmp_path, data, source, budget="8192tokens")
    assert r.status == "invalid", r.error
    assert "after its budget ended" in r.error


def test_a_stalled_trial_is_killed_but_a_slow_steady_one_is_not(tmp_path, data):
    """A deterministic budget has no fixed deadline (an honest 1M-token trial on a busy node
    needed 677 s and was killed at 600 s): the referee kills for a stall, saying so."""
    stall = inject(tiny_train_source(), "import time\nnext(iter(ctx.batches(8)))\ntime.sleep(60)\n")
    (tmp_path / "stall").mkdir()
    r = trial(tmp_path / "stall", data, stall, stall_timeout=4.0)
    assert r.status == "timeout"
    assert "asked for no batch in 4s" in r.error
    slow = inject(tiny_train_source(), "import time\n").replace(
        "        opt.step()\n", "        opt.step()\n        time.sleep(0.7)\n"
    )
    r = trial(tmp_path, data, slow, budget="10steps", stall_timeout=4.0)
    assert r.status == "ok", r.error
    assert r.total_seconds > 7


def test_a_failed_trial_prints_no_val_bpb_line(tmp_path, data):
    """autoresearch's tools `grep "^val_bpb:"`: a crash printed 0.000000, the best ever."""
    r = trial(tmp_path, data, inject(tiny_train_source(), "raise SystemExit(3)\n"))
    summary = format_summary(r)
    assert r.status == "crash"
    assert "val_bpb" not in summary
    assert "status:           crash" in summary and "error:" in summary
