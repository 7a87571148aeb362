"""The training process: imports the candidate train.py, runs `train(ctx)`, exports the model.

Started by the referee (trainer/referee.py), never by hand. The candidate gets no data files:
`ctx.batches()` asks the referee for each batch over a pipe, so the referee alone decides the
data, its order (from the seed) and when the budget is spent. The returned model is exported
by trainer/graph.py (torch.export's JSON graph and raw weights); the referee loads that as
data and evaluates it in its own process, so no candidate code runs during evaluation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

STARTED = time.monotonic()  # the referee's clock too (CLOCK_MONOTONIC is system-wide)

from trainer.batches import HEADER  # noqa: E402


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            raise EOFError("the referee closed the data pipe")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def rng_fingerprint() -> str:
    """A digest of the state of every random generator a train.py may draw from: torch (and
    CUDA once it is in use), numpy and random. The referee seeds them all; two runs at one seed
    whose states agree when training starts and when it ends drew the same random numbers.
    "?" when a state cannot be read: never taken for a real digest, so never a pair."""
    import hashlib

    import numpy as np
    import torch

    try:
        h = hashlib.sha256(torch.get_rng_state().numpy().tobytes())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for state in torch.cuda.get_rng_state_all():
                h.update(state.cpu().numpy().tobytes())
        kind, keys, pos, *rest = np.random.get_state()
        h.update(keys.tobytes() + repr((kind, pos, *rest)).encode())
        h.update(repr(random.getstate()).encode())
    except Exception:  # train.py's to break; its training goes on, judged unpaired
        return "?"
    return h.hexdigest()[:16]


class TrainContext:
    """What train.py may use: device, sizes, seed, and budgeted batches from the referee."""

    def __init__(
        self,
        *,
        device: str,
        vocab_size: int,
        seq_len: int,
        seed: int,
        budget: str,
        bos_id: int,
        req_fd: int,
        data_fd: int,
    ):
        import torch

        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.vocab_size = vocab_size
        self.seq_len = seq_len  # the evaluation context; training windows may be shorter
        self.seed = seed
        self.budget = budget
        self.bos_id = bos_id
        self.progress = 0.0  # fraction of the budget used, for schedules
        self.steps = 0
        self._req, self._data = req_fd, data_fd
        self._t_log = 0.0
        self.budget_ended_at: float | None = None
        self.rng_at_start: str | None = None  # rng_fingerprint() at the first batch asked for

    def batches(self, batch_size: int, seq_len: int | None = None) -> Iterator[tuple]:
        """Yield (x, y) int64 tensors of shape (batch_size, seq_len) until the budget ends.

        `self.progress` is updated before each yield. Calling it again after the budget
        ended yields nothing: the budget is for the whole trial.
        """
        import numpy as np
        import torch

        seq_len = seq_len or self.seq_len
        if self.rng_at_start is None:  # the model is built: what its initialization drew
            self.rng_at_start = rng_fingerprint()
        while self.budget_ended_at is None:
            os.write(self._req, f"{int(batch_size)} {int(seq_len)}\n".encode())
            status, rows, cols, progress = HEADER.unpack(_read_exact(self._data, HEADER.size))
            if status == -1:
                raise ValueError(
                    f"the referee refused a batch of {batch_size}x{seq_len}: "
                    f"at most {self.seq_len} tokens per row and {rows} rows"
                )
            if status == 0:
                self.budget_ended_at = time.monotonic()
                return
            # status 2: a warm-up batch (random tokens; the clock has not started yet)
            buf = _read_exact(self._data, rows * (cols + 1) * 2)
            arr = torch.from_numpy(np.frombuffer(buf, dtype=np.uint16).astype(np.int64))
            arr = arr.view(rows, cols + 1)
            if self.is_cuda:
                arr = arr.pin_memory().to(self.device, non_blocking=True)
            self.progress = progress
            self.steps += 1
            yield arr[:, :-1], arr[:, 1:]

    def log(self, step: int, loss: float, **extra: float) -> None:
        """A progress line to the trial log, at most every 2 seconds."""
        now = time.monotonic()
        if now - self._t_log >= 2.0:
            self._t_log = now
            fields = " ".join(f"{k}={v:.4g}" for k, v in extra.items())
            print(
                f"step {step:5d} | progress {self.progress:6.1%} | loss {loss:.4f} {fields}",
                flush=True,
            )


def _import_train(path: Path):
    spec = importlib.util.spec_from_file_location("train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "train", None)):
        raise TypeError(f"{path} must define train(ctx) returning the trained model")
    return module


def _compile_stats() -> dict:
    """What torch.compile cost this process and how often the compile caches hit (empty when
    nothing was compiled)."""
    if "torch._dynamo" not in sys.modules:
        return {}
    from torch._dynamo.utils import calculate_time_spent, counters

    spent = calculate_time_spent()
    if not spent.get("entire_frame_compile"):  # torch.export runs dynamo's tracer, no compile
        return {}
    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return {
        "compile_s": spent.get("entire_frame_compile", 0.0),
        "inductor_s": spent.get("inductor_compile", 0.0),
        "fxgraph_cache_hit": inductor.get("fxgraph_cache_hit", 0),
        "fxgraph_cache_miss": inductor.get("fxgraph_cache_miss", 0),
        "autograd_cache_hit": aot.get("autograd_cache_hit", 0),
        "autograd_cache_miss": aot.get("autograd_cache_miss", 0),
    }


def _wait_for_go(fd: int) -> dict:
    """Block until the referee sends the trial (JSON) and its log, which becomes stdout and
    stderr; exit quietly when the referee closes the socket instead (a discarded spare)."""
    sock = socket.socket(fileno=fd)
    msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
    sock.close()
    if not msg or len(fds) != 1:
        os._exit(0)
    os.dup2(fds[0], 1)
    os.dup2(fds[0], 2)
    os.close(fds[0])
    return json.loads(msg)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--bos-id", type=int, required=True)
    ap.add_argument("--eval-batch", type=int, required=True)
    ap.add_argument("--req-fd", type=int, required=True)
    ap.add_argument("--data-fd", type=int, required=True)
    ap.add_argument("--go-fd", type=int, required=True)
    args = ap.parse_args(argv)

    # What every train.py needs, before it is known (trainer/launch.py): torch.optim imports
    # torch._dynamo (2.5 s on CPU), the export imports torch.export; on a GPU the context.
    import numpy as np
    import torch

    threads = os.environ.get("AUTORESEARCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
        torch.set_num_interop_threads(1)
    import torch.optim  # noqa: F401

    from trainer.graph import export_model

    if args.device.startswith("cuda"):
        torch.empty(1, device=args.device)
    marks = {"started": STARTED, "imported": time.monotonic()}
    go = _wait_for_go(args.go_fd)
    args.train_py, args.seed, args.budget = Path(go["train_py"]), int(go["seed"]), go["budget"]
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    ctx = TrainContext(
        device=args.device,
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        seed=args.seed,
        budget=args.budget,
        bos_id=args.bos_id,
        req_fd=args.req_fd,
        data_fd=args.data_fd,
    )
    module = _import_train(args.train_py)
    marks["train_imported"] = time.monotonic()
    model = module.train(ctx)
    marks["returned"] = time.monotonic()
    rng = f"{ctx.rng_at_start or '-'}:{rng_fingerprint()}"
    try:  # the referee times the end of training from this, not from anything written here
        os.write(args.req_fd, b"R\n")
    except OSError:
        pass
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"train(ctx) must return the trained torch.nn.Module, got {type(model)}")
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    example = torch.zeros(args.eval_batch, args.seq_len, dtype=torch.long, device=ctx.device)
    export_model(model, example, args.out)
    marks["exported"] = time.monotonic()
    stats = {
        "num_params": n_params,
        "num_steps_reported": ctx.steps,
        "peak_vram_mb": torch.cuda.max_memory_allocated() / 2**20 if ctx.is_cuda else 0.0,
        "gpu_name": torch.cuda.get_device_name() if ctx.is_cuda else "",
        "marks": marks,
        "compile": _compile_stats(),
        "rng": rng,
    }
    (args.out / "stats.json").write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
    # No interpreter teardown (every tensor freed, every module finalized: 1.5 s on CPU): the
    # model files and stats are closed, and the referee reaps the process tree anyway.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
