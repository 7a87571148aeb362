"""Parsing LLM answers into edits (cluster.proposers.edits) and validating proposals
(cluster.validate). Pure functions: no network, no server.

Run: pytest tests/test_edits_validate.py -q
"""

from __future__ import annotations

import importlib.util

import pytest

from cluster.patches import make_patch
from cluster.proposers.base import ProposalContext
from cluster.proposers.edits import ParseError, describe, parse_answer
from cluster.records import Proposal
from cluster.validate import source_hash, validate

from fake_llm import DOUBLE_LR, TRAIN_PY

TARGET = "trainer/train.py"


def parse(answer: str) -> tuple[str, str]:
    return parse_answer(answer, TRAIN_PY, TARGET)


def proposal_for(new_source: str, path: str = TARGET, base: str = TRAIN_PY) -> Proposal:
    return Proposal("abc123", make_patch(base, new_source, path), "an edit", "test")


def ctx() -> ProposalContext:
    return ProposalContext(incumbent_sha="abc123", incumbent_source=TRAIN_PY, target=TARGET)


# --- parsing: SEARCH/REPLACE blocks ---------------------------------------------------------


def test_search_replace_block_with_filename_and_fence_changes_only_that_line():
    description, new = parse(DOUBLE_LR)
    assert description == "double the learning rate"
    assert new == TRAIN_PY.replace("LR = 0.003", "LR = 0.006")


def test_several_blocks_apply_in_order_without_filename_or_fences():
    answer = """Deeper and wider model.
<<<<<<< SEARCH
DEPTH = 2  # transformer layers
=======
DEPTH = 4  # transformer layers
>>>>>>> REPLACE
<<<<<<< SEARCH
WIDTH = 128  # model dimension
=======
WIDTH = 192  # model dimension
>>>>>>> REPLACE
"""
    description, new = parse(answer)
    assert description == "Deeper and wider model."
    assert "DEPTH = 4" in new and "WIDTH = 192" in new
    assert new.count("\n") == TRAIN_PY.count("\n")


def test_search_block_with_wrong_indentation_matches_and_replacement_is_reindented():
    answer = """DESCRIPTION: cosine-free linear decay after warmup
<<<<<<< SEARCH
if step < WARMUP_STEPS:
    return LR * (step + 1) / WARMUP_STEPS
return LR
=======
if step < WARMUP_STEPS:
    return LR * (step + 1) / WARMUP_STEPS
return LR * max(0.1, 1 - step / 1000)
>>>>>>> REPLACE
"""
    _, new = parse(answer)
    assert "\n    return LR * max(0.1, 1 - step / 1000)\n" in new
    assert "\n        return LR * (step + 1) / WARMUP_STEPS\n" in new
    compile(new, TARGET, "exec")


def test_search_block_with_trailing_whitespace_still_matches():
    answer = "DESCRIPTION: more decay\n<<<<<<< SEARCH\nWEIGHT_DECAY = 0.1   \n=======\nWEIGHT_DECAY = 0.2\n>>>>>>> REPLACE\n"
    assert "WEIGHT_DECAY = 0.2\n" in parse(answer)[1]


def test_search_text_must_match_whole_lines():
    answer = "DESCRIPTION: x\n<<<<<<< SEARCH\nWIDTH = 12\n=======\nWIDTH = 64\n>>>>>>> REPLACE\n"
    with pytest.raises(ParseError, match="SEARCH block 1 not found in trainer/train.py"):
        parse(answer)


def test_missing_second_search_block_is_named_in_the_error():
    answer = """DESCRIPTION: two edits
<<<<<<< SEARCH
DEPTH = 2  # transformer layers
=======
DEPTH = 3  # transformer layers
>>>>>>> REPLACE
<<<<<<< SEARCH
BATCH_SIZE = 32
=======
BATCH_SIZE = 64
>>>>>>> REPLACE
"""
    with pytest.raises(ParseError, match=r"SEARCH block 2 not found .*BATCH_SIZE = 32"):
        parse(answer)


def test_block_naming_another_file_rejects_the_whole_answer():
    answer = """DESCRIPTION: cheat
trainer/prepare.py
<<<<<<< SEARCH
VAL_TOKENS = 1000
=======
VAL_TOKENS = 10
>>>>>>> REPLACE
"""
    with pytest.raises(
        ParseError, match="trainer/prepare.py; only trainer/train.py may be changed"
    ):
        parse(answer)


