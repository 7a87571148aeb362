"""The typed ledger row (cluster.rows), the in-memory ledger and the run directory's names.

Run: pytest tests/test_rows.py -q
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import fields

import pytest

from cluster import ledger as ledger_module
from cluster.ledger import FIELDS, Ledger, MemoryLedger
from cluster.records import Proposal, TrialResult, TrialSpec, asdict
from cluster.rows import FAILED, Kind, Status, TrialRow
from cluster.rundir import RunDir

T0 = 1_760_000_000.0
PARENT = "3f9a1c2e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"
CHILD = "8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a393f9a1c2e"


def spec(kind: str = "candidate", **over) -> TrialSpec:
    args = dict(trial_id="r3-c1", round=3, island=1, kind=kind, parent_sha=PARENT,
                commit_sha=CHILD, patch="diff --git ...", seed=1337, budget="300s")  # fmt: skip
    return TrialSpec(**(args | over))


def result(**over) -> TrialResult:
    args = dict(status="ok", val_bpb=0.991234, training_seconds=300.2, total_seconds=331.5,
                num_steps=953, total_tokens_M=499.6, num_params_M=50.3, peak_vram_mb=45060.2,
                mfu=39.8, gpu_name="NVIDIA H100 80GB HBM3", node="10.0.1.17",
                log_path="/tmp/worker/r3-c1.log", confinement="namespaces", started=T0 + 5,
                ended=T0 + 336.5, extra={"dispatched": T0 + 1})  # fmt: skip
    return TrialResult(**(args | over))


PROPOSAL = asdict(
    Proposal(parent_sha=PARENT, patch="...", description="raise matrix LR to 0.06",
             proposer="llm", model="anthropic/claude-sonnet-4", prompt_tokens=6120,
             completion_tokens=410, cost=0.0245)
)  # fmt: skip


# --- the enums -------------------------------------------------------------------------


def test_statuses_and_kinds_are_their_plain_strings():
    assert Status.KEEP == "keep" and Kind.CONFIRM == "confirm"
    assert json.dumps({"status": Status.CRASH, "kind": Kind.BASELINE}) == (
        '{"status": "crash", "kind": "baseline"}'
    )
    assert str(Status.LOST) == "lost" and f"{Kind.CANDIDATE}" == "candidate"
    assert "timeout" in FAILED and "keep" not in FAILED and "lost" in set(FAILED)
    assert [s.value for s in Status] == ["keep", "discard", "crash", "timeout", "invalid", "lost"]


# --- building a row --------------------------------------------------------------------


def test_build_fills_every_field_from_the_spec_proposal_and_result():
    row = TrialRow.build(spec(), PROPOSAL, result(), merged=True, noise=0.0007,
                         incumbent_bpb=0.998, log_path="runs/mar5/logs/r3-c1.log", now=T0 + 400)  # fmt: skip
    assert (row.status, row.kind) == (Status.DISCARD, Kind.CANDIDATE)  # ok: the gate says keep
    assert row.description == "raise matrix LR to 0.06" and row.proposer == "llm"
    assert (row.prompt_tokens, row.completion_tokens, row.cost) == (6120, 410, 0.0245)
    assert (row.parent_sha, row.commit_sha, row.seed, row.budget) == (PARENT, CHILD, 1337, "300s")
    assert (row.val_bpb, row.num_steps, row.confinement) == (0.991234, 953, "namespaces")
    assert (row.started, row.ended, row.dispatched, row.recorded) == (
        T0 + 5,
        T0 + 336.5,
        T0 + 1,
        T0 + 400,
    )
    assert row.log_path == "runs/mar5/logs/r3-c1.log"  # the driver's copy over the worker's
    assert (row.merged, row.noise, row.incumbent_bpb) == (True, 0.0007, 0.998)
    assert list(row.to_dict()) == list(FIELDS)


def test_build_defaults_for_replicates_failures_and_an_explicit_status():
    base = TrialRow.build(spec("baseline", seed=7), None, result(ended=None, extra={}), now=T0)
    assert base.description == "incumbent replicate (seed 7)"
    assert (base.proposer, base.cost, base.dispatched) == (None, None, None)
    assert base.ended == T0 == base.recorded  # no end time reported: when it was recorded
    assert base.log_path == "/tmp/worker/r3-c1.log"  # no driver copy: the worker's
    confirm = TrialRow.build(spec("confirm", seed=9), {"description": ""}, result(), now=T0)
    assert confirm.description == "confirmation run (seed 9)"
    crash = TrialRow.build(spec(), PROPOSAL, result(status="crash", val_bpb=None), now=T0)
    assert crash.status is Status.CRASH
    kept = TrialRow.build(spec(), PROPOSAL, result(), status="keep", now=T0)
    assert kept.status is Status.KEEP
    with pytest.raises(ValueError, match="status 'ok' is not one of keep, discard"):
        TrialRow.build(spec(), PROPOSAL, result(), status="ok", now=T0)


def test_setting_a_status_or_kind_stores_the_member_or_fails_there():
    row = TrialRow.build(spec(), PROPOSAL, result(), now=T0)
    row.status = "keep"  # as a strategy's verdict sets it
    assert row.status is Status.KEEP and row.to_dict()["status"] == "keep"
    with pytest.raises(ValueError, match="status 'merge' is not one of"):
        row.status = "merge"
    with pytest.raises(ValueError, match="kind 'replicate'"):
        row.kind = "replicate"
    assert (row.status, row.kind) == (Status.KEEP, Kind.CANDIDATE)


# --- through a ledger and back ---------------------------------------------------------


def test_a_built_row_round_trips_through_a_ledger_file_unchanged(tmp_path):
    rows = [
        TrialRow.build(spec(), PROPOSAL, result(), merged=True, noise=0.0007, incumbent_bpb=0.998),
        TrialRow.build(spec("baseline", trial_id="r3-b0"), None, result(), now=T0),
        TrialRow.build(spec(trial_id="r3-c2"), PROPOSAL, result(status="timeout", val_bpb=None)),
    ]
    ledger = Ledger(tmp_path / "mar5")
    for row in rows:
        ledger.append(row)
    stored = Ledger(tmp_path / "mar5").rows()
    assert stored == [r.to_dict() for r in rows]
    assert all(type(d["status"]) is str and type(d["kind"]) is str for d in stored)
    back = [TrialRow.from_dict(d) for d in stored]
    assert back == rows
    assert back[2].status is Status.TIMEOUT and back[1].kind is Kind.BASELINE
    tsv = (tmp_path / "mar5" / "results.tsv").read_text().splitlines()
    assert tsv[1].split("\t")[:5] == [
        CHILD[:7],
        "0.991234",
        "44.0",
        "discard",
        PROPOSAL["description"],
    ]


def test_an_old_ledger_row_loads_with_the_newer_fields_none():
    old = {  # a row from before confinement, dispatched and recorded existed, plus a stray key
        "trial_id": "r1-c0",
        "round": 1,
        "island": 0,
        "kind": "candidate",
        "status": "keep",
        "val_bpb": 0.99,
        "self_reported": False,
        "merged": True,
        "retired_field": 3,
    }
    row = TrialRow.from_dict(old)
    assert (row.confinement, row.dispatched, row.recorded, row.noise) == (None, None, None, None)
    assert (row.status, row.merged, row.val_bpb) == (Status.KEEP, True, 0.99)
    assert "retired_field" not in row.to_dict()
    assert (
        TrialRow.from_dict({"trial_id": "x", "kind": "confirm", "status": "lost"}).merged is False
    )


def test_unknown_or_missing_status_and_kind_are_refused_by_name():
    row = {"trial_id": "r1-c0", "kind": "candidate", "status": "ok"}
    with pytest.raises(ValueError) as err:
        TrialRow.from_dict(row)
    assert "'ok'" in str(err.value)
    assert "keep, discard, crash, timeout, invalid, lost" in str(err.value)
    with pytest.raises(ValueError, match="kind 'replicate' is not one of baseline, candidate"):
        TrialRow.from_dict(row | {"status": "keep", "kind": "replicate"})
    with pytest.raises(ValueError, match="'r1-c0' has no status"):
        TrialRow.from_dict({"trial_id": "r1-c0", "kind": "candidate"})


@pytest.mark.parametrize("make", [lambda p: Ledger(p), lambda p: MemoryLedger(p)])
def test_both_ledgers_refuse_a_dict_with_an_unknown_status(tmp_path, make):
    ledger = make(tmp_path)
    with pytest.raises(ValueError, match="status 'ok' is not one of keep"):
        ledger.append({"trial_id": "r1-c0", "kind": "candidate", "status": "ok"})
    with pytest.raises(ValueError, match="kind 'replicate'"):
        ledger.append({"trial_id": "r1-c0", "kind": "replicate", "status": "keep"})
    assert ledger.rows() == []


# --- MemoryLedger and durable=False -----------------------------------------------------


def test_memory_ledger_keeps_rows_and_config_and_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module.os, "fsync", lambda fd: pytest.fail("fsync called"))
    run = tmp_path / "sim"
    ledger = MemoryLedger(run)
    assert ledger.run_dir == run and ledger.rows() == [] and ledger.read_config() is None
    built = TrialRow.build(spec(), PROPOSAL, result(), now=T0)
    ledger.append(built)
    ledger.append({"trial_id": "r3-c2", "kind": Kind.CANDIDATE, "status": Status.DISCARD,
                   "val_bpb": float("nan")})  # fmt: skip
    ledger.write_config({"tag": "sim", "workers": 64})
    rows = ledger.rows()
    assert rows[0] == built.to_dict()
    assert rows[1] == {
        "trial_id": "r3-c2",
        "kind": "candidate",
        "status": "discard",
        "val_bpb": None,
    }
    assert type(rows[1]["status"]) is str  # as a Ledger reads it back from the file
    rows[0]["status"] = "keep"  # the caller's copy, not the ledger's
    assert ledger.rows()[0]["status"] == "discard"
    assert ledger.read_config() == {"tag": "sim", "workers": 64}
    assert not run.exists() and list(tmp_path.iterdir()) == []
    assert MemoryLedger().run_dir is None


def test_memory_ledger_takes_many_appends():
    ledger = MemoryLedger()
    for i in range(20_000):
        ledger.append({"trial_id": f"t{i}", "kind": "candidate", "status": "discard"})
    assert len(ledger.rows()) == 20_000


def test_a_ledger_that_is_not_durable_writes_the_same_files_without_fsync(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(ledger_module.os, "fsync", lambda fd: synced.append(fd))
    ledger = Ledger(tmp_path / "sim", durable=False)
    row = TrialRow.build(spec(), PROPOSAL, result(), now=T0)
    ledger.append(row)
    ledger.write_config({"tag": "sim"})
    assert synced == []
    assert Ledger(tmp_path / "sim").rows() == [row.to_dict()]
    assert Ledger(tmp_path / "sim").read_config() == {"tag": "sim"}
    assert (tmp_path / "sim" / "results.tsv").exists()
    assert stat.S_IMODE(os.stat(tmp_path / "sim" / "results.tsv").st_mode) == 0o644


# --- the schema in one place ------------------------------------------------------------


def test_ledger_fields_are_trial_rows_fields_in_order():
    names = tuple(f.name for f in fields(TrialRow))
    assert FIELDS == names
    assert names[:4] == ("trial_id", "round", "island", "kind")
    assert names[-4:] == ("noise", "incumbent_bpb", "dispatched", "recorded")


def test_run_dir_names_every_file_of_a_campaign(tmp_path):
    files = RunDir(tmp_path)
    assert RunDir(str(tmp_path)) == files and files.path == tmp_path
    assert files.ledger == tmp_path / "trials.jsonl"
    assert files.results_tsv == tmp_path / "results.tsv"
    assert files.config == tmp_path / "config.json"
    assert files.journal == tmp_path / "inflight.json"
    assert files.islands == tmp_path / "islands.json"
    assert files.islands_log == tmp_path / "islands.jsonl"
    assert files.log("r3-c1") == tmp_path / "logs" / "r3-c1.log"
    ledger = Ledger(tmp_path)
    ledger.append(TrialRow.build(spec(), PROPOSAL, result(), now=T0))
    ledger.write_config({"tag": "x"})
    assert {p.name for p in tmp_path.iterdir()} == {
        files.ledger.name,
        files.results_tsv.name,
        files.config.name,
    }
