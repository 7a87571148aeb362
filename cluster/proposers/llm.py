"""The LLM proposer: asks language models, through litellm, for edits of the target file.

    proposer = LLMProposer(models=[("anthropic/claude-sonnet-4-5", 1.0)], max_cost=20.0)
    proposer.check_credentials()          # before any GPU time: a missing key is a clear error
    proposals = proposer.propose(ctx, 4)  # 4 concurrent requests, one Proposal each

The prompt is program.md, the incumbent file, a ranked digest of the ledger (kept changes by
gain, recent discards, the noise level that makes a gain meaningful), the error tails of recent
failures, what is in flight on other GPUs, and the answer format (cluster.proposers.edits
parses the answer). Requests in one batch differ in temperature and in a suggested angle.
Timeouts, 429s and 5xx/connection errors are retried with exponential backoff and jitter; a
request that still fails becomes a Proposal with `error` set, never an exception. Tokens and
cost are recorded per proposal; once `total_cost` reaches `max_cost`, propose returns [].
Validation proper (applies, compiles, not a duplicate, referee) is cluster.validate's job.
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map fetch at import

import litellm  # noqa: E402

from cluster.config import CampaignError  # noqa: E402
from cluster.patches import make_patch  # noqa: E402
from cluster.proposers.base import ProposalContext  # noqa: E402
from cluster.proposers.edits import ParseError, describe, parse_answer  # noqa: E402
from cluster.records import Proposal  # noqa: E402

litellm.suppress_debug_info = True
for _logger in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    logging.getLogger(_logger).setLevel(logging.ERROR)

# Suggested angles, one per request of a batch, so that parallel proposals spread out.
ANGLES = (
    "learning rates and their schedule (warmup, decay, per-parameter-group rates)",
    "the optimizer itself (betas, weight decay, momentum, a different update rule)",
    "model shape: depth, width, heads, MLP ratio at a similar compute cost",
    "attention, normalization and activation details",
    "initialization and regularization",
    "batch size, sequence length and how the token budget is spent",
    "throughput: more useful steps in the same budget",
    "simplification: remove or merge something for an equal or better result",
)
GATE_SIGMAS = 2.0  # gains under this many noise std read as luck (the merge gate asks for more)
MAX_KEPT, MAX_DISCARDS, MAX_FAILURE_TAILS, MAX_FAILURE_LINES, MAX_IN_FLIGHT = 12, 12, 3, 8, 24
MAX_DESCRIPTION, MAX_ERROR_TAIL = 160, 1200  # characters
MAX_CONCURRENT = 16
UNUSABLE_NOTICE = 5  # say so on the console after this many unusable answers in a row
FAILED = ("crash", "timeout", "invalid")
# With an api_base these serve a self-hosted model that may need no key at all.
KEYLESS_WITH_BASE = ("openai", "hosted_vllm", "ollama", "ollama_chat", "openai_like")
RETRYABLE = (
    litellm.Timeout,
    litellm.RateLimitError,
    litellm.APIConnectionError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
    litellm.BadGatewayError,
)

ANSWER_FORMAT = """## Answer format
Start with one line `DESCRIPTION: <what you change and why, under 100 characters>`.
Then one or more edit blocks, each naming the file:

{target}
<<<<<<< SEARCH
lines copied exactly from the current {target}
=======
the lines that replace them
>>>>>>> REPLACE