def test_block_without_replace_marker_is_a_parse_error():
    answer = "DESCRIPTION: x\n<<<<<<< SEARCH\nLR = 0.003  # AdamW learning rate\n=======\nLR = 1\n"
    with pytest.raises(ParseError, match="no >>>>>>> REPLACE line"):
        parse(answer)


def test_empty_search_block_is_a_parse_error():
    answer = "DESCRIPTION: x\n<<<<<<< SEARCH\n=======\nX = 1\n>>>>>>> REPLACE\n"
    with pytest.raises(ParseError, match="SEARCH block 1 is empty"):
        parse(answer)


# --- parsing: unified diffs and whole files -------------------------------------------------


def test_unified_diff_is_applied():
    new_source = TRAIN_PY.replace("WARMUP_STEPS = 20", "WARMUP_STEPS = 50")
    answer = "Longer warmup.\n\n```diff\n" + make_patch(TRAIN_PY, new_source, TARGET) + "```\n"
    description, new = parse(answer)
    assert description == "Longer warmup."
    assert new == new_source


def test_diff_with_short_paths_and_wrong_line_numbers_is_applied_hunk_by_hunk():
    answer = """DESCRIPTION: tanh instead of relu
--- train.py
+++ train.py
@@ -99,3 +99,3 @@
         for block in self.blocks:
-            x = x + torch.relu(block(x))
+            x = x + torch.tanh(block(x))
         return self.head(x)
"""
    _, new = parse(answer)
    assert new == TRAIN_PY.replace("torch.relu(block(x))", "torch.tanh(block(x))")


def test_diff_to_another_file_is_a_parse_error():
    answer = "DESCRIPTION: x\n--- a/trainer/prepare.py\n+++ b/trainer/prepare.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"
    with pytest.raises(ParseError, match="the diff changes a/trainer/prepare.py"):
        parse(answer)


def test_whole_file_in_a_python_fence_replaces_the_file():
    new_source = TRAIN_PY.replace("DEPTH = 2", "DEPTH = 3")
    description, new = parse(f"DESCRIPTION: one more layer\n\n```python\n{new_source}```\n")
    assert (description, new) == ("one more layer", new_source)


def test_a_code_fragment_is_not_taken_for_the_whole_file():
    with pytest.raises(ParseError, match="fragment"):
        parse("DESCRIPTION: x\n```python\nLR = 0.01\n```\n")


def test_prose_without_any_edit_is_a_parse_error():
    with pytest.raises(ParseError, match="no edit found"):
        parse("I would try raising the learning rate, but I am not sure.")


def test_description_falls_back_to_first_prose_line_and_is_clipped():
    assert describe("```python\nx = 1\n```\n## Try a bigger model\nmore") == "Try a bigger model"
    assert describe("**Description:**\nUse RMSNorm\n") == "Use RMSNorm"
    assert len(describe("DESCRIPTION: " + "word " * 100)) == 200


# --- validation --------------------------------------------------------------------------------


def test_valid_proposal_passes_and_its_hash_is_remembered():
    new_source = TRAIN_PY.replace("LR = 0.003", "LR = 0.006")
    seen: set[str] = set()
    proposal = validate(proposal_for(new_source), ctx(), seen)
    assert proposal.error is None
    assert seen == {source_hash(new_source)}


def test_empty_patch_is_rejected():
    proposal = validate(Proposal("abc123", "", "nothing", "test"), ctx(), set())
    assert proposal.error.startswith("empty patch")


def test_patch_to_another_file_is_rejected():
    patch = make_patch("VAL_TOKENS = 1000\n", "VAL_TOKENS = 10\n", "trainer/prepare.py")
    seen: set[str] = set()
    proposal = validate(Proposal("abc123", patch, "cheat", "test"), ctx(), seen)
    assert proposal.error == (
        "the patch changes trainer/prepare.py; only trainer/train.py may be changed"
    )
    assert seen == set()


