"""Model FLOPs utilization: the FLOPs a trial's model needs per token against the GPU's peak.

    peak_flops("NVIDIA H100 PCIe") -> 756e12
    mfu(flops_per_token, tokens, seconds, gpu_name) -> percent, or None off a known GPU

The FLOPs per token are counted by the referee from the exported graph (trainer/graph.py's
pass on fake tensors: 2 x outputs x contraction of every matmul-like op of one forward,
attention's two products included), times 3 for a training step (the backward pass costs
twice the forward), over the tokens of that forward. For a GPT that is autoresearch's
`6 * (params - embedding params) + 12 * layers * heads * head_dim * seq_len`: nothing the
trial says about itself enters it.

Peaks are dense (no structured sparsity) bf16 tensor-core FLOP/s with fp32 accumulation,
from the vendor's datasheet for that exact part; a name is matched most specific first, so
an H100 PCIe (756 TFLOP/s) is never taken for an SXM (989).
"""

from __future__ import annotations

# (fragments that must all appear in the CUDA device name, case-insensitive; dense bf16
# FLOP/s). First match wins, so more specific entries come before the entries they contain
# ("GH200" and "H200 NVL" before "H200", "L40S" before "L40" before "L4", "A100" before "A10").
PEAK_BF16_FLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    # NVIDIA B200 datasheet (HGX B200): 4.5 PFLOPS bf16 with sparsity -> 2.25 dense.
    (("B200",), 2250e12),
    # NVIDIA GH200 datasheet: the Hopper GPU of the superchip, 1,979 TFLOPS sparse -> 989.
    (("GH200",), 989e12),
    # NVIDIA H200 datasheet: H200 NVL 1,671 TFLOPS bf16 sparse -> 835; H200 SXM 1,979 -> 989.
    (("H200", "NVL"), 835e12),
    (("H200",), 989e12),
    # NVIDIA H100 datasheet: PCIe 1,513 sparse -> 756; NVL 1,671 -> 835; SXM 1,979 -> 989
    # (NVML names the SXM part "NVIDIA H100 80GB HBM3").
    (("H100", "PCIE"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),
    # NVIDIA A100 datasheet: 312 TFLOPS dense bf16 for the 40 and 80 GB, SXM4 and PCIe parts.
    (("A100",), 312e12),
    # NVIDIA L40S datasheet: 362.05 dense (733 sparse); L40: 181.05 dense (362 sparse).
    (("L40S",), 362e12),
    (("L40",), 181e12),
    # NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity -> 121 dense.
    (("L4",), 121e12),
    # NVIDIA publishes no A10G sheet (AWS's variant of the A10); 70 TFLOPS as AWS and cloud
    # GPU tables quote it. NVIDIA A10 datasheet: 125 dense (250 sparse).
    (("A10G",), 70e12),
    (("A10",), 125e12),
    # NVIDIA Ada whitepaper, RTX 4090: 165.2 TFLOPS bf16 with fp32 accumulate, dense.
    (("RTX 4090",), 165.2e12),
    # NVIDIA Ampere GA102 whitepaper, RTX 3090: 71 TFLOPS bf16 with fp32 accumulate, dense.
    (("RTX 3090",), 71e12),
)


def peak_flops(gpu_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU called `gpu_name`, None when it is not in the table."""
    name = gpu_name.upper()
    for fragments, flops in PEAK_BF16_FLOPS:
        if all(f in name for f in fragments):
            return flops
    return None


def training_flops_per_token(forward_matmul_flops: float, tokens_per_forward: int) -> float:
    """FLOPs of one training step per token: forward plus a backward of twice its cost."""
    return 3.0 * forward_matmul_flops / max(1, tokens_per_forward)


def mfu(flops_per_token: float, tokens: int, seconds: float, gpu_name: str) -> float | None:
    """Percent of the GPU's peak that `tokens` trained in `seconds` used, or None."""
    peak = peak_flops(gpu_name)
    if not peak or seconds <= 0 or flops_per_token <= 0:
        return None
    return round(100.0 * flops_per_token * tokens / seconds / peak, 2)
