"""The commands: the read-only ones work on a campaign's files (status, results, report), and
bad settings stop at the command line before anything is written or started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cluster.ledger import Ledger

from conftest import make_repo


def _campaign(root: Path) -> Path:
    run = root / "runs" / "t"
    ledger = Ledger(run)
    ledger.write_config(
        {"budget": "20steps", "workers": 2, "device_kind": "cpu", "base_sha": "a" * 40}
    )
    rows = [
        ("t0001", "baseline", "a" * 40, "keep", 3.00, False),
        ("t0002", "baseline", "a" * 40, "keep", 3.02, False),
        ("t0003", "candidate", "b" * 40, "discard", 2.90, False),
        ("t0004", "candidate", "c" * 40, "crash", None, False),
        ("t0005", "confirm", "b" * 40, "keep", 2.91, True),
    ]
    for tid, kind, sha, status, bpb, merged in rows:
        ledger.append(
            {
                "trial_id": tid,
                "round": 1,
                "island": 0,
                "kind": kind,
                "commit_sha": sha,
                "status": status,
                "val_bpb": bpb,
                "merged": merged,
                "description": f"change {tid}",
                "started": 1.0,
                "ended": 11.0,
                "total_seconds": 10.0,
                "incumbent_bpb": 3.01,
            }
        )
    return run


def _cli(root: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args, "--repo", str(root)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_status_shows_incumbent_noise_counts_and_cpu_note(tmp_path):
    _campaign(tmp_path)
    out = _cli(tmp_path, "status", "--tag", "t")
    # the merged commit's screening run (2.90, best of its round) is not counted; its
    # confirmation is
    assert "incumbent  bbbbbbbbbb  val_bpb 2.9100 over 1 run(s), after 1 merged" in out
    assert "crash 1" in out and "keep 3" in out
    assert "CPU trials share" in out


def test_results_rank_every_trial_and_export_parquet(tmp_path):
    _campaign(tmp_path)
    table = _cli(tmp_path, "results", "--tag", "t", "--top", "2").splitlines()
    assert "t0003" in table[1] and "t0005" in table[2]
    out = tmp_path / "r.parquet"
    _cli(tmp_path, "results", "--tag", "t", "--format", "parquet", "--out", str(out))
    df = pd.read_parquet(out)
    assert len(df) == 5 and df["trial_id"].iloc[-1] == "t0004"  # no metric: ranked last


def test_report_writes_the_plot_and_summary(tmp_path):
    run = _campaign(tmp_path)
    _cli(tmp_path, "report", "--tag", "t")
    assert (run / "progress.png").read_bytes()[:4] == b"\x89PNG"
    assert "change t0005" in (run / "report.md").read_text()


def test_an_unknown_campaign_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "status", "--tag", "nope", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "no campaign 'nope'" in proc.stderr


def test_workers_takes_a_positive_number_or_auto():
    from cluster.campaign import CampaignConfig
    from cluster.cli import build_parser

    parse = build_parser().parse_args
    assert CampaignConfig.from_args(parse(["run", "--tag", "t"])).cluster.workers is None  # auto
    assert (
        CampaignConfig.from_args(parse(["run", "--tag", "t", "--workers", "6"])).cluster.workers
        == 6
    )
    for bad in ("0", "-2", "many"):
        proc = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "run", "--tag", "t", "--workers", bad],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2
        assert f"'{bad}': give a number of workers (1 or more) or auto" in proc.stderr


@pytest.mark.parametrize(
    "command, budget",
    [
        (["run", "--tag", "bad"], "5 minutes"),
        (["run", "--tag", "bad"], "0steps"),
        (["trial"], "abc"),
    ],
)
def test_a_bad_budget_stops_the_command_before_it_does_anything(tmp_path, command, budget):
    """Read by argparse, not by the first trial: no runs/ directory, no branch, no Ray."""
    repo = make_repo(tmp_path / "repo")
    branches = subprocess.run(["git", "branch"], cwd=repo, capture_output=True, text=True).stdout
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *command, "--budget", budget, "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"argument --budget: cannot read budget {budget!r}" in proc.stderr or (
        f"argument --budget: budget {budget!r} is not positive" in proc.stderr
    )
    for form in ("60s", "300s", "200steps", "2Mtokens"):
        assert form in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (repo / "runs").exists()
    assert subprocess.run(["git", "branch"], cwd=repo, capture_output=True, text=True).stdout == (
        branches
    )


def test_the_campaign_gets_the_budget_in_its_canonical_form():
    from cluster.campaign import CampaignConfig
    from cluster.cli import build_parser

    parse = build_parser().parse_args
    assert (
        CampaignConfig.from_args(parse(["run", "--tag", "t"])).trial.budget is None
    )  # the device's default
    assert (
        CampaignConfig.from_args(parse(["run", "--tag", "t", "--budget", "5m"])).trial.budget
        == "300s"
    )
    assert CampaignConfig.from_args(
        parse(["run", "--tag", "t", "--budget", "2_000steps"])
    ).trial.budget == ("2000steps")


def test_every_run_option_reaches_the_campaign_config():
    """No option of `autoresearch run` is parsed and then dropped: each is a config setting."""
    from dataclasses import fields

    from cluster.campaign import CampaignConfig
    from cluster.cli import build_parser
    from cluster.config import SECTIONS

    ap = build_parser()
    run = next(a for a in ap._actions if a.dest == "command").choices["run"]
    names = {f.metadata.get("flag") or f.name for k in SECTIONS.values() for f in fields(k)}
    assert {a.dest for a in run._actions} - names == {"help", "tag", "repo"}
    cfg = CampaignConfig.from_args(
        ap.parse_args(
            ["run", "--tag", "t", "--timeout", "90", "--threads", "3", "--llm-timeout", "7"]
            + ["--model", "a/b", "--model", "c/d", "--max-llm-cost", "2.5", "--per-round", "5"]
        )
    )
    assert (cfg.trial.timeout, cfg.trial.threads, cfg.llm.timeout) == (90, 3, 7)
    assert (cfg.llm.models, cfg.llm.max_cost, cfg.search.per_round) == (["a/b", "c/d"], 2.5, 5)
    with pytest.raises(TypeError, match="unknown campaign setting"):
        CampaignConfig.build("t", per_rnd=5)
