"""What the model-file checks cost the referee on the default CPU model (not a test).

    python benchmarks/graph_checks.py [--threads 2] [--trial]

Builds trainer/train.py's default CPU model (2 x 128, vocab 2048, seq_len 256, eval batch
16), exports it as a trial would (trainer/graph.export_model), then times in the referee's
order: load_model (reading the files, then the structural checks and the pass on fake
tensors), check_model (the causality and batch-independence probes) and evaluate_bpb over
the builtin validation split, and evaluate_bpb of the eager model for the interpreter's
overhead. --trial also runs one default trial through the referee for its training time and
prints the share that loading and probing take of training + export + checks + scoring.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch

from trainer.budget import CPU_DEFAULT_BUDGET, Budget
from trainer.graph import export_model, load_model
from trainer.prepare import evaluate_bpb, load_eval_data, prepare
from trainer.probes import check_model

ROOT = Path(__file__).resolve().parent.parent
BATCH = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trial", action="store_true", help="also time a default trial")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = prepare("builtin")
    val, token_bytes, manifest = load_eval_data(data)
    vocab, seq_len = manifest["vocab_size"], manifest["seq_len"]
    spec = importlib.util.spec_from_file_location("train", ROOT / "trainer" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    torch.manual_seed(0)
    model = train.GPT(vocab, train.CPU_WIDTH, train.CPU_DEPTH, seq_len).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # not the uniform zero-init head
    rows = (len(val) - 1) // seq_len
    print(
        f"model {train.CPU_DEPTH} x {train.CPU_WIDTH}, vocab {vocab}, seq_len {seq_len}, "
        f"eval batch {BATCH}; validation split {len(val)} tokens = {rows} rows, "
        f"{-(-rows // BATCH)} batches; {args.threads} threads, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        export_model(model, torch.zeros(BATCH, seq_len, dtype=torch.long), Path(out))
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        forward = load_model(
            Path(out), batch=BATCH, seq_len=seq_len, vocab_size=vocab, device="cpu"
        )
        load_s = time.perf_counter() - t
    s = forward.stats
    report = check_model(forward, val, seq_len=seq_len, batch=BATCH, device="cpu")
    shared = seq_len // BATCH
    cheap = check_model(
        forward, val, seq_len=seq_len, batch=BATCH, device="cpu", cuts_per_row=shared
    )
    kw = dict(seq_len=seq_len, batch_size=BATCH, eval_tokens=manifest["eval_tokens"])
    t = time.perf_counter()
    evaluate_bpb(forward, val, token_bytes, **kw)
    eval_s = time.perf_counter() - t
    t = time.perf_counter()
    evaluate_bpb(model, val, token_bytes, **kw)
    eager_s = time.perf_counter() - t
    print(f"export_model (in the trial)   {export_s:7.2f} s")
    print(
        f"load_model                    {load_s:7.2f} s  (read {s.read_seconds:.3f} s, checks "
        f"{s.check_seconds:.3f} s; {s.nodes} nodes, peak {s.peak_bytes / 2**20:.0f} MiB, "
        f"{s.work:.3g} operations per forward)"
    )
    print(
        f"check_model (probes)          {report.seconds:7.2f} s  ({report.forwards} forwards; "
        f"largest changes {report.future_change:.2g} future, {report.row_change:.2g} rows)"
    )
    print(
        f"  with cuts_per_row={shared}        {cheap.seconds:7.2f} s  ({cheap.forwards} forwards, "
        f"{BATCH} rows probed instead of {seq_len})"
    )
    print(f"evaluate_bpb, loaded graph    {eval_s:7.2f} s")
    print(f"evaluate_bpb, eager model     {eager_s:7.2f} s")
    if args.trial:
        from trainer.referee import TrialConfig, run_trial

        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrialConfig(data=data, budget=Budget.parse(CPU_DEFAULT_BUDGET), threads=2)
            result = run_trial(ROOT / "trainer" / "train.py", cfg, Path(tmp) / "trial.log")
        added = load_s + report.seconds
        whole = result.training_seconds + export_s + added + eval_s
        print(
            f"default trial ({CPU_DEFAULT_BUDGET}): {result.training_seconds:.1f} s of training "
            f"({result.total_seconds:.1f} s in all, status {result.status}); with export, "
            f"checks and scoring {whole:.1f} s, of which load + probes {added:.1f} s = "
            f"{100 * added / whole:.0f}%"
        )


if __name__ == "__main__":
    main()
