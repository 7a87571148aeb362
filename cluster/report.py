"""The campaign report: runs/<tag>/progress.png and runs/<tag>/report.md, from the ledger.

    png, md = make_report(Path("runs/mar5"), "mar5")

The plot follows autoresearch's analysis notebook: x is the trial order (by end time), y is
val_bpb; discarded candidates are faint grey dots, merged winners are large markers annotated
with their description, and the incumbent's running best is a step line. Baseline replicates
and confirmation reruns get their own markers; failures (no metric) and results far above the
baseline sit as ticks on the top edge, so nothing disappears silently. With several islands
each one gets a colour and a step line of its own. Drawn with matplotlib's Agg canvas: no
display, no pyplot state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cluster.export import (
    MD_COLUMNS,
    SELF_REPORTED,
    campaign_summary,
    markdown_table,
    trials_frame,
)
from cluster.ledger import Ledger, read_spend
from cluster.rows import FAILED, Kind
from cluster.rundir import RunDir

# Island 0 is autoresearch's green; the rest avoid the grey of discards and the red of failures.
ISLAND_COLOURS = ("#2ecc71", "#3498db", "#e67e22", "#9b59b6", "#f1c40f", "#1abc9c", "#e84393")
DISCARD_COLOUR = "#bbbbbb"
FAILED_COLOUR = "#e74c3c"
LABEL_WIDTH = 45  # characters of a merged change's description shown on the plot


def make_report(
    run_dir: Path | str, tag: str | None = None, workers: int | None = None
) -> tuple[Path, Path]:
    """Write progress.png and report.md into `run_dir`; return their paths.

    `tag` defaults to the directory name, `workers` to config.json's "workers" (it is only
    needed for the busy fraction).
    """
    files = RunDir(Path(run_dir))
    run_dir = files.path
    ledger = Ledger(run_dir)
    rows = ledger.rows()
    tag = tag or run_dir.name
    if workers is None:
        configured = (ledger.read_config() or {}).get("workers")
        workers = configured if isinstance(configured, int) else None
    run_dir.mkdir(parents=True, exist_ok=True)
    png = files.progress_png
    fig = progress_figure(rows, title=f"{tag}: {_plot_title(rows)}")
    fig.savefig(png, dpi=130, bbox_inches="tight")
    md = files.report_md
    spend = read_spend(files.llm_calls)
    md.write_text(report_markdown(rows, tag, workers, png.name, spend), encoding="utf-8")
    return png, md


def progress_figure(rows: list[dict[str, Any]], title: str = "") -> Figure:
    """The progress plot as a matplotlib Figure on an Agg canvas."""
    fig = Figure(figsize=(14, 7))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_title(title, fontsize=13)
    ax.set_xlabel("Trial # (by end time)", fontsize=11)
    ax.set_ylabel("Validation BPB (lower is better)", fontsize=11)
    ax.grid(True, alpha=0.2)
    df = _in_time_order(trials_frame(rows))
    if df.empty:
        ax.text(0.5, 0.5, "no trials yet", transform=ax.transAxes, ha="center", color="grey")
        return fig

    failed = df["status"].isin(FAILED).fillna(False) | df["val_bpb"].isna()
    ok = df[~failed]
    islands = sorted(df["island"].unique())
    levels = {i: _incumbent_levels(df[df["island"] == i]) for i in islands}
    if len(islands) > 1:  # population: every island starts at the campaign's base code
        start = _incumbent_levels(df)[:1]
        for i in islands:
            if start and (not levels[i] or levels[i][0][0] > start[0][0]):
                levels[i] = [start[0], *[(x, min(y, start[0][1])) for x, y in levels[i]]]
    # autoresearch's y range: from the best to just above the baseline; worse results are ticks.
    starts = [lv[0][1] for lv in levels.values() if lv]
    top = max(starts) if starts else max(ok["val_bpb"], default=1.0)
    low = min([*ok["val_bpb"], top])
    margin = max((top - low) * 0.15, abs(top) * 0.002, 1e-6)
    ceiling = top + margin
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction: ticks on the top edge

    merged = ok["merged"].fillna(False)
    shown = ok[ok["val_bpb"] <= ceiling]
    plain = shown[~merged.loc[shown.index]]
    disc = plain[plain["kind"] != Kind.BASELINE]
    disc = disc[disc["kind"] != Kind.CONFIRM]
    if len(disc):
        ax.scatter(
            disc["x"],
            disc["val_bpb"],
            c=DISCARD_COLOUR,
            s=12,
            alpha=0.6,
            zorder=2,
            label=f"discarded ({len(disc)})",
        )
    base = plain[plain["kind"] == Kind.BASELINE]
    if len(base):
        ax.scatter(
            base["x"],
            base["val_bpb"],
            marker="s",
            s=18,
            c="#7f8c8d",
            alpha=0.7,
            zorder=2,
            label=f"baseline replicate ({len(base)})",
        )
    conf = plain[plain["kind"] == Kind.CONFIRM]
    if len(conf):
        ax.scatter(
            conf["x"],
            conf["val_bpb"],
            marker="D",
            s=22,
            facecolors="none",
            edgecolors="#34495e",
            zorder=3,
            label=f"confirm rerun ({len(conf)})",
        )
    off = ok[ok["val_bpb"] > ceiling]
    if len(off):
        ax.scatter(
            off["x"],
            [0.985] * len(off),
            marker="^",
            s=18,
            c=DISCARD_COLOUR,
            transform=edge,
            clip_on=False,
            label=f"off scale ({len(off)})",
        )
    fails = df[failed]
    if len(fails):
        ax.scatter(
            fails["x"],
            [0.985] * len(fails),
            marker="x",
            s=18,
            c=FAILED_COLOUR,
            alpha=0.6,
            transform=edge,
            clip_on=False,
            label=f"crash/timeout/invalid/lost ({len(fails)})",
        )

    several = len(islands) > 1
    last_x = float(df["x"].max())
    for n, island in enumerate(islands):
        colour = ISLAND_COLOURS[n % len(ISLAND_COLOURS)]
        prefix = f"island {island}: " if several else ""
        wins = shown[merged.loc[shown.index] & (shown["island"] == island)]
        ax.scatter(
            wins["x"],
            wins["val_bpb"],
            c=colour,
            s=60,
            zorder=5,
            edgecolors="black",
            linewidths=0.5,
            label=f"{prefix}merged ({len(wins)})",
        )
        for x, bpb, desc in zip(wins["x"], wins["val_bpb"], wins["description"], strict=True):
            ax.annotate(
                _short(desc),
                (x, bpb),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
                color=colour,
                rotation=30,
                ha="left",
                va="bottom",
            )
        if levels[island]:
            xs, ys = zip(*[*levels[island], (last_x, levels[island][-1][1])], strict=True)
            ax.step(
                xs,
                ys,
                where="post",
                color=colour,
                linewidth=2,
                alpha=0.7,
                zorder=4,
                label=f"{prefix}running best",
            )
    ax.set_ylim(low - margin, ceiling)
    # Outside the axes: inside, it hid the top-edge ticks and the annotations.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return fig


def report_markdown(
    rows: list[dict[str, Any]],
    tag: str,
    workers: int | None = None,
    png: str = "progress.png",
    spend: list[dict] | None = None,
) -> str:
    """The text of report.md; `spend`: llm_calls.jsonl's billed answers."""
    s = campaign_summary(rows, workers, spend)
    df = trials_frame(rows)
    out = [f"# Campaign `{tag}`", "", f"![progress]({png})", ""]
    counts = ", ".join(f"{k} {v}" for k, v in s["by_status"].items())
    kinds = ", ".join(f"{k} {v}" for k, v in s["by_kind"].items())
    out.append(f"- **Trials:** {s['trials']} ({counts}); by kind: {kinds}")
    if len(s["islands"]) > 1:
        out.append(f"- **Islands:** {', '.join(str(i) for i in s['islands'])}")
    out.append(f"- **First baseline:** {_num(s['first_baseline_bpb'])}")
    best = f"- **Best val_bpb:** {_num(s['best_val_bpb'])}"
    if s["best_trial_id"]:
        best += f" (`{s['best_trial_id']}`: {_one_line(s['best_description'])})"
    if s["improvement"] is not None:
        pct = 100 * s["improvement"] / s["first_baseline_bpb"]
        best += f"; improvement over the first baseline {s['improvement']:.6f} ({pct:.2f}%)"
    out.append(best)
    out.append(f"- **Noise estimate (std of val_bpb):** {_num(s['noise'])}")
    if any(r.get("self_reported") for r in rows):
        out.append(f"- **Metric:** {SELF_REPORTED.removeprefix('* ')}")
    out.append(
        f"- **LLM cost:** ${s['total_cost']:.4f} ({s['prompt_tokens']} prompt + "
        f"{s['completion_tokens']} completion tokens"
        + (
            f"; {s['answers']} answers billed, {s['llm_rows']} of them in the ledger as "
            "trials or rejected proposals, the rest pending, dropped or checks)"
            if s["answers"]
            else ")"
        )
    )
    if s["wall_seconds"] is not None:
        busy = f"- **Wall clock:** {_duration(s['wall_seconds'])}"
        if s["busy_fraction"] is not None:
            busy += f"; {workers} workers busy {100 * s['busy_fraction']:.0f}% of it"
        out.append(busy)

    out += ["", "## Merged changes", ""]
    wins = df[df["merged"].fillna(False)]
    if wins.empty:
        out.append("None yet: no candidate beat the incumbent by more than the noise.")
    else:
        columns = ("round", "island", "commit", "val_bpb", "gain", "description")
        out.append(markdown_table(wins, columns).rstrip())
    if len(s["islands"]) > 1:
        out += ["", "## Islands", "", _island_table(df).rstrip()]
    ranked = df[df["rank"].notna()].sort_values("rank", kind="stable").head(10)
    out += ["", "## Top 10", "", markdown_table(ranked, (*MD_COLUMNS, "description")).rstrip()]
    return "\n".join(out).rstrip() + "\n"


