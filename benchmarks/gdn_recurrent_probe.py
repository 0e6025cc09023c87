"""Probe: gated DeltaNet at the main shape through `recurrent` and `chunked`: finite? equal?

    python benchmarks/gdn_recurrent_probe.py
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import recc  # noqa: E402
from oracle import random_arguments, relative_error  # noqa: E402

rec = recc.load_spec(ROOT / "specs" / "gated_delta_net.rec")
args = random_arguments(rec, 4, 4096, 16, {"K": 128, "V": 128}, torch.bfloat16, device="cuda")
outs = {}
for strategy in ("recurrent", "chunked"):
    op = recc.load(ROOT / "specs" / "gated_delta_net.rec", strategy=strategy)
    o, S = op(*args, output_final_state=True)
    torch.cuda.synchronize()
    outs[strategy] = (o, S)
    print(f"{strategy:10s} o finite: {bool(o.isfinite().all())}  S finite: {bool(S.isfinite().all())}  "
          f"|o| max {o.float().abs().max().item():.3g}  |S| max {S.abs().max().item():.3g}")
print(f"recurrent vs chunked: o {relative_error(outs['recurrent'][0], outs['chunked'][0]):.2e}  "
      f"S {relative_error(outs['recurrent'][1], outs['chunked'][1]):.2e}")
for T in (64, 512):
    small = [a[:, :T].contiguous() if a.dim() >= 3 else a for a in args]
    r = recc.load(ROOT / "specs" / "gated_delta_net.rec", strategy="recurrent")(*small, output_final_state=True)
    c = recc.load(ROOT / "specs" / "gated_delta_net.rec", strategy="chunked")(*small, output_final_state=True)
    print(f"T={T}: recurrent vs chunked o {relative_error(r[0], c[0]):.2e}, finite {bool(r[0].isfinite().all())}")
