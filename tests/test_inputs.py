"""Bad input refused up front, with nothing written: the tag, the repo, a second driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster.config import CampaignError
from cluster.lock import hold_campaign

from conftest import make_repo


@pytest.mark.parametrize("tag", ["..", "../../x", "a b", "a/b", ".hidden", "x.lock", "", "-x"])
def test_a_tag_that_is_not_a_safe_folder_and_branch_name_is_refused(tmp_path, tag):
    repo = make_repo(tmp_path / "repo")
    for command in ("run", "status"):
        proc = subprocess.run(
            [sys.executable, "-m", "cluster.cli", command, f"--tag={tag}", "--repo", str(repo)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "argument --tag" in proc.stderr and "letters, digits" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (repo / "runs").exists() and not (tmp_path / "x").exists()


def test_a_repo_that_is_not_git_is_one_line_not_a_traceback(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "run", "--tag", "t", "--repo", str(plain)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "not inside a git repository" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_driver_per_tag_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / "runs" / "t" / "driver.lock"
    code = (
        "import sys, time; from pathlib import Path; from cluster.lock import hold_campaign\n"
        "with hold_campaign(Path(sys.argv[1]), 't'):\n"
        "    print('held', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CampaignError) as exc:
            with hold_campaign(lock, "t"):
                pass
        msg = str(exc.value)
        assert f"pid {holder.pid} on " in msg and "campaign t is being run by" in msg
        assert "--tag" in msg
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with hold_campaign(lock, "t"):  # the kernel dropped the dead holder's lock
        assert str(os.getpid()) in lock.read_text()
    with hold_campaign(lock, "t"):  # and this one released its own on leaving
        pass


@pytest.mark.slow
def test_a_second_driver_on_a_running_tag_is_refused_and_changes_nothing(tmp_path, data):
    from conftest import TEST_VOCAB, kill_driver, ledger_rows, start_cli

    repo = make_repo(tmp_path / "repo")
    args = ["run", "--tag", "two", "--repo", str(repo), "--budget", "20steps", "--device"]
    args += ["cpu", "--vocab-size", str(TEST_VOCAB), "--workers", "1", "--rounds", "50"]
    first = start_cli(repo, *args)
    try:
        deadline = time.monotonic() + 240
        while not ledger_rows(repo, "two") and time.monotonic() < deadline:
            time.sleep(0.3)
        assert ledger_rows(repo, "two"), first.communicate()[0] if first.poll() else ""
        config = repo / "runs" / "two" / "config.json"
        stamp = config.stat().st_mtime_ns
        second = start_cli(repo, *args)
        out = second.communicate(timeout=120)[0]
        assert second.returncode == 2, out
        assert f"campaign two is being run by pid {first.pid} on " in out
        assert "Traceback" not in out
        assert first.poll() is None  # the first driver runs on
        assert config.stat().st_mtime_ns == stamp  # the second wrote nothing
        assert not any(r["status"] == "lost" for r in ledger_rows(repo, "two"))
    finally:
        kill_driver(first)


def test_a_first_autoresearch_trial_in_a_foreign_repo_creates_its_log_folder(tmp_path):
    from test_async import _repo

    repo, _ = _repo(tmp_path / "ar")
    assert not (repo / "runs").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "trial", "--protocol", "autoresearch"]
        + ["--repo", str(repo), "--sandbox", "off"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "val_bpb" in proc.stdout and (repo / "runs" / "trial.log").exists()


def test_a_prepared_cache_is_used_without_writing_to_it(tmp_path, data, monkeypatch):
    """A read-only cache (shared, or mounted ro) cannot take the prepare lock: a prepared one
    needs none; an unprepared one is one clear line, not a traceback. (A directory where the
    lock file would go stands in for read-only: root may write anywhere.)"""
    import shutil

    from trainer.prepare import PrepareError, prepare

    from conftest import TEST_VOCAB

    cache = tmp_path / "cache"
    shutil.copytree(data, cache / data.name)
    (cache / f"{data.name}.lock").mkdir()  # the lock cannot be created
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    assert prepare("builtin", TEST_VOCAB) == cache / data.name
    (cache / data.name / "manifest.json").unlink()  # not prepared after all
    with pytest.raises(PrepareError, match="cannot prepare builtin .* AUTORESEARCH_CACHE"):
        prepare("builtin", TEST_VOCAB)
    env = {**os.environ, "AUTORESEARCH_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "prepare", "--vocab-size", str(TEST_VOCAB)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot prepare builtin")
    assert "Traceback" not in proc.stderr


def _all_invalid_campaign(strategy: str, **flat):
    """A simulated campaign whose only proposer writes patches for another file."""
    import random

    from cluster.campaign import Campaign, CampaignConfig
    from cluster.driver import start_pipeline
    from cluster.ledger import MemoryLedger
    from cluster.loop import Driver
    from cluster.patches import make_patch
    from cluster.records import Proposal
    from cluster.repo import MemoryRepo
    from cluster.simulate import SimExecutor
    from cluster.strategy import build_strategy

    class Elsewhere:
        name = "elsewhere"

        def __init__(self):
            self.n = 0

        def propose(self, ctx, n):
            out = []
            for _ in range(n):
                self.n += 1
                patch = make_patch("X = 1\n", f"X = {self.n + 1}\n", "other.py")
                out.append(
                    Proposal(
                        parent_sha=ctx.incumbent_sha,
                        proposer="elsewhere",
                        patch=patch,
                        description=f"edit {self.n}",
                    )
                )
            return out

    said: list[str] = []
    repo = MemoryRepo({"train.py": "A = 1.0\n"})
    cfg = CampaignConfig.build(tag="bad", target="train.py", strategy=strategy, seed=1, **flat)
    camp = Campaign(cfg, repo=repo, ledger=MemoryLedger(), say=said.append)
    strat = build_strategy(cfg, 2)
    camp.setup("cpu", "300s", 2, strat.lines, strat.settings())
    pipeline = start_pipeline(camp, [(Elsewhere(), 1.0)], 2, inline=True)
    ex = SimExecutor(2, lambda spec, rng: 1.0 + rng.gauss(0, 0.01), seed=1)
    Driver(camp, ex, pipeline, strat, clock=ex.now).run()
    random.seed()
    return camp, said, ex


def test_a_proposer_that_only_writes_invalid_proposals_ends_a_rounds_campaign():
    camp, said, _ = _all_invalid_campaign("rounds", rounds=2, hours=5.0)  # hours: a backstop
    invalid = [r for r in camp.rows if r["status"] == "invalid"]
    assert invalid and all("only train.py may be changed" in r["error"] for r in invalid)
    assert not any(r["kind"] == "candidate" and r["status"] != "invalid" for r in camp.rows)
    assert len(invalid) < 50  # two rounds' slots, not an endless loop
    assert [m for m in said if "measuring noise" in m] == [
        "measuring noise: 4 incumbent replicate(s) with varied seeds"
    ]


def test_invalid_proposals_in_a_row_pause_proposing_and_say_why():
    camp, said, ex = _all_invalid_campaign("async", hours=2.0)
    pauses = [m for m in said if "proposals in a row were invalid" in m]
    assert pauses and "the patch changes other.py; only train.py may be changed" in pauses[0]
    assert "pausing proposals for 60 s" in pauses[0] and "for 120 s" in pauses[1]
    invalid = [r for r in camp.rows if r["status"] == "invalid"]
    # 2 simulated hours: pauses of 60, 120, 240, 480, then 600 s, each after 20 invalid
    assert len(invalid) <= 20 * (len(pauses) + 1) + 10 and len(pauses) <= 16
    assert ex.now() >= 2 * 3600


def test_the_ledger_not_config_json_decides_what_a_resume_may_change(tmp_path):
    """config.json deleted, or edited to the new budget: the rows say what was measured."""
    from cluster.campaign import Campaign, CampaignConfig
    from cluster.records import TrialResult

    repo = make_repo(tmp_path / "repo")

    def camp(budget: str) -> Campaign:
        c = Campaign(CampaignConfig.build("led", repo, budget=budget), say=lambda m: None)
        c.setup("cpu", budget, 2)
        return c

    first = camp("20steps")
    base = first.base_sha
    spec = first.make_spec("baseline", base, base, first.lines[0])
    first.append(first.draft(spec, None, TrialResult(status="ok", val_bpb=1.5)))
    config = first.files.config
    config.unlink()  # lost
    with pytest.raises(CampaignError, match="its trials ran with 20steps, this run asks 40steps"):
        camp("40steps")
    assert not config.exists()  # the refusal wrote nothing
    again = camp("20steps")  # the original settings resume, from the ledger's base
    assert again.base_sha == base and config.exists()
    edited = config.read_text().replace('"20steps"', '"40steps"')
    config.write_text(edited)
    with pytest.raises(CampaignError, match="trials.jsonl. was measured with other settings"):
        camp("40steps")


def test_a_torn_last_line_and_queued_trials_are_not_reused_or_called_lost(tmp_path):
    """A crash mid-append tears the ledger's last line; a journaled trial that only waited for
    a worker never ran. Neither id is given to a new trial; only running ones become `lost`."""
    import json

    from cluster.campaign import Campaign, CampaignConfig
    from cluster.records import TrialResult

    repo = make_repo(tmp_path / "repo")

    def camp() -> Campaign:
        c = Campaign(CampaignConfig.build("torn", repo, budget="20steps"), say=lambda m: None)
        c.setup("cpu", "20steps", 2)
        return c

    first = camp()
    line = first.lines[0]
    base = first.base_sha
    done = first.make_spec("baseline", base, base, line)
    first.append(first.draft(done, None, TrialResult(status="ok", val_bpb=1.5)))
    running = first.make_spec("baseline", base, base, line)
    first.dispatched(running)
    queued = first.make_spec("baseline", base, base, line, queued=True)
    first.journal()
    torn = first.make_spec("baseline", base, base, line)
    with open(first.files.ledger, "a") as f:  # killed halfway through writing its row
        f.write(json.dumps({"trial_id": torn.trial_id, "kind": "baseline"})[:40])
    second = camp()
    lost = [r["trial_id"] for r in second.rows if r["status"] == "lost"]
    assert lost == [running.trial_id]
    assert {s.trial_id for s, _ in second.requeue} == {running.trial_id, queued.trial_id}
    fresh = second.make_spec("baseline", base, base, second.lines[0])
    used = {done.trial_id, running.trial_id, queued.trial_id, torn.trial_id}
    assert fresh.trial_id not in used and fresh.trial_id > max(used)


def test_uncommitted_edits_to_the_target_are_refused_not_silently_left_out(tmp_path):
    from cluster.campaign import Campaign, CampaignConfig

    repo = make_repo(tmp_path / "repo")
    train = repo / "trainer" / "train.py"
    train.write_text(train.read_text() + "\n# my idea\n")
    camp = Campaign(CampaignConfig.build("dirty", repo, budget="20steps"), say=lambda m: None)
    with pytest.raises(CampaignError, match="trainer/train.py has changes that are not committed"):
        camp.setup("cpu", "20steps", 2)
    assert not camp.files.config.exists()
    from cluster import gitops

    env = {**os.environ, **gitops.IDENTITY}
    subprocess.run(["git", "commit", "-qam", "idea"], cwd=repo, check=True, env=env)
    camp = Campaign(CampaignConfig.build("dirty", repo, budget="20steps"), say=lambda m: None)
    camp.setup("cpu", "20steps", 2)
    assert "# my idea" in camp.source(camp.base_sha)


def test_the_autoresearch_protocol_trains_train_py_by_default():
    from cluster.campaign import CampaignConfig

    assert CampaignConfig.build("t", protocol="autoresearch").trial.target == "train.py"
    assert CampaignConfig.build("t").trial.target == "trainer/train.py"
    assert CampaignConfig.build("t", protocol="autoresearch", target="x.py").trial.target == "x.py"


def test_an_autoresearch_repo_run_natively_is_pointed_at_its_protocol(tmp_path):
    from cluster.campaign import Campaign, CampaignConfig

    from test_async import _repo

    repo, _ = _repo(tmp_path / "ar")
    with pytest.raises(CampaignError, match="pass --protocol autoresearch"):
        Campaign(CampaignConfig.build("t", repo), say=lambda m: None)


def test_a_paused_pipeline_calls_no_proposer_until_the_pause_ends():
    """The pause is not only the driver's: the proposing thread (an LLM's bill) stops too."""
    from cluster.patches import make_patch
    from cluster.pipeline import ProposalPipeline
    from cluster.proposers.base import ProposalContext
    from cluster.records import Proposal

    calls: list[float] = []

    class Invalid:
        name = "invalid"

        def propose(self, ctx, n):
            calls.append(time.monotonic())
            patch = make_patch("X = 1\n", "X = 2\n", "other.py")
            return [Proposal(parent_sha=ctx.incumbent_sha, proposer="invalid", patch=patch)]

    pipe = ProposalPipeline([(Invalid(), 1.0)], ahead=1)
    pipe.start({0: ProposalContext("a" * 40, "A = 1\n", "train.py")}, set())
    try:
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        pipe.pause(1.5)
        paused_at = time.monotonic()
        time.sleep(1.0)
        assert not [t for t in calls if t > paused_at + 0.05]  # nothing called while paused
        deadline = time.monotonic() + 10
        while not [t for t in calls if t > paused_at + 1.5] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [t for t in calls if t > paused_at + 1.5]  # and it resumes
    finally:
        pipe.stop()


def test_limits_are_the_campaigns_a_resume_goes_on_counting():
    """--rounds R and --trials K count from the ledger: resuming a finished campaign with the
    same limit starts nothing; a larger one runs only the difference."""
    from cluster.campaign import Campaign, CampaignConfig
    from cluster.driver import start_pipeline
    from cluster.ledger import MemoryLedger
    from cluster.loop import Driver
    from cluster.proposers.mutate import MutateProposer
    from cluster.repo import MemoryRepo
    from cluster.simulate import SimExecutor
    from cluster.strategy import build_strategy

    repo, ledger = MemoryRepo({"train.py": "A = 1.0\nB = 2.0\nC = 3.0\n"}), MemoryLedger()

    def run(strategy: str, **limit) -> list[dict]:
        cfg = CampaignConfig.build("lim", target="train.py", strategy=strategy, seed=2, **limit)
        camp = Campaign(cfg, repo=repo, ledger=ledger, say=lambda m: None)
        strat = build_strategy(cfg, 2)
        camp.setup("cpu", "300s", 2, strat.lines, strat.settings())
        pipeline = start_pipeline(camp, [(MutateProposer(seed=2), 1.0)], 2, inline=True)
        ex = SimExecutor(2, lambda spec, rng: 1.0 + rng.gauss(0, 0.01), seed=2)
        Driver(camp, ex, pipeline, strat, clock=ex.now).run()
        return [r for r in ledger.rows() if r["kind"] == "candidate"]

    first = run("rounds", rounds=2)
    assert {r["round"] for r in first} == {1, 2}
    assert run("rounds", rounds=2) == first  # done: nothing new
    third = run("rounds", rounds=3)
    assert {r["round"] for r in third} == {1, 2, 3}
    n = len(third)
    assert len(run("async", trials=n)) == n
    assert len(run("async", trials=n + 3)) == n + 3


@pytest.mark.slow
def test_ctrl_c_ends_a_campaign_cleanly(tmp_path, data):
    """Ctrl-C (SIGINT to the terminal's process group, again and again, as an impatient user
    does): a line that says so, no traceback (once Ray's shutdown at exit was cut into one)."""
    import signal

    from conftest import TEST_VOCAB, kill_driver, ledger_rows, start_cli

    repo = make_repo(tmp_path / "repo")
    args = ["run", "--tag", "cc", "--repo", str(repo), "--budget", "20steps", "--device"]
    args += ["cpu", "--vocab-size", str(TEST_VOCAB), "--workers", "2", "--rounds", "50"]
    # A job started in the background by a script (`bash .ci/run &`) inherits SIGINT ignored,
    # and Python then leaves it ignored: give the driver what a terminal's process has.
    first = start_cli(repo, *args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not ledger_rows(repo, "cc") and time.monotonic() < deadline:
            time.sleep(0.3)
        assert ledger_rows(repo, "cc"), first.communicate()[0] if first.poll() else ""
        for _ in range(8):  # again and again while it cleans up (Ray's shutdown at exit too)
            if first.poll() is not None:
                break
            os.killpg(first.pid, signal.SIGINT)
            time.sleep(0.4)
        try:  # the driver gives its clean-up 60 s (driver.exit_after), then exits anyway
            out = first.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            os.kill(first.pid, signal.SIGUSR1)  # where it is stuck: every thread's stack
            try:
                out = first.communicate(timeout=5)[0]
            except subprocess.TimeoutExpired as e:
                out = e.output.decode() if isinstance(e.output, bytes) else e.output or ""
            pytest.fail("still running 120 s after Ctrl-C:\n" + out)
    finally:
        try:
            kill_driver(first)  # what it started and left behind, if anything
        except ProcessLookupError:
            pass
    assert "Traceback" not in out, out
    assert first.returncode in (0, 130), out
    assert "interrupted" in out


def test_a_clean_up_that_hangs_after_ctrl_c_ends_on_its_own():
    """After a Ctrl-C the driver gives its clean-up (cancelling, Ray's shutdown at exit) a
    limit, then exits 130 anyway: the user gets the prompt back, and the ledger already holds
    every finished trial."""
    code = "import time\nfrom cluster.driver import exit_after\nexit_after(1)\ntime.sleep(60)\n"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 130 and time.monotonic() - t0 < 40, proc.stderr
    assert "exiting without waiting" in proc.stderr