def test_patch_that_does_not_apply_is_rejected():
    other_base = TRAIN_PY.replace("LR = 0.003", "LR = 0.004")
    proposal = proposal_for(other_base.replace("LR = 0.004", "LR = 0.005"), base=other_base)
    assert validate(proposal, ctx(), set()).error.startswith(
        "the patch does not apply to trainer/train.py at abc123"
    )


def test_comment_only_change_is_rejected():
    new_source = TRAIN_PY.replace("# AdamW learning rate", "# the learning rate") + "\n\n"
    error = validate(proposal_for(new_source), ctx(), set()).error
    assert error == "the patch changes only comments or formatting of trainer/train.py"


def test_syntax_error_is_rejected_with_its_line():
    new_source = TRAIN_PY.replace("DEPTH = 2", "DEPTH = = 2")
    error = validate(proposal_for(new_source), ctx(), set()).error
    assert error.startswith("trainer/train.py does not compile: invalid syntax (line 6)")


def test_a_source_the_parser_cannot_hold_is_rejected_not_raised():
    # 100000 unary minuses make CPython's parser raise MemoryError, not SyntaxError; a
    # proposal is untrusted text, and whatever it makes a check raise rejects it.
    deep = TRAIN_PY.replace("DEPTH = 2", "DEPTH = " + "-" * 100_000 + "2")
    error = validate(proposal_for(deep), ctx(), set()).error
    assert error.startswith("trainer/train.py does not compile: MemoryError"), error
    nul = TRAIN_PY.replace("DEPTH = 2", "DEPTH = 2\x00")
    error = validate(proposal_for(nul), ctx(), set()).error
    assert (
        error == "trainer/train.py does not compile: source code string cannot contain null bytes"
    )


def test_removing_the_train_entry_point_is_rejected():
    new_source = TRAIN_PY.replace("def train(ctx):", "def run(ctx):")
    assert "removes train(ctx)" in validate(proposal_for(new_source), ctx(), set()).error


def test_duplicate_up_to_comments_and_number_spelling_is_rejected():
    seen: set[str] = set()
    first = TRAIN_PY.replace("LR = 0.003  # AdamW learning rate", "LR = 0.006")
    again = TRAIN_PY.replace("LR = 0.003  # AdamW learning rate", "LR=6e-3  # doubled\n")
    assert validate(proposal_for(first), ctx(), seen).error is None
    error = validate(proposal_for(again), ctx(), seen).error
    assert error.startswith("duplicate of a change already tried or in flight")
    assert len(seen) == 1


def test_proposal_with_an_error_is_returned_untouched():
    proposal = Proposal("abc123", "", "x", "llm", error="unusable answer: no edit found")
    seen: set[str] = set()
    assert validate(proposal, ctx(), seen).error == "unusable answer: no edit found"
    assert seen == set()


@pytest.mark.skipif(
    importlib.util.find_spec("trainer.guard") is None, reason="trainer.guard not written yet"
)
@pytest.mark.parametrize(
    "added",
    [
        "from trainer.prepare import evaluate_bpb\n",
        'VAL = open("/root/.cache/autoresearch-cluster/eval/val.bin", "rb").read()\n',
    ],
    ids=["imports-the-evaluator", "reads-validation-data"],
)
def test_reaching_into_the_referee_is_rejected(added):
    new_source = TRAIN_PY.replace("import torch\n", "import torch\n" + added, 1)
    seen: set[str] = set()
    error = validate(proposal_for(new_source), ctx(), seen).error
    assert error is not None and error.startswith("reaches into the referee: line 4: ")
    assert seen == set()


@pytest.mark.parametrize(
    "added",
    [
        "torch.manual_seed(1234)\n",
        "np.random.seed(int(time.time()))\n",
        "RNG = numpy.random.default_rng()\n",
        "torch.set_rng_state(torch.ByteTensor(5056))\n",
    ],
    ids=["torch", "numpy", "default_rng", "rng-state"],
)
def test_re_seeding_a_generator_is_rejected_the_referee_sets_the_seed(added):
    # Candidates are compared with their parent at the same seed; one that re-seeds would
    # leave the pairing and pass by luck more often.
    new_source = TRAIN_PY.replace("import torch\n", "import torch\n" + added, 1)
    error = validate(proposal_for(new_source), ctx(), set()).error
    assert error is not None and "re-seeds a random generator" in error and "line 4" in error
    # ... unless the incumbent does the same (then it is not new)
    seeded = TRAIN_PY.replace("import torch\n", "import torch\n" + added, 1)
    again = seeded.replace("import torch\n", "import torch\nX_UNUSED = 1\n", 1)
    assert reseeding_ok(again, seeded)


