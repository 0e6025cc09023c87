"""Where a step's wall time goes on the GPU machine: host (Python + launches) vs GPU.

    python benchmarks/host_time.py [--B 4 --T 4096 --H 16 --D 128] [--profile 25]

For recc's first_order op (scan) and accelerated_scan's `scan` on the same data, fp32:

* host us/step   - forward+backward at a tiny shape (B=1, T=16, H=1, D=16), 500 steps, one
                   synchronize at the end: the GPU finishes each step at once, so this is
                   the host's time per step;
* wall ms/step   - the main shape, 50 steps back to back, CUDA events around the loop;
* synced ms/step - the same with a synchronize after every step (host and GPU in series);
* gpu ms/step    - the kernels alone (torch.profiler's CUDA time per step).

`--profile N` prints cProfile's top N functions (by own time) of recc's host step.
"""
import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import recc  # noqa: E402


def recc_step(B, T, H, D):
    op = recc.load(ROOT / "specs" / "first_order.rec", strategy="scan")
    a = torch.rand(B, T, H, D, device="cuda").requires_grad_()
    b = torch.randn(B, T, H, D, device="cuda").requires_grad_()
    dy = torch.randn(B, T, H, D, device="cuda")

    def step():
        a.grad = b.grad = None
        op(a, b)[0].backward(dy)
    return step


def anchor_step(B, T, H, D):
    from accelerated_scan.scalar import scan
    a = torch.rand(B, H * D, T, device="cuda").requires_grad_()
    b = torch.randn(B, H * D, T, device="cuda").requires_grad_()
    dy = torch.randn(B, H * D, T, device="cuda")

    def step():
        a.grad = b.grad = None
        scan(a, b).backward(dy)
    return step


def host_us(step, n=500):
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def wall_ms(step, n=50, synced=False):
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        step()
        if synced:
            torch.cuda.synchronize()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n


def gpu_ms(step, n=20):
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    total = sum(e.self_device_time_total for e in prof.key_averages())
    return total / n / 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--profile", type=int, default=25)
    a = p.parse_args()
    rows = []
    for name, make in (("recc first_order", recc_step), ("accelerated_scan", anchor_step)):
        tiny = make(1, 16, 1, 16)
        main_step = make(a.B, a.T, a.H, a.D)
        rows.append((name, host_us(tiny), wall_ms(main_step), wall_ms(main_step, synced=True), gpu_ms(main_step)))
    print(f"{'op':20s} {'host us/step':>13s} {'wall ms':>9s} {'synced ms':>10s} {'gpu ms':>8s}")
    for r in rows:
        print(f"{r[0]:20s} {r[1]:13.1f} {r[2]:9.3f} {r[3]:10.3f} {r[4]:8.3f}")
    if a.profile:
        step = recc_step(1, 16, 1, 16)
        host_us(step, 20)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            step()
        torch.cuda.synchronize()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(a.profile)


if __name__ == "__main__":
    main()
