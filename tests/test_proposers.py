"""The non-LLM proposers: mutate (AST constants) and queue (patch files)."""

from __future__ import annotations

import pytest

from cluster.patches import apply_patch, make_patch
from cluster.proposers import parse_spec
from cluster.proposers.base import ProposalContext
from cluster.proposers.mutate import MutateProposer, numeric_constants
from cluster.proposers.queue import QueueProposer
from cluster.validate import validate

from conftest import TRAIN_PY

SOURCE = TRAIN_PY.read_text()


def ctx(source: str = SOURCE) -> ProposalContext:
    return ProposalContext(
        incumbent_sha="a" * 40, incumbent_source=source, target="trainer/train.py"
    )


def test_mutate_changes_only_numeric_literals_and_keeps_comments():
    props = MutateProposer(seed=3).propose(ctx(), 20)
    assert len(props) >= 15
    names = {n for n, _ in numeric_constants(SOURCE)}
    for p in props:
        new = apply_patch(SOURCE, p.patch, "trainer/train.py")
        changed = [
            (a, b) for a, b in zip(SOURCE.splitlines(), new.splitlines(), strict=True) if a != b
        ]
        assert 1 <= len(changed) <= 2
        for old_line, new_line in changed:
            assert old_line.split("=")[0] == new_line.split("=")[0]
            assert old_line.split("=")[0].strip() in names
            assert ("#" in old_line) == ("#" in new_line)
        assert p.description.split(" ")[0] in names


def test_mutate_is_reproducible_and_skips_prefixes():
    a = MutateProposer(seed=5, skip_prefixes=("GPU_",)).propose(ctx(), 10)
    b = MutateProposer(seed=5, skip_prefixes=("GPU_",)).propose(ctx(), 10)
    assert [p.patch for p in a] == [p.patch for p in b]
    assert not any("GPU_" in p.description for p in a)


def test_mutate_proposals_pass_validation_and_repeats_are_duplicates():
    seen: set[str] = set()
    props = [validate(p, ctx(), seen) for p in MutateProposer(seed=1).propose(ctx(), 30)]
    valid = [p for p in props if not p.error]
    assert len(valid) >= 10
    assert all(p.error.startswith("duplicate") for p in props if p.error)


def test_mutate_keeps_fractions_and_betas_below_one():
    props = MutateProposer(seed=2).propose(ctx(), 300)
    moved = [p.description for p in props if p.description.startswith("ADAM_BETA2 ")]
    assert len(moved) >= 5
    assert all(0 < float(d.split(",")[0].split()[-1]) < 1 for d in moved)


def _row(kind, commit, parent, bpb, desc="", proposer="mutate"):
    return dict(
        kind=kind,
        commit_sha=commit,
        parent_sha=parent,
        val_bpb=bpb,
        status="discard",
        proposer=proposer,
        description=desc,
    )


def test_mutate_follows_the_constants_and_directions_that_gained():
    inc = "a" * 40
    history = [_row("baseline", inc, inc, v) for v in (2.70, 2.71, 2.69, 2.70)]
    history += [
        _row("candidate", "b" * 40, inc, 2.66, "LEARNING_RATE 0.002 -> 0.0035"),  # +4 sigma
        _row("candidate", "c" * 40, inc, 2.74, "GRAD_CLIP 1.0 -> 0.5"),  # -4 sigma
    ]
    c = ProposalContext(
        incumbent_sha=inc,
        incumbent_source=SOURCE,
        target="trainer/train.py",
        history=history,
        noise=0.01,
    )
    # The first pick of 200 proposers: the picks' distribution, not what one proposer does
    # once it has used up a neighbourhood (it stops repeating itself, see the next test).
    learned = [p for i in range(200) for p in MutateProposer(seed=i, max_changes=1).propose(c, 1)]
    blind = [p for i in range(200) for p in MutateProposer(seed=i, max_changes=1).propose(ctx(), 1)]

    def picks(props, name):
        return [p.description for p in props if p.description.startswith(name + " ")]

    lr, lr_blind = picks(learned, "LEARNING_RATE"), picks(blind, "LEARNING_RATE")
    assert len(lr) > 3 * max(1, len(lr_blind))

    def up(props):
        return [d for d in props if float(d.split()[-1]) > float(d.split()[1])]

    assert len(up(lr)) > 0.7 * len(lr)
    clip = picks(learned, "GRAD_CLIP")  # lowering it lost: picked less, and mostly raised
    assert 0 < len(clip) < len(picks(blind, "GRAD_CLIP"))
    assert len(up(clip)) > len(clip) / 2