def reseeding_ok(source: str, incumbent: str) -> bool:
    from trainer.guard import reseeding

    return reseeding(source, incumbent) == []


def test_source_hash_ignores_comments_blank_lines_and_layout_but_not_code():
    reformatted = TRAIN_PY.replace("  # transformer layers", "").replace("\n\n\n", "\n\n")
    assert source_hash(reformatted) == source_hash(TRAIN_PY)
    assert source_hash(TRAIN_PY.replace("DEPTH = 2", "DEPTH = 3")) != source_hash(TRAIN_PY)
    assert source_hash("x = (\n") != source_hash("y = (\n")  # unparsable text still hashes


def test_the_in_process_patch_path_agrees_with_git_apply(monkeypatch):
    """apply_patch applies make_patch's exact hunks in Python (the simulator applies thousands);
    the result must be git apply's, and anything it does not handle exactly goes to git."""
    import random

    from cluster import patches

    rng = random.Random(0)
    base = [f"X{i} = {i}\n" for i in range(40)]
    for _ in range(60):
        new = list(base)
        for _ in range(rng.randint(1, 4)):
            j, op = rng.randrange(len(new)), rng.random()
            if op < 0.4:
                new[j] = f"Y = {rng.random()}\n"
            elif op < 0.7:
                new.insert(j, f"Z = {rng.random()}\n")
            elif len(new) > 1:
                del new[j]
        old_text, new_text = "".join(base), "".join(new)
        patch = patches.make_patch(old_text, new_text, "t.py")
        assert patches._apply_exact(old_text, patch, "t.py") == new_text
        with monkeypatch.context() as m:
            m.setattr(patches, "_apply_exact", lambda *a: None)
            assert patches.apply_patch(old_text, patch, "t.py") == new_text
    # Context that no longer matches where the hunk says: not applied in Python.
    shifted = "# a new first line\n" + "".join(base)
    patch = patches.make_patch("".join(base), "".join(base).replace("X5 = 5", "X5 = 6"), "t.py")
    assert patches._apply_exact(shifted, patch, "t.py") is None
    assert "X5 = 6" in patches.apply_patch(shifted, patch, "t.py")  # git finds the offset


def test_merge3_stacks_edits_of_neighbouring_lines_and_refuses_real_overlaps():
    """Two edits of consecutive constants are independent (git merge-file calls them a
    conflict, so async's combine and a re-based proposal never stacked EMBEDDING_LR with
    UNEMBEDDING_LR); the same lines changed two ways, or an insertion at the edge of the
    other's change, are refused."""
    from cluster.patches import PatchError, merge3

    base = "EMBEDDING_LR = 0.6\nUNEMBEDDING_LR = 0.004\nMATRIX_LR = 0.04\n\n\ndef f():\n    pass\n"
    emb = base.replace("EMBEDDING_LR = 0.6", "EMBEDDING_LR = 1.2")
    unemb = base.replace("UNEMBEDDING_LR = 0.004", "UNEMBEDDING_LR = 0.0056")
    both = merge3(base, emb, unemb)
    assert "EMBEDDING_LR = 1.2\nUNEMBEDDING_LR = 0.0056\nMATRIX_LR = 0.04\n" in both
    assert merge3(base, unemb, emb) == both  # the order of the sides does not matter
    assert merge3(base, emb, emb) == emb  # the same edit on both sides applies once
    far = base.replace("    pass", "    return 1")
    assert merge3(base, emb, far) == emb.replace("    pass", "    return 1")
    with pytest.raises(PatchError, match="both change line 1"):
        merge3(base, emb, base.replace("EMBEDDING_LR = 0.6", "EMBEDDING_LR = 0.3"))
    insert = base.replace("UNEMBEDDING_LR = 0.004\n", "UNEMBEDDING_LR = 0.004\nX = 1\n")
    with pytest.raises(PatchError, match="inserts lines"):
        merge3(base, insert, base.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.08"))
    assert "X = 1" in merge3(base, insert, far)