The SEARCH part must match the current file exactly, indentation included; quote just enough
lines to be unique, never the whole file. Blocks apply in order. One idea per answer, edits to
{target} only, and nothing after the last block."""


class CredentialsError(CampaignError):
    """A model cannot be called: its API key (or server address) is not configured."""


def build_prompt(
    ctx: ProposalContext, program: str = "", *, slot: int = 0, n: int = 1, angle: str = ""
) -> str:
    """The full prompt for request `slot` of a batch of `n` against the incumbent in `ctx`."""
    source = ctx.incumbent_source.rstrip("\n") + "\n"
    fence = "~~~~" if "```" in source else "```"  # a fence the file cannot close early
    parts = [
        program.strip(),
        f"## The current {ctx.target} (commit {ctx.incumbent_sha[:10]})\n\n"
        f"{fence}python\n{source}{fence}",
        history_digest(ctx),
    ]
    flying = [d for d in ctx.in_flight if d and d.strip()]  # replicates have no description
    if flying:
        shown = flying[-MAX_IN_FLIGHT:]
        parts.append(
            "## In flight now on other GPUs (propose something different from each)\n"
            + "\n".join(f"- {_clip(d)}" for d in shown)
        )
    request = ""
    if n > 1:
        request += (
            f"{n} proposals are being written at the same time; this is number {slot + 1}. "
            "Make it differ from the others and from everything in flight. "
        )
    if angle:
        request += f"A suggested angle, if nothing clearly better comes to mind: {angle}."
    if request:
        parts.append("## This request\n" + request.strip())
    parts.append(ANSWER_FORMAT.format(target=ctx.target))
    return "\n\n".join(p for p in parts if p)


def history_digest(ctx: ProposalContext) -> str:
    """Ranked, bounded summary of the ledger rows in ctx.history (oldest first)."""
    rows = ctx.history
    runs: dict[str, list[float]] = {}
    for row in rows:
        if row.get("val_bpb") is not None and row.get("commit_sha"):
            runs.setdefault(row["commit_sha"], []).append(float(row["val_bpb"]))

    def mean_at(sha: str | None) -> float | None:
        values = runs.get(sha or "")
        return statistics.fmean(values) if values else None

    noise = ctx.noise
    here = runs.get(ctx.incumbent_sha, [])
    if noise is None and len(here) >= 2:
        noise = statistics.stdev(here)
    lines = ["## Where the campaign stands"]
    if here:
        runs_text = "1 run" if len(here) == 1 else f"{len(here)} runs"
        lines.append(f"The incumbent scores val_bpb {statistics.fmean(here):.4f} ({runs_text}).")
    if noise:
        lines.append(
            f"Noise: identical runs of the incumbent differ by {noise:.4f} val_bpb (std), so a "
            f"gain under about {GATE_SIGMAS * noise:.4f} is indistinguishable from luck."
        )
    else:
        lines.append("Noise: not measured yet; treat gains under about 0.5% of val_bpb as luck.")
    # Kept means merged, whatever row carried the merge (in rounds, a confirmation); the
    # candidate row of a merged commit is not a discard. A request the provider never
    # answered is transport noise, not a mistake of the model's: it is left out.
    kept = [r for r in rows if r.get("merged")]
    merged = {r.get("commit_sha") for r in kept}
    candidates = [
        r for r in rows if r.get("kind", "candidate") == "candidate" and not _transport(r)
    ]
    discards = [
        r for r in candidates if r.get("status") == "discard" and r.get("commit_sha") not in merged
    ]
    failures = [r for r in candidates if r.get("status") in FAILED]
    lines.append(
        f"Changes tried so far: {len(candidates)} ({len(kept)} merged, {len(discards)} "
        f"discarded, {len(failures)} failed or rejected)."
    )

    def scored(row: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
        value = mean_at(row.get("commit_sha"))
        value = value if value is not None else row.get("val_bpb")
        parent = mean_at(row.get("parent_sha"))
        gain = parent - value if parent is not None and value is not None else None
        return value, parent, gain

    def line(row: dict[str, Any]) -> str:
        value, parent, gain = scored(row)
        text = f"- {_clip(row.get('description', ''))}"
        if gain is not None:
            sigma = f", {gain / noise:+.1f} sigma" if noise else ""
            return text + f": {parent:.4f} -> {value:.4f} (gain {gain:+.4f}{sigma})"
        return text + (f": val_bpb {value:.4f}" if value is not None else "")

    if kept:
        best = sorted(kept, key=lambda r: -(scored(r)[2] or 0.0))[:MAX_KEPT]
        lines += ["", "### Merged changes, largest gain first (gain = parent - child)"]
        lines += [line(r) for r in best]
    if discards:
        lines += ["", "### Recent discards, newest first (no real gain; do not retry as is)"]
        lines += [line(r) for r in reversed(discards[-MAX_DISCARDS:])]
    if failures:
        lines += ["", "### Recent failures, newest first (avoid repeating these mistakes)"]
        for i, row in enumerate(reversed(failures[-MAX_FAILURE_LINES:])):
            error = str(row.get("error") or "").strip()
            head = f"- {row.get('status')}: {_clip(row.get('description', ''))}"
            if i < MAX_FAILURE_TAILS and "\n" in error:
                lines += [head, "```", error[-MAX_ERROR_TAIL:], "```"]
            else:
                last = error.splitlines()[-1] if error else ""
                lines.append(head + (f" -- {_clip(last, 400)}" if last else ""))
    return "\n".join(lines)


NO_ANSWER = "(no answer from the model)"
CAP_REACHED = "(not asked: spend cap reached)"


def _transport(row: dict[str, Any]) -> bool:
    """A row for a request that got no answer (provider down, timeouts, the spend cap)."""
    return row.get("description") in (NO_ANSWER, CAP_REACHED)


def _clip(text: Any, limit: int = MAX_DESCRIPTION) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, RETRYABLE):
        return True
    code = getattr(exc, "status_code", None)
    return isinstance(code, int) and (code in (408, 409, 429) or code >= 500)


def _brief(exc: BaseException | None) -> str:
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    for prefix in (f"litellm.{name}: ", f"{name}: "):  # litellm repeats the class name
        text = text.removeprefix(prefix)
    return f"{name}: {text[:300]}"


def retry_after(exc: BaseException) -> float:
    """The seconds a provider's Retry-After header asks for (0.0 if it sent none)."""
    headers = getattr(exc, "litellm_response_headers", None)
    response = getattr(exc, "response", None)
    if headers is None and response is not None:
        headers = getattr(response, "headers", None)
    try:
        value = headers.get("retry-after") if headers is not None else None
        return max(0.0, float(value)) if value is not None else 0.0
    except (TypeError, ValueError, AttributeError):
        return 0.0  # an HTTP date, or no headers: the exponential backoff applies


