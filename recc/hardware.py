"""The machine a kernel's tiles are chosen for: limits and rates, as plain data.

    hardware(device=None) -> Hardware

Limits (SM count, shared memory, registers, L2, warp size) are read from the
device (`torch.cuda.get_device_properties`). Rates are not exposed by the driver,
so bandwidth, tensor-core and vector throughput, clock and latencies are
documented constants per architecture (`RATES`, achievable figures, below the
data-sheet peaks), overridden for a few named parts (`NAMED_RATES`).

Without a GPU, or under `TRITON_INTERPRET=1`, the model is `INTERPRETER`: the
limits of an sm_80 GPU (so every tile it picks is also legal on a GPU) and no
rates: `recc.tiles` then picks the smallest legal tiles, which keeps CPU tests
fast and makes them run the multi-tile code paths. `RECC_HARDWARE=<preset>`
(one of `PRESETS`) forces the model `recc check` uses, e.g. to see the H100 choice on
a laptop; `hardware("h100")` is that model in code. Generated host code asks for the
model of its inputs' device (`recc.tiles.launch_tiles`): a CUDA device's own, the
interpreter's on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Hardware:
    name: str
    arch: str                  # "sm_90", ... or "interpreter"
    sms: int                   # streaming multiprocessors
    warp_size: int
    max_threads_per_sm: int
    max_threads_per_block: int
    regs_per_sm: int           # 32-bit registers
    regs_per_block: int
    max_regs_per_thread: int   # beyond this a kernel spills
    smem_per_block: int        # bytes, the opt-in maximum where the device has one
    smem_per_sm: int
    l2_bytes: int
    bandwidth: float           # bytes/s from HBM (achievable)
    l2_bandwidth: float        # bytes/s from L2
    tensor_flops: float        # FLOP/s of tl.dot on bf16/fp16 operands, fp32 accumulate (dense)
    vector_flops: float        # FLOP/s of fp32 CUDA-core arithmetic (an FMA counts 2)
    clock_hz: float
    step_latency: float        # s: floor of one dependent step of a sequential loop (barrier, reduction)
    memory_latency: float      # s: one global load that nothing hides
    interpreter: bool = False  # the Triton CPU interpreter: choose the smallest legal tiles
    source: str = "preset"     # "preset" | "device properties"

    def describe(self) -> str:
        if self.interpreter:
            return f"{self.name} model (smallest legal tiles; limits of an sm_80 GPU)"
        return (f"{self.name} model ({self.arch}, {self.sms} SMs, {self.smem_per_block // KIB} KiB smem/block, "
                f"{self.regs_per_sm} regs/SM, {self.l2_bytes // MIB} MiB L2, {self.bandwidth / 1e12:.1f} TB/s, "
                f"{self.tensor_flops / 1e12:.0f} TFLOP/s; {self.source})")

    def to_json(self) -> dict:
        return {"name": self.name, "arch": self.arch, "sms": self.sms, "interpreter": self.interpreter,
                "smem_per_block": self.smem_per_block, "regs_per_sm": self.regs_per_sm, "l2_bytes": self.l2_bytes,
                "bandwidth": self.bandwidth, "tensor_flops": self.tensor_flops, "source": self.source}


@dataclass(frozen=True)
class Rates:
    """Throughputs and latencies of an architecture (achievable, not peak)."""
    bandwidth: float
    l2_bandwidth: float
    tensor_flops: float
    vector_flops: float
    clock_hz: float
    step_cycles: int = 400       # barrier + cross-warp reduction + loop overhead per dependent step
    memory_cycles: int = 1000    # latency of an unhidden HBM load


# Keyed by compute capability. Sources: vendor data sheets (peaks), scaled to what
# streaming kernels and large GEMMs reach in practice (~90% of HBM, ~70-80% of tensor peak).
RATES = {
    (8, 0): Rates(1.8e12, 5.0e12, 250e12, 19.5e12, 1.41e9),     # A100 SXM: 2.0 TB/s, 312 TFLOP/s peak
    (8, 6): Rates(0.55e12, 2.0e12, 100e12, 31e12, 1.7e9),       # A10 / RTX 3090 class
    (8, 9): Rates(0.8e12, 3.0e12, 150e12, 80e12, 2.5e9),        # L40S / RTX 4090 class
    (9, 0): Rates(3.0e12, 10e12, 700e12, 60e12, 1.75e9),        # H100 SXM: 3.35 TB/s, 989 TFLOP/s peak
    (10, 0): Rates(7.0e12, 20e12, 1600e12, 75e12, 1.9e9),       # B200: 8 TB/s, 2250 TFLOP/s peak
}
DEFAULT_RATES = Rates(1.0e12, 3.0e12, 100e12, 20e12, 1.5e9)   # an unknown GPU: conservative
NAMED_RATES = {                                                # matched in the device name, first hit
    "H200": replace(RATES[(9, 0)], bandwidth=4.3e12),          # 4.8 TB/s peak
    "H100 PCIe": replace(RATES[(9, 0)], bandwidth=1.8e12, tensor_flops=500e12),
}


def _with_rates(name: str, arch: str, rates: Rates, **limits) -> Hardware:
    return Hardware(name=name, arch=arch, bandwidth=rates.bandwidth, l2_bandwidth=rates.l2_bandwidth,
                    tensor_flops=rates.tensor_flops, vector_flops=rates.vector_flops, clock_hz=rates.clock_hz,
                    step_latency=rates.step_cycles / rates.clock_hz, memory_latency=rates.memory_cycles / rates.clock_hz,
                    **limits)


_SM80_LIMITS = dict(sms=108, warp_size=32, max_threads_per_sm=2048, max_threads_per_block=1024, regs_per_sm=65536,
                    regs_per_block=65536, max_regs_per_thread=255, smem_per_block=163 * KIB, smem_per_sm=164 * KIB,
                    l2_bytes=40 * MIB)
_SM90_LIMITS = dict(_SM80_LIMITS, sms=132, smem_per_block=227 * KIB, smem_per_sm=228 * KIB, l2_bytes=50 * MIB)

H100 = _with_rates("H100", "sm_90", RATES[(9, 0)], **_SM90_LIMITS)
H200 = _with_rates("H200", "sm_90", NAMED_RATES["H200"], **dict(_SM90_LIMITS, l2_bytes=60 * MIB))
A100 = _with_rates("A100", "sm_80", RATES[(8, 0)], **_SM80_LIMITS)
INTERPRETER = replace(_with_rates("interpreter", "interpreter", DEFAULT_RATES, **_SM80_LIMITS), interpreter=True)
PRESETS = {"h100": H100, "h200": H200, "a100": A100, "interpreter": INTERPRETER}


def from_properties(props) -> Hardware:
    """The model of a device from its `torch.cuda.get_device_properties` (missing fields: sm_80 values)."""
    get = lambda field, default: getattr(props, field, None) or default
    major, minor = props.major, props.minor
    rates = next((r for key, r in NAMED_RATES.items() if key in props.name), None)
    if rates is None:
        known = [cc for cc in RATES if cc <= (major, minor)]
        rates = RATES[max(known)] if known else DEFAULT_RATES
    smem_block = get("shared_memory_per_block_optin", 0) or get("shared_memory_per_block", 48 * KIB)
    return _with_rates(
        props.name, f"sm_{major}{minor}", rates, source="device properties",
        sms=props.multi_processor_count, warp_size=get("warp_size", 32),
        max_threads_per_sm=get("max_threads_per_multi_processor", 2048),
        max_threads_per_block=get("max_threads_per_block", 1024),
        regs_per_sm=get("regs_per_multiprocessor", 65536), regs_per_block=get("regs_per_block", 65536),
        max_regs_per_thread=255, smem_per_block=smem_block,
        smem_per_sm=get("shared_memory_per_multiprocessor", smem_block),
        l2_bytes=get("L2_cache_size", 0) or get("l2_cache_size", 40 * MIB))


def hardware(device=None) -> Hardware:
    """The model tiles are chosen for.

    `device`: a `Hardware` (returned as is), a preset name (`PRESETS`), "cpu", a CUDA
    device (`torch.device`, "cuda:1", an index), or None: `RECC_HARDWARE` if set, the
    interpreter under `TRITON_INTERPRET=1` or without a GPU, else the current GPU.
    """
    if isinstance(device, Hardware):
        return device
    if device is None:
        device = os.environ.get("RECC_HARDWARE") or None
    if isinstance(device, str) and device.lower() in PRESETS:
        return PRESETS[device.lower()]
    if device == "cpu" or getattr(device, "type", None) == "cpu":
        return INTERPRETER
    if device is None and os.environ.get("TRITON_INTERPRET") == "1":
        return INTERPRETER
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return INTERPRETER
    if not torch.cuda.is_available():
        if device is None:
            return INTERPRETER
        raise ValueError(f"no CUDA device for {device!r} (presets: {', '.join(PRESETS)})")
    return from_properties(torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device()))
