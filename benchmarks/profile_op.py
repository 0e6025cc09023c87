"""Profile one recc op's forward+backward on the GPU: which kernels and copies run, and how long.

    python benchmarks/profile_op.py first_order --B 4 --T 4096 --H 16 --dims D=128 [--dtype float32]
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import recc  # noqa: E402
from oracle import random_arguments  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--dims", default="D=128", help="comma-separated NAME=SIZE")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--strategy", default=None)
    a = p.parse_args()
    dims = {k: int(v) for k, v in (kv.split("=") for kv in a.dims.split(","))}
    path = ROOT / "specs" / f"{a.spec}.rec"
    rec = recc.load_spec(path)
    op = recc.load(path, strategy=a.strategy)
    args = [x.requires_grad_() for x in random_arguments(rec, a.B, a.T, a.H, dims, getattr(torch, a.dtype),
                                                         device="cuda")]
    out = op(*args)[0]
    dy = torch.randn_like(out)

    def step():
        for x in args:
            x.grad = None
        op(*args)[0].backward(dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        step()
    end.record()
    torch.cuda.synchronize()
    print(f"{a.spec}: fwd+bwd through the op, wall per step on the GPU clock: {start.elapsed_time(end) / 20:.3f} ms")


if __name__ == "__main__":
    main()
