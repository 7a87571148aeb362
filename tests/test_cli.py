"""The read-only commands work on a campaign's files: status, results, report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from cluster.ledger import Ledger


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
    from cluster.cli import _campaign_config, build_parser

    parse = build_parser().parse_args
    assert _campaign_config(parse(["run", "--tag", "t"])).workers is None  # auto
    assert _campaign_config(parse(["run", "--tag", "t", "--workers", "6"])).workers == 6
    for bad in ("0", "-2", "many"):
        proc = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "run", "--tag", "t", "--workers", bad],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2
        assert f"'{bad}': give a number of workers (1 or more) or auto" in proc.stderr