def test_mutate_does_not_repeat_a_change_tried_queued_or_in_flight_and_looks_further():
    inc = "a" * 40
    history = [_row("baseline", inc, inc, v) for v in (2.70, 2.71, 2.69, 2.70)]
    history.append(_row("candidate", "b" * 40, inc, 2.72, "GRAD_CLIP 1.0 -> 0.5"))
    c = ProposalContext(
        incumbent_sha=inc,
        incumbent_source=SOURCE,
        target="trainer/train.py",
        history=history,
        in_flight=["GRAD_CLIP 1.0 -> 2.0"],
        noise=0.01,
    )
    m = MutateProposer(seed=3, max_changes=1)
    made = [p.description for _ in range(30) for p in m.propose(c, 8)]
    assert len(made) == len(set(made))  # never the same change twice
    assert not {"GRAD_CLIP 1.0 -> 0.5", "GRAD_CLIP 1.0 -> 2.0"} & set(made)
    # 240 distinct single changes of SOURCE's constants: far more than the usual steps give
    steps = {"0.5", "0.7", "0.8", "1.25", "1.4", "2.0"}
    assert len(made) > 200
    grad = [d for d in made if d.startswith("GRAD_CLIP 1.0 -> ")]
    assert any(d.split()[-1] not in steps for d in grad)  # looked further once those were used


def test_mutate_leaves_output_only_constants_alone_and_keeps_dimensions_aligned():
    from cluster.proposers.mutate import inert_constants

    source = (
        "PEAK_FLOPS = 1e12  # only for the MFU printout\n"
        "LOG_EVERY = 10\n"
        "HEAD_DIM = 64\n"
        "WIDTH = 96\n"
        "LR = 0.01\n"
        "UNREAD = 3\n"
        "def train(ctx):\n"
        "    x = LR * WIDTH // HEAD_DIM\n"
        "    print(f'mfu {x / PEAK_FLOPS:.2f}', LOG_EVERY)\n"
        "    log.info('lr %s', LR)\n"
    )
    assert inert_constants(source) == {"PEAK_FLOPS", "LOG_EVERY"}  # LR is also used for real
    # Under --protocol autoresearch the printed val_bpb line is the measurement: what feeds it
    # is not inert.
    scored = "A = 1.0\nprint(f'val_bpb:          {(A - 0.5) ** 2:.6f}')\n"
    assert inert_constants(scored) == frozenset()
    c = ProposalContext(incumbent_sha="a" * 40, incumbent_source=source, target="train.py")
    made = [p.description for i in range(30) for p in MutateProposer(seed=i).propose(c, 8)]
    changed = {d.split()[0] for m in made for d in m.split(", ")}
    assert changed == {"HEAD_DIM", "WIDTH", "LR", "UNREAD"}
    values = [int(d.split()[-1]) for m in made for d in m.split(", ") if d.split()[0] == "HEAD_DIM"]
    assert values and all(v & (v - 1) == 0 for v in values)  # 32, 128, 16, 256: no 63
    widths = [int(d.split()[-1]) for m in made for d in m.split(", ") if d.startswith("WIDTH")]
    assert widths and all(w % 8 == 0 for w in widths)


def test_queue_proposes_each_file_once_with_its_description(tmp_path):
    new = SOURCE.replace("GRAD_CLIP = 1.0", "GRAD_CLIP = 0.5")
    (tmp_path / "b.patch").write_text(
        "# tighter clipping\n" + make_patch(SOURCE, new, "trainer/train.py")
    )
    (tmp_path / "a.diff").write_text(
        make_patch(SOURCE, new.replace("0.5", "0.25", 1), "trainer/train.py")
    )
    q = QueueProposer(tmp_path)
    props = q.propose(ctx(), 5)
    assert [p.description for p in props] == ["a", "tighter clipping"]
    assert apply_patch(SOURCE, props[1].patch, "trainer/train.py") == new
    assert q.propose(ctx(), 5) == []
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["a.diff", "b.patch"]


def test_queue_needs_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        QueueProposer(tmp_path / "missing")


def test_proposer_spec_parsing():
    assert parse_spec("llm=3,mutate=1") == [("llm", 3.0), ("mutate", 1.0)]
    assert parse_spec("queue:patches") == [("queue:patches", 1.0)]
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        parse_spec("llm=lots")
