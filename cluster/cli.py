"""The `autoresearch` command: prepare data, run one trial, run and inspect campaigns.

autoresearch prepare [--dataset builtin] [--vocab-size N]
autoresearch trial   [--repo PATH] [--budget 60s|300s|200steps|2Mtokens] [--seed N]
autoresearch run     --tag TAG [...]          (see `autoresearch run --help`)
autoresearch status  --tag TAG
autoresearch results --tag TAG [--top K] [--format table|csv|tsv|parquet|md] [--out F]
autoresearch report  --tag TAG
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from pathlib import Path

from cluster.strategy import STRATEGIES
from trainer.budget import CPU_DEFAULT_BUDGET, GPU_DEFAULT_BUDGET, Budget, default_budget
from trainer.prepare import DATASETS


def _budget(text: str) -> Budget:
    """--budget, read when the command line is: a bad one stops the command before it
    writes, starts or branches anything."""
    try:
        return Budget.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _tag(text: str) -> str:
    from cluster.config import CampaignError, check_tag

    try:
        return check_tag(text)
    except CampaignError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--tag ")) from None


def _add_trial_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", type=Path, default=Path("."), help="research repo (default: .)")
    p.add_argument(
        "--target",
        default=None,
        help="the file trials train (default trainer/train.py; train.py with --protocol "
        "autoresearch)",
    )
    p.add_argument(
        "--budget",
        default=None,
        type=_budget,
        help=f"e.g. 300s, 200steps, 2Mtokens (default {CPU_DEFAULT_BUDGET} on CPU, "
        f"{GPU_DEFAULT_BUDGET} on GPU)",
    )
    p.add_argument("--dataset", default="builtin", choices=list(DATASETS))
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads per trial")
    p.add_argument(
        "--sandbox",
        default="auto",
        choices=["auto", "on", "namespaces", "landlock", "off"],
        help="trial confinement: auto takes the best the node has (namespaces, else landlock) "
        "and refuses llm/queue proposals where it has none; on requires one",
    )
    p.add_argument(
        "--timeout",
        dest="trial_timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="hard kill after this many s",
    )
    p.add_argument(
        "--protocol",
        default="referee",
        choices=["referee", "autoresearch"],
        help="autoresearch: run an unmodified repo's `python train.py` and parse "
        "its summary (metric self-reported)",
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    from trainer import prepare

    argv = ["--dataset", args.dataset, "--num-shards", str(args.num_shards)]
    if args.vocab_size:
        argv += ["--vocab-size", str(args.vocab_size)]
    if args.force:
        argv.append("--force")
    prepare.main(argv)
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    from trainer.prepare import prepare
    from trainer.protocol import (
        format_summary,
        protocol_fixes,
        repo_budget,
        repo_seed,
        run_autoresearch_protocol,
    )
    from trainer.referee import TrialConfig, resolve_device, run_trial

    repo = args.repo.resolve()
    log = Path(args.log) if args.log else repo / "runs" / "trial.log"
    log.parent.mkdir(parents=True, exist_ok=True)  # a foreign repo has no runs/ yet
    if args.protocol == "autoresearch":
        if not (repo / "train.py").exists():
            sys.exit(
                f"error: {repo}/train.py not found; --protocol autoresearch runs "
                "`python train.py` at the root of an autoresearch-style repo"
            )
        for flag, value in (("--budget", args.budget), ("--seed", args.seed)):
            if value is not None:
                print(f"error: {flag} {protocol_fixes(repo, flag)}", file=sys.stderr)
                return 2
        budget, seed = repo_budget(repo), repo_seed((repo / "train.py").read_text())
        print(
            f"trial of {repo}/train.py (protocol autoresearch) | budget {budget or 'unstated'} "
            f"| seed {seed if seed is not None else 'unset'} | log {log}",
            flush=True,
        )
        result = run_autoresearch_protocol(
            repo,
            log,
            timeout=args.trial_timeout,
            threads=args.threads,
            sandbox=args.sandbox,
            device=resolve_device(args.device),
        )
        print(format_summary(result, budget=budget or "", seed=seed))
        return 0 if result.status == "ok" else 1
    train_py = repo / (args.target or "trainer/train.py")
    if not train_py.exists():
        sys.exit(f"error: {train_py} not found; pass --repo and --target of the file to train")
    device = resolve_device(args.device)
    budget = args.budget or Budget.parse(default_budget(device))
    data = prepare(args.dataset, args.vocab_size)
    seed = args.seed or 0
    cfg = TrialConfig(
        data=data,
        budget=budget,
        seed=seed,
        device=device,
        threads=args.threads,
        sandbox=args.sandbox,
        hard_timeout=args.trial_timeout,
    )
    print(
        f"trial of {train_py} | budget {budget} | seed {seed} | {device} | log {log}",
        flush=True,
    )
    result = run_trial(train_py, cfg, log)
    print(format_summary(result, budget=str(budget), seed=seed))
    return 0 if result.status == "ok" else 1


def _workers(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of workers (1 or more) or auto")
    return n


def cmd_run(args: argparse.Namespace) -> int:
    from cluster.campaign import CampaignConfig, CampaignError
    from cluster.driver import run_campaign
    from cluster.gitops import GitError
    from cluster.pool import ResourceError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_campaign(CampaignConfig.from_args(args))
    except (CampaignError, GitError, ResourceError, ValueError) as e:  # CredentialsError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the driver's loop (its own handler is in driver._run)
        from cluster.driver import exit_after

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ray's shutdown at exit runs uncut,
        exit_after()  # but not for ever
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _run_dir(args: argparse.Namespace) -> Path:
    from cluster.gitops import GitError, repo_root
    from cluster.rundir import RunDir

    try:
        root = repo_root(args.repo)
    except GitError:
        root = args.repo.resolve()
    path = root / "runs" / args.tag
    if not RunDir(path).ledger.exists():
        sys.exit(
            f"error: no campaign {args.tag!r} at {path} (start one with "
            f"`autoresearch run --tag {args.tag}`)"
        )
    return path


def cmd_status(args: argparse.Namespace) -> int:
    from cluster.status import status_text

    print(status_text(_run_dir(args), args.tag))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from cluster.export import load_results, write_results

    df = load_results(_run_dir(args))
    write_results(df, args.format, args.out or sys.stdout, top=args.top)
    if args.out:
        print(f"wrote {len(df) if args.top is None else min(args.top, len(df))} rows to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cluster.report import make_report

    png, md = make_report(_run_dir(args), args.tag)
    print(f"wrote {png}\nwrote {md}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="autoresearch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="download data and train the tokenizer (idempotent)")
    p.add_argument("--dataset", default="builtin", choices=list(DATASETS))
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--num-shards", type=int, default=10, help="climbmix training shards")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("trial", help="run one trial of the target file and print its summary")
    _add_trial_options(p)
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the trial's seed (default 0; not under "
        "--protocol autoresearch, whose train.py sets its own)",
    )
    p.add_argument("--log", default=None, help="trial log (default runs/trial.log)")
    p.set_defaults(func=cmd_trial)

    p = sub.add_parser("run", help="start or resume a campaign on branch autoresearch/TAG")
    p.add_argument(
        "--tag",
        required=True,
        type=_tag,
        help="campaign name: branch autoresearch/TAG, state in runs/TAG/",
    )
    _add_trial_options(p)
    p.add_argument(
        "--workers",
        default="auto",
        type=_workers,
        help="parallel trials: N (more than the GPUs queue for them) or auto (one per GPU "
        "of the pinned type, following the cluster as it grows or shrinks; on CPU, one per "
        "core up to 4)",
    )
    p.add_argument("--gpu-type", default=None, help="pin one GPU type, e.g. H100, A100")
    p.add_argument(
        "--strategy",
        default="rounds",
        choices=list(STRATEGIES),
        help="rounds: N candidates, wait, gate, merge; async: every worker always busy, "
        "gated on arrival, stale winners re-run on the new incumbent, near-misses combined; "
        "population: async on K islands (own branches autoresearch/TAG-island-i), the "
        "bottom islands copy the best every M results; greedy: autoresearch's own rule "
        "(keep a change if its one run beats the incumbent; no gate: a baseline, not a default)",
    )
    p.add_argument("--islands", type=int, default=4, help="population: islands K (at least 2; 4)")
    p.add_argument(
        "--migrate-every",
        type=int,
        default=None,
        help="population: exploit/migrate every M results (default: 2 x workers)",
    )
    p.add_argument(
        "--proposer",
        default="mutate",
        help="mutate | queue:DIR | llm | a weighted mix like llm=3,mutate=1",
    )
    p.add_argument("--program", type=Path, default=None, help="research program (program.md)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="stop after R candidate rounds (async: R x per-round candidates)",
    )
    p.add_argument("--trials", type=int, default=None, help="stop after K candidate trials")
    p.add_argument("--hours", type=float, default=None, help="stop after H hours")
    p.add_argument("--address", default=None, help="Ray cluster to join (auto: the running one)")
    p.add_argument(
        "--noise-multiple",
        type=float,
        default=2.0,
        help="a candidate must beat the incumbent by this many noise std (2)",
    )
    p.add_argument(
        "--confirm-multiple",
        type=float,
        default=2.0,
        help="and its confirmation run by this many (2)",
    )
    p.add_argument(
        "--replicates",
        type=int,
        default=None,
        help="incumbent runs that measure the noise (default: workers, at least 4)",
    )
    p.add_argument("--per-round", type=int, default=None, help="candidates per round (workers)")
    p.add_argument(
        "--no-stack",
        dest="stack",
        action="store_false",
        help="rounds: confirm only the round's best, not the stack of its winners on different "
        "lines",
    )
    p.add_argument(
        "--no-pairing",
        dest="paired",
        action="store_false",
        help="run candidates at fresh seeds and gate on unpaired runs (default: at a seed of "
        "their parent's, judged on the paired difference once its noise is measured)",
    )
    p.add_argument(
        "--proposals-ahead",
        type=int,
        default=None,
        help="validated proposals kept ready (default: workers)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the proposers and, under the referee, the trials' seeds (under --protocol "
        "autoresearch trials run with the seed their train.py sets, which the ledger records)",
    )
    p.add_argument(
        "--model", action="append", help="litellm model for --proposer llm (repeat to mix models)"
    )
    p.add_argument("--api-base", default=None, help="OpenAI-compatible endpoint for the model")
    p.add_argument(
        "--max-llm-cost",
        type=float,
        default=None,
        help="stop proposing at $X spent (counted over resumes); the campaign then ends",
    )
    p.add_argument(
        "--llm-price",
        action="append",
        metavar="MODEL=IN,OUT",
        help="$ per million prompt,completion tokens for a model litellm does not price "
        "(needed for --max-llm-cost with such a model)",
    )
    p.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per LLM call")
    p.set_defaults(func=cmd_run)

    for name, func, text in (
        ("status", cmd_status, "incumbent, noise, trials, GPU use"),
        ("results", cmd_results, "every trial, ranked"),
        ("report", cmd_report, "progress.png and report.md"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--tag", required=True, type=_tag)
        p.add_argument("--repo", type=Path, default=Path("."))
        p.set_defaults(func=func)
        if name == "results":
            p.add_argument("--top", type=int, default=None)
            p.add_argument(
                "--format",
                default="table",
                choices=["table", "csv", "tsv", "parquet", "md", "json"],
            )
            p.add_argument("--out", default=None, help="file to write (default: stdout)")
    return ap


def main(argv: list[str] | None = None) -> None:
    from trainer.prepare import PrepareError

    args = build_parser().parse_args(argv)
    # `kill -USR1 PID` prints where every thread of a stuck driver is, to stderr.
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    try:
        sys.exit(args.func(args))
    except PrepareError as e:  # e.g. a read-only cache that was never prepared
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
