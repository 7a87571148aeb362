"""A local fake LLM: an HTTP server on 127.0.0.1 that speaks the OpenAI chat completions API.

Tests (and benchmarks/llm_latency.py) point litellm at it with model `openai/fake-model` and
api_base `fake.api_base`, so proposer code runs over a real socket with real retries and
timeouts. The server answers from a script, one entry per request, in order:

    "text"                       200 with that message content
    429 (any int)                that HTTP status with an OpenAI-style error body
    Reply(content, delay=2.0)    full control: status, delay before answering, usage

When the script runs out it answers `default` (a 500 error if none was given). Every request
it got is kept in `requests` (path, headers, parsed JSON body).

Use it from a test file with `from fake_llm import fake_llm_fixture` and a `fake_llm` argument:
`server = fake_llm("answer 1", 429, "answer 2")`; servers are closed after the test.
TRAIN_PY is a small train.py for the fake model's answers to edit.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TRAIN_PY = '''"""Tiny GPT trainer (test fixture): knobs up top, train(ctx) returns the model."""

import torch
import torch.nn as nn

DEPTH = 2  # transformer layers
WIDTH = 128  # model dimension
LR = 0.003  # AdamW learning rate
WARMUP_STEPS = 20  # linear warmup
WEIGHT_DECAY = 0.1


class Model(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, WIDTH)
        self.blocks = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH))
        self.head = nn.Linear(WIDTH, vocab_size)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = x + torch.relu(block(x))
        return self.head(x)


def lr_at(step: int) -> float:
    if step < WARMUP_STEPS:
        return LR * (step + 1) / WARMUP_STEPS
    return LR


def train(ctx):
    model = Model(ctx.vocab_size).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for step, (x, y) in enumerate(ctx.batches()):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model
'''


# A well-formed answer that edits TRAIN_PY: one SEARCH/REPLACE block in a fence.
DOUBLE_LR = """DESCRIPTION: double the learning rate

trainer/train.py
```python
<<<<<<< SEARCH
LR = 0.003  # AdamW learning rate
=======
LR = 0.006  # AdamW learning rate
>>>>>>> REPLACE
```
"""


@dataclass
class Reply:
    """One scripted answer. Usage defaults to about one token per four characters."""

    content: str = ""
    status: int = 200
    delay: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retry_after: float | None = None  # an error's Retry-After header, in seconds


Script = str | int | Reply


def _as_reply(entry: Script) -> Reply:
    if isinstance(entry, Reply):
        return entry
    if isinstance(entry, int):
        return Reply(status=entry)
    return Reply(content=entry)


class FakeLLM:
    """OpenAI-compatible chat completions server driven by a script of replies."""

    def __init__(self, script: list[Script] | None = None, default: Script | None = None):
        self.script = [_as_reply(e) for e in script or []]
        self.default = _as_reply(default) if default is not None else Reply(status=500)
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []  # when each request arrived (time.monotonic)
        self.billed = {"prompt_tokens": 0, "completion_tokens": 0, "answers": 0}  # 200s sent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()  # wakes handlers sleeping in a scripted delay
        self._server.shutdown()
        self._server.server_close()

    def prompts(self) -> list[str]:
        """The text of every message of every request, joined per request."""
        with self._lock:
            bodies = [r["body"] for r in self.requests]
        return ["\n".join(m.get("content", "") for m in b.get("messages", [])) for b in bodies]

    def _next_reply(self, request: dict[str, Any]) -> Reply:
        """The script's next entry; a one-token preflight ping (the driver's check that the
        server answers) is answered "OK" without using the script."""
        with self._lock:
            self.requests.append(request)
            self.times.append(time.monotonic())
            if request["body"].get("max_tokens") == 1:
                return Reply(content="OK")
            return self.script.pop(0) if self.script else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
                request = {"path": self.path, "headers": dict(self.headers), "body": body}
                reply = fake._next_reply(request)
                if reply.delay and fake._stop.wait(reply.delay):
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    reply = Reply(status=404)
                if reply.status != 200:
                    error = {"message": f"fake error {reply.status}", "type": "fake", "code": None}
                    extra = {"Retry-After": f"{reply.retry_after:g}"} if reply.retry_after else {}
                    self._send(reply.status, {"error": error}, extra)
                    return
                prompt = "".join(m.get("content", "") for m in body.get("messages", []))
                pt = reply.prompt_tokens
                ct = reply.completion_tokens
                usage = {
                    "prompt_tokens": pt if pt is not None else max(1, len(prompt) // 4),
                    "completion_tokens": ct if ct is not None else max(1, len(reply.content) // 4),
                }
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                with fake._lock:
                    fake.billed["prompt_tokens"] += usage["prompt_tokens"]
                    fake.billed["completion_tokens"] += usage["completion_tokens"]
                    fake.billed["answers"] += 1
                message = {"role": "assistant", "content": reply.content}
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-fake-{len(fake.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "fake-model"),
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": usage,
                    },
                )

            def _send(self, status: int, payload: dict[str, Any], headers=None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test); nothing to tell it

        return Handler


@pytest.fixture(name="fake_llm")
def fake_llm_fixture() -> Iterator[Callable[..., FakeLLM]]:
    """Factory: `fake_llm(*script, default=None)` starts a FakeLLM; all are closed afterwards."""
    servers: list[FakeLLM] = []

    def start(*script: Script, default: Script | None = None) -> FakeLLM:
        server = FakeLLM(list(script), default).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
