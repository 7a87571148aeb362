"""The referee's batch server: the only way training data reaches a trial.

The trial (trainer/harness.py) writes one request line per batch on a pipe, `ROWS COLS`, and
`R` once train() has returned; the server answers each request with a header and the batch.
It asks the BudgetClock before serving anything, so the budget, the data order (from the
referee's seed) and every time that decides an overrun are the referee's own.
"""

from __future__ import annotations

import os
import struct
import threading

import numpy as np

from trainer.budget import BudgetClock

# status (1 batch, 2 warm-up batch of random tokens, 0 budget spent, -1 refused), rows, cols,
# progress
HEADER = struct.Struct("<iiif")
MAX_BATCH_TOKENS = 1 << 22
MAX_REQUEST_BYTES = 64


class BatchServer(threading.Thread):
    """Answers the trial's batch requests from the training split until the budget is spent."""

    def __init__(
        self,
        train: np.ndarray,
        clock: BudgetClock,
        seed: int,
        max_cols: int,
        vocab_size: int,
        req_fd: int,
        data_fd: int,
    ):
        super().__init__(daemon=True)
        self.train, self.clock, self.max_cols = train, clock, max_cols
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)
        self.warmup_rng = np.random.default_rng([seed, 1])
        self.req = os.fdopen(req_fd, "rb", buffering=0)
        self.data_fd = data_fd
        self.error = ""

    def run(self) -> None:
        try:
            while line := self.req.readline(MAX_REQUEST_BYTES):
                if line.strip() == b"R":
                    self.clock.returned()
                    continue
                rows, cols = (int(v) for v in line.split())
                if not (0 < cols <= self.max_cols and 0 < rows * cols <= MAX_BATCH_TOKENS):
                    self._send(HEADER.pack(-1, MAX_BATCH_TOKENS // max(cols, 1), cols, 0.0))
                    continue
                grant = self.clock.grant(rows, cols)
                if not grant.rows:
                    self._send(HEADER.pack(0, 0, 0, 1.0))
                    continue
                if grant.warmup:
                    batch = self.warmup_rng.integers(
                        0, self.vocab_size, size=(grant.rows, cols + 1), dtype=np.uint16
                    )
                else:
                    starts = self.rng.integers(0, len(self.train) - cols - 1, size=grant.rows)
                    batch = np.stack([self.train[s : s + cols + 1] for s in starts])
                status = 2 if grant.warmup else 1
                self._send(HEADER.pack(status, grant.rows, cols, grant.progress) + batch.tobytes())
        except (OSError, ValueError) as e:  # the trial died or spoke garbage
            self.error = f"batch protocol: {e}"
        finally:
            self.req.close()
            try:
                os.close(self.data_fd)
            except OSError:
                pass

    def _send(self, payload: bytes) -> None:
        view = memoryview(payload)
        while view:
            view = view[os.write(self.data_fd, view) :]
