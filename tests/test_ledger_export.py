"""The ledger (durable append-only trials.jsonl + results.tsv), its pandas export and the report.

Run: pytest tests/test_ledger_export.py -q
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import stat
import sys
import threading
import typing

import pandas as pd
import pytest

from cluster import ledger as ledger_module
from cluster.export import (
    FORMATS,
    campaign_summary,
    load_results,
    markdown_table,
    read_results,
    render_results,
    trials_frame,
    write_results,
)
from cluster.ledger import FIELDS, TSV_COLUMNS, TSV_EXTRA, Ledger
from cluster.report import make_report, progress_figure
from cluster.rows import Kind, Status, TrialRow

T0 = 1_760_000_000.0
BASE_SHA = "3f9a1c2e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"


def trial(trial_id: str, **fields) -> dict:
    """A full ledger row as the driver writes it: every field present, most filled."""
    row = dict.fromkeys(FIELDS)
    row.update(
        trial_id=trial_id,
        round=0,
        island=0,
        kind="candidate",
        parent_sha=BASE_SHA,
        commit_sha=hashlib.sha1(trial_id.encode()).hexdigest(),
        proposer="llm",
        model="anthropic/claude-sonnet-4",
        prompt_tokens=6120,
        completion_tokens=410,
        cost=0.0245,
        seed=1337,
        budget="300s",
        training_seconds=300.2,
        total_seconds=331.5,
        num_steps=953,
        total_tokens_M=499.6,
        num_params_M=50.3,
        peak_vram_mb=45060.2,
        mfu=39.8,
        gpu_name="NVIDIA H100 80GB HBM3",
        node="10.0.1.17",
        error="",
        log_path=f"runs/mar5/logs/{trial_id}.log",
        self_reported=False,
        merged=False,
    )
    row.update(fields)
    if row["status"] in ("crash", "timeout", "invalid", "lost"):
        row.update(val_bpb=None, num_steps=None, mfu=None, total_tokens_M=None)
    return row


INC0, INC0_AFTER, INC1, NOISE = 0.998215, 0.990458, 0.998171, 0.000738
# (trial_id, minute started, round, island, status, val_bpb, incumbent_bpb, description)
TRIALS = [
    ("r1-c0", 6.0, 1, 0, "discard", 0.997801, INC0, "lower warmdown ratio to 0.3"),
    ("r1-c1", 6.2, 1, 0, "crash", None, None, "double the depth to 16 layers"),
    ("r1-c2", 6.4, 1, 0, "keep", 0.990214, INC0, "raise matrix LR from 0.04 to 0.06"),
    ("r1-c3", 6.1, 1, 1, "discard", 1.012311, INC1, "replace ReLU^2 with GELU"),
    ("r1-c4", 6.3, 1, 1, "timeout", None, None, "batch size 2x"),
    ("r1-k0", 12.0, 1, 0, "keep", 0.990702, INC0, "raise matrix LR from 0.04 to 0.06"),
    ("r2-c0", 18.0, 2, 0, "discard", 0.991100, INC0_AFTER, "weight decay 0.1 on embeddings"),
    ("r2-c1", 18.2, 2, 0, "discard", 0.991100, INC0_AFTER, "tie embedding and unembedding"),
    ("r2-c2", 18.1, 2, 1, "keep", 0.995020, INC1, "swap ReLU^2 for SwiGLU"),
    ("r2-c3", 18.3, 2, 1, "invalid", None, None, "edit prepare.py"),
    ("r3-c0", 24.0, 3, 0, "keep", 0.987012, INC0_AFTER, "warmdown\t0.5 -> 0.7\n(longer cooldown)"),
    ("r3-c1", 24.1, 3, 1, "lost", None, None, "rotary base 50000"),
]
DETAILS = {
    "r1-c1": dict(peak_vram_mb=None, error="torch.OutOfMemoryError: CUDA out of memory."),
    "r1-c2": dict(merged=True),
    "r1-c4": dict(error="killed after 420 s"),
    "r1-k0": dict(kind="confirm", seed=7),
    "r2-c2": dict(merged=True),
    "r2-c3": dict(error="patch touches trainer/prepare.py", training_seconds=None),
    "r3-c0": dict(merged=True),
    "r3-c1": dict(ended=None, training_seconds=None),  # in flight when the driver died
}


def campaign() -> list[dict]:
    """Four rounds on two islands: replicates, discards, a tie, failures and three merges."""
    base = dict(kind="baseline", commit_sha=BASE_SHA, proposer=None, model=None, cost=0.0)
    base |= dict(prompt_tokens=0, completion_tokens=0, description="baseline", status="keep")
    replicates = (0.998112, 0.997530, 0.999004, 0.998440, 0.997902)
    rows = [
        trial(f"r0-b{seed}", island=seed // 3, seed=seed, val_bpb=bpb, started=T0 + seed,
              ended=T0 + seed + 331.5, **base)
        for seed, bpb in enumerate(replicates)
    ]  # fmt: skip
    for tid, minute, rnd, island, status, bpb, incumbent, desc in TRIALS:
        start = T0 + 60 * minute
        decided = dict(incumbent_bpb=incumbent, noise=NOISE if incumbent else None)
        rows.append(
            trial(tid, round=rnd, island=island, status=status, val_bpb=bpb, description=desc,
                  started=start, ended=start + 331.5, **decided) | DETAILS.get(tid, {})
        )  # fmt: skip
    return rows


@pytest.fixture
def run_dir(tmp_path):
    ledger = Ledger(tmp_path / "runs" / "mar5")
    for row in campaign():
        ledger.append(row)
    return ledger.run_dir


# --- ledger -----------------------------------------------------------------------------


def test_append_fsyncs_the_row_and_the_new_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(ledger_module.os, "fsync", spy)
    ledger = Ledger(tmp_path / "new")
    rows = campaign()[:2]
    ledger.append(rows[0])
    assert synced.count("dir") == 1 and synced.count("file") >= 2  # trials.jsonl + results.tsv
    synced.clear()
    ledger.append(rows[1])
    assert "dir" not in synced and "file" in synced
    assert Ledger(tmp_path / "new").rows() == rows


def test_torn_last_line_is_skipped_and_earlier_rows_survive(run_dir, caplog):
    rows = campaign()
    with open(run_dir / "trials.jsonl", "ab") as f:  # a crash halfway through a write
        f.write(json.dumps(trial("r4-c0", status="discard", val_bpb=0.99)).encode()[:97])
    with caplog.at_level(logging.WARNING, logger="cluster.ledger"):
        assert Ledger(run_dir).rows() == rows
    assert "unreadable line" in caplog.text

    late = trial("r4-c1", round=4, status="discard", val_bpb=0.989)
    Ledger(run_dir).append(late)  # a resumed driver appends after the torn fragment
    assert Ledger(run_dir).rows() == [*rows, late]


def test_nan_metric_is_stored_as_null_and_unknown_status_is_refused(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(trial("r1-c0", status="discard", val_bpb=float("nan")))
    assert ledger.rows()[0]["val_bpb"] is None
    with pytest.raises(ValueError, match="status 'ok'"):
        ledger.append(trial("r1-c1", status="ok"))
    assert len(ledger.rows()) == 1


def test_results_tsv_starts_with_autoresearchs_five_columns(run_dir):
    with open(run_dir / "results.tsv", newline="") as f:
        table = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = table[0], table[1:]
    assert header[:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert tuple(header) == TSV_COLUMNS + TSV_EXTRA
    assert len(body) == len(campaign()) and all(len(r) == len(header) for r in body)
    by_id = {r[header.index("trial_id")]: dict(zip(header, r, strict=True)) for r in body}
    merged = by_id["r1-c2"]
    assert merged["commit"] == trial("r1-c2")["commit_sha"][:7]
    assert (merged["val_bpb"], merged["memory_gb"], merged["status"]) == (
        "0.990214",
        "44.0",
        "keep",
    )
    crash = by_id["r1-c1"]
    assert (crash["val_bpb"], crash["memory_gb"], crash["status"]) == ("0.000000", "0.0", "crash")
    assert by_id["r3-c0"]["description"] == "warmdown 0.5 -> 0.7 (longer cooldown)"
    upstream = pd.read_csv(run_dir / "results.tsv", sep="\t")  # as autoresearch's notebook reads it
    assert upstream["val_bpb"].max() == pytest.approx(1.012311)


def test_concurrent_appends_from_threads_lose_nothing(tmp_path):
    ledger = Ledger(tmp_path)
    workers, each = 8, 25

    def work(w: int) -> None:
        for i in range(each):
            ledger.append(trial(f"w{w}-{i}", island=w % 2, status="discard", val_bpb=1 - i / 1e3))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r["trial_id"] for r in Ledger(tmp_path).rows()]
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in range(workers) for i in range(each))
    tsv = (tmp_path / "results.tsv").read_text().splitlines()
    assert len(tsv) == 1 + workers * each


def test_config_is_written_atomically_and_read_back(tmp_path):
    ledger = Ledger(tmp_path / "mar5")
    assert ledger.read_config() is None
    config = {"tag": "mar5", "workers": 8, "budget": "300s", "strategy": "rounds"}
    ledger.write_config(config)
    assert ledger.read_config() == config
    assert sorted(p.name for p in ledger.run_dir.iterdir()) == ["config.json"]  # no temp left


# --- export -----------------------------------------------------------------------------


def test_results_are_ranked_with_ties_sharing_the_min_and_failures_last(run_dir):
    df = load_results(run_dir)
    ranked = df[df["rank"].notna()]
    assert list(ranked["val_bpb"]) == sorted(ranked["val_bpb"])
    assert df.loc[0, "trial_id"] == "r3-c0" and df.loc[0, "rank"] == 1
    tie = df[df["val_bpb"] == 0.9911]
    assert list(tie["trial_id"]) == ["r2-c0", "r2-c1"]  # stable: ledger order
    assert tie["rank"].nunique() == 1
    after = df.loc[tie.index[-1] + 1, "rank"]
    assert after == tie["rank"].iloc[0] + 2
    unranked = df[df["rank"].isna()]
    assert list(unranked["trial_id"]) == ["r1-c1", "r1-c4", "r2-c3", "r3-c1"]
    assert unranked.index.min() == len(ranked)  # all after the ranked ones
    assert str(df["val_bpb"].dtype) == "Float64" and str(df["rank"].dtype) == "Int64"
    assert df.loc[0, "gain"] == pytest.approx(0.990458 - 0.987012)
    assert df.set_index("trial_id")["gain"].isna()["r0-b0"]  # no incumbent to compare with


def test_export_columns_are_trial_rows_fields_with_rank_and_gain_and_typed_by_them(run_dir):
    df = load_results(run_dir)
    names = [f.name for f in dataclasses.fields(TrialRow)]
    at = names.index("val_bpb") + 1
    assert list(df.columns) == ["rank", *names[:at], "gain", *names[at:]]
    hints = typing.get_type_hints(TrialRow)
    want = {int | None: "Int64", float | None: "Float64", str | None: "string", Kind: "string"}
    want |= {Status: "string", str: "string", bool: "boolean", bool | None: "boolean"}
    assert {c: str(df[c].dtype) for c in names} == {c: want[hints[c]] for c in names}
    assert str(df["rank"].dtype) == "Int64" and str(df["gain"].dtype) == "Float64"


def test_unknown_extra_fields_follow_trial_rows_fields():
    rows = [trial("r1-c0", status="keep", val_bpb=0.99) | {"shard": 3, "extra": {"a": 1}}]
    df = trials_frame(rows)
    assert list(df.columns[-3:]) == ["recorded", "shard", "extra"]
    assert df.loc[0, "extra"] == '{"a": 1}'


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "json"])
def test_machine_formats_round_trip_the_same_rows(run_dir, tmp_path, fmt):
    df = load_results(run_dir)
    out = tmp_path / f"results.{fmt}"
    write_results(df, fmt, out)
    pd.testing.assert_frame_equal(read_results(out), df)


def test_parquet_keeps_nullable_dtypes_without_help(run_dir, tmp_path):
    df = load_results(run_dir)
    write_results(df, "parquet", tmp_path / "r.parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert back.dtypes.to_dict() == df.dtypes.to_dict()
    assert back["val_bpb"].isna().sum() == 4


@pytest.mark.parametrize("fmt", ["table", "md"])
def test_human_formats_list_every_trial_in_rank_order(run_dir, fmt):
    df = load_results(run_dir)
    buf = io.StringIO()
    write_results(df, fmt, buf)
    text = buf.getvalue()
    positions = [text.index(f" {tid} ") for tid in df["trial_id"]]
    assert positions == sorted(positions)
    assert len(text.splitlines()) == len(df) + (2 if fmt == "md" else 1)


def test_table_is_compact_and_top_limits_rows(run_dir):
    df = load_results(run_dir)
    long = "x" * 200
    df.loc[0, "description"] = long
    buf = io.StringIO()
    write_results(df, "table", buf, top=3)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].split() == [
        "rank",
        "trial_id",
        "island",
        "kind",
        "status",
        "val_bpb",
        "gain",
        "proposer",
        "description",
        "reason",
    ]
    assert long not in lines[1] and "x..." in lines[1]
    assert "+0.003446" in lines[1]


def test_the_tables_say_why_a_row_failed(run_dir):
    """results shows the reason of a crash, kill or rejection (the ledger's error), not only
    its status; rows that ran have none."""
    df = load_results(run_dir)
    for fmt in ("table", "md"):
        text = render_results(df, fmt)
        crash = next(line for line in text.splitlines() if " r1-c1 " in line)
        assert "torch.OutOfMemoryError: CUDA out of memory." in crash
        rejected = next(line for line in text.splitlines() if " r2-c3 " in line)
        assert "patch touches trainer/prepare.py" in rejected
        best = next(line for line in text.splitlines() if " r3-c0 " in line)
        assert best.rstrip(" |").endswith("-")


def test_markdown_falls_back_to_a_plain_pipe_table_without_tabulate(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # import tabulate now raises ImportError
    text = markdown_table(load_results(run_dir).head(2), ("rank", "trial_id", "val_bpb"))
    assert text.splitlines() == [
        "| rank | trial_id | val_bpb |",
        "| --- | --- | --- |",
        "| 1 | r3-c0 | 0.987012 |",
        "| 2 | r1-c2 | 0.990214 |",
    ]


def test_unknown_format_is_refused_with_the_choices(run_dir):
    with pytest.raises(ValueError, match="use one of table, csv"):
        write_results(load_results(run_dir), "xlsx", io.StringIO())
    assert "xlsx" not in FORMATS


def test_campaign_summary_counts_path_cost_and_busy_fraction():
    rows = campaign()
    s = campaign_summary(rows, workers=4)
    assert s["trials"] == 17
    assert s["by_status"] == {
        "keep": 9,
        "discard": 4,
        "crash": 1,
        "timeout": 1,
        "invalid": 1,
        "lost": 1,
    }
    assert s["by_kind"] == {"candidate": 11, "baseline": 5, "confirm": 1}
    assert (s["best_val_bpb"], s["best_trial_id"]) == (0.987012, "r3-c0")
    assert s["first_baseline_bpb"] == 0.998112
    assert s["improvement"] == pytest.approx(0.998112 - 0.987012)
    assert [p["trial_id"] for p in s["incumbent_path"]] == ["r1-c2", "r2-c2", "r3-c0"]
    assert s["islands"] == [0, 1]
    assert s["total_cost"] == pytest.approx(0.0245 * 12)  # failed proposals cost too
    wall = (T0 + 60 * 24 + 331.5) - T0
    assert s["wall_seconds"] == pytest.approx(wall)
    assert s["busy_fraction"] == pytest.approx(331.5 * 17 / (4 * wall))
    assert campaign_summary(rows)["busy_fraction"] is None


def test_noise_falls_back_to_the_spread_of_the_starting_replicates():
    rows = [{**r, "noise": None} for r in campaign()]
    replicates = (0.998112, 0.997530, 0.999004, 0.998440, 0.997902)  # all of BASE_SHA
    assert campaign_summary(rows)["noise"] == pytest.approx(pd.Series(replicates).std())


# --- report -----------------------------------------------------------------------------


def test_report_writes_a_png_and_markdown_with_the_merged_changes(run_dir):
    png, md = make_report(run_dir, "mar5")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    text = md.read_text()
    assert text.startswith("# Campaign `mar5`") and "![progress](progress.png)" in text
    merged = text.split("## Merged changes")[1].split("##")[0]
    for desc in (
        "raise matrix LR from 0.04 to 0.06",
        "swap ReLU^2 for SwiGLU",
        "warmdown 0.5 -> 0.7 (longer cooldown)",
    ):
        assert desc in merged
    assert "tie embedding" not in merged
    assert "0.998112" in text and "1.11%" in text  # first baseline, improvement over it
    assert "## Islands" in text and "## Top 10" in text


def test_plot_has_a_colour_and_running_best_per_island(run_dir):
    fig = progress_figure(Ledger(run_dir).rows())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "island 0: running best" in labels and "island 1: running best" in labels
    assert "island 1: merged (1)" in labels and "crash/timeout/invalid/lost (4)" in labels
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert (
        lines["island 0: running best"].get_color() != lines["island 1: running best"].get_color()
    )
    assert min(lines["island 0: running best"].get_ydata()) == 0.987012


def test_single_island_plot_is_autoresearchs_shape(tmp_path):
    rows = [r for r in campaign() if r["island"] == 0]
    labels = [t.get_text() for t in progress_figure(rows).axes[0].get_legend().get_texts()]
    assert "running best" in labels and not any("island" in label for label in labels)


def test_report_of_an_empty_campaign_still_writes_both_files(tmp_path):
    png, md = make_report(tmp_path / "fresh", "fresh")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "None yet" in md.read_text()


@pytest.mark.parametrize("reported", [True, False])
def test_a_self_reported_score_is_labelled_wherever_it_is_shown(tmp_path, reported):
    """--protocol autoresearch: train.py prints its own val_bpb. results, status and report
    say so (the exports carry the self_reported column)."""
    from cluster.export import load_results, render_results
    from cluster.status import status_text

    ledger = Ledger(tmp_path / "runs" / "ar")
    for row in campaign():
        ledger.append({**row, "self_reported": reported})
    ledger.write_config({"budget": "300s", "workers": 2, "base_sha": BASE_SHA})
    df = load_results(ledger.run_dir)
    table, md = render_results(df, "table"), render_results(df, "md")
    status = status_text(ledger.run_dir, "ar")
    report = make_report(ledger.run_dir, "ar")[1].read_text()
    for text in (table, md, status, report):
        assert ("self-reported" in text) is reported
    assert ("0.987012*" in table) is reported