def _where(exc: BaseException, api_base: str | None) -> str:
    """A 404 names the URL asked, so a wrong --api-base is visible."""
    if getattr(exc, "status_code", None) == 404 and api_base:
        return f" (asked {api_base.rstrip('/')}/chat/completions: check --api-base)"
    return ""


class LLMProposer:
    """Proposer whose edits come from language models mixed by weight (any litellm model)."""

    name = "llm"
    retry_base_delay = 2.0  # seconds before the first retry; doubles each retry (tests: small)
    retry_max_delay = 60.0
    backoff_base = 2.0  # seconds a model waits after an unusable answer; doubles (tests: small)
    backoff_max = 300.0

    def __init__(
        self,
        *,
        models: list[tuple[str, float]],
        api_base: str | None = None,
        max_cost: float | None = None,
        temperature: float = 0.8,
        timeout: float = 120,
        max_retries: int = 4,
        price_table: dict[str, tuple[float, float]] | None = None,
        program: str = "",
        seed: int = 0,
    ) -> None:
        if not models or any(weight <= 0 for _, weight in models):
            raise ValueError(
                "LLMProposer needs models with positive weights, "
                "e.g. [('anthropic/claude-sonnet-4-5', 1.0)]"
            )
        self.models = list(models)
        self.api_base = api_base
        self.max_cost = max_cost
        self.temperature = temperature
        self.timeout = timeout
        self.max_retries = max_retries
        self.price_table = dict(price_table or {})
        self.program = program
        self.total_cost = 0.0  # a resumed campaign starts it at what its ledger says was spent
        self.last_prompt = ""
        self.on_bill = None  # called with each billed answer's {model, tokens, cost, ...}
        self.say = None  # the console, for backoff notices (the driver sets it)
        self._rng = random.Random(seed)
        self._jitter = random.Random(seed + 1)
        self._lock = threading.Lock()
        self._unusable: dict[str, int] = {}  # model -> unusable answers or failures in a row
        self._cool: dict[str, float] = {}  # model -> monotonic time before which it is not asked

    @property
    def exhausted(self) -> bool:
        """True once the spend cap is reached: no more requests."""
        return self.max_cost is not None and self.total_cost >= self.max_cost

    def cap_text(self) -> str:
        return (
            f"LLM spend cap reached: ${self.total_cost:.4f} spent of --max-llm-cost "
            f"${self.max_cost:g}"
        )

    def unpriced(self) -> list[str]:
        """The models whose calls would cost 0.0 here (litellm has no price for them and the
        price table none): a spend cap cannot apply to those."""
        out = []
        for model, _ in self.models:
            if self.price_table.get(model) or self.price_table.get(model.split("/", 1)[-1]):
                continue
            try:
                info = litellm.get_model_info(model)
            except Exception:  # litellm raises for a model it does not know
                info = {}
            if not (info.get("input_cost_per_token") or info.get("output_cost_per_token")):
                out.append(model)
        return out

    def preflight(self) -> None:
        """One one-token request per model before any GPU time: an unreachable server, a
        wrong --api-base or a refused key is a clear error now, not silence for an hour."""
        where = f" at {self.api_base}" if self.api_base else ""
        for model, _ in self.models:
            kwargs = self._kwargs(model, 0.0, "Reply with OK.")
            kwargs.update(max_tokens=1, timeout=min(self.timeout, 30.0))
            try:
                response = litellm.completion(**kwargs)
            except Exception as exc:
                code = getattr(exc, "status_code", None)
                hint = ""
                if code == 404:
                    hint = " (check --api-base, which usually ends in /v1, and the model name)"
                elif code in (401, 403):
                    hint = " (the provider refused the key)"
                elif isinstance(exc, litellm.APIConnectionError | litellm.Timeout):
                    hint = " (is the server running, and is the URL right?)"
                raise CredentialsError(
                    f"the LLM {model}{where} does not answer: {_brief(exc)}{hint}"
                ) from None
            self._bill(model, response, "preflight check")

    def check_credentials(self) -> None:
        """Raise CredentialsError naming what is missing for any model; call before GPU work."""
        problems = []
        for model, _ in self.models:
            provider = model.split("/", 1)[0] if "/" in model else ""
            if provider in ("ollama", "ollama_chat") or (
                self.api_base and provider in KEYLESS_WITH_BASE
            ):
                continue
            if provider == "hosted_vllm" and not os.environ.get("HOSTED_VLLM_API_BASE"):
                problems.append(f"{model} needs --api-base, the URL of the vLLM server")
                continue
            try:
                litellm.get_llm_provider(model)
            except Exception:
                problems.append(f"{model} is not a model string litellm knows (try provider/model)")
                continue
            missing = litellm.validate_environment(model=model, api_base=self.api_base).get(
                "missing_keys"
            )
            if missing:
                problems.append(f"{model} is missing {', '.join(missing)} in the environment")
        if problems:
            raise CredentialsError(
                "cannot call the LLM: "
                + "; ".join(problems)
                + ". Export the key in the shell that starts the campaign, or give --api-base "
                "for a self-hosted OpenAI-compatible server."
            )

    def propose(self, ctx: ProposalContext, n: int) -> list[Proposal]:
        """Ask for n edits at once; one Proposal per request ([] once the spend cap is hit)."""
        if n <= 0 or self.exhausted:
            return []
        program = self.program or ctx.program
        first = self._rng.randrange(len(ANGLES))
        jobs = []
        for slot in range(n):
            model = self._rng.choices([m for m, _ in self.models], [w for _, w in self.models])[0]
            angle = ANGLES[(first + slot) % len(ANGLES)]
            prompt = build_prompt(ctx, program, slot=slot, n=n, angle=angle)
            jobs.append((model, self._temperature(slot, n), prompt))
        self.last_prompt = jobs[-1][2]
        with ThreadPoolExecutor(max_workers=min(n, MAX_CONCURRENT)) as pool:
            out = list(pool.map(lambda job: self._propose_one(ctx, *job), jobs))
        return [p for p in out if p.description != CAP_REACHED]  # never asked: not a row

    def _temperature(self, slot: int, n: int) -> float:
        if n == 1:
            return self.temperature
        spread = 0.4 * (slot / (n - 1) - 0.5)  # n requests spread over temperature +-0.2
        return round(min(2.0, max(0.0, self.temperature + spread)), 3)

    def _propose_one(
        self, ctx: ProposalContext, model: str, temperature: float, prompt: str
    ) -> Proposal:
        proposal = Proposal(
            parent_sha=ctx.incumbent_sha, patch="", description="", proposer=self.name, model=model
        )
        self._wait_cool(model)
        if self.exhausted:  # the cap was reached while this request waited
            proposal.description = CAP_REACHED
            proposal.error = self.cap_text()
            return proposal
        response, error = self._complete(model, temperature, prompt)
        if response is None:
            proposal.description = NO_ANSWER
            proposal.error = error
            self._backoff(model, error or "")
            return proposal
        proposal.prompt_tokens, proposal.completion_tokens, proposal.cost = self._bill(
            model, response, "proposal"
        )
        try:
            answer = response.choices[0].message.content or ""
            proposal.description = describe(answer) if answer.strip() else "(empty answer)"
            proposal.description, new_source = parse_answer(
                answer, ctx.incumbent_source, ctx.target
            )
        except ParseError as exc:
            proposal.error = f"unusable answer: {exc}"
        except Exception as exc:  # a malformed response must not stop the campaign
            proposal.error = f"unusable answer: {_brief(exc)}"
        if proposal.error:
            self._backoff(model, proposal.error)
            return proposal
        with self._lock:
            self._unusable[model] = 0
        proposal.patch = make_patch(ctx.incumbent_source, new_source, ctx.target)
        return proposal

    def _bill(self, model: str, response: Any, what: str) -> tuple[int, int, float]:
        """Count a billed answer (its tokens and cost) and report it to `on_bill`."""
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self._cost(model, response, prompt, completion)
        with self._lock:
            was = self.exhausted
            self.total_cost += cost
            capped = self.exhausted and not was
        if capped and self.say is not None:  # with other proposers the campaign goes on
            self.say(f"{self.cap_text()}: the llm proposer asks nothing more")
        if self.on_bill is not None:
            self.on_bill(
                {
                    "model": model,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "cost": cost,
                    "what": what,
                }
            )
        return prompt, completion, cost

    def _backoff(self, model: str, reason: str) -> None:
        """After a failed request or an unusable answer, the model waits before it is asked
        again: 2 s doubling to 5 minutes, with jitter, so a broken model costs cents."""
        with self._lock:
            n = self._unusable[model] = self._unusable.get(model, 0) + 1
            delay = min(self.backoff_max, self.backoff_base * 2 ** (n - 1))
            delay *= self._jitter.uniform(0.75, 1.25)
            self._cool[model] = max(self._cool.get(model, 0.0), time.monotonic() + delay)
        if n >= UNUSABLE_NOTICE and self.say is not None and n % UNUSABLE_NOTICE == 0:
            last = (reason.strip().splitlines() or ["?"])[0][:160]
            self.say(
                f"llm: {n} unusable answers or failed requests in a row from {model} (the last: "
                f"{last}); waiting {delay:.0f} s before asking it again"
            )

    def _wait_cool(self, model: str) -> None:
        with self._lock:
            until = self._cool.get(model, 0.0)
        left = until - time.monotonic()
        if left > 0:
            time.sleep(left)

    def _kwargs(self, model: str, temperature: float, prompt: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature,
            "timeout": self.timeout,
            "num_retries": 0,  # retries are ours, with backoff and jitter
            "drop_params": True,  # some models accept no temperature
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
            if model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
                kwargs["api_key"] = "no-key"  # a self-hosted server; the client insists on one
        return kwargs

    def _complete(self, model: str, temperature: float, prompt: str) -> tuple[Any, str | None]:
        """(response, None), or (None, reason) after retrying what is worth retrying; a
        Retry-After the provider sends is waited out (never less)."""
        kwargs = self._kwargs(model, temperature, prompt)
        last: Exception | None = None
        after = 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.retry_max_delay, self.retry_base_delay * 2 ** (attempt - 1))
                time.sleep(max(after, delay * self._jitter.uniform(0.5, 1.5)))
            try:
                return litellm.completion(**kwargs), None
            except Exception as exc:  # never raise into the driver: errors become proposals
                last = exc
                if not _retryable(exc):
                    return None, f"{model} failed: {_brief(exc)}{_where(exc, self.api_base)}"
                after = min(self.retry_max_delay * 5, retry_after(exc))
        return None, f"{model} failed {self.max_retries + 1} times: {_brief(last)}"

    def _cost(self, model: str, response: Any, prompt_tokens: int, completion_tokens: int) -> float:
        """litellm's price for the call, else the price table's, else 0.0."""
        try:
            cost = float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # models litellm does not price raise here
            cost = 0.0
        if cost > 0:
            return cost
        price = self.price_table.get(model) or self.price_table.get(model.split("/", 1)[-1])
        if not price:
            return 0.0
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