def _in_time_order(df: pd.DataFrame) -> pd.DataFrame:
    # Rows without an end time (lost trials) take their start, else their ledger neighbour's.
    key = df["ended"].fillna(df["started"]).ffill().bfill()
    df = df.loc[key.sort_values(kind="stable").index].reset_index(drop=True)
    df["x"] = range(1, len(df) + 1)
    df["island"] = df["island"].fillna(0)
    return df


def _incumbent_levels(df: pd.DataFrame) -> list[tuple[float, float]]:
    """(x, val_bpb) where the island's incumbent changed: its first code's baseline mean,
    then each merged winner, as a running minimum."""
    levels: list[tuple[float, float]] = []
    ok = df[df["val_bpb"].notna() & ~df["status"].isin(FAILED).fillna(False)]
    base = ok[ok["kind"] == Kind.BASELINE]
    if len(base):
        shas = base["commit_sha"].fillna("")
        first = base[shas == shas.iloc[0]]  # replicates of the campaign's starting code
        levels.append((float(base["x"].iloc[0]), float(first["val_bpb"].mean())))
    wins = ok[ok["merged"].fillna(False)]
    for x, bpb in zip(wins["x"], wins["val_bpb"], strict=True):
        levels.append((float(x), min(float(bpb), levels[-1][1]) if levels else float(bpb)))
    return levels


def _island_table(df: pd.DataFrame) -> str:
    ok = df[df["rank"].notna()]
    per = pd.DataFrame(
        {
            "trials": df.groupby("island").size(),
            "merged": df.groupby("island")["merged"].sum(),
            "val_bpb": ok.groupby("island")["val_bpb"].min(),
        }
    ).reset_index()
    per["island"] = per["island"].astype("Int64")
    return markdown_table(per, ("island", "trials", "merged", "val_bpb"))


def _plot_title(rows: list[dict[str, Any]]) -> str:
    merged = sum(1 for r in rows if r.get("merged"))
    return f"{len(rows)} trials, {merged} merged improvements"


def _short(desc: Any) -> str:
    text = _one_line(desc)
    return text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 3] + "..."


def _one_line(value: Any) -> str:
    return " ".join(str(value).split()) if isinstance(value, str) else ""


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
