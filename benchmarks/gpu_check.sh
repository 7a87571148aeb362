#!/usr/bin/env bash
# One prepared check that the CUDA path works end to end on a real GPU, with no network.
#
#   benchmarks/gpu_check.sh --stage            # here, once: copy the prepared corpus to carry
#   benchmarks/gpu_check.sh [--device cuda]    # on the GPU machine (under 8 minutes, H100/H200)
#   benchmarks/gpu_check.sh --device cpu       # the same checks on CPU (a few minutes)
#
# The GPU machine reaches nothing outside, so it reads the prepared builtin corpus from
# runs/gpu-check/cache (git-ignored; --stage copies builtin-v2048 there, 4.4 MB): carry
# "runs/gpu-check/cache" with the working tree. It runs, all through the real referee:
#   1. the default train.py under a short time budget, twice in one process: the first with
#      the node's compile cache emptied (cold torch.compile), the second warm; each prints
#      val_bpb, steps, tokens/s, MFU, peak VRAM, compile time and cache hits, and its
#      fixed-cost table (every phase as seconds and as a share of the wall time);
#   2. the same under a steps budget;
#   3. three trials in a row through a real TrialActor on a local Ray: experiments per hour
#      at that budget and the gap between one trial's training and the next's;
#   4. checks: every trial ok, the graph checks and the exported model's scoring ran on the
#      trial's device, MFU known on a GPU, the second compile warmer than the first.
# Output also goes to runs/gpu-check/out/ (JSON per step) and to $OUT when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
STAGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --stage) STAGE=1; shift ;;
    *) echo "usage: $0 [--stage] [--device cuda|cpu]" >&2; exit 2 ;;
  esac
done
CACHE="$PWD/runs/gpu-check/cache"
if [ "$STAGE" = 1 ]; then
  SRC="${AUTORESEARCH_CACHE:-$HOME/.cache/autoresearch-cluster}"
  [ -f "$SRC/builtin-v2048/manifest.json" ] ||
    AUTORESEARCH_CACHE="$SRC" python -c "from trainer.prepare import prepare; prepare('builtin')"
  mkdir -p "$CACHE" && rm -rf "$CACHE/builtin-v2048"
  cp -r "$SRC/builtin-v2048" "$CACHE/"
  echo "staged $(du -sh "$CACHE/builtin-v2048" | cut -f1) at $CACHE; carry runs/gpu-check/cache"
  exit 0
fi
if [ ! -f "$CACHE/builtin-v2048/manifest.json" ]; then
  echo "no prepared corpus at $CACHE: run '$0 --stage' where the corpus is prepared" >&2
  exit 1
fi
export AUTORESEARCH_CACHE="$CACHE" HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0
RES="$PWD/runs/gpu-check/out"
mkdir -p "$RES"
if [ "$DEVICE" = cpu ]; then  # scoring, not training, is most of a short CPU trial
  TIME_BUDGET=15s STEPS_BUDGET=30steps ACTOR_BUDGET=30steps LIMIT1=1500 LIMIT2=2400
else  # within 8 minutes on one H100/H200, with time to spare
  TIME_BUDGET=45s STEPS_BUDGET=300steps ACTOR_BUDGET=20s LIMIT1=240 LIMIT2=210
fi
t0=$(date +%s)
echo "== gpu_check on $DEVICE: $(hostname), load $(cut -d' ' -f1 /proc/loadavg), $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python - "$DEVICE" <<'EOF'
import sys, torch
from trainer.confine_spec import describe_confinement
dev = sys.argv[1]
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}; the node {describe_confinement()}")
if dev.startswith("cuda"):
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
EOF
rm -rf "$CACHE/compile"  # the first trial compiles cold
echo; echo "== 1. time budget $TIME_BUDGET, cold then warm compile cache"
timeout "$LIMIT1" python -u benchmarks/fixed_cost.py --device "$DEVICE" --budget "$TIME_BUDGET" \
  --trials 2 --json "$RES/time.json"
echo; echo "== 2. steps budget $STEPS_BUDGET, then 3 trials through a TrialActor at $ACTOR_BUDGET"
timeout "$LIMIT2" python -u benchmarks/fixed_cost.py --device "$DEVICE" --budget "$STEPS_BUDGET" \
  --trials 1 --actor 3 --actor-budget "$ACTOR_BUDGET" --json "$RES/steps.json"
echo; echo "== 3. checks"
rc=0
python - "$DEVICE" "$RES" <<'EOF' || rc=$?
import json, sys
from pathlib import Path
dev, res = sys.argv[1], Path(sys.argv[2])
time_doc, steps_doc = (json.loads((res / f).read_text()) for f in ("time.json", "steps.json"))
trials = time_doc["referee"] + steps_doc["referee"]
fails = []
def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what)
    ok or fails.append(what)
check(all(t["status"] == "ok" for t in trials), "every referee trial ok")
check(all(r["status"] == "ok" for r in steps_doc["actor"]), "every TrialActor trial ok")
kind = "cuda" if dev.startswith("cuda") else "cpu"
devices = {t["extra"].get("eval_device", "") for t in trials}
check(all(d.startswith(kind) for d in devices), f"graph checks and scoring ran on {devices}")
check(all((t["extra"]["phases"].get("probe") or 0) > 0 for t in trials), "the probes ran")
if kind == "cuda":
    check(all(t["mfu"] for t in trials), f"MFU known for {trials[0]['gpu_name']}")
    cold, warm = (t["extra"].get("compile", {}) for t in time_doc["referee"])
    check(bool(cold.get("compile_s")), f"torch.compile ran: cold {cold.get('compile_s', 0):.1f} s")
    check(warm.get("compile_s", 1e9) < cold.get("compile_s", 0),
          f"warm compile {warm.get('compile_s', 0):.1f} s < cold; FX graph cache hits "
          f"{warm.get('fxgraph_cache_hit', 0):.0f}")
print("gpu_check:", "FAILED: " + "; ".join(fails) if fails else "all checks passed")
sys.exit(1 if fails else 0)
EOF
echo "gpu_check took $(( $(date +%s) - t0 )) s"
if [ -n "${OUT:-}" ]; then cp "$RES"/*.json "$OUT"/ 2>/dev/null || true; fi
exit $rc
